// ExportModel and ImportModel.
#include "server/edge/model_transfer.h"

#include <google/protobuf/util/json_util.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"
#include "core/dicom/segmentation.h"
#include "core/train/export.h"
#include "server/edge/convert.h"
#include "server/edge/edge_reactor.h"
#include "server/domain/ingest.h"
#include "server/log.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;

constexpr size_t kChunkBytes = size_t{1} << 20;
constexpr int64_t kMaxModelJsonBytes = int64_t{1} << 20;
constexpr char kExportFormat[] = "miseg-torchscript-1";

std::string UniqueName() {
  std::random_device random;
  return absl::StrFormat("%08x%08x", random(), random());
}

ModelFormat CoreFormat(StoredModelFormat format) {
  return format == StoredModelFormat::kTorchScript ? ModelFormat::kTorchScript
                                                   : ModelFormat::kMiseg;
}

v1::CodedConcept ToConcept(const CodedConceptText& code) {
  v1::CodedConcept out;
  out.set_code_value(code.value);
  out.set_coding_scheme(code.scheme);
  out.set_code_meaning(code.meaning);
  return out;
}

v1::ExportedModel Describe(const ServiceDeps& deps, const ModelRecord& model,
                           const DatasetRecord& dataset, const ModelSpec& spec) {
  v1::ExportedModel out;
  out.set_format(kExportFormat);
  out.set_miseg_version(deps.version);
  out.set_model_id(model.id);
  out.set_model_version(model.version);
  out.set_dataset(dataset.name);
  out.set_training_job(model.job_id);
  out.set_steps(model.steps);
  for (size_t k = 0; k < dataset.class_names.size(); ++k) {
    v1::ExportedClass* c = out.add_classes();
    c->set_label(static_cast<int32_t>(k));
    c->set_name(dataset.class_names[k]);
    if (k == 0) continue;  // the background has no segment
    const SegmentCodes codes = SegmentCodesFor(dataset.class_names[k]);
    *c->mutable_category() = ToConcept(codes.category);
    *c->mutable_type() = ToConcept(codes.type);
  }
  out.set_grid_size(spec.grid_size);
  out.set_spacing_mm(spec.target_spacing_mm);
  out.set_spacing_policy(spec.target_spacing_mm > 0 ? "fixed_spacing" : "fit_field_of_view");
  out.set_clip_low_percentile(spec.clip_low_percentile);
  out.set_clip_high_percentile(spec.clip_high_percentile);
  out.set_normalization(absl::StrCat(
      "per volume: clip to the ", spec.clip_low_percentile, " and ", spec.clip_high_percentile,
      " percentiles of its voxels, then subtract the mean and divide by the standard deviation "
      "of the clipped voxels"));
  for (int64_t w : spec.widths) out.add_widths(w);
  for (double d : model.dice_per_class) out.add_validation_dice_per_class(d);
  out.set_validation_mean_dice(model.mean_dice);
  out.set_created_unix_ms(model.created_unix_ms);
  return out;
}

std::string Readme(const v1::ExportedModel& m) {
  std::vector<std::string> classes;
  for (const v1::ExportedClass& c : m.classes())
    classes.push_back(absl::StrCat(c.label(), " ", c.name()));
  return absl::StrCat(
      "# miseg model ", m.dataset(), " v", m.model_version(), "\n\n",
      "`model.pt` is a TorchScript module (miseg ", m.miseg_version(), "). It takes a float\n",
      "batch `B x 1 x H x W` of slices already normalised and resampled as `model.json` says\n",
      "(grid ", m.grid_size(), " x ", m.grid_size(), ", ", m.spacing_policy(), "; ",
      m.normalization(), ")\nand returns logits `B x ", m.classes_size(),
      " x H x W`; argmax over dimension 1 gives labels:\n", absl::StrJoin(classes, ", "), ".\n\n",
      "```python\nimport json, torch\n",
      "model = torch.jit.load(\"model.pt\", map_location=\"cpu\").eval()\n",
      "info = json.load(open(\"model.json\"))\n", "with torch.no_grad():\n",
      "    labels = model(slices).argmax(dim=1)  # slices: B x 1 x ", m.grid_size(), " x ",
      m.grid_size(), " float32\n```\n\n",
      "Class codes (SNOMED CT, as in miseg's DICOM SEGs), validation Dice and the training job\n"
      "are in `model.json`, protobuf's JSON form of `miseg.v1.ExportedModel` (64-bit integers\n"
      "are strings: `int(info[\"grid_size\"])`). `miseg models import DATASET DIR` registers\n"
      "this directory as a model version of another miseg server's dataset with the same\n"
      "classes.\n");
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::ResourceExhaustedError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// Streams the exported files, one after another, one chunk per write.
class ExportReactor final : public EdgeReactor<grpc::ServerWriteReactor<v1::FileChunk>> {
 public:
  ExportReactor(const ServiceDeps& deps, grpc::CallbackServerContext* context, int64_t model_id)
      : EdgeReactor(deps, context, {"ExportModel", Permission::kPromote, /*needs_slot=*/true}),
        model_id_(model_id) {
    if (!start_status().ok()) {
      End(start_status());
      return;
    }
    Hold();  // scripting and saving the module take time: off the gRPC thread
    deps_.ingest_pool->Schedule([this] {
      absl::Status prepared = Prepare();
      if (!prepared.ok()) {
        End(prepared);
      } else if (!ended()) {
        WriteNext();
      }
      Unhold();
    });
  }
  ~ExportReactor() override {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  void OnWriteDone(bool ok) override {
    WaitingOnClient(false);
    if (!ok || ended()) return;
    Rearm();
    WriteNext();
  }

 private:
  absl::Status Prepare() {
    ASSIGN_OR_RETURN(ModelRecord model, deps_.store->GetModel(model_id_));
    ASSIGN_OR_RETURN(DatasetRecord dataset, deps_.store->GetDatasetById(model.dataset_id));
    dir_ = absl::StrCat(deps_.runner->host().IncomingDir(), "/export-", UniqueName());
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir_, ": ", ec.message()));
    absl::StatusOr<ModelSpec> spec =
        ExportTorchScript(model.path, CoreFormat(model.format), dir_ + "/model.pt");
    if (!spec.ok()) {
      return absl::Status(spec.status().code(),
                          absl::StrCat("model ", model.id, ": ", spec.status().message()));
    }
    const v1::ExportedModel described = Describe(deps_, model, dataset, *spec);
    RETURN_IF_ERROR(WriteText(dir_ + "/model.json", ExportedModelJson(described)));
    RETURN_IF_ERROR(WriteText(dir_ + "/README.md", Readme(described)));
    names_ = {"model.pt", "model.json", "README.md"};
    return absl::OkStatus();
  }

  void WriteNext() {
    chunk_.Clear();
    if (!in_.is_open()) {
      if (next_ == names_.size()) {
        End(absl::OkStatus());
        return;
      }
      in_.open(dir_ + "/" + names_[next_], std::ios::binary);
      if (!in_) {
        End(absl::InternalError("cannot read back an exported file"));
        return;
      }
      chunk_.set_file_name(names_[next_++]);
    }
    std::string& data = *chunk_.mutable_data();
    data.resize(kChunkBytes);
    in_.read(data.data(), static_cast<std::streamsize>(data.size()));
    data.resize(static_cast<size_t>(in_.gcount()));
    if (in_.bad()) {
      End(absl::InternalError("cannot read back an exported file"));
      return;
    }
    if (in_.eof() || in_.peek() == EOF) {
      chunk_.set_last_chunk(true);
      in_.close();
    }
    WaitingOnClient(true);
    StartWrite(&chunk_);
  }

  const int64_t model_id_;
  std::string dir_;
  std::vector<std::string> names_;
  size_t next_ = 0;
  std::ifstream in_;
  v1::FileChunk chunk_;  // the one message being written
};

// The dataset's classes, or InvalidArgument saying how model.json's differ.
absl::Status CheckClasses(const v1::ExportedModel& info, const DatasetRecord& dataset) {
  std::vector<std::string> names;
  for (const v1::ExportedClass& c : info.classes()) names.push_back(c.name());
  if (names != dataset.class_names) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model's classes (", absl::StrJoin(names, ", "),
                     ") are not those of dataset '", dataset.name, "' (",
                     absl::StrJoin(dataset.class_names, ", "), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelSpec> SpecOf(const v1::ExportedModel& info) {
  ModelSpec spec;
  spec.classes = info.classes_size();
  spec.widths.assign(info.widths().begin(), info.widths().end());
  spec.grid_size = info.grid_size();
  spec.target_spacing_mm = info.spacing_mm();
  spec.clip_low_percentile = info.clip_low_percentile();
  spec.clip_high_percentile = info.clip_high_percentile();
  absl::Status valid = ValidateModelSpec(spec);
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat("model.json: ", valid.message()));
  return spec;
}

class ImportReactor final
    : public ChunkedInputReactor<grpc::ServerReadReactor<v1::ImportModelRequest>,
                                 v1::ImportModelRequest> {
 public:
  ImportReactor(const ServiceDeps& deps, grpc::CallbackServerContext* context, v1::Model* response)
      : ChunkedInputReactor(deps, context, {"ImportModel", Permission::kPromote, true}),
        response_(response),
        receiver_(deps.files, ChunkLimits{deps.max_request_bytes, 2}) {
    Begin();
  }
  ~ImportReactor() override {
    std::error_code ec;
    if (!target_.empty()) fs::remove(target_, ec);
  }

 private:
  absl::Status TakeHeader(const v1::ImportModelRequest& first) override {
    if (!first.has_header()) {
      return absl::InvalidArgumentError("the first message must carry the import header");
    }
    ASSIGN_OR_RETURN(dataset_, FindDataset(deps_, first.header().dataset()));
    return absl::OkStatus();
  }
  absl::Status TakeChunk(const v1::FileChunk& chunk) override {
    return receiver_.AddChunk(chunk.file_name(), chunk.data(), chunk.last_chunk());
  }
  void EndOfStream() override {
    if (context_->IsCancelled()) {
      End(absl::CancelledError("the client cancelled the stream; nothing was imported"));
      return;
    }
    if (dataset_.id == 0) {
      End(absl::InvalidArgumentError("the first message must carry the import header"));
      return;
    }
    Hold();  // loading and running the module take time: off the gRPC thread
    deps_.ingest_pool->Schedule([this] {
      End(Commit());
      Unhold();
    });
  }

  // The staged file the client named `name`, or InvalidArgument.
  absl::StatusOr<std::string> StagedPath(const std::string& name) {
    for (size_t i = 0; i < receiver_.names().size(); ++i) {
      if (receiver_.names()[i] == name) return receiver_.files()[i]->path();
    }
    return absl::InvalidArgumentError(absl::StrCat("the import holds no ", name));
  }

  absl::StatusOr<v1::ExportedModel> ReadInfo() {
    ASSIGN_OR_RETURN(std::string path, StagedPath("model.json"));
    std::error_code ec;
    if (static_cast<int64_t>(fs::file_size(path, ec)) > kMaxModelJsonBytes) {
      return absl::InvalidArgumentError("model.json is larger than 1 MiB");
    }
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
    v1::ExportedModel info;
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    const auto parsed = google::protobuf::util::JsonStringToMessage(text, &info, options);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model.json is not a miseg model description: ", std::string(parsed.message())));
    }
    if (info.format() != kExportFormat) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.json: format '", info.format(), "', expected '", kExportFormat, "'"));
    }
    return info;
  }

  absl::Status Commit() {
    RETURN_IF_ERROR(receiver_.EndOfStream());
    ASSIGN_OR_RETURN(v1::ExportedModel info, ReadInfo());
    RETURN_IF_ERROR(CheckClasses(info, dataset_));
    ASSIGN_OR_RETURN(ModelSpec spec, SpecOf(info));
    ASSIGN_OR_RETURN(std::string module, StagedPath("model.pt"));
    const std::string checked =
        absl::StrCat(deps_.runner->host().IncomingDir(), "/import-", UniqueName(), ".pt");
    target_ = checked;  // removed with the reactor unless it reaches models/
    RETURN_IF_ERROR(ImportTorchScript(module, spec, checked));
    ASSIGN_OR_RETURN(std::string sha256, Sha256OfFile(checked));
    // Named by its SHA-256 like a trained model (the engine checks it before loading), and
    // unique, so that deleting one version never takes another's file.
    const std::string path = absl::StrCat(deps_.runner->host().ModelsDir(), "/import-",
                                          UniqueName(), "-", sha256, ".model");
    std::error_code ec;
    fs::rename(checked, path, ec);
    if (ec)
      return absl::InternalError(
          absl::StrCat("cannot move the model into models/: ", ec.message()));
    target_ = path;
    ModelRecord record;
    record.dataset_id = dataset_.id;
    record.path = path;
    record.format = StoredModelFormat::kTorchScript;
    record.dice_per_class.assign(info.validation_dice_per_class().begin(),
                                 info.validation_dice_per_class().end());
    record.mean_dice = info.validation_mean_dice();
    record.steps = info.steps();
    record.size_bytes = static_cast<int64_t>(fs::file_size(path, ec));
    ASSIGN_OR_RETURN(ModelRecord stored, deps_.store->InsertImportedModel(record));
    target_.clear();  // the model's now
    *response_ = ToProto(stored, dataset_.class_names);
    Log(absl::StrCat("model ", stored.id, " imported into dataset '", dataset_.name,
                     "' as version ", stored.version));
    return absl::OkStatus();
  }

  v1::Model* const response_;
  FileReceiver receiver_;
  DatasetRecord dataset_;
  std::string target_;
};

}  // namespace

std::string ExportedModelJson(const v1::ExportedModel& model) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(model, &json, options);
  return json;
}

grpc::ServerWriteReactor<v1::FileChunk>* StartExportModel(const ServiceDeps& deps,
                                                          grpc::CallbackServerContext* context,
                                                          const v1::ExportModelRequest* request) {
  return new ExportReactor(deps, context, request->id());
}

grpc::ServerReadReactor<v1::ImportModelRequest>* StartImportModel(
    const ServiceDeps& deps, grpc::CallbackServerContext* context, v1::Model* response) {
  return new ImportReactor(deps, context, response);
}

}  // namespace miseg

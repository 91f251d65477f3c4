#include "client/cli/commands.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <optional>

#include <grpcpp/grpcpp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/cli/hyperparameters_json.h"
#include "client/cli/local_files.h"
#include "client/cli/output.h"
#include "client/cli/terminal.h"
#include "client/client.h"
#include "client/render/overlay.h"
#include "client/render/plot.h"
#include "client/render/png.h"
#include "core/common/status_macros.h"
#include "core/dicom/phantom_study.h"
#include "core/dicom/segmentation.h"
#include "core/dicom/series_reader.h"
#include "core/phantom/phantom.h"
#include "google/protobuf/util/json_util.h"
#include "miseg/v1/miseg.grpc.pb.h"

namespace miseg::cli {
namespace {

using client::Client;

// Marks a status as a usage error (exit 2) rather than refused input.
constexpr char kUsagePrefix[] = "usage: ";

absl::Status UsageError(const std::string& message) {
  return absl::InvalidArgumentError(kUsagePrefix + message);
}

bool IsUsageError(const absl::Status& status) {
  return absl::IsInvalidArgument(status) && absl::StartsWith(status.message(), kUsagePrefix);
}

struct Context {
  const Args& args;
  bool json = false;
  bool quiet = false;
  bool wide = false;         // --wide or -o wide: listings with full UIDs, nothing cut
  bool stdout_colour = false;
  client::ConnectionOptions connection;  // what client was connected with
  std::unique_ptr<Client> client;
};

void Print(const Context& c, const std::string& line) {
  if (c.quiet && !c.json) return;
  fprintf(stdout, "%s\n", line.c_str());
  // Line by line even into a pipe or file: someone may be following the output.
  fflush(stdout);
}

// The width of the terminal on stdout, read at each use so that output follows a resize;
// 0 when stdout is not a terminal.
int StdoutColumns() { return TerminalColumns(STDOUT_FILENO); }

void PrintLines(const Context& c, const std::vector<std::string>& lines) {
  for (const std::string& line : lines) Print(c, line);
}

// A listing as the user asked for it: UIDs shortened unless wide, and on a terminal the
// last column cut to the terminal's width.
void PrintTable(const Context& c, const Table& table) {
  TableOptions options;
  options.wide = c.wide;
  options.colour = c.stdout_colour;
  options.max_width = StdoutColumns();
  PrintLines(c, table.Render(options));
}

absl::StatusOr<v1::StudyRole> ParseRole(const std::string& role) {
  if (role == "labeled") return v1::STUDY_ROLE_LABELED;
  if (role == "unlabeled") return v1::STUDY_ROLE_UNLABELED;
  if (role == "validation") return v1::STUDY_ROLE_VALIDATION;
  return UsageError("--role is labeled, unlabeled or validation");
}

std::string RoleName(v1::StudyRole role) {
  switch (role) {
    case v1::STUDY_ROLE_LABELED: return "labeled";
    case v1::STUDY_ROLE_UNLABELED: return "unlabeled";
    case v1::STUDY_ROLE_VALIDATION: return "validation";
    default: return "-";
  }
}

std::string StateName(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_QUEUED: return "queued";
    case v1::JOB_STATE_RUNNING: return "running";
    case v1::JOB_STATE_SUCCEEDED: return "succeeded";
    case v1::JOB_STATE_FAILED: return "failed";
    case v1::JOB_STATE_CANCELLED: return "cancelled";
    default: return "-";
  }
}

Colour StateColour(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_RUNNING: return Colour::kCyan;
    case v1::JOB_STATE_SUCCEEDED: return Colour::kGreen;
    case v1::JOB_STATE_FAILED: return Colour::kRed;
    case v1::JOB_STATE_CANCELLED: return Colour::kYellow;
    default: return Colour::kNone;
  }
}

// The one form of a job's state for people, in every command: "job 7 queued",
// "job 7 running: resumed from step 5 on cpu", "job 7 cancelled before it started",
// "job 7 succeeded: model 3 (version 1)". A detail that only repeats the state is left out;
// one that starts with it replaces it.
std::string JobStateLine(int64_t job_id, v1::JobState state, const std::string& detail,
                         bool colour) {
  const std::string name = StateName(state);
  const std::string painted = Paint(name, StateColour(state), colour);
  if (detail.empty() || detail == name) return absl::StrCat("job ", job_id, " ", painted);
  if (absl::StartsWith(detail, name + " ")) {
    return absl::StrCat("job ", job_id, " ", painted, detail.substr(name.size()));
  }
  return absl::StrCat("job ", job_id, " ", painted, ": ", detail);
}

absl::StatusOr<int64_t> IdArgument(const Args& args, size_t index, const std::string& usage) {
  if (args.positional().size() <= index) return UsageError(usage);
  int64_t id;
  if (!absl::SimpleAtoi(args.positional()[index], &id) || id <= 0) {
    return UsageError(usage + " (ids are positive numbers)");
  }
  return id;
}

absl::StatusOr<std::string> WordArgument(const Args& args, size_t index, const std::string& usage) {
  if (args.positional().size() <= index) return UsageError(usage);
  return args.positional()[index];
}

template <typename T>
std::string JsonArray(const std::string& key, const std::vector<T>& items) {
  std::vector<std::string> parts;
  for (const T& item : items) parts.push_back(ToJson(item));
  return absl::StrCat("{\"", key, "\":[", absl::StrJoin(parts, ","), "]}");
}

// The name of class i + 1 (class 0 is the background) for people: its name in the dataset, or
// "class N" where the dataset names fewer.
std::string ClassName(const std::vector<std::string>& class_names, int i) {
  return static_cast<size_t>(i + 1) < class_names.size() ? class_names[i + 1]
                                                         : absl::StrCat("class ", i + 1);
}

std::string DiceText(const google::protobuf::RepeatedField<double>& dice,
                     const std::vector<std::string>& class_names) {
  std::vector<std::string> parts;
  for (int i = 0; i < dice.size(); ++i) {
    parts.push_back(absl::StrFormat("%s %.3f", ClassName(class_names, i), dice[i]));
  }
  return absl::StrJoin(parts, "  ");
}

// ------------------------------------------------------------------------------------------
// health, datasets

absl::Status Health(Context& c) {
  RETURN_IF_ERROR(c.args.Allow({}));
  RETURN_IF_ERROR(c.client->Health());
  Print(c, c.json ? "{\"status\":\"SERVING\"}" : "serving");
  return absl::OkStatus();
}

void PrintDataset(const Context& c, const v1::Dataset& d) {
  if (c.json) return Print(c, ToJson(d));
  Print(c, absl::StrCat("dataset     ", d.name()));
  Print(c, absl::StrCat("modality    ", d.modality()));
  Print(c, absl::StrCat("classes     ", absl::StrJoin(d.class_names(), ", ")));
  Print(c, absl::StrFormat("studies     %d labeled, %d unlabeled, %d validation",
                           d.labeled_studies(), d.unlabeled_studies(), d.validation_studies()));
  Print(c, absl::StrFormat("stored      %d instances, %s", d.instances(),
                           HumanBytes(static_cast<double>(d.stored_bytes()))));
  Print(c, absl::StrCat("active      ", d.active_model_id() ? absl::StrCat("model ", d.active_model_id()) : "no model yet"));
  Print(c, absl::StrCat("created     ", HumanAge(d.created_unix_ms())));
}

absl::Status Datasets(Context& c) {
  const std::string verb = c.args.positional().size() > 1 ? c.args.positional()[1] : "";
  if (verb == "create") {
    RETURN_IF_ERROR(c.args.Allow({"classes", "modality"}));
    ASSIGN_OR_RETURN(std::string name, WordArgument(c.args, 2, "miseg datasets create NAME --classes background,a,b"));
    if (!c.args.Has("classes")) return UsageError("miseg datasets create NAME --classes background,a,b");
    std::vector<std::string> classes = absl::StrSplit(c.args.Get("classes"), ',');
    ASSIGN_OR_RETURN(v1::Dataset d, c.client->CreateDataset(name, classes, c.args.Get("modality", "MR")));
    if (c.json) return Print(c, ToJson(d)), absl::OkStatus();
    Print(c, absl::StrFormat("created dataset %s (%s, %d classes)", d.name(), d.modality(), d.class_names_size()));
    return absl::OkStatus();
  }
  if (verb == "list") {
    RETURN_IF_ERROR(c.args.Allow({"wide"}));
    ASSIGN_OR_RETURN(std::vector<v1::Dataset> list, c.client->ListDatasets());
    if (c.json) return Print(c, JsonArray("datasets", list)), absl::OkStatus();
    Table table({{"NAME"}, {"MOD"}, {"LABELED", true}, {"UNLABELED", true}, {"VALID", true},
                 {"INSTANCES", true}, {"SIZE", true}, {"MODEL", true}});
    for (const v1::Dataset& d : list) {
      table.AddRow({{d.name()}, {d.modality()}, {absl::StrCat(d.labeled_studies())},
                    {absl::StrCat(d.unlabeled_studies())}, {absl::StrCat(d.validation_studies())},
                    {absl::StrCat(d.instances())}, {HumanBytes(static_cast<double>(d.stored_bytes()))},
                    {d.active_model_id() ? absl::StrCat(d.active_model_id()) : "-"}});
    }
    PrintTable(c, table);
    return absl::OkStatus();
  }
  if (verb == "show") {
    RETURN_IF_ERROR(c.args.Allow({}));
    ASSIGN_OR_RETURN(std::string name, WordArgument(c.args, 2, "miseg datasets show NAME"));
    ASSIGN_OR_RETURN(v1::Dataset d, c.client->GetDataset(name));
    PrintDataset(c, d);
    return absl::OkStatus();
  }
  if (verb == "delete") {
    RETURN_IF_ERROR(c.args.Allow({"force"}));
    ASSIGN_OR_RETURN(std::string name, WordArgument(c.args, 2, "miseg datasets delete NAME [--force]"));
    ASSIGN_OR_RETURN(v1::DeleteDatasetResponse r, c.client->DeleteDataset(name, c.args.Has("force")));
    if (c.json) return Print(c, ToJson(r)), absl::OkStatus();
    Print(c, absl::StrCat("deleted dataset ", name, ": ", r.deleted_studies(), " studies, ",
                          r.deleted_jobs(), " jobs (", r.cancelled_jobs(), " cancelled), ",
                          r.deleted_models(), " models; freed ", r.freed_objects(), " objects, ",
                          HumanBytes(static_cast<double>(r.freed_bytes()))));
    return absl::OkStatus();
  }
  return UsageError("miseg datasets create|list|show|delete");
}

// ------------------------------------------------------------------------------------------
// upload, studies

// One Upload per study, so one bad study does not hold back the others; what is not a
// study is sent last, so the server says why it refuses it.
using UploadBatch = std::pair<std::string, std::vector<DicomBuffer>>;

std::vector<UploadBatch> UploadBatches(LocalFiles& local) {
  std::vector<UploadBatch> batches;
  for (LocalStudy& s : local.studies) {
    batches.emplace_back(s.series_instance_uid, std::move(s.files));
  }
  if (!local.others.empty()) batches.emplace_back("", std::move(local.others));
  return batches;
}

int64_t BatchBytes(const std::vector<DicomBuffer>& batch) {
  int64_t bytes = 0;
  for (const DicomBuffer& f : batch) bytes += static_cast<int64_t>(f.bytes.size());
  return bytes;
}

void ShowUploadProgress(ProgressBar& bar, int64_t sent, int64_t total) {
  const double elapsed = bar.ElapsedSeconds();
  const double rate = elapsed > 0.5 ? static_cast<double>(sent) / elapsed : 0;
  bar.Update(
      sent, total,
      absl::StrCat(HumanBytes(static_cast<double>(sent)), " / ",
                   HumanBytes(static_cast<double>(total))),
      {{rate > 0 ? absl::StrCat(HumanBytes(rate), "/s") : "", /*keep=*/1},
       {rate > 0 && sent < total ? absl::StrCat("ETA ", HumanDuration((total - sent) / rate)) : "",
        /*keep=*/2}});
}

// What an upload tells people as its studies are answered, and the totals at the end (or,
// with --json, all the answers at the end).
class UploadReport {
 public:
  UploadReport(const Context& c, const std::vector<UploadBatch>& batches) : c_(c) {
    // The series of this upload, shortened so that they stay unique among themselves.
    std::vector<std::string> uids;
    for (const auto& batch : batches) {
      if (!batch.first.empty()) uids.push_back(batch.first);
    }
    const std::vector<std::string> shorts = c.wide ? uids : ShortenUnique(uids);
    for (size_t i = 0; i < uids.size(); ++i) short_uid_[uids[i]] = shorts[i];
  }

  // The server's answer for the batch of `series` ("" for the files that are no study).
  void Add(const std::string& series, v1::UploadResponse response) {
    stored_ += response.stored_instances();
    duplicate_ += response.duplicate_instances();
    refused_ += response.refused_instances();
    if (!c_.json) PrintBatch(series, response);
    responses_.push_back(std::move(response));
  }

  void PrintSummary(int64_t bytes) const {
    if (c_.json) return Print(c_, JsonArray("uploads", responses_));
    Print(c_, absl::StrFormat("%d stored, %d duplicate, %d refused instances (%s)", stored_,
                              duplicate_, refused_, HumanBytes(static_cast<double>(bytes))));
  }

  bool refused_any() const { return refused_ > 0; }

 private:
  std::string UidForPeople(const std::string& uid) const {
    auto it = short_uid_.find(uid);
    return it == short_uid_.end() || c_.wide ? uid : it->second;
  }

  void PrintBatch(const std::string& series, const v1::UploadResponse& response) const {
    for (const v1::Study& s : response.stored()) {
      Print(c_,
            absl::StrFormat("stored     %s  %s, %d slices%s", UidForPeople(s.series_instance_uid()),
                            RoleName(s.role()), s.slices(),
                            s.segmentation_sop_instance_uid().empty() ? "" : " + SEG"));
    }
    if (response.stored_size() == 0 && response.duplicate_instances() > 0 &&
        response.refused_instances() == 0) {
      Print(c_, absl::StrCat("duplicate  ", series.empty() ? "files" : UidForPeople(series),
                             "  already stored"));
    }
    std::map<std::string, int> reasons;  // one line per distinct reason
    for (const v1::InstanceResult& r : response.results()) {
      if (r.outcome() == v1::INSTANCE_OUTCOME_REFUSED) {
        // The server's reason names the file where it matters.
        ++reasons[r.reason()];
      }
    }
    for (const auto& [reason, count] : reasons) {
      fprintf(stderr, "refused    %d file%s: %s\n", count, count == 1 ? "" : "s", reason.c_str());
    }
  }

  const Context& c_;
  std::map<std::string, std::string> short_uid_;
  int64_t stored_ = 0, duplicate_ = 0, refused_ = 0;
  std::vector<v1::UploadResponse> responses_;
};

absl::Status Upload(Context& c, bool* refused_any) {
  RETURN_IF_ERROR(c.args.Allow({"role", "wide"}));
  if (c.args.positional().size() < 3 || !c.args.Has("role")) {
    return UsageError("miseg upload DATASET FILE_OR_FOLDER... --role labeled|unlabeled|validation");
  }
  ASSIGN_OR_RETURN(v1::StudyRole role, ParseRole(c.args.Get("role")));
  const std::string dataset = c.args.positional()[1];
  std::vector<std::string> paths(c.args.positional().begin() + 2, c.args.positional().end());
  ASSIGN_OR_RETURN(std::vector<DicomBuffer> files, LoadPaths(paths));
  if (files.empty()) return absl::InvalidArgumentError("no files in the given paths");
  LocalFiles local = GroupIntoStudies(std::move(files));
  std::vector<UploadBatch> batches = UploadBatches(local);
  UploadReport report(c, batches);
  ProgressBar bar("upload", !c.json && !c.quiet);
  int64_t sent_before = 0;
  for (auto& [series, batch] : batches) {
    const int64_t batch_bytes = BatchBytes(batch);
    auto progress = [&](int64_t done, int64_t) {
      ShowUploadProgress(bar, sent_before + done, local.bytes);
    };
    ASSIGN_OR_RETURN(v1::UploadResponse response, c.client->Upload(dataset, role, batch, progress));
    sent_before += batch_bytes;
    if (!c.json) bar.Clear();
    report.Add(series, std::move(response));
  }
  // The bar as it ended stays above the summary.
  ShowUploadProgress(bar, sent_before, local.bytes);
  bar.Finish();
  *refused_any = report.refused_any();
  report.PrintSummary(local.bytes);
  return absl::OkStatus();
}

// Active learning: which unlabeled studies to label next, by the active model.
absl::Status SuggestStudies(Context& c) {
  const std::string usage = "miseg studies suggest DATASET [--count K]";
  RETURN_IF_ERROR(c.args.Allow({"count", "wide"}));
  if (c.args.positional().size() != 3) return UsageError(usage);
  ASSIGN_OR_RETURN(std::optional<int64_t> count, c.args.GetInt("count"));
  if (count.has_value() && (*count < 1 || *count > 10000)) {
    return UsageError(usage + " (K in 1..10000)");
  }
  ASSIGN_OR_RETURN(v1::SuggestStudiesResponse r,
                   c.client->SuggestStudies(c.args.positional()[2], static_cast<int>(count.value_or(10))));
  if (c.json) return Print(c, ToJson(r)), absl::OkStatus();
  Table table({{"RANK", true}, {"SERIES", false, /*uid=*/true}, {"SCORE", true},
               {"DISAGREEMENT", true}, {"MI", true}, {"ENTROPY", true}, {"DESCRIPTION"}});
  int rank = 0;
  for (const v1::Study& s : r.studies()) {
    const v1::LabelingPriority& p = s.priority();
    table.AddRow({{absl::StrCat(++rank)}, {s.series_instance_uid()},
                  {absl::StrFormat("%.3f", p.score())}, {absl::StrFormat("%.4f", p.disagreement())},
                  {absl::StrFormat("%.4f", p.mutual_information())},
                  {absl::StrFormat("%.4f", p.entropy())},
                  {s.series_description().empty() ? "-" : s.series_description()}});
  }
  PrintTable(c, table);
  Print(c, absl::StrFormat("%d unlabeled studies scored by model %d; label the first ones next",
                           r.scored_studies(), r.model_id()));
  return absl::OkStatus();
}

absl::Status Studies(Context& c) {
  const std::string verb = c.args.positional().size() > 1 ? c.args.positional()[1] : "";
  if (verb == "list") {
    RETURN_IF_ERROR(c.args.Allow({"role", "wide"}));
    ASSIGN_OR_RETURN(std::string dataset, WordArgument(c.args, 2, "miseg studies list DATASET [--role R]"));
    v1::StudyRole role = v1::STUDY_ROLE_UNSPECIFIED;
    if (c.args.Has("role")) {
      ASSIGN_OR_RETURN(role, ParseRole(c.args.Get("role")));
    }
    ASSIGN_OR_RETURN(std::vector<v1::Study> list, c.client->ListStudies(dataset, role));
    if (c.json) return Print(c, JsonArray("studies", list)), absl::OkStatus();
    // The description last: on a terminal the last column is the one cut to fit.
    Table table({{"SERIES", false, /*uid=*/true}, {"ROLE"}, {"MOD"}, {"SLICES", true},
                 {"MATRIX", true}, {"SEG"}, {"PRIORITY", true}, {"DESCRIPTION"}});
    // A study of lossy-compressed images is marked "MR*" (a column of its own would not fit
    // 80 columns); the note under the table says what the mark means.
    bool any_lossy = false;
    for (const v1::Study& s : list) {
      any_lossy = any_lossy || s.lossy_compressed();
      table.AddRow({{s.series_instance_uid()}, {RoleName(s.role())},
                    {s.lossy_compressed() ? s.modality() + "*" : s.modality()},
                    {absl::StrCat(s.slices())}, {absl::StrCat(s.rows(), "x", s.columns())},
                    {s.segmentation_sop_instance_uid().empty() ? "-" : "yes"},
                    {s.has_priority() ? absl::StrFormat("%.3f", s.priority().score()) : "-"},
                    {s.series_description().empty() ? "-" : s.series_description()}});
    }
    PrintTable(c, table);
    if (any_lossy) {
      Print(c, "* lossy-compressed images: a model may behave differently on them");
    }
    return absl::OkStatus();
  }
  if (verb == "suggest") return SuggestStudies(c);
  if (verb == "delete") {
    RETURN_IF_ERROR(c.args.Allow({}));
    if (c.args.positional().size() != 4) return UsageError("miseg studies delete DATASET SERIES_UID");
    ASSIGN_OR_RETURN(int64_t deleted, c.client->DeleteStudy(c.args.positional()[2], c.args.positional()[3]));
    Print(c, c.json ? absl::StrCat("{\"deletedInstances\":\"", deleted, "\"}")
                    : absl::StrCat("deleted ", deleted, " instances"));
    return absl::OkStatus();
  }
  return UsageError("miseg studies list|suggest|delete");
}

// ------------------------------------------------------------------------------------------
// train

// --flag -> field of Hyperparameters, for the flags and the help text.
struct HyperparameterFlag {
  const char* flag;
  const char* help;
  std::function<absl::Status(const Args&, v1::Hyperparameters*)> apply;
};

template <typename Setter>
HyperparameterFlag IntFlag(const char* flag, const char* help, Setter set) {
  return {flag, help, [flag, set](const Args& a, v1::Hyperparameters* h) -> absl::Status {
            ASSIGN_OR_RETURN(std::optional<int64_t> v, a.GetInt(flag));
            if (v) set(h, *v);
            return absl::OkStatus();
          }};
}
template <typename Setter>
HyperparameterFlag DoubleFlag(const char* flag, const char* help, Setter set) {
  return {flag, help, [flag, set](const Args& a, v1::Hyperparameters* h) -> absl::Status {
            ASSIGN_OR_RETURN(std::optional<double> v, a.GetDouble(flag));
            if (v) set(h, *v);
            return absl::OkStatus();
          }};
}

// A job's ranks are devices; checked here so a typo is a usage error, not a job that waits
// for devices no cluster has.
constexpr int64_t kMaxRanks = 1024;

absl::Status RanksUsageError() {
  return UsageError(absl::StrCat("--ranks is the number of devices to train on at once, 1 to ",
                                 kMaxRanks));
}

const std::vector<HyperparameterFlag>& HyperparameterFlags() {
  using H = v1::Hyperparameters;
  static const std::vector<HyperparameterFlag> flags = {
      IntFlag("steps", "iterations", [](H* h, int64_t v) { h->set_total_steps(v); }),
      DoubleFlag("w-mi", "weight of the MI term", [](H* h, double v) { h->set_w_mi(v); }),
      DoubleFlag("w-cons", "weight of the consistency term", [](H* h, double v) { h->set_w_cons(v); }),
      DoubleFlag("w-entropy", "weight of entropy minimisation (--objective entropy)",
                 [](H* h, double v) { h->set_w_entropy(v); }),
      DoubleFlag("ema-decay", "mean teacher's EMA decay (--objective mean_teacher)",
                 [](H* h, double v) { h->set_ema_decay(v); }),
      DoubleFlag("dice-weight", "soft Dice beside cross-entropy", [](H* h, double v) { h->set_dice_weight(v); }),
      IntFlag("rampup-steps", "ramp-up of the unsupervised weight", [](H* h, int64_t v) { h->set_rampup_steps(v); }),
      IntFlag("mi-window", "MI window d", [](H* h, int64_t v) { h->set_mi_window(v); }),
      DoubleFlag("mi-lambda", "MI lambda", [](H* h, double v) { h->set_mi_lambda(v); }),
      IntFlag("warmup-steps", "learning-rate warm-up", [](H* h, int64_t v) { h->set_warmup_steps(v); }),
      DoubleFlag("lr", "learning rate", [](H* h, double v) { h->set_learning_rate(v); }),
      DoubleFlag("min-lr", "final learning rate", [](H* h, double v) { h->set_min_learning_rate(v); }),
      DoubleFlag("weight-decay", "Adam weight decay", [](H* h, double v) { h->set_weight_decay(v); }),
      IntFlag("labeled-batch", "labeled slices per step", [](H* h, int64_t v) { h->set_labeled_batch(v); }),
      IntFlag("unlabeled-batch", "unlabeled slices per step", [](H* h, int64_t v) { h->set_unlabeled_batch(v); }),
      IntFlag("crop-size", "random training crop (0: none)", [](H* h, int64_t v) { h->set_crop_size(v); }),
      IntFlag("seed", "random seed", [](H* h, int64_t v) { h->set_seed(static_cast<uint64_t>(v)); }),
      IntFlag("grid-size", "model grid in pixels", [](H* h, int64_t v) { h->set_grid_size(v); }),
      IntFlag("validate-every", "validation interval in steps", [](H* h, int64_t v) { h->set_validate_every(v); }),
      DoubleFlag("validation-fraction", "labeled studies held out without validation studies", [](H* h, double v) { h->set_validation_fraction(v); }),
      IntFlag("checkpoint-every", "checkpoint interval in steps", [](H* h, int64_t v) { h->set_checkpoint_every(v); }),
      {"ranks", "devices that train at once (data parallel)",
       [](const Args& a, H* h) -> absl::Status {
         ASSIGN_OR_RETURN(std::optional<int64_t> v, a.GetInt("ranks"));
         if (v && (*v < 1 || *v > kMaxRanks)) return RanksUsageError();
         if (v) h->set_ranks(static_cast<int32_t>(*v));
         return absl::OkStatus();
       }},
  };
  return flags;
}

absl::StatusOr<v1::Hyperparameters> HyperparametersFromArgs(const Args& args) {
  v1::Hyperparameters h;
  if (args.Has("config")) {
    FILE* f = fopen(args.Get("config").c_str(), "rb");
    if (!f) return UsageError(absl::StrCat("cannot read --config ", args.Get("config")));
    std::string text;
    char buffer[4096];
    size_t n;
    while ((n = fread(buffer, 1, sizeof(buffer), f)) > 0) text.append(buffer, n);
    fclose(f);
    absl::StatusOr<v1::Hyperparameters> parsed = ParseHyperparametersJson(text);
    if (!parsed.ok()) {
      return UsageError(absl::StrCat("--config ", args.Get("config"), ": ", parsed.status().message()));
    }
    h = *std::move(parsed);
  }
  for (const HyperparameterFlag& flag : HyperparameterFlags()) RETURN_IF_ERROR(flag.apply(args, &h));
  if (h.has_ranks() && (h.ranks() < 1 || h.ranks() > kMaxRanks)) return RanksUsageError();
  if (args.Has("consistency")) {
    const std::string kind = args.Get("consistency");
    if (kind == "mse") h.set_consistency(v1::CONSISTENCY_LOSS_MSE);
    else if (kind == "kl") h.set_consistency(v1::CONSISTENCY_LOSS_KL);
    else return UsageError("--consistency is mse or kl");
  }
  if (args.Has("objective")) {
    const std::string name = args.Get("objective");
    v1::Objective objective;
    if (!v1::Objective_Parse("OBJECTIVE_" + absl::AsciiStrToUpper(name), &objective) ||
        objective == v1::OBJECTIVE_UNSPECIFIED) {
      return UsageError("--objective is mi, labeled_only, entropy, mean_teacher, "
                        "consistency_only or mi_only");
    }
    h.set_objective(objective);
  }
  if (args.Has("widths")) {
    h.clear_widths();
    for (absl::string_view w : absl::StrSplit(args.Get("widths"), ',')) {
      int64_t width;
      if (!absl::SimpleAtoi(w, &width)) return UsageError("--widths takes numbers: 16,32,64");
      h.add_widths(width);
    }
  }
  return h;
}

// "mean_teacher" for OBJECTIVE_MEAN_TEACHER: the --objective spelling.
std::string ObjectiveText(v1::Objective objective) {
  if (objective == v1::OBJECTIVE_UNSPECIFIED) objective = v1::OBJECTIVE_MI;
  return absl::AsciiStrToLower(absl::StripPrefix(v1::Objective_Name(objective), "OBJECTIVE_"));
}

// Where a running job's ranks train, for `train list`: "0:gpu-box/cuda:0 1:node-2/cpu".
std::string PlacementText(const v1::Job& j) {
  if (j.placement().empty()) return "-";
  std::vector<std::string> parts;
  for (const v1::RankPlacement& p : j.placement()) {
    parts.push_back(absl::StrCat(p.rank(), ":", p.worker_name().empty() ? p.worker() : p.worker_name(),
                                 "/", p.device()));
  }
  return absl::StrJoin(parts, " ");
}

void PrintJob(const Context& c, const v1::Job& j) {
  if (c.json) return Print(c, ToJson(j));
  const v1::Hyperparameters& h = j.hyperparameters();
  Print(c, absl::StrCat("job         ", j.id(), " on dataset ", j.dataset()));
  Print(c, absl::StrCat("state       ", Paint(StateName(j.state()), StateColour(j.state()), c.stdout_colour),
                        j.error().empty() ? "" : ": " + j.error()));
  Print(c, absl::StrFormat("progress    step %d of %d%s", j.step(), j.total_steps(),
                           j.resumes() ? absl::StrCat(" (resumed ", j.resumes(), "x)") : ""));
  Print(c, absl::StrFormat("studies     %d labeled, %d unlabeled, %d validation",
                           j.labeled_studies(), j.unlabeled_studies(), j.validation_studies()));
  Print(c, absl::StrFormat("objective   %s: w_mi %g, w_cons %g, mi window %d, lambda %g, ramp-up %d, %s",
                           ObjectiveText(h.objective()), h.w_mi(), h.w_cons(), h.mi_window(),
                           h.mi_lambda(), h.rampup_steps(),
                           h.consistency() == v1::CONSISTENCY_LOSS_KL ? "KL" : "MSE"));
  Print(c, absl::StrFormat("schedule    lr %g -> %g, warm-up %d, batches %d + %d, seed %d%s",
                           h.learning_rate(), h.min_learning_rate(), h.warmup_steps(),
                           h.labeled_batch(), h.unlabeled_batch(), h.seed(),
                           h.ranks() > 1 ? absl::StrCat(", ", h.ranks(), " ranks") : ""));
  if (j.placement().empty()) {
    Print(c, absl::StrCat("device      ", j.device().empty() ? "-" : j.device()));
  }
  // One line per rank of a running job: which worker and device it trains on.
  for (int i = 0; i < j.placement_size(); ++i) {
    const v1::RankPlacement& p = j.placement(i);
    Print(c, absl::StrCat(i == 0 ? "placement   " : "            ", "rank ", p.rank(), " on ",
                          p.worker_name().empty() ? p.worker() : p.worker_name(),
                          p.worker_name().empty() ? "" : absl::StrCat(" (worker ", p.worker(), ")"),
                          ", ", p.device()));
  }
  Print(c, absl::StrCat("model       ", j.model_id() ? absl::StrCat(j.model_id()) : "-"));
  Print(c, absl::StrCat("created     ", HumanAge(j.created_unix_ms())));
  Print(c, absl::StrCat("finished    ", HumanAge(j.finished_unix_ms())));
}

// Prints a line made of fields for people; on a terminal wrapped to its width between
// fields (continuation lines indented), so that nothing wraps by itself under the bar.
void PrintFields(const Context& c, const std::vector<std::string>& fields,
                 absl::string_view separator = "  ") {
  const int columns = StdoutColumns();
  if (columns <= 0) return Print(c, absl::StrJoin(fields, separator));
  PrintLines(c, WrapFields(fields, columns, /*indent=*/4, separator));
}

void PrintJobState(const Context& c, int64_t job_id, v1::JobState state, const std::string& detail) {
  const int columns = StdoutColumns();
  if (columns <= 0) return Print(c, JobStateLine(job_id, state, detail, c.stdout_colour));
  // Wrapped between words as plain text, then the state word coloured where it stands.
  const std::vector<std::string> words =
      absl::StrSplit(JobStateLine(job_id, state, detail, false), ' ', absl::SkipEmpty());
  std::vector<std::string> lines = WrapFields(words, columns, /*indent=*/4, " ");
  const std::string name = StateName(state);
  const std::string head = absl::StrCat("job ", job_id, " ", name);
  if (c.stdout_colour && absl::StartsWith(lines[0], head)) {
    lines[0] = absl::StrCat("job ", job_id, " ", Paint(name, StateColour(state), true),
                            lines[0].substr(head.size()));
  }
  PrintLines(c, lines);
}

// The class names of a dataset, empty where it cannot be read (the names only label output).
std::vector<std::string> DatasetClassNames(Context& c, const std::string& dataset) {
  std::vector<std::string> class_names;
  if (absl::StatusOr<v1::Dataset> d = c.client->GetDataset(dataset); d.ok()) {
    class_names.assign(d->class_names().begin(), d->class_names().end());
  }
  return class_names;
}

// What `WatchJob` shows of each event of a job's stream, and the state it keeps in between:
// the bar, the rate over the steps seen live (not the replayed history), the last logged step.
class JobWatch {
 public:
  JobWatch(Context& c, int64_t job_id, v1::JobState state,
           std::optional<v1::JobState> already_shown, std::vector<std::string> class_names)
      : c_(c),
        job_id_(job_id),
        class_names_(std::move(class_names)),
        already_shown_(already_shown),
        final_state_(state),
        bar_(absl::StrCat("job ", job_id), !c.json && !c.quiet) {}

  void OnEvent(const v1::JobEvent& e) {
    // The exit code follows the last state event, with --json as well.
    if (e.has_state()) final_state_ = e.state().state();
    if (c_.json) {
      Print(c_, ToJson(e));
    } else if (e.has_step()) {
      OnStep(e);
    } else if (e.has_validation()) {
      OnValidation(e.validation());
    } else if (e.has_state()) {
      OnState(e.state());
    }
  }

  void OnReconnect() {
    bar_.Clear();
    if (!c_.json) fprintf(stderr, "server unavailable; reconnecting...\n");
  }

  ProgressBar& bar() { return bar_; }
  v1::JobState final_state() const { return final_state_; }

 private:
  // Steps per second since the first live step; the server's figure until then.
  double Rate(const v1::JobEvent& e) {
    const v1::StepEvent& s = e.step();
    const auto now = std::chrono::steady_clock::now();
    // Events stamped more than 2 s ago are history being replayed.
    const bool live = std::abs(static_cast<double>(e.unix_ms()) -
                               std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count()) < 2000;
    if (live && rate_start_step_ < 0) {
      rate_start_ = now;
      rate_start_step_ = s.step();
    }
    const double elapsed = std::chrono::duration<double>(now - rate_start_).count();
    return rate_start_step_ >= 0 && elapsed > 0.5 ? (s.step() - rate_start_step_) / elapsed
                                                  : s.steps_per_second();
  }

  void OnStep(const v1::JobEvent& e) {
    const v1::StepEvent& s = e.step();
    const double rate = Rate(e);
    if (bar_.enabled()) {
      // What gives way on a narrow terminal: the loss terms (the MI term first), then the
      // rate, then the ETA.
      bar_.Update(
          s.step(), s.total_steps(), absl::StrFormat("step %d/%d", s.step(), s.total_steps()),
          {{absl::StrFormat("%.2f steps/s", rate), /*keep=*/5},
           {s.step() < s.total_steps()
                ? absl::StrCat("ETA ",
                               HumanDuration(rate > 0 ? (s.total_steps() - s.step()) / rate : -1))
                : "",
            /*keep=*/6},
           {absl::StrFormat("loss %.4f", s.loss()), /*keep=*/4},
           {absl::StrFormat("sup %.4f", s.supervised()), /*keep=*/3},
           {absl::StrFormat("cons %.4f", s.consistency()), /*keep=*/2},
           {absl::StrFormat("mi %.4f", s.mutual_information()), /*keep=*/1}});
    } else if (!c_.quiet &&
               (s.step() - last_logged_step_ >= std::max<int64_t>(1, s.total_steps() / 20) ||
                s.step() == s.total_steps())) {
      last_logged_step_ = s.step();
      Print(c_, absl::StrFormat("step %d/%d  %.2f steps/s  loss %.4f  sup %.4f  cons %.4f  mi %.4f",
                                s.step(), s.total_steps(), rate, s.loss(), s.supervised(),
                                s.consistency(), s.mutual_information()));
    }
  }

  void OnValidation(const v1::ValidationEvent& v) {
    bar_.Clear();
    std::vector<std::string> fields = {absl::StrCat("step ", v.step()), "validation Dice"};
    const auto& dice = v.dice_per_class();
    for (int i = 0; i < dice.size(); ++i) {
      fields.push_back(absl::StrFormat("%s %.3f", ClassName(class_names_, i), dice[i]));
    }
    fields.push_back(absl::StrFormat("(mean %.3f)", v.mean_dice()));
    PrintFields(c_, fields);
  }

  void OnState(const v1::StateEvent& e) {
    const v1::JobState state = e.state();
    const std::string& detail = e.message();
    const bool repeat = already_shown_ == state && (detail.empty() || detail == StateName(state));
    already_shown_.reset();
    if (repeat) return;
    // The bar stays above the final state, as it ended; otherwise it is redrawn below.
    if (client::IsTerminal(state)) {
      bar_.Finish();
    } else {
      bar_.Clear();
    }
    PrintJobState(c_, job_id_, state, detail);
    if (detail.find("resumed from step") != std::string::npos) {
      rate_start_step_ = -1;  // the rate restarts with the resumed run
    }
  }

  Context& c_;
  const int64_t job_id_;
  const std::vector<std::string> class_names_;
  std::optional<v1::JobState> already_shown_;  // not repeated when the stream opens with it
  v1::JobState final_state_;
  ProgressBar bar_;
  std::chrono::steady_clock::time_point rate_start_ = std::chrono::steady_clock::now();
  int64_t rate_start_step_ = -1;
  int64_t last_logged_step_ = 0;
};

// Follows a job on the terminal (or as JSON lines). Returns the job's final state.
// already_shown: a state the caller has just printed, not repeated when the stream opens
// with it.
absl::StatusOr<v1::JobState> WatchJob(Context& c, int64_t job_id, int64_t from_step,
                                      std::optional<v1::JobState> already_shown = std::nullopt) {
  ASSIGN_OR_RETURN(v1::Job job, c.client->GetJob(job_id));
  JobWatch watch(c, job_id, job.state(), already_shown, DatasetClassNames(c, job.dataset()));
  client::WatchOptions options;
  options.from_step = from_step;
  options.reconnect_for = std::chrono::seconds(600);
  options.on_reconnect = [&](const absl::Status& why) { watch.OnReconnect(); };
  absl::Status watched =
      c.client->WatchJob(job_id, options, [&](const v1::JobEvent& e) { watch.OnEvent(e); });
  watch.bar().Finish();
  RETURN_IF_ERROR(watched);
  return watch.final_state();
}

absl::Status WriteTrainingPlot(Context& c, int64_t job_id, const std::string& path) {
  ASSIGN_OR_RETURN(v1::Job job, c.client->GetJob(job_id));
  const std::vector<std::string> class_names = DatasetClassNames(c, job.dataset());
  render::Series total{"total", {}}, supervised{"supervised", {}},
      consistency{"consistency", {}}, mi{"mutual information", {}};
  std::vector<render::Series> dice;
  client::WatchOptions options;
  options.follow = false;
  RETURN_IF_ERROR(c.client->WatchJob(job_id, options, [&](const v1::JobEvent& e) {
    if (e.has_step()) {
      const double step = static_cast<double>(e.step().step());
      total.points.emplace_back(step, e.step().loss());
      supervised.points.emplace_back(step, e.step().supervised());
      consistency.points.emplace_back(step, e.step().consistency());
      mi.points.emplace_back(step, e.step().mutual_information());
    } else if (e.has_validation()) {
      const auto& values = e.validation().dice_per_class();
      for (int i = 0; i < values.size(); ++i) {
        if (dice.size() <= static_cast<size_t>(i)) {
          dice.push_back({ClassName(class_names, i), {}});
        }
        dice[i].points.emplace_back(static_cast<double>(e.validation().step()), values[i]);
      }
    }
  }));
  render::PlotSpec spec;
  spec.title = absl::StrCat("job ", job_id, " on ", job.dataset(), " (", StateName(job.state()), ")");
  render::PlotPanel losses;
  losses.title = "loss terms";
  losses.y_label = "loss";
  losses.series = {total, supervised, consistency, mi};
  render::PlotPanel validation;
  validation.title = "validation Dice";
  validation.y_label = "Dice";
  validation.series = dice;
  validation.y_range = std::make_pair(0.0, 1.0);
  spec.panels = {losses, validation};
  ASSIGN_OR_RETURN(render::RgbImage image, render::RenderPlot(spec));
  ASSIGN_OR_RETURN(std::string png, render::EncodePng(image));
  return WriteOutputFile(path, png);
}

absl::Status TrainStart(Context& c, bool* job_failed) {
  std::set<std::string> allowed = {"config", "consistency", "objective", "widths", "watch"};
  for (const HyperparameterFlag& f : HyperparameterFlags()) allowed.insert(f.flag);
  RETURN_IF_ERROR(c.args.Allow(allowed));
  ASSIGN_OR_RETURN(
      std::string dataset,
      WordArgument(c.args, 2, "miseg train start DATASET [--config FILE.json] [--steps N] ..."));
  ASSIGN_OR_RETURN(v1::Hyperparameters h, HyperparametersFromArgs(c.args));
  ASSIGN_OR_RETURN(v1::Job job, c.client->StartJob(dataset, h));
  if (c.json) {
    Print(c, ToJson(job));
  } else {
    PrintJobState(c, job.id(), job.state(), absl::StrCat(job.total_steps(), " steps on ", dataset));
  }
  if (c.args.Has("watch")) {
    ASSIGN_OR_RETURN(v1::JobState state, WatchJob(c, job.id(), 0, job.state()));
    *job_failed = state != v1::JOB_STATE_SUCCEEDED;
  }
  return absl::OkStatus();
}

absl::Status TrainList(Context& c) {
  RETURN_IF_ERROR(c.args.Allow({"wide"}));
  const std::string dataset = c.args.positional().size() > 2 ? c.args.positional()[2] : "";
  ASSIGN_OR_RETURN(std::vector<v1::Job> jobs, c.client->ListJobs(dataset));
  if (c.json) return Print(c, JsonArray("jobs", jobs)), absl::OkStatus();
  // Where ranks train, only while a listed job runs (the column would otherwise be all
  // dashes); last, as on a terminal the last column is the one cut to fit.
  const bool placement = std::any_of(jobs.begin(), jobs.end(),
                                     [](const v1::Job& j) { return !j.placement().empty(); });
  std::vector<TableColumn> columns = {{"ID", true},   {"DATASET"},     {"STATE"},
                                      {"STEP", true}, {"MODEL", true}, {"CREATED"}};
  if (placement) columns.push_back({"PLACEMENT"});
  Table table(columns);
  for (const v1::Job& j : jobs) {
    std::vector<TableCell> row = {{absl::StrCat(j.id())},
                                  {j.dataset()},
                                  {StateName(j.state()), StateColour(j.state())},
                                  {absl::StrCat(j.step(), "/", j.total_steps())},
                                  {j.model_id() ? absl::StrCat(j.model_id()) : "-"},
                                  {HumanAge(j.created_unix_ms())}};
    if (placement) row.push_back({PlacementText(j)});
    table.AddRow(std::move(row));
  }
  PrintTable(c, table);
  return absl::OkStatus();
}

absl::Status TrainShow(Context& c) {
  RETURN_IF_ERROR(c.args.Allow({"plot"}));
  ASSIGN_OR_RETURN(int64_t id, IdArgument(c.args, 2, "miseg train show JOB [--plot FILE.png]"));
  ASSIGN_OR_RETURN(v1::Job job, c.client->GetJob(id));
  PrintJob(c, job);
  if (c.args.Has("plot")) {
    RETURN_IF_ERROR(WriteTrainingPlot(c, id, c.args.Get("plot")));
    if (!c.json) Print(c, absl::StrCat("plot        ", c.args.Get("plot")));
  }
  return absl::OkStatus();
}

absl::Status TrainCancel(Context& c) {
  RETURN_IF_ERROR(c.args.Allow({}));
  ASSIGN_OR_RETURN(int64_t id, IdArgument(c.args, 2, "miseg train cancel JOB"));
  ASSIGN_OR_RETURN(v1::Job job, c.client->CancelJob(id));
  if (c.json) return Print(c, ToJson(job)), absl::OkStatus();
  if (job.state() == v1::JOB_STATE_CANCELLED) {
    PrintJobState(c, id, job.state(), "");
  } else {
    Print(c, absl::StrCat("job ", id, " cancelling: stops after its current step"));
  }
  return absl::OkStatus();
}

absl::Status TrainWatch(Context& c, bool* job_failed) {
  RETURN_IF_ERROR(c.args.Allow({"from-step"}));
  ASSIGN_OR_RETURN(int64_t id, IdArgument(c.args, 2, "miseg train watch JOB [--from-step N]"));
  ASSIGN_OR_RETURN(std::optional<int64_t> from, c.args.GetInt("from-step"));
  ASSIGN_OR_RETURN(v1::JobState state, WatchJob(c, id, from.value_or(0)));
  *job_failed = state != v1::JOB_STATE_SUCCEEDED;
  return absl::OkStatus();
}

absl::Status Train(Context& c, bool* job_failed) {
  const std::string verb = c.args.positional().size() > 1 ? c.args.positional()[1] : "";
  if (verb == "start") return TrainStart(c, job_failed);
  if (verb == "list") return TrainList(c);
  if (verb == "show") return TrainShow(c);
  if (verb == "cancel") return TrainCancel(c);
  if (verb == "watch") return TrainWatch(c, job_failed);
  return UsageError("miseg train start|list|show|cancel|watch");
}

// ------------------------------------------------------------------------------------------
// models

absl::Status ModelsList(Context& c) {
  RETURN_IF_ERROR(c.args.Allow({"wide"}));
  const std::string dataset = c.args.positional().size() > 2 ? c.args.positional()[2] : "";
  ASSIGN_OR_RETURN(std::vector<v1::Model> models, c.client->ListModels(dataset));
  if (c.json) return Print(c, JsonArray("models", models)), absl::OkStatus();
  // The Dice of each class only with --wide: three classes alone take 60 columns.
  std::vector<TableColumn> columns = {{"ID", true},    {"DATASET"},    {"VER", true}, {"JOB", true},
                                      {"STEPS", true}, {"DICE", true}, {"ACTIVE"},    {"CREATED"}};
  if (c.wide) columns.push_back({"DICE PER CLASS"});
  Table table(columns);
  for (const v1::Model& m : models) {
    std::vector<TableCell> row = {
        {absl::StrCat(m.id())},
        {m.dataset()},
        {absl::StrCat(m.version())},
        {absl::StrCat(m.job_id())},
        {absl::StrCat(m.steps())},
        {absl::StrFormat("%.3f", m.validation_mean_dice())},
        {m.active() ? "yes" : "-", m.active() ? Colour::kGreen : Colour::kNone},
        {HumanAge(m.created_unix_ms())}};
    if (c.wide) {
      row.push_back(
          {DiceText(m.validation_dice_per_class(),
                    std::vector<std::string>(m.class_names().begin(), m.class_names().end()))});
    }
    table.AddRow(std::move(row));
  }
  PrintTable(c, table);
  return absl::OkStatus();
}

void PrintModel(const Context& c, const v1::Model& model) {
  Print(c, absl::StrCat("model       ", model.id(), " (version ", model.version(), " of ",
                        model.dataset(), ")"));
  Print(c, model.format() == v1::MODEL_FORMAT_TORCHSCRIPT
               ? absl::StrCat("job         - (imported TorchScript, ", model.steps(), " steps)")
               : absl::StrCat("job         ", model.job_id(), ", ", model.steps(), " steps"));
  Print(c, absl::StrFormat("dice        %s  (mean %.3f)",
                           DiceText(model.validation_dice_per_class(),
                                    std::vector<std::string>(model.class_names().begin(),
                                                             model.class_names().end())),
                           model.validation_mean_dice()));
  Print(c, absl::StrCat("active      ", model.active() ? "yes" : "no"));
  Print(c, absl::StrCat("size        ", HumanBytes(static_cast<double>(model.size_bytes()))));
  Print(c, absl::StrCat("created     ", HumanAge(model.created_unix_ms())));
}

// `models show` and `models promote`: both answer with the model.
absl::Status ModelsShowOrPromote(Context& c, const std::string& verb) {
  RETURN_IF_ERROR(c.args.Allow({}));
  ASSIGN_OR_RETURN(int64_t id,
                   IdArgument(c.args, 2, absl::StrCat("miseg models ", verb, " MODEL")));
  absl::StatusOr<v1::Model> model =
      verb == "show" ? c.client->GetModel(id) : c.client->PromoteModel(id);
  if (!model.ok()) return model.status();
  if (c.json) return Print(c, ToJson(*model)), absl::OkStatus();
  if (verb == "promote") {
    Print(c, absl::StrFormat("model %d (version %d) is now the active model of %s", model->id(),
                             model->version(), model->dataset()));
    return absl::OkStatus();
  }
  PrintModel(c, *model);
  return absl::OkStatus();
}

absl::Status ModelsExport(Context& c) {
  RETURN_IF_ERROR(c.args.Allow({"out"}));
  ASSIGN_OR_RETURN(int64_t id, IdArgument(c.args, 2, "miseg models export MODEL --out DIR"));
  if (c.args.Get("out").empty()) return UsageError("miseg models export MODEL --out DIR");
  ASSIGN_OR_RETURN(std::vector<std::string> files, c.client->ExportModel(id, c.args.Get("out")));
  Print(c, c.json ? absl::StrCat("{\"files\":[\"", absl::StrJoin(files, "\",\""), "\"]}")
                  : absl::StrCat("model ", id, " exported to ", c.args.Get("out"), ": ",
                                 absl::StrJoin(files, ", ")));
  return absl::OkStatus();
}

absl::Status ModelsImport(Context& c) {
  RETURN_IF_ERROR(c.args.Allow({}));
  if (c.args.positional().size() != 4) return UsageError("miseg models import DATASET DIR");
  ASSIGN_OR_RETURN(v1::Model model,
                   c.client->ImportModel(c.args.positional()[2], c.args.positional()[3]));
  if (c.json) return Print(c, ToJson(model)), absl::OkStatus();
  Print(c, absl::StrFormat("model %d imported as version %d of %s (not active: miseg models "
                           "promote %d)",
                           model.id(), model.version(), model.dataset(), model.id()));
  return absl::OkStatus();
}

absl::Status ModelsDelete(Context& c) {
  RETURN_IF_ERROR(c.args.Allow({}));
  ASSIGN_OR_RETURN(int64_t id, IdArgument(c.args, 2, "miseg models delete MODEL"));
  ASSIGN_OR_RETURN(int64_t freed, c.client->DeleteModel(id));
  Print(c, c.json ? absl::StrCat("{\"freedBytes\":\"", freed, "\"}")
                  : absl::StrCat("deleted model ", id, "; freed ",
                                 HumanBytes(static_cast<double>(freed))));
  return absl::OkStatus();
}

absl::Status Models(Context& c) {
  const std::string verb = c.args.positional().size() > 1 ? c.args.positional()[1] : "";
  if (verb == "list") return ModelsList(c);
  if (verb == "show" || verb == "promote") return ModelsShowOrPromote(c, verb);
  if (verb == "export") return ModelsExport(c);
  if (verb == "import") return ModelsImport(c);
  if (verb == "delete") return ModelsDelete(c);
  return UsageError("miseg models list|show|promote|export|import|delete");
}

// ------------------------------------------------------------------------------------------
// deliveries

std::string DeliveryStateName(v1::DeliveryState state) {
  switch (state) {
    case v1::DELIVERY_STATE_PENDING: return "pending";
    case v1::DELIVERY_STATE_DELIVERED: return "delivered";
    case v1::DELIVERY_STATE_FAILED: return "failed";
    default: return "-";
  }
}

absl::Status Deliveries(Context& c) {
  const std::string verb = c.args.positional().size() > 1 ? c.args.positional()[1] : "";
  if (verb != "list") return UsageError("miseg deliveries list [--state pending|delivered|failed]");
  RETURN_IF_ERROR(c.args.Allow({"state", "wide"}));
  v1::DeliveryState state = v1::DELIVERY_STATE_UNSPECIFIED;
  if (c.args.Has("state")) {
    const std::string name = c.args.Get("state");
    if (name == "pending") state = v1::DELIVERY_STATE_PENDING;
    else if (name == "delivered") state = v1::DELIVERY_STATE_DELIVERED;
    else if (name == "failed") state = v1::DELIVERY_STATE_FAILED;
    else return UsageError("--state is pending, delivered or failed");
  }
  ASSIGN_OR_RETURN(std::vector<v1::Delivery> list, c.client->ListDeliveries(state));
  if (c.json) return Print(c, JsonArray("deliveries", list)), absl::OkStatus();
  Table table({{"ID", true}, {"DESTINATION"}, {"STATE"}, {"ATTEMPTS", true}, {"LATENCY", true},
               {"RECEIVED"}, {"SOURCE SERIES", false, /*uid=*/true}, {"LAST ERROR"}});
  for (const v1::Delivery& d : list) {
    const std::string latency =
        d.delivered_unix_ms() > 0
            ? absl::StrFormat("%.1f s", (d.delivered_unix_ms() - d.received_unix_ms()) / 1000.0)
            : "-";
    const Colour colour = d.state() == v1::DELIVERY_STATE_DELIVERED ? Colour::kGreen
                          : d.state() == v1::DELIVERY_STATE_FAILED  ? Colour::kRed
                                                                    : Colour::kNone;
    table.AddRow({{absl::StrCat(d.id())}, {d.destination()}, {DeliveryStateName(d.state()), colour},
                  {absl::StrCat(d.attempts())}, {latency}, {HumanAge(d.received_unix_ms())},
                  {d.source_series_instance_uid()}, {d.last_error().empty() ? "-" : d.last_error()}});
  }
  PrintTable(c, table);
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------------------
// workers

std::string WorkerStateName(v1::WorkerState state) {
  switch (state) {
    case v1::WORKER_STATE_IDLE: return "idle";
    case v1::WORKER_STATE_BUSY: return "busy";
    case v1::WORKER_STATE_LOST: return "lost";
    default: return "-";
  }
}

// "cpu:idle cpu:job 7 rank 1": each device and what trains on it.
std::string WorkerDevicesText(const v1::Worker& w) {
  std::vector<std::string> parts;
  for (const v1::WorkerDevice& d : w.devices()) {
    parts.push_back(d.job_id() == 0 ? absl::StrCat(d.device(), ":idle")
                                    : absl::StrCat(d.device(), ":job ", d.job_id(), " rank ", d.rank()));
  }
  return parts.empty() ? "-" : absl::StrJoin(parts, " ");
}

absl::Status Workers(Context& c) {
  const std::string verb = c.args.positional().size() > 1 ? c.args.positional()[1] : "";
  if (verb != "list" || c.args.positional().size() > 2) return UsageError("miseg workers list");
  RETURN_IF_ERROR(c.args.Allow({"wide"}));
  ASSIGN_OR_RETURN(std::vector<v1::Worker> list, c.client->ListWorkers());
  if (c.json) return Print(c, JsonArray("workers", list)), absl::OkStatus();
  // The devices last: on a terminal the last column is the one cut to fit.
  std::vector<TableColumn> columns = {{"ID"}, {"NAME"}, {"STATE"}, {"LOCAL"}, {"HEARTBEAT"}};
  if (c.wide) columns.push_back({"ADDRESS"});
  columns.push_back({"DEVICES"});
  Table table(columns);
  for (const v1::Worker& w : list) {
    const Colour colour = w.state() == v1::WORKER_STATE_BUSY ? Colour::kCyan
                          : w.state() == v1::WORKER_STATE_LOST ? Colour::kRed
                                                               : Colour::kNone;
    std::vector<TableCell> row = {{w.id()}, {w.name().empty() ? "-" : w.name()},
                                  {WorkerStateName(w.state()), colour}, {w.local() ? "yes" : "-"},
                                  {HumanAge(w.last_heartbeat_unix_ms())}};
    if (c.wide) row.push_back({w.address().empty() ? "-" : w.address()});
    row.push_back({WorkerDevicesText(w)});
    table.AddRow(std::move(row));
  }
  PrintTable(c, table);
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------------------
// import, imports (issue 16: the server pulls studies from its PACS sources)

std::string ImportStateName(v1::ImportState state) {
  switch (state) {
    case v1::IMPORT_STATE_QUEUED: return "queued";
    case v1::IMPORT_STATE_RUNNING: return "running";
    case v1::IMPORT_STATE_SUCCEEDED: return "succeeded";
    case v1::IMPORT_STATE_FAILED: return "failed";
    case v1::IMPORT_STATE_CANCELLED: return "cancelled";
    default: return "-";
  }
}

// The same colours as a job's states.
Colour ImportStateColour(v1::ImportState state) {
  switch (state) {
    case v1::IMPORT_STATE_RUNNING: return Colour::kCyan;
    case v1::IMPORT_STATE_SUCCEEDED: return Colour::kGreen;
    case v1::IMPORT_STATE_FAILED: return Colour::kRed;
    case v1::IMPORT_STATE_CANCELLED: return Colour::kYellow;
    default: return Colour::kNone;
  }
}

std::string ImportProgress(const v1::Import& i) {
  if (i.instances_total() == 0) return "-";
  return absl::StrCat(i.instances_fetched(), "/", i.instances_total());
}

// "import 4 running: 12/40 instances", "import 4 failed: <why>".
std::string ImportLine(const v1::Import& i, bool colour) {
  const std::string state =
      Paint(ImportStateName(i.state()), ImportStateColour(i.state()), colour);
  std::string detail = i.state() == v1::IMPORT_STATE_FAILED ? i.error() : i.message();
  if (detail.empty() && i.instances_total() > 0) {
    detail = absl::StrCat(ImportProgress(i), " instances");
  }
  return absl::StrCat("import ", i.id(), " ", state, detail.empty() ? "" : ": ", detail);
}

void PrintImports(Context& c, const std::vector<v1::Import>& list) {
  Table table({{"ID", true}, {"DATASET"}, {"SOURCE"}, {"ROLE"}, {"STATE"}, {"FETCHED", true},
               {"CREATED"}, {"STUDY", false, /*uid=*/true}, {"OUTCOME"}});
  for (const v1::Import& i : list) {
    const std::string outcome = i.state() == v1::IMPORT_STATE_FAILED ? i.error() : i.message();
    table.AddRow({{absl::StrCat(i.id())}, {i.dataset()}, {i.source()}, {RoleName(i.role())},
                  {ImportStateName(i.state()), ImportStateColour(i.state())}, {ImportProgress(i)},
                  {HumanAge(i.created_unix_ms())}, {i.study_instance_uid()},
                  {outcome.empty() ? "-" : outcome}});
  }
  PrintTable(c, table);
}

absl::Status Import(Context& c) {
  const std::string usage =
      "miseg import DATASET --from SOURCE (--study UID [--series UID] | --query "
      "'Modality=MR&StudyDate=20260101-') --role labeled|unlabeled|validation";
  RETURN_IF_ERROR(c.args.Allow({"from", "study", "series", "query", "role", "wide"}));
  if (c.args.positional().size() != 2 || !c.args.Has("from") || !c.args.Has("role") ||
      c.args.Has("study") == c.args.Has("query") ||
      (c.args.Has("series") && !c.args.Has("study"))) {
    return UsageError(usage);
  }
  v1::StartImportRequest request;
  request.set_dataset(c.args.positional()[1]);
  request.set_source(c.args.Get("from"));
  ASSIGN_OR_RETURN(v1::StudyRole role, ParseRole(c.args.Get("role")));
  request.set_role(role);
  request.set_study_instance_uid(c.args.Get("study"));
  request.set_series_instance_uid(c.args.Get("series"));
  request.set_query(c.args.Get("query"));
  ASSIGN_OR_RETURN(std::vector<v1::Import> imports, c.client->StartImport(request));
  if (c.json) return Print(c, JsonArray("imports", imports)), absl::OkStatus();
  if (imports.empty()) Print(c, "no study matches the query at the source");
  for (const v1::Import& i : imports) {
    Print(c, absl::StrCat(ImportLine(i, c.stdout_colour), " (study ", i.study_instance_uid(),
                          "; follow with: miseg imports show ", i.id(), ")"));
  }
  return absl::OkStatus();
}

absl::Status Imports(Context& c) {
  const std::string usage =
      "miseg imports list [--dataset NAME] | show ID | cancel ID | sources";
  const std::string verb = c.args.positional().size() > 1 ? c.args.positional()[1] : "";
  if (verb == "list") {
    RETURN_IF_ERROR(c.args.Allow({"dataset", "wide"}));
    ASSIGN_OR_RETURN(std::vector<v1::Import> list, c.client->ListImports(c.args.Get("dataset")));
    if (c.json) return Print(c, JsonArray("imports", list)), absl::OkStatus();
    PrintImports(c, list);
    return absl::OkStatus();
  }
  if (verb == "show" || verb == "cancel") {
    RETURN_IF_ERROR(c.args.Allow({"wide"}));
    ASSIGN_OR_RETURN(int64_t id, IdArgument(c.args, 2, usage));
    ASSIGN_OR_RETURN(v1::Import i,
                     verb == "show" ? c.client->GetImport(id) : c.client->CancelImport(id));
    if (c.json) return Print(c, ToJson(i)), absl::OkStatus();
    Print(c, ImportLine(i, c.stdout_colour));
    Print(c, absl::StrCat("  dataset ", i.dataset(), ", source ", i.source(), ", role ",
                          RoleName(i.role()), ", attempts ", i.attempts()));
    Print(c, absl::StrCat("  study ", i.study_instance_uid(),
                          i.series_instance_uid().empty() ? ""
                                                          : " series " + i.series_instance_uid()));
    Print(c, absl::StrCat("  instances fetched ", ImportProgress(i)));
    for (const std::string& s : i.stored_series_instance_uids()) {
      Print(c, absl::StrCat("  stored series ", s));
    }
    return absl::OkStatus();
  }
  if (verb == "sources") {
    RETURN_IF_ERROR(c.args.Allow({"wide"}));
    ASSIGN_OR_RETURN(std::vector<v1::ImportSource> list, c.client->ListImportSources());
    if (c.json) return Print(c, JsonArray("sources", list)), absl::OkStatus();
    Table table({{"NAME"}, {"KIND"}, {"ADDRESS"}});
    for (const v1::ImportSource& s : list) table.AddRow({{s.name()}, {s.kind()}, {s.address()}});
    PrintTable(c, table);
    return absl::OkStatus();
  }
  return UsageError(usage);
}

// ------------------------------------------------------------------------------------------
// segment, phantom

absl::Status Segment(Context& c) {
  RETURN_IF_ERROR(c.args.Allow({"stored", "model", "out", "overlay"}));
  const std::string usage =
      "miseg segment DATASET (FILE_OR_FOLDER... | --stored SERIES_UID) --out SEG.dcm [--model ID] [--overlay FILE.png]";
  if (c.args.positional().size() < 2 || !c.args.Has("out")) return UsageError(usage);
  const bool stored = c.args.Has("stored");
  if (stored == (c.args.positional().size() > 2)) return UsageError(usage);
  if (stored && c.args.Has("overlay")) {
    return UsageError("--overlay needs the image files: segment a folder, not --stored");
  }
  v1::SegmentHeader header;
  header.set_dataset(c.args.positional()[1]);
  ASSIGN_OR_RETURN(std::optional<int64_t> model_id, c.args.GetInt("model"));
  header.set_model_id(model_id.value_or(0));
  header.set_stored_series_instance_uid(c.args.Get("stored"));

  std::vector<DicomBuffer> images;
  if (!stored) {
    std::vector<std::string> paths(c.args.positional().begin() + 2, c.args.positional().end());
    ASSIGN_OR_RETURN(std::vector<DicomBuffer> files, LoadPaths(paths));
    LocalFiles local = GroupIntoStudies(std::move(files));
    if (local.studies.size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "segment one image series at a time; these paths hold ", local.studies.size()));
    }
    for (DicomBuffer& f : local.studies[0].files) {
      if (static_cast<int>(images.size()) < local.studies[0].images) images.push_back(std::move(f));
    }
  }
  int64_t total_bytes = 0;
  for (const DicomBuffer& f : images) total_bytes += static_cast<int64_t>(f.bytes.size());
  ProgressBar bar("segment", !c.json && !c.quiet);
  ASSIGN_OR_RETURN(client::SegmentResult result,
                   c.client->Segment(header, images, [&](int64_t done, int64_t total) {
                     bar.Update(done, total, done < total ? "sending" : "segmenting",
                                {{absl::StrCat(HumanBytes(static_cast<double>(done)), " / ",
                                               HumanBytes(static_cast<double>(total))),
                                  /*keep=*/1}});
                   }));
  bar.Finish();
  const std::string out = c.args.Get("out");
  RETURN_IF_ERROR(WriteOutputFile(out, result.seg_bytes));

  if (c.args.Has("overlay")) {
    ASSIGN_OR_RETURN(v1::Dataset dataset, c.client->GetDataset(header.dataset()));
    std::vector<std::string> class_names(dataset.class_names().begin(), dataset.class_names().end());
    ASSIGN_OR_RETURN(std::vector<SeriesVolume> volumes, ReadSeries(images));
    ASSIGN_OR_RETURN(SegmentationLabels labels,
                     ReadSegmentation({out, result.seg_bytes}, volumes.front(), class_names));
    ASSIGN_OR_RETURN(render::RgbImage montage,
                     render::RenderOverlayMontage(volumes.front().image, labels.labels, class_names, {}));
    ASSIGN_OR_RETURN(std::string png, render::EncodePng(montage));
    RETURN_IF_ERROR(WriteOutputFile(c.args.Get("overlay"), png));
  }

  const v1::SegmentSummary& s = result.summary;
  if (c.json) {
    Print(c, ToJson(s));
    return absl::OkStatus();
  }
  Print(c, absl::StrFormat("segmentation  %s (%s)", out, HumanBytes(static_cast<double>(s.segmentation_bytes()))));
  Print(c, absl::StrFormat("model         %d (version %d of %s)", s.model_id(), s.model_version(), s.dataset()));
  for (const v1::ClassVolume& v : s.classes()) {
    Print(c, absl::StrFormat("  %-20s %9.1f mL", v.class_name(), v.volume_ml()));
  }
  Print(c, absl::StrFormat("timings       queue %.2f s, decode %.2f s, inference %.2f s, encode %.2f s",
                           s.queue_seconds(), s.decode_seconds(), s.inference_seconds(), s.encode_seconds()));
  if (c.args.Has("overlay")) Print(c, absl::StrCat("overlay       ", c.args.Get("overlay")));
  return absl::OkStatus();
}

absl::Status Phantom(Context& c) {
  RETURN_IF_ERROR(c.args.Allow({"count", "labeled", "seed", "small", "first"}));
  ASSIGN_OR_RETURN(std::string out, WordArgument(c.args, 1, "miseg phantom OUT_DIR --count N [--labeled K] [--seed S] [--first I] [--small]"));
  ASSIGN_OR_RETURN(std::optional<int64_t> count, c.args.GetInt("count"));
  ASSIGN_OR_RETURN(std::optional<int64_t> labeled, c.args.GetInt("labeled"));
  ASSIGN_OR_RETURN(std::optional<int64_t> seed, c.args.GetInt("seed"));
  ASSIGN_OR_RETURN(std::optional<int64_t> first, c.args.GetInt("first"));
  if (!count || *count < 1 || *count > 10000 || labeled.value_or(0) < 0 || first.value_or(0) < 0) {
    return UsageError("miseg phantom OUT_DIR --count N (1..10000) [--labeled K] [--seed S] [--first I] [--small]");
  }
  const PhantomOptions options = c.args.Has("small") ? SmallPhantomOptions() : PhantomOptions{};
  ProgressBar bar("phantom", !c.json && !c.quiet);
  std::vector<std::string> folders;
  for (int64_t i = 0; i < *count; ++i) {
    const int index = static_cast<int>(first.value_or(0) + i);
    const bool with_seg = i < labeled.value_or(0);
    const PhantomSubject subject = GeneratePhantomSubject(static_cast<uint64_t>(seed.value_or(1)), index, options);
    ASSIGN_OR_RETURN(PhantomStudy study,
                     MakePhantomStudy(subject, absl::StrFormat("s%d-%03d", seed.value_or(1), index), with_seg));
    const std::string folder = absl::StrFormat("%s/subject-%03d", out, index);
    RETURN_IF_ERROR(WriteStudyToFolder(study, folder));
    folders.push_back(folder);
    bar.Update(i + 1, *count, absl::StrCat(i + 1, "/", *count));
  }
  bar.Finish();
  if (c.json) {
    std::vector<std::string> quoted;
    for (const std::string& f : folders) quoted.push_back(absl::StrCat("\"", f, "\""));
    Print(c, absl::StrCat("{\"folders\":[", absl::StrJoin(quoted, ","), "]}"));
  } else {
    Print(c, absl::StrFormat("wrote %d phantom studies (%d with a DICOM SEG) under %s", *count,
                             std::min(*count, labeled.value_or(0)), out));
  }
  return absl::OkStatus();
}

}  // namespace

std::string Usage() {
  std::string help =
      "miseg: the command line of miseg-server (semi-supervised segmentation).\n"
      "\n"
      "  miseg health\n"
      "  miseg datasets create NAME --classes background,a,b [--modality MR|CT]\n"
      "  miseg datasets list | datasets show NAME | datasets delete NAME [--force]\n"
      "  miseg upload DATASET FILE_OR_FOLDER... --role labeled|unlabeled|validation\n"
      "  miseg studies list DATASET [--role R] | studies suggest DATASET [--count K]\n"
      "  miseg studies delete DATASET SERIES_UID\n"
      "  miseg train start DATASET [--config FILE.json] [--watch] [--ranks N]\n"
      "        [hyperparameters]\n"
      "  miseg train list [DATASET] | train show JOB [--plot FILE.png]\n"
      "  miseg train cancel JOB\n"
      "  miseg train watch JOB [--from-step N]\n"
      "  miseg models list [DATASET] | models show MODEL | models promote MODEL\n"
      "  miseg models export MODEL --out DIR   (TorchScript model.pt, model.json, README)\n"
      "  miseg models import DATASET DIR | models delete MODEL\n"
      "  miseg segment DATASET (FILE_OR_FOLDER... | --stored SERIES_UID) --out SEG.dcm\n"
      "        [--model MODEL] [--overlay FILE.png]\n"
      "  miseg phantom OUT_DIR --count N [--labeled K] [--seed S] [--first I]\n"
      "        [--small]\n"
      "  miseg deliveries list [--state pending|delivered|failed]\n"
      "        (the DICOM node's outbox)\n"
      "  miseg workers list\n"
      "        (the devices that train: the server's own and miseg-workers')\n"
      "  miseg import DATASET --from SOURCE --study UID [--series UID]\n"
      "        --role labeled|unlabeled|validation   (the server pulls it from its PACS)\n"
      "  miseg import DATASET --from SOURCE --query 'Modality=MR&StudyDate=20260101-'\n"
      "        --role ROLE   (one import per matching study)\n"
      "  miseg imports list [--dataset NAME] | imports show ID | imports cancel ID\n"
      "  miseg imports sources\n"
      "\n"
      "Hyperparameter flags (unset: the method's defaults):\n";
  for (const HyperparameterFlag& f : HyperparameterFlags()) {
    help += absl::StrFormat("  --%-20s %s\n", f.flag, f.help);
  }
  help +=
      "  --objective NAME          mi (the method), labeled_only, entropy, mean_teacher,\n"
      "                            consistency_only, mi_only\n"
      "  --consistency mse|kl      consistency loss\n"
      "  --widths 16,32,64,128,256 U-Net widths, one per level\n"
      "\n"
      "Connection (flags, or the environment):\n"
      "  --address HOST:PORT   MISEG_ADDRESS   (default 127.0.0.1:50051)\n"
      "  --token TOKEN         MISEG_TOKEN     bearer token\n"
      "  --tls-ca FILE         MISEG_TLS_CA    use TLS, trusting this CA\n"
      "  --tls-cert FILE       MISEG_TLS_CERT  client certificate (mutual TLS)\n"
      "  --tls-key FILE        MISEG_TLS_KEY\n"
      "  --tls-server-name N   MISEG_TLS_SERVER_NAME\n"
      "Output:\n"
      "  --json, -o json   one JSON document (JSON lines for watch), complete\n"
      "  --wide, -o wide   listings and upload with whole UIDs (otherwise shortened in\n"
      "                    the middle, 1.2.826\u202658209) and every column\n"
      "  --quiet           nothing but errors\n"
      "  Progress bars only on a terminal; colour only there, with TERM not dumb and\n"
      "  NO_COLOR unset.\n"
      "Exit codes: 0 ok, 1 server or connection error (or the watched job did not\n"
      "  succeed), 2 usage error, 3 input refused by the server, 4 authentication or\n"
      "  permission refused.\n";
  return help;
}

int RunCommand(const Args& args) {
  Context c{args};
  c.json = args.Has("json");
  c.quiet = args.Has("quiet");
  if (args.Has("output")) {
    const std::string output = args.Get("output");
    if (output == "json") c.json = true;
    else if (output == "wide") c.wide = true;
    else if (output != "text") {
      fprintf(stderr, "miseg: -o is json, wide or text, not '%s' (see miseg help)\n", output.c_str());
      return kExitUsage;
    }
  }
  c.wide = c.wide || args.Has("wide");
  c.stdout_colour = ColourWanted(STDOUT_FILENO);
  const std::string& command = args.positional()[0];
  bool refused_input = false, job_failed = false;

  auto connect = [&]() -> absl::Status {
    client::ConnectionOptions options = client::OptionsFromEnvironment();
    if (args.Has("address")) options.address = args.Get("address");
    if (args.Has("token")) options.token = args.Get("token");
    if (args.Has("tls-ca")) options.tls_ca_file = args.Get("tls-ca");
    if (args.Has("tls-cert")) options.tls_cert_file = args.Get("tls-cert");
    if (args.Has("tls-key")) options.tls_key_file = args.Get("tls-key");
    if (args.Has("tls-server-name")) options.tls_server_name = args.Get("tls-server-name");
    ASSIGN_OR_RETURN(c.client, Client::Connect(options));
    c.connection = options;
    return absl::OkStatus();
  };

  absl::Status status;
  if (command == "phantom") {
    status = Phantom(c);
  } else {
    static const std::set<std::string> known = {"health",  "datasets", "upload",
                                                "studies", "train",    "models",
                                                "segment", "deliveries", "workers",
                                                "import",  "imports"};
    if (!known.count(command)) {
      status = UsageError(absl::StrCat("unknown command '", command, "'"));
    } else if (status = connect(); status.ok()) {
      if (command == "health") status = Health(c);
      if (command == "datasets") status = Datasets(c);
      if (command == "upload") status = Upload(c, &refused_input);
      if (command == "studies") status = Studies(c);
      if (command == "train") status = Train(c, &job_failed);
      if (command == "models") status = Models(c);
      if (command == "segment") status = Segment(c);
      if (command == "deliveries") status = Deliveries(c);
      if (command == "workers") status = Workers(c);
      if (command == "import") status = Import(c);
      if (command == "imports") status = Imports(c);
    }
  }
  if (!status.ok()) {
    if (IsUsageError(status) || (absl::IsInvalidArgument(status) &&
                                 absl::StartsWith(status.message(), "unknown flag"))) {
      fprintf(stderr, "miseg: %s (see miseg help)\n", std::string(status.message()).c_str());
      return kExitUsage;
    }
    PrintError(status);
    return ExitCodeFor(status);
  }
  if (refused_input) return kExitRefused;
  if (job_failed) return kExitServerError;
  return kExitOk;
}

}  // namespace miseg::cli

#include "server/domain/segmentation_engine.h"

#include <algorithm>
#include <filesystem>
#include <future>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/segmentation.h"
#include "core/dicom/series_reader.h"
#include "server/domain/ingest.h"

namespace miseg {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A model file is named job-<id>-<sha256>.model: its bytes are checked before they are
// loaded (DataLoss naming the file when they no longer match). Older names pass unchecked.
absl::Status VerifyModelFile(const ModelRecord& model) {
  const std::string name = std::filesystem::path(model.path).filename().string();
  const size_t dash = name.rfind('-');
  if (dash == std::string::npos || !absl::EndsWith(name, ".model")) return absl::OkStatus();
  const std::string sha256 = name.substr(dash + 1, name.size() - dash - 1 - 6);
  if (!IsObjectHash(sha256)) return absl::OkStatus();
  absl::StatusOr<std::string> actual = Sha256OfFile(model.path);
  if (!actual.ok()) {
    return absl::DataLossError(absl::StrCat("model ", model.id, ": cannot read its file ",
                                            model.path, ": ", actual.status().message()));
  }
  if (*actual != sha256) {
    return absl::DataLossError(absl::StrCat("model ", model.id, ": its file ", model.path,
                                            " is corrupt (its bytes no longer match its SHA-256)"));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<ClassVolumeResult> CountClassVolumes(const LabelVolume& labels,
                                                 const std::vector<std::string>& class_names) {
  const VolumeGeometry& g = labels.geometry;
  const double voxel_ml = g.row_spacing_mm * g.col_spacing_mm * g.slice_spacing_mm / 1000.0;
  std::vector<int64_t> counts(class_names.size(), 0);
  for (uint8_t label : labels.voxels) {
    if (label < counts.size()) ++counts[label];
  }
  std::vector<ClassVolumeResult> classes;
  for (size_t k = 1; k < counts.size(); ++k) {
    classes.push_back({class_names[k], counts[k], static_cast<double>(counts[k]) * voxel_ml});
  }
  return classes;
}

SegmentationEngine::SegmentationEngine(Store* store, FileStore* files, ServerMetrics* metrics,
                                       SegmentationEngineOptions options)
    : store_(store),
      files_(files),
      metrics_(metrics),
      options_(std::move(options)),
      pool_(std::max(1, options_.concurrency)) {}

absl::Status SegmentationEngine::Admit() {
  const int capacity = std::max(1, options_.concurrency) + std::max(0, options_.queue);
  absl::MutexLock lock(&admission_mutex_);
  if (admitted_ >= capacity) {
    metrics_->CountInferenceRejected();
    return absl::ResourceExhaustedError(absl::StrCat("segmentation queue is full (",
                                                     options_.concurrency, " running, ",
                                                     options_.queue, " waiting); retry later"));
  }
  ++admitted_;
  metrics_->SetInferenceQueueDepth(admitted_);
  return absl::OkStatus();
}

absl::Status SegmentationEngine::Submit(SegmentationJob job,
                                        std::chrono::system_clock::time_point deadline,
                                        SegmentationCallback done) {
  RETURN_IF_ERROR(Admit());
  const auto queued_at = Clock::now();
  pool_.Schedule([this, job = std::move(job), deadline, queued_at, done = std::move(done)] {
    if (options_.before_each_job) options_.before_each_job();
    const double queue_seconds = SecondsSince(queued_at);
    absl::StatusOr<SegmentationResult> result =
        std::chrono::system_clock::now() >= deadline
            ? absl::DeadlineExceededError("deadline passed while waiting in the queue")
            : Run(job, deadline);
    if (result.ok()) result->queue_seconds = queue_seconds;
    Release();
    done(std::move(result));
  });
  return absl::OkStatus();
}

absl::Status SegmentationEngine::SubmitSuggestion(std::string dataset,
                                                  std::chrono::system_clock::time_point deadline,
                                                  SuggestionCallback done) {
  RETURN_IF_ERROR(Admit());
  pool_.Schedule([this, dataset = std::move(dataset), deadline, done = std::move(done)] {
    if (options_.before_each_job) options_.before_each_job();
    absl::StatusOr<SuggestionResult> result =
        std::chrono::system_clock::now() >= deadline
            ? absl::DeadlineExceededError("deadline passed while waiting in the queue")
            : Suggest(dataset, deadline);
    Release();
    done(std::move(result));
  });
  return absl::OkStatus();
}

absl::StatusOr<SegmentationResult> SegmentationEngine::Segment(
    SegmentationJob job, std::chrono::system_clock::time_point deadline) {
  std::promise<absl::StatusOr<SegmentationResult>> promise;
  std::future<absl::StatusOr<SegmentationResult>> outcome = promise.get_future();
  RETURN_IF_ERROR(Submit(std::move(job), deadline,
                         [&promise](auto result) { promise.set_value(std::move(result)); }));
  return outcome.get();
}

void SegmentationEngine::Release() {
  absl::MutexLock lock(&admission_mutex_);
  --admitted_;
  metrics_->SetInferenceQueueDepth(admitted_);
}

absl::StatusOr<std::shared_ptr<const Segmenter>> SegmentationEngine::LoadModel(
    const ModelRecord& model) {
  absl::MutexLock lock(&cache_mutex_);
  for (auto it = cache_.begin(); it != cache_.end(); ++it) {
    if (it->first == model.id) {
      cache_.splice(cache_.begin(), cache_, it);
      return cache_.front().second;
    }
  }
  const auto start = Clock::now();
  RETURN_IF_ERROR(VerifyModelFile(model));
  InferenceOptions inference;
  inference.device = options_.device;
  inference.batch_slices = options_.batch_slices;
  inference.max_batch_slices = options_.max_batch_slices;
  inference.batch_wait_ms = options_.batch_wait_ms;
  inference.cuda_graphs = options_.cuda_graphs;
  inference.on_batch = [metrics = metrics_](int64_t slices) {
    metrics->ObserveInferenceBatch(slices);
  };
  inference.format = model.format == StoredModelFormat::kTorchScript ? ModelFormat::kTorchScript
                                                                     : ModelFormat::kMiseg;
  absl::StatusOr<std::unique_ptr<Segmenter>> loaded = Segmenter::Load(model.path, inference);
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(),
                        absl::StrCat("model ", model.id, ": ", loaded.status().message()));
  }
  metrics_->ObserveModelLoad(SecondsSince(start));
  cache_.emplace_front(model.id, std::shared_ptr<const Segmenter>(std::move(*loaded)));
  while (static_cast<int>(cache_.size()) > std::max(1, options_.cached_models)) cache_.pop_back();
  return cache_.front().second;
}

absl::StatusOr<ModelRecord> SegmentationEngine::ResolveModel(const SegmentationJob& job,
                                                             const DatasetRecord& dataset) {
  int64_t model_id = job.model_id;
  if (model_id == 0) {
    if (dataset.active_model_id == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "dataset '", dataset.name, "' has no active model: train one or promote one"));
    }
    model_id = dataset.active_model_id;
  }
  ASSIGN_OR_RETURN(ModelRecord model, store_->GetModel(model_id));
  if (model.dataset_id != dataset.id) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", model_id, " belongs to another dataset than '", dataset.name, "'"));
  }
  return model;
}

absl::StatusOr<SeriesVolume> SegmentationEngine::LoadSeries(const SegmentationJob& job,
                                                            const DatasetRecord& dataset) {
  if (!job.stored_series_uid.empty()) {
    ASSIGN_OR_RETURN(StudyRecord study, store_->GetStudy(dataset.id, job.stored_series_uid));
    ASSIGN_OR_RETURN(LoadedStudy loaded, LoadStoredStudy(*files_, study, {}));
    return std::move(loaded.series);
  }
  if (job.files.empty() && job.file_paths.empty()) {
    return absl::InvalidArgumentError("no DICOM files in the request");
  }
  ASSIGN_OR_RETURN(std::vector<SeriesVolume> volumes,
                   job.file_paths.empty() ? ReadSeries(job.files)
                                          : ReadSeriesFromFiles(job.file_paths, job.file_names));
  if (volumes.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("send one image series per request; these files hold ", volumes.size()));
  }
  return std::move(volumes.front());
}

absl::Status SegmentationEngine::EncodeSeg(const SeriesVolume& series, const LabelVolume& labels,
                                           const DatasetRecord& dataset,
                                           SegmentationResult& result) {
  SegmentationWriteOptions write;
  write.class_names = dataset.class_names;
  write.algorithm_version = options_.version;
  write.model_version =
      absl::StrCat(dataset.name, "/v", result.model.version, "/job-", result.model.job_id);
  write.series_instance_uid = NewUid();
  write.sop_instance_uid = NewUid();
  ASSIGN_OR_RETURN(std::string bytes, WriteSegmentation(series, labels, write));
  // To disk before it is streamed back: a slow reader holds a file, not memory.
  ASSIGN_OR_RETURN(result.seg_file, files_->Stage());
  RETURN_IF_ERROR(result.seg_file->Append(bytes));
  RETURN_IF_ERROR(result.seg_file->Finish());
  result.source_series_uid = series.series_instance_uid;
  result.seg_series_uid = write.series_instance_uid;
  result.seg_sop_instance_uid = write.sop_instance_uid;
  return absl::OkStatus();
}

absl::StatusOr<SegmentationResult> SegmentationEngine::Run(
    const SegmentationJob& job, std::chrono::system_clock::time_point deadline) {
  auto past_deadline = [&] { return std::chrono::system_clock::now() >= deadline; };
  SegmentationResult result;
  ASSIGN_OR_RETURN(DatasetRecord dataset, store_->GetDataset(job.dataset));
  result.dataset = dataset.name;
  ASSIGN_OR_RETURN(result.model, ResolveModel(job, dataset));

  auto phase = Clock::now();
  ASSIGN_OR_RETURN(SeriesVolume series, LoadSeries(job, dataset));
  // A source that cannot yield a valid SEG is refused before inference is spent on it
  // (InvalidArgument naming the attribute; issue 18).
  RETURN_IF_ERROR(CheckSegmentationSource(series));
  result.decode_seconds = SecondsSince(phase);
  if (past_deadline()) return absl::DeadlineExceededError("deadline passed while decoding");

  ASSIGN_OR_RETURN(std::shared_ptr<const Segmenter> segmenter, LoadModel(result.model));
  if (segmenter->spec().classes != static_cast<int64_t>(dataset.class_names.size())) {
    return absl::DataLossError(absl::StrCat("model ", result.model.id, " has ",
                                            segmenter->spec().classes, " classes; its dataset has ",
                                            dataset.class_names.size()));
  }
  phase = Clock::now();
  ASSIGN_OR_RETURN(LabelVolume labels, segmenter->Segment(series.image));
  result.inference_seconds = SecondsSince(phase);
  metrics_->ObserveInference(result.inference_seconds);
  if (past_deadline()) return absl::DeadlineExceededError("deadline passed during inference");

  phase = Clock::now();
  RETURN_IF_ERROR(EncodeSeg(series, labels, dataset, result));
  result.encode_seconds = SecondsSince(phase);
  result.classes = CountClassVolumes(labels, dataset.class_names);
  return result;
}

absl::StatusOr<SuggestionResult> SegmentationEngine::Suggest(
    const std::string& dataset_name, std::chrono::system_clock::time_point deadline) {
  SuggestionResult result;
  ASSIGN_OR_RETURN(DatasetRecord dataset, store_->GetDataset(dataset_name));
  ASSIGN_OR_RETURN(result.model, ResolveModel(SegmentationJob{}, dataset));
  ASSIGN_OR_RETURN(std::shared_ptr<const Segmenter> segmenter, LoadModel(result.model));
  ASSIGN_OR_RETURN(std::vector<StudyRecord> studies,
                   store_->ListStudies(dataset.id, StoredRole::kUnlabeled));
  std::vector<LabelingScores> scores;
  std::vector<StudyRecord> scored;
  for (StudyRecord& study : studies) {
    if (!study.damage.empty()) continue;  // not segmentable until uploaded again
    if (std::chrono::system_clock::now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("deadline passed after scoring ", scored.size(), " of ", studies.size(),
                       " studies; nothing was stored"));
    }
    ASSIGN_OR_RETURN(LoadedStudy loaded, LoadStoredStudy(*files_, study, {}));
    ASSIGN_OR_RETURN(LabelingScores s, segmenter->ScoreForLabeling(loaded.series.image));
    scores.push_back(s);
    scored.push_back(std::move(study));
  }
  const std::vector<double> combined = CombinedPriority(scores);
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  std::vector<LabelingPriorityRecord> records;
  for (size_t i = 0; i < scored.size(); ++i) {
    records.push_back({scored[i].series_instance_uid, combined[i], scores[i].disagreement,
                       scores[i].mutual_information, scores[i].entropy, result.model.id, now_ms});
    result.ranked.push_back({std::move(scored[i]), records.back()});
  }
  RETURN_IF_ERROR(store_->ReplaceLabelingPriorities(dataset.id, records));
  std::stable_sort(result.ranked.begin(), result.ranked.end(),
                   [](const SuggestedStudy& a, const SuggestedStudy& b) {
                     return a.priority.score > b.priority.score;
                   });
  return result;
}

}  // namespace miseg

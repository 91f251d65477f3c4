#include "server/segmentation_engine.h"

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/segmentation.h"
#include "core/dicom/series_reader.h"
#include "server/ingest.h"

namespace miseg {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

SegmentationEngine::SegmentationEngine(Store* store, FileStore* files, ServerMetrics* metrics,
                                       SegmentationEngineOptions options)
    : store_(store), files_(files), metrics_(metrics), options_(std::move(options)) {}

absl::StatusOr<std::shared_ptr<const Segmenter>> SegmentationEngine::LoadModel(
    const ModelRecord& model) {
  std::lock_guard<std::mutex> lock(cache_mutex_);
  for (auto it = cache_.begin(); it != cache_.end(); ++it) {
    if (it->first == model.id) {
      cache_.splice(cache_.begin(), cache_, it);
      return cache_.front().second;
    }
  }
  const auto start = Clock::now();
  InferenceOptions inference;
  inference.device = options_.device;
  inference.batch_slices = options_.batch_slices;
  absl::StatusOr<std::unique_ptr<Segmenter>> loaded = Segmenter::Load(model.path, inference);
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(), absl::StrCat("model ", model.id, ": ",
                                                             loaded.status().message()));
  }
  metrics_->ObserveModelLoad(SecondsSince(start));
  cache_.emplace_front(model.id, std::shared_ptr<const Segmenter>(std::move(*loaded)));
  while (static_cast<int>(cache_.size()) > std::max(1, options_.cached_models)) cache_.pop_back();
  return cache_.front().second;
}

absl::StatusOr<SegmentationResult> SegmentationEngine::Segment(
    const SegmentationJob& job, std::chrono::system_clock::time_point deadline) {
  const auto queued_at = Clock::now();
  {
    std::unique_lock<std::mutex> lock(admission_mutex_);
    if (running_ >= options_.concurrency && waiting_ >= options_.queue) {
      metrics_->CountInferenceRejected();
      return absl::ResourceExhaustedError(absl::StrCat(
          "segmentation queue is full (", options_.concurrency, " running, ", options_.queue,
          " waiting); retry later"));
    }
    ++waiting_;
    metrics_->SetInferenceQueueDepth(running_ + waiting_);
    const bool admitted = slot_free_.wait_until(
        lock, deadline, [&] { return running_ < options_.concurrency; });
    --waiting_;
    if (!admitted) {
      metrics_->SetInferenceQueueDepth(running_ + waiting_);
      return absl::DeadlineExceededError("deadline passed while waiting in the queue");
    }
    ++running_;
  }
  // Releases the slot on every return path.
  struct SlotRelease {
    SegmentationEngine* engine;
    ~SlotRelease() {
      {
        std::lock_guard<std::mutex> lock(engine->admission_mutex_);
        --engine->running_;
        engine->metrics_->SetInferenceQueueDepth(engine->running_ + engine->waiting_);
      }
      engine->slot_free_.notify_one();
    }
  } release{this};
  const auto started = Clock::now();
  auto past_deadline = [&] { return std::chrono::system_clock::now() >= deadline; };

  SegmentationResult result;
  result.queue_seconds = std::chrono::duration<double>(started - queued_at).count();
  ASSIGN_OR_RETURN(DatasetRecord dataset, store_->GetDataset(job.dataset));
  result.dataset = dataset.name;
  int64_t model_id = job.model_id;
  if (model_id == 0) {
    if (dataset.active_model_id == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "dataset '", dataset.name, "' has no active model: train one or promote one"));
    }
    model_id = dataset.active_model_id;
  }
  ASSIGN_OR_RETURN(result.model, store_->GetModel(model_id));
  if (result.model.dataset_id != dataset.id) {
    return absl::InvalidArgumentError(absl::StrCat("model ", model_id,
                                                   " belongs to another dataset than '",
                                                   dataset.name, "'"));
  }

  auto phase = Clock::now();
  SeriesVolume series;
  if (!job.stored_series_uid.empty()) {
    ASSIGN_OR_RETURN(StudyRecord study, store_->GetStudy(dataset.id, job.stored_series_uid));
    ASSIGN_OR_RETURN(LoadedStudy loaded, LoadStoredStudy(*files_, study, {}));
    series = std::move(loaded.series);
  } else {
    if (job.files.empty()) return absl::InvalidArgumentError("no DICOM files in the request");
    ASSIGN_OR_RETURN(std::vector<SeriesVolume> volumes, ReadSeries(job.files));
    if (volumes.size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "send one image series per request; these files hold ", volumes.size()));
    }
    series = std::move(volumes.front());
  }
  result.decode_seconds = SecondsSince(phase);
  if (past_deadline()) return absl::DeadlineExceededError("deadline passed while decoding");

  ASSIGN_OR_RETURN(std::shared_ptr<const Segmenter> segmenter, LoadModel(result.model));
  if (segmenter->spec().classes != static_cast<int64_t>(dataset.class_names.size())) {
    return absl::DataLossError(absl::StrCat("model ", model_id, " has ",
                                            segmenter->spec().classes,
                                            " classes; its dataset has ",
                                            dataset.class_names.size()));
  }
  phase = Clock::now();
  ASSIGN_OR_RETURN(LabelVolume labels, segmenter->Segment(series.image));
  result.inference_seconds = SecondsSince(phase);
  metrics_->ObserveInference(result.inference_seconds);
  if (past_deadline()) return absl::DeadlineExceededError("deadline passed during inference");

  phase = Clock::now();
  SegmentationWriteOptions write;
  write.class_names = dataset.class_names;
  write.algorithm_version = options_.version;
  write.model_version = absl::StrCat(dataset.name, "/v", result.model.version, "/job-",
                                     result.model.job_id);
  write.series_instance_uid = NewUid();
  write.sop_instance_uid = NewUid();
  ASSIGN_OR_RETURN(result.seg_bytes, WriteSegmentation(series, labels, write));
  result.encode_seconds = SecondsSince(phase);
  result.source_series_uid = series.series_instance_uid;
  result.seg_series_uid = write.series_instance_uid;
  result.seg_sop_instance_uid = write.sop_instance_uid;

  const VolumeGeometry& g = labels.geometry;
  const double voxel_ml = g.row_spacing_mm * g.col_spacing_mm * g.slice_spacing_mm / 1000.0;
  std::vector<int64_t> counts(dataset.class_names.size(), 0);
  for (uint8_t label : labels.voxels) {
    if (label < counts.size()) ++counts[label];
  }
  for (size_t k = 1; k < counts.size(); ++k) {
    result.classes.push_back(
        {dataset.class_names[k], counts[k], static_cast<double>(counts[k]) * voxel_ml});
  }
  return result;
}

}  // namespace miseg

// Serving: segments a series (sent or stored) with a dataset's active model or a given
// model, and writes the DICOM SEG to a staged file. Runs beside training, on the engine's
// own threads (`concurrency` of them), never on a gRPC thread. Admission is bounded: at
// most `concurrency` segmentations run and `queue` wait; beyond that Submit refuses at once
// with ResourceExhausted, and a job whose deadline passed while it waited ends with
// DeadlineExceeded without running. Loaded models stay in a small LRU cache.
//
// Thread safety: Submit and Segment may be called from any thread.
#ifndef MISEG_SERVER_DOMAIN_SEGMENTATION_ENGINE_H_
#define MISEG_SERVER_DOMAIN_SEGMENTATION_ENGINE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/train/inference.h"
#include "core/volume/dicom_series.h"
#include "server/metrics/metrics.h"
#include "server/store/file_store.h"
#include "server/store/store.h"
#include "server/domain/work_pool.h"

namespace miseg {

struct SegmentationEngineOptions {
  std::string device = "cpu";
  int concurrency = 1;
  int queue = 4;
  int cached_models = 2;
  int64_t batch_slices = 16;
  // Dynamic batching across concurrent jobs on the same model (InferenceOptions): their
  // slices go through forwards of at most max_batch_slices slices, the oldest batch waiting
  // at most batch_wait_ms for others. 0: off. Needs concurrency > 1; on a 2-core CPU it
  // did not raise throughput (bench/RESULTS.md, "Dynamic batching across Segment calls").
  int64_t max_batch_slices = 0;
  double batch_wait_ms = 0;
  // On a CUDA device: the network's forwards replay CUDA graphs (InferenceOptions).
  bool cuda_graphs = false;
  std::string version;  // miseg version, written as the SEG's algorithm version
  // Tests only: runs on the engine's thread before each admitted job, so a test can hold
  // the worker busy for exactly as long as it needs (no timing assumptions).
  std::function<void()> before_each_job;
};

struct SegmentationJob {
  std::string dataset;
  int64_t model_id = 0;            // 0: the dataset's active model
  std::string stored_series_uid;   // segment a stored study instead of files
  std::vector<DicomBuffer> files;  // sent files held in memory (the DICOM node)
  // Or sent files already on disk (streamed uploads), read one at a time.
  std::vector<std::string> file_paths;
  std::vector<std::string> file_names;  // for messages, one per path
};

struct ClassVolumeResult {
  std::string class_name;
  int64_t voxels = 0;
  double volume_ml = 0;
};

struct SegmentationResult {
  ModelRecord model;
  std::string dataset;
  std::string source_series_uid;
  std::string seg_series_uid;
  std::string seg_sop_instance_uid;
  // The Part-10 SEG, finished; removed with the result unless committed to the store.
  std::unique_ptr<StagedFile> seg_file;
  std::vector<ClassVolumeResult> classes;
  double queue_seconds = 0, decode_seconds = 0, inference_seconds = 0, encode_seconds = 0;
};

using SegmentationCallback = std::function<void(absl::StatusOr<SegmentationResult>)>;

// Active learning: the dataset's unlabeled studies scored by its active model.
struct SuggestedStudy {
  StudyRecord study;
  LabelingPriorityRecord priority;
};
struct SuggestionResult {
  ModelRecord model;
  std::vector<SuggestedStudy> ranked;  // every study scored, highest score first
};
using SuggestionCallback = std::function<void(absl::StatusOr<SuggestionResult>)>;

class SegmentationEngine {
 public:
  SegmentationEngine(Store* store, FileStore* files, ServerMetrics* metrics,
                     SegmentationEngineOptions options);

  // Admits the job (or refuses it at once with ResourceExhausted); `done` then runs once,
  // on an engine thread, with the outcome.
  absl::Status Submit(SegmentationJob job, std::chrono::system_clock::time_point deadline,
                      SegmentationCallback done);
  // Active learning (SuggestStudies): admitted as one job however many studies there are;
  // on an engine thread, scores every unlabeled, undamaged study of `dataset` with its
  // active model (core/train/labeling_priority.h), one study's pixels in memory at a time,
  // replaces the dataset's stored priorities and hands them to `done`, ranked.
  // FailedPrecondition without an active model; DeadlineExceeded between studies.
  absl::Status SubmitSuggestion(std::string dataset, std::chrono::system_clock::time_point deadline,
                                SuggestionCallback done);
  // The blocking form, for callers on threads of their own (the DICOM node).
  absl::StatusOr<SegmentationResult> Segment(SegmentationJob job,
                                             std::chrono::system_clock::time_point deadline);

 private:
  absl::StatusOr<SegmentationResult> Run(const SegmentationJob& job,
                                         std::chrono::system_clock::time_point deadline);
  absl::StatusOr<SuggestionResult> Suggest(const std::string& dataset,
                                           std::chrono::system_clock::time_point deadline);
  absl::Status Admit();  // ResourceExhausted when `concurrency + queue` jobs are admitted
  absl::StatusOr<std::shared_ptr<const Segmenter>> LoadModel(const ModelRecord& model);
  absl::StatusOr<ModelRecord> ResolveModel(const SegmentationJob& job,
                                           const DatasetRecord& dataset);
  absl::StatusOr<SeriesVolume> LoadSeries(const SegmentationJob& job, const DatasetRecord& dataset);
  absl::Status EncodeSeg(const SeriesVolume& series, const LabelVolume& labels,
                         const DatasetRecord& dataset, SegmentationResult& result);
  void Release();

  Store* const store_;
  FileStore* const files_;
  ServerMetrics* const metrics_;
  const SegmentationEngineOptions options_;

  absl::Mutex admission_mutex_;
  int admitted_ ABSL_GUARDED_BY(admission_mutex_) = 0;  // running + waiting

  absl::Mutex cache_mutex_;
  std::list<std::pair<int64_t, std::shared_ptr<const Segmenter>>> cache_
      ABSL_GUARDED_BY(cache_mutex_);  // most recent first

  WorkPool pool_;  // last: its threads stop before the members above go
};

// Per-class voxel counts and volumes of a label volume (class 0, background, left out).
std::vector<ClassVolumeResult> CountClassVolumes(const LabelVolume& labels,
                                                 const std::vector<std::string>& class_names);

}  // namespace miseg

#endif  // MISEG_SERVER_DOMAIN_SEGMENTATION_ENGINE_H_

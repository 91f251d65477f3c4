// Serving: segments a series (sent or stored) with a dataset's active model or a given
// model, and writes the DICOM SEG. Runs beside training. Admission is bounded: at most
// `concurrency` segmentations run and `queue` wait; beyond that the caller gets
// ResourceExhausted at once, and a request whose deadline passes while waiting gets
// DeadlineExceeded. Loaded models stay in a small LRU cache.
#ifndef MISEG_SERVER_SEGMENTATION_ENGINE_H_
#define MISEG_SERVER_SEGMENTATION_ENGINE_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dicom/dicom_series.h"
#include "core/train/inference.h"
#include "server/metrics.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {

struct SegmentationEngineOptions {
  std::string device = "cpu";
  int concurrency = 1;
  int queue = 4;
  int cached_models = 2;
  int64_t batch_slices = 16;
  std::string version;  // miseg version, written as the SEG's algorithm version
};

struct SegmentationJob {
  std::string dataset;
  int64_t model_id = 0;             // 0: the dataset's active model
  std::string stored_series_uid;    // segment a stored study instead of files
  std::vector<DicomBuffer> files;
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
  std::string seg_bytes;  // Part-10
  std::vector<ClassVolumeResult> classes;
  double queue_seconds = 0, decode_seconds = 0, inference_seconds = 0, encode_seconds = 0;
};

class SegmentationEngine {
 public:
  SegmentationEngine(Store* store, FileStore* files, ServerMetrics* metrics,
                     SegmentationEngineOptions options);

  absl::StatusOr<SegmentationResult> Segment(
      const SegmentationJob& job, std::chrono::system_clock::time_point deadline);

 private:
  absl::StatusOr<std::shared_ptr<const Segmenter>> LoadModel(const ModelRecord& model);

  Store* store_;
  FileStore* files_;
  ServerMetrics* metrics_;
  SegmentationEngineOptions options_;

  std::mutex admission_mutex_;
  std::condition_variable slot_free_;
  int running_ = 0;
  int waiting_ = 0;

  std::mutex cache_mutex_;
  std::list<std::pair<int64_t, std::shared_ptr<const Segmenter>>> cache_;  // most recent first
};

}  // namespace miseg

#endif  // MISEG_SERVER_SEGMENTATION_ENGINE_H_

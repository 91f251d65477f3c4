// The server's Prometheus metrics (prometheus-cpp), exposed on their own port. Names and
// units as Prometheus recommends (seconds, bytes, _total for counters); labels only of
// bounded cardinality (RPC method and code, job state, loss term, class index).
//
// Besides miseg's own, /metrics carries the standard process metrics every Prometheus
// exporter has (process_resident_memory_bytes, process_virtual_memory_bytes,
// process_cpu_seconds_total, process_open_fds, process_max_fds, process_start_time_seconds,
// process_threads), read from /proc/self at each scrape.
//
// Thread safety: every method may be called from any thread at once (prometheus-cpp's
// metrics are atomic and its families lock themselves).
#ifndef MISEG_SERVER_METRICS_METRICS_H_
#define MISEG_SERVER_METRICS_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace miseg {

class ServerMetrics {
 public:
  explicit ServerMetrics(const std::string& version);
  ~ServerMetrics();

  // Starts the HTTP endpoint (/metrics) on host:port; port 0 picks a free port. Returns
  // the bound port.
  absl::StatusOr<int> Serve(const std::string& address);
  // The filesystem of the data directory, read (statvfs) at each scrape:
  // miseg_data_dir_free_bytes (what the server may still write) and
  // miseg_data_dir_size_bytes. Call once, after Serve.
  void WatchDataDir(const std::string& path);

  // method: the RPC's short name ("Upload"); code: the gRPC status code name ("OK").
  void ObserveRpc(const std::string& method, const std::string& code, double seconds);
  // Streaming RPCs open now, by method: +1 when a stream starts, -1 when it ends
  // (miseg_grpc_active_streams{method}).
  void AddActiveStreams(const std::string& method, int delta);
  void CountUpload(int64_t bytes, int64_t stored, int64_t duplicate, int64_t refused);
  // Indexed by miseg.v1.JobState numbers 1..5.
  void SetJobsByState(const std::vector<std::pair<int, int64_t>>& counts);

  void ObserveTrainingStep(double seconds);
  // Data-parallel jobs: gradient all-reduce time per step.
  void ObserveAllReduce(double seconds);
  // The running job's compute seconds per step, by rank
  // (miseg_training_rank_compute_seconds{rank}); ranks beyond the vector are removed.
  void SetRankComputeSeconds(const std::vector<double>& seconds_by_rank);
  // The scheduler's workers by state, and their devices (live workers only).
  void SetWorkers(int64_t idle, int64_t busy, int64_t lost, int64_t free_devices,
                  int64_t busy_devices);
  void SetTrainingProgress(int64_t step, int64_t total_steps, double learning_rate);
  void SetTrainingLosses(double total, double supervised, double consistency,
                         double mutual_information);
  void SetValidationDice(const std::vector<double>& dice_per_class);
  void SetTrainingActive(bool active);

  void ObserveInference(double seconds);
  void SetInferenceQueueDepth(int64_t depth);
  void CountInferenceRejected();
  void ObserveModelLoad(double seconds);
  // Dynamic batching (--inference_max_batch_slices): the slices of each network forward.
  void ObserveInferenceBatch(int64_t slices);

  // The DICOM node. outcome: stored, refused, failed (instances); processed, failed
  // (series); delivered, failed (delivery attempts). state: pending, delivered, failed.
  void CountDicomInstance(const std::string& outcome);
  void CountDicomSeries(const std::string& outcome);
  void CountDeliveryAttempt(const std::string& outcome);
  void SetDeliveries(const std::string& state, int64_t count);
  // From the last instance of a series received to its SEG delivered.
  void ObserveDeliveryLatency(double seconds);

 public:
  struct State;  // public for the registration helpers in metrics.cc

 private:
  std::unique_ptr<State> state_;
};

}  // namespace miseg

#endif  // MISEG_SERVER_METRICS_METRICS_H_

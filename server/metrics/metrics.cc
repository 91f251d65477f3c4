#include "server/metrics/metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <mutex>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace miseg {
namespace {

const char* JobStateLabel(int state) {
  switch (state) {
    case 1: return "queued";
    case 2: return "running";
    case 3: return "succeeded";
    case 4: return "failed";
    case 5: return "cancelled";
  }
  return "unknown";
}

prometheus::Histogram::BucketBoundaries RpcBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

// The fields of /proc/self/stat after the command name (which may hold spaces and
// parentheses, so the split starts after its last ')'): element 0 is field 3 (state), so
// field n of proc(5) is element n - 3.
std::vector<std::string> ReadProcStat() {
  std::ifstream in("/proc/self/stat");
  std::string line;
  std::getline(in, line);
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return {};
  return absl::StrSplit(line.substr(close + 1), ' ', absl::SkipEmpty());
}

double StatField(const std::vector<std::string>& stat, int field) {
  double value = 0;
  const size_t index = static_cast<size_t>(field - 3);
  if (index < stat.size() && absl::SimpleAtod(stat[index], &value)) return value;
  return 0;
}

// Seconds since the epoch at which the system booted ("btime" of /proc/stat).
double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "btime ")) {
      double value = 0;
      if (absl::SimpleAtod(absl::StripPrefix(line, "btime "), &value)) return value;
    }
  }
  return 0;
}

int64_t CountOpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  int64_t count = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1;  // the descriptor of the listing itself
}

prometheus::MetricFamily OneSample(const std::string& name, const std::string& help,
                                   prometheus::MetricType type, double value) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

// The standard process metrics of Prometheus exporters (the names and meanings of the Go
// and Python clients' process collectors), read from /proc/self when scraped, so each
// scrape sees the values of that moment. Linux only, as the server is.
class ProcessCollector : public prometheus::Collectable {
 public:
  ProcessCollector()
      : ticks_per_second_(static_cast<double>(sysconf(_SC_CLK_TCK))),
        page_bytes_(static_cast<double>(sysconf(_SC_PAGESIZE))),
        start_time_seconds_(BootTimeSeconds() +
                            StatField(ReadProcStat(), /*starttime=*/22) / ticks_per_second_) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::MetricType;
    const std::vector<std::string> stat = ReadProcStat();
    const double cpu_seconds =
        (StatField(stat, /*utime=*/14) + StatField(stat, /*stime=*/15)) / ticks_per_second_;
    rlimit limit{};
    const double max_fds = getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY
                               ? static_cast<double>(limit.rlim_cur)
                               : 0;
    return {
        OneSample("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                  MetricType::Counter, cpu_seconds),
        OneSample("process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
                  static_cast<double>(CountOpenFds())),
        OneSample("process_max_fds", "Maximum number of open file descriptors.",
                  MetricType::Gauge, max_fds),
        OneSample("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                  MetricType::Gauge, StatField(stat, /*vsize=*/23)),
        OneSample("process_resident_memory_bytes", "Resident memory size in bytes.",
                  MetricType::Gauge, StatField(stat, /*rss=*/24) * page_bytes_),
        OneSample("process_start_time_seconds",
                  "Start time of the process since unix epoch in seconds.", MetricType::Gauge,
                  start_time_seconds_),
        OneSample("process_threads", "Number of OS threads in the process.", MetricType::Gauge,
                  StatField(stat, /*num_threads=*/20)),
    };
  }

 private:
  // Constant after construction.
  const double ticks_per_second_;
  const double page_bytes_;
  const double start_time_seconds_;
};

// The data directory's filesystem, read when scraped: a disk filling up shows (and alerts,
// deploy/prometheus) before uploads and checkpoints start failing.
class DataDirCollector : public prometheus::Collectable {
 public:
  explicit DataDirCollector(std::string path) : path_(std::move(path)) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    struct statvfs fs;
    if (::statvfs(path_.c_str(), &fs) != 0) return {};
    const double unit = static_cast<double>(fs.f_frsize);
    return {
        OneSample("miseg_data_dir_free_bytes",
                  "Bytes the server may still write on the data directory's filesystem.",
                  prometheus::MetricType::Gauge, static_cast<double>(fs.f_bavail) * unit),
        OneSample("miseg_data_dir_size_bytes", "Size of the data directory's filesystem.",
                  prometheus::MetricType::Gauge, static_cast<double>(fs.f_blocks) * unit),
    };
  }

 private:
  const std::string path_;  // constant after construction
};

}  // namespace

struct ServerMetrics::State {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::shared_ptr<ProcessCollector> process = std::make_shared<ProcessCollector>();
  std::shared_ptr<DataDirCollector> data_dir;
  std::unique_ptr<prometheus::Exposer> exposer;

  prometheus::Family<prometheus::Counter>* rpcs = nullptr;
  prometheus::Family<prometheus::Histogram>* rpc_latency = nullptr;
  prometheus::Family<prometheus::Gauge>* active_streams = nullptr;
  prometheus::Counter* upload_bytes = nullptr;
  prometheus::Family<prometheus::Counter>* upload_instances = nullptr;
  prometheus::Family<prometheus::Gauge>* jobs = nullptr;
  prometheus::Histogram* step_time = nullptr;
  prometheus::Gauge* step = nullptr;
  prometheus::Gauge* total_steps = nullptr;
  prometheus::Gauge* learning_rate = nullptr;
  prometheus::Gauge* training_active = nullptr;
  prometheus::Family<prometheus::Gauge>* loss = nullptr;
  prometheus::Family<prometheus::Gauge>* dice = nullptr;
  prometheus::Histogram* inference_latency = nullptr;
  prometheus::Gauge* queue_depth = nullptr;
  prometheus::Counter* rejected = nullptr;
  prometheus::Histogram* model_load = nullptr;
  prometheus::Histogram* inference_batch = nullptr;
  prometheus::Family<prometheus::Counter>* dicom_instances = nullptr;
  prometheus::Family<prometheus::Counter>* dicom_series = nullptr;
  prometheus::Family<prometheus::Counter>* delivery_attempts = nullptr;
  prometheus::Family<prometheus::Gauge>* deliveries = nullptr;
  prometheus::Histogram* delivery_latency = nullptr;
  prometheus::Family<prometheus::Gauge>* workers = nullptr;
  prometheus::Family<prometheus::Gauge>* worker_devices = nullptr;
  prometheus::Histogram* allreduce_time = nullptr;
  prometheus::Family<prometheus::Gauge>* rank_compute = nullptr;
  absl::Mutex rank_mutex;  // the rank gauges in use
  std::vector<prometheus::Gauge*> rank_gauges ABSL_GUARDED_BY(rank_mutex);
};

namespace {

// gRPC: requests, latency and open streams by method.
void RegisterRpcMetrics(ServerMetrics::State& state, prometheus::Registry& r) {
  state.rpcs = &prometheus::BuildCounter()
                    .Name("miseg_grpc_requests_total")
                    .Help("RPCs handled, by method and status code")
                    .Register(r);
  state.rpc_latency = &prometheus::BuildHistogram()
                           .Name("miseg_grpc_request_duration_seconds")
                           .Help("Time to handle an RPC, by method")
                           .Register(r);
  state.active_streams = &prometheus::BuildGauge()
                              .Name("miseg_grpc_active_streams")
                              .Help("Streaming RPCs open now, by method")
                              .Register(r);
  for (const char* method : {"Upload", "WatchJob", "Segment"}) {
    state.active_streams->Add({{"method", method}});
  }
}

// Upload: bytes and instances by outcome.
void RegisterUploadMetrics(ServerMetrics::State& state, prometheus::Registry& r) {
  state.upload_bytes = &prometheus::BuildCounter()
                            .Name("miseg_upload_received_bytes_total")
                            .Help("Bytes of DICOM files received by Upload")
                            .Register(r)
                            .Add({});
  state.upload_instances = &prometheus::BuildCounter()
                                .Name("miseg_upload_instances_total")
                                .Help("DICOM instances received by Upload, by outcome")
                                .Register(r);
  for (const char* outcome : {"stored", "duplicate", "refused"}) {
    state.upload_instances->Add({{"outcome", outcome}});
  }
}

// Jobs by state and the running job's progress.
void RegisterTrainingMetrics(ServerMetrics::State& state, prometheus::Registry& r) {
  state.jobs =
      &prometheus::BuildGauge().Name("miseg_jobs").Help("Training jobs, by state").Register(r);
  for (int s = 1; s <= 5; ++s) state.jobs->Add({{"state", JobStateLabel(s)}});
  state.step_time = &prometheus::BuildHistogram()
                         .Name("miseg_training_step_duration_seconds")
                         .Help("Time of one optimisation step of the running job")
                         .Register(r)
                         .Add({}, prometheus::Histogram::BucketBoundaries{
                                      0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10});
  state.step = &prometheus::BuildGauge()
                    .Name("miseg_training_step")
                    .Help("Steps completed by the running job")
                    .Register(r)
                    .Add({});
  state.total_steps = &prometheus::BuildGauge()
                           .Name("miseg_training_total_steps")
                           .Help("Steps the running job will run in all")
                           .Register(r)
                           .Add({});
  state.learning_rate = &prometheus::BuildGauge()
                             .Name("miseg_training_learning_rate")
                             .Help("Learning rate of the running job's last step")
                             .Register(r)
                             .Add({});
  state.training_active = &prometheus::BuildGauge()
                               .Name("miseg_training_active")
                               .Help("1 while a job is training, else 0")
                               .Register(r)
                               .Add({});
  state.loss = &prometheus::BuildGauge()
                    .Name("miseg_training_loss")
                    .Help("Loss terms of the running job's last step, by term")
                    .Register(r);
  state.dice = &prometheus::BuildGauge()
                    .Name("miseg_training_validation_dice_ratio")
                    .Help("Validation Dice of the running job, by foreground class index")
                    .Register(r);
}

// Segmentation latency, queue and model loading.
void RegisterInferenceMetrics(ServerMetrics::State& state, prometheus::Registry& r) {
  state.inference_latency = &prometheus::BuildHistogram()
                                 .Name("miseg_inference_duration_seconds")
                                 .Help("Time to segment one series, queueing excluded")
                                 .Register(r)
                                 .Add({}, RpcBuckets());
  state.queue_depth = &prometheus::BuildGauge()
                           .Name("miseg_inference_queue_depth")
                           .Help("Segmentations running or waiting")
                           .Register(r)
                           .Add({});
  state.rejected = &prometheus::BuildCounter()
                        .Name("miseg_inference_rejected_total")
                        .Help("Segmentations refused because the queue was full")
                        .Register(r)
                        .Add({});
  state.model_load = &prometheus::BuildHistogram()
                          .Name("miseg_model_load_duration_seconds")
                          .Help("Time to load a model into the inference cache")
                          .Register(r)
                          .Add({}, RpcBuckets());
  // Dynamic batching: how full the combined forwards are (slices; powers of two).
  state.inference_batch = &prometheus::BuildHistogram()
                               .Name("miseg_inference_batch_slices")
                               .Help("Slices per network forward with dynamic batching on")
                               .Register(r)
                               .Add({}, prometheus::Histogram::BucketBoundaries{
                                            1, 2, 4, 8, 16, 32, 64, 128, 256, 512});
}

// The DICOM node: received instances and series, SEG deliveries.
void RegisterDicomNodeMetrics(ServerMetrics::State& state, prometheus::Registry& r) {
  state.dicom_instances = &prometheus::BuildCounter()
                               .Name("miseg_dicom_received_instances_total")
                               .Help("Instances received by C-STORE, by outcome")
                               .Register(r);
  for (const char* outcome : {"stored", "refused", "failed"})
    state.dicom_instances->Add({{"outcome", outcome}});
  state.dicom_series = &prometheus::BuildCounter()
                            .Name("miseg_dicom_series_total")
                            .Help("Complete series received and routed, by outcome")
                            .Register(r);
  for (const char* outcome : {"processed", "failed"})
    state.dicom_series->Add({{"outcome", outcome}});
  state.delivery_attempts = &prometheus::BuildCounter()
                                 .Name("miseg_delivery_attempts_total")
                                 .Help("Attempts to deliver a SEG to a destination, by outcome")
                                 .Register(r);
  for (const char* outcome : {"delivered", "failed"})
    state.delivery_attempts->Add({{"outcome", outcome}});
  state.deliveries = &prometheus::BuildGauge()
                          .Name("miseg_deliveries")
                          .Help("SEG deliveries in the outbox, by state")
                          .Register(r);
  for (const char* s : {"pending", "delivered", "failed"}) state.deliveries->Add({{"state", s}});
  state.delivery_latency = &prometheus::BuildHistogram()
                                .Name("miseg_delivery_latency_seconds")
                                .Help(
                                    "From the last instance of a series received to its SEG "
                                    "delivered")
                                .Register(r)
                                .Add({}, prometheus::Histogram::BucketBoundaries{
                                             0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600});
}

// Workers and data-parallel training (the scheduler's view).
void RegisterClusterMetrics(ServerMetrics::State& state, prometheus::Registry& r) {
  state.workers = &prometheus::BuildGauge()
                       .Name("miseg_workers")
                       .Help("Registered workers, by state (idle, busy, lost)")
                       .Register(r);
  for (const char* s : {"idle", "busy", "lost"}) state.workers->Add({{"state", s}});
  state.worker_devices = &prometheus::BuildGauge()
                              .Name("miseg_worker_devices")
                              .Help("Devices of live workers, by state (free, busy)")
                              .Register(r);
  for (const char* s : {"free", "busy"}) state.worker_devices->Add({{"state", s}});
  state.allreduce_time = &prometheus::BuildHistogram()
                              .Name("miseg_training_allreduce_seconds")
                              .Help("Time per step a data-parallel job spends all-reducing "
                                    "gradients (mean over a logging window)")
                              .Register(r)
                              .Add({}, prometheus::Histogram::BucketBoundaries{
                                           0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25, 0.5, 1, 2.5});
  state.rank_compute = &prometheus::BuildGauge()
                            .Name("miseg_training_rank_compute_seconds")
                            .Help("Seconds per step each rank of the running job computed "
                                  "(its step less the all-reduce), by rank")
                            .Register(r);
}

}  // namespace

ServerMetrics::ServerMetrics(const std::string& version) : state_(std::make_unique<State>()) {
  prometheus::Registry& r = *state_->registry;
  prometheus::BuildGauge()
      .Name("miseg_build_info")
      .Help("Build of the running server; the value is always 1")
      .Register(r)
      .Add({{"version", version}})
      .Set(1);
  RegisterRpcMetrics(*state_, r);
  RegisterUploadMetrics(*state_, r);
  RegisterTrainingMetrics(*state_, r);
  RegisterInferenceMetrics(*state_, r);
  RegisterDicomNodeMetrics(*state_, r);
  RegisterClusterMetrics(*state_, r);
}

ServerMetrics::~ServerMetrics() = default;

void ServerMetrics::CountDicomInstance(const std::string& outcome) {
  state_->dicom_instances->Add({{"outcome", outcome}}).Increment();
}
void ServerMetrics::CountDicomSeries(const std::string& outcome) {
  state_->dicom_series->Add({{"outcome", outcome}}).Increment();
}
void ServerMetrics::CountDeliveryAttempt(const std::string& outcome) {
  state_->delivery_attempts->Add({{"outcome", outcome}}).Increment();
}
void ServerMetrics::SetDeliveries(const std::string& state, int64_t count) {
  state_->deliveries->Add({{"state", state}}).Set(static_cast<double>(count));
}
void ServerMetrics::ObserveDeliveryLatency(double seconds) {
  state_->delivery_latency->Observe(seconds);
}

absl::StatusOr<int> ServerMetrics::Serve(const std::string& address) {
  try {
    state_->exposer = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  state_->exposer->RegisterCollectable(state_->registry);
  state_->exposer->RegisterCollectable(state_->process);
  std::vector<int> ports = state_->exposer->GetListeningPorts();
  if (ports.empty()) return absl::UnavailableError("metrics endpoint has no listening port");
  return ports.front();
}

void ServerMetrics::WatchDataDir(const std::string& path) {
  if (!state_->exposer || state_->data_dir) return;
  state_->data_dir = std::make_shared<DataDirCollector>(path);
  state_->exposer->RegisterCollectable(state_->data_dir);
}

void ServerMetrics::ObserveRpc(const std::string& method, const std::string& code,
                               double seconds) {
  state_->rpcs->Add({{"method", method}, {"code", code}}).Increment();
  state_->rpc_latency->Add({{"method", method}}, RpcBuckets()).Observe(seconds);
}

void ServerMetrics::AddActiveStreams(const std::string& method, int delta) {
  state_->active_streams->Add({{"method", method}}).Increment(static_cast<double>(delta));
}

void ServerMetrics::CountUpload(int64_t bytes, int64_t stored, int64_t duplicate,
                                int64_t refused) {
  state_->upload_bytes->Increment(static_cast<double>(bytes));
  state_->upload_instances->Add({{"outcome", "stored"}}).Increment(static_cast<double>(stored));
  state_->upload_instances->Add({{"outcome", "duplicate"}})
      .Increment(static_cast<double>(duplicate));
  state_->upload_instances->Add({{"outcome", "refused"}})
      .Increment(static_cast<double>(refused));
}

void ServerMetrics::SetJobsByState(const std::vector<std::pair<int, int64_t>>& counts) {
  for (const auto& [state, count] : counts) {
    state_->jobs->Add({{"state", JobStateLabel(state)}}).Set(static_cast<double>(count));
  }
}

void ServerMetrics::ObserveTrainingStep(double seconds) { state_->step_time->Observe(seconds); }

void ServerMetrics::ObserveAllReduce(double seconds) { state_->allreduce_time->Observe(seconds); }

void ServerMetrics::SetRankComputeSeconds(const std::vector<double>& seconds_by_rank) {
  absl::MutexLock lock(&state_->rank_mutex);
  auto& gauges = state_->rank_gauges;
  while (gauges.size() > seconds_by_rank.size()) {
    state_->rank_compute->Remove(gauges.back());
    gauges.pop_back();
  }
  while (gauges.size() < seconds_by_rank.size()) {
    gauges.push_back(&state_->rank_compute->Add({{"rank", std::to_string(gauges.size())}}));
  }
  for (size_t r = 0; r < seconds_by_rank.size(); ++r) gauges[r]->Set(seconds_by_rank[r]);
}

void ServerMetrics::SetWorkers(int64_t idle, int64_t busy, int64_t lost, int64_t free_devices,
                               int64_t busy_devices) {
  state_->workers->Add({{"state", "idle"}}).Set(static_cast<double>(idle));
  state_->workers->Add({{"state", "busy"}}).Set(static_cast<double>(busy));
  state_->workers->Add({{"state", "lost"}}).Set(static_cast<double>(lost));
  state_->worker_devices->Add({{"state", "free"}}).Set(static_cast<double>(free_devices));
  state_->worker_devices->Add({{"state", "busy"}}).Set(static_cast<double>(busy_devices));
}

void ServerMetrics::SetTrainingProgress(int64_t step, int64_t total_steps,
                                        double learning_rate) {
  state_->step->Set(static_cast<double>(step));
  state_->total_steps->Set(static_cast<double>(total_steps));
  state_->learning_rate->Set(learning_rate);
}

void ServerMetrics::SetTrainingLosses(double total, double supervised, double consistency,
                                      double mutual_information) {
  state_->loss->Add({{"term", "total"}}).Set(total);
  state_->loss->Add({{"term", "supervised"}}).Set(supervised);
  state_->loss->Add({{"term", "consistency"}}).Set(consistency);
  state_->loss->Add({{"term", "mutual_information"}}).Set(mutual_information);
}

void ServerMetrics::SetValidationDice(const std::vector<double>& dice_per_class) {
  for (size_t i = 0; i < dice_per_class.size(); ++i) {
    state_->dice->Add({{"class_index", std::to_string(i + 1)}}).Set(dice_per_class[i]);
  }
}

void ServerMetrics::SetTrainingActive(bool active) {
  state_->training_active->Set(active ? 1 : 0);
}

void ServerMetrics::ObserveInference(double seconds) {
  state_->inference_latency->Observe(seconds);
}

void ServerMetrics::SetInferenceQueueDepth(int64_t depth) {
  state_->queue_depth->Set(static_cast<double>(depth));
}

void ServerMetrics::CountInferenceRejected() { state_->rejected->Increment(); }

void ServerMetrics::ObserveModelLoad(double seconds) { state_->model_load->Observe(seconds); }

void ServerMetrics::ObserveInferenceBatch(int64_t slices) {
  state_->inference_batch->Observe(static_cast<double>(slices));
}

}  // namespace miseg

#include "server/jobs/job_runner.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/train/blas.h"
#include "server/cluster/local_rank_io.h"
#include "core/common/unix_time.h"
#include "server/log.h"

namespace miseg {

JobRunner::JobRunner(Store* store, FileStore* files, ServerMetrics* metrics, EventHub* hub,
                     JobRunnerOptions options)
    : store_(store), metrics_(metrics), hub_(hub), options_(std::move(options)) {
  SchedulerEvents events;
  events.append = [this](int64_t job_id, int64_t step, v1::JobEvent event) {
    (void)AppendEvent(job_id, step, std::move(event));
  };
  events.jobs_changed = [this] { RefreshJobGauges(); };
  events.workers_changed = [metrics](int64_t idle, int64_t busy, int64_t lost, int64_t free,
                                     int64_t used) {
    metrics->SetWorkers(idle, busy, lost, free, used);
  };
  scheduler_ = std::make_unique<Scheduler>(store, std::move(events), options_.scheduler);
  JobHostOptions host_options;
  host_options.work_dir = options_.work_dir;
  host_options.collective_timeout = options_.collective_timeout;
  host_options.verify_replicas = options_.verify_replicas;
  host_options.checkpoint_retention = options_.checkpoint_retention;
  host_ = std::make_unique<JobHost>(
      store, files, scheduler_.get(), metrics,
      [this](int64_t job_id, int64_t step, v1::JobEvent event) {
        return AppendEvent(job_id, step, std::move(event));
      },
      [this](int64_t job_id, int64_t step, const v1::JobEvent& event) {
        hub_->Publish(job_id, step, event);
      },
      host_options);
}

JobRunner::~JobRunner() { Shutdown(); }

absl::Status JobRunner::Start() {
  std::error_code ec;
  // What a killed server's ranks were writing (attempt files, partial uploads of remote
  // ranks) belongs to attempts that are over.
  for (const char* dir : {"/scratch", "/incoming"}) {
    std::filesystem::remove_all(options_.work_dir + dir, ec);
  }
  for (const char* dir : {"/checkpoints", "/models", "/scratch", "/incoming"}) {
    std::filesystem::create_directories(options_.work_dir + dir, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot create ", options_.work_dir, dir, ": ", ec.message()));
    }
  }
  const int cpu_devices = static_cast<int>(
      std::count_if(options_.devices.begin(), options_.devices.end(),
                    [](const std::string& d) { return absl::StartsWith(d, "cpu"); }));
  if (cpu_devices > 1) {
    if (const BlasInfo blas = DescribeBlas(); !BlasSafeForThreads(blas)) {
      Log(absl::StrCat("warning: ", cpu_devices, " CPU training devices share a BLAS that is "
                       "not thread safe (", blas.config, "): it is serialised, so ranks and "
                       "jobs on them take turns in it; see core/train/blas.h"));
    }
  }
  ASSIGN_OR_RETURN(int requeued, store_->RequeueRunningJobs());
  (void)requeued;
  host_->ApplyCheckpointRetention();  // jobs that finished under another setting, or crashed
  RefreshJobGauges();
  scheduler_->Start();
  if (options_.devices.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string worker_id,
                   scheduler_->RegisterWorker(options_.local_worker_name, options_.devices,
                                              options_.rendezvous_host, /*local=*/true));
  absl::MutexLock lock(&threads_mutex_);
  for (size_t slot = 0; slot < options_.devices.size(); ++slot) {
    threads_.emplace_back([this, worker_id, slot] { DeviceLoop(worker_id, static_cast<int>(slot)); });
  }
  return absl::OkStatus();
}

void JobRunner::Wake() { scheduler_->Wake(); }

void JobRunner::CancelRunning(int64_t job_id) { scheduler_->CancelRunning(job_id); }

void JobRunner::RequestStop() { scheduler_->RequestStop(); }

void JobRunner::Shutdown() {
  absl::MutexLock lock(&threads_mutex_);
  RequestStop();
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
  threads_.clear();
}

void JobRunner::DeviceLoop(const std::string& worker_id, int slot) {
  RankRunnerOptions rank_options;
  rank_options.rendezvous_host = options_.rendezvous_host;
  rank_options.training_threads = options_.training_threads;
  rank_options.cuda_graphs = options_.training_cuda_graphs;
  rank_options.scratch_dir = options_.work_dir + "/scratch";
  rank_options.after_step_event = options_.after_step_event;
  while (std::optional<LocalRank> local = scheduler_->AwaitLocalRank(worker_id, slot)) {
    const v1::RankAssignment& rank = local->assignment;
    Log(absl::StrCat("job ", rank.job_id(), ": rank ", rank.rank(), "/", rank.world_size(),
                     " started on ", options_.local_worker_name, "/", rank.device()));
    RefreshJobGauges();
    LocalRankIo io(host_.get());
    const RankResult result = RunRank(rank, io, rank_options, local->stop.get());
    (void)scheduler_->EndRank(worker_id, rank, result.outcome, result.message);
    RefreshJobGauges();
  }
}

absl::Status JobRunner::AppendEvent(int64_t job_id, int64_t step, v1::JobEvent event) {
  JobEventRecord record;
  record.job_id = job_id;
  record.step = step;
  record.unix_ms = NowUnixMs();
  event.set_job_id(job_id);
  event.set_unix_ms(record.unix_ms);
  // The sequence is the store's; the payload carries 0 and readers fill it in.
  record.payload = event.SerializeAsString();
  absl::StatusOr<std::vector<JobEventRecord>> stored =
      store_->AppendJobEvents(job_id, {std::move(record)});
  if (!stored.ok()) return stored.status();
  // A job that just failed or was cancelled has its checkpoints trimmed to
  // --checkpoint_retention before anyone hears of its end.
  if (event.has_state() && (event.state().state() == v1::JOB_STATE_FAILED ||
                            event.state().state() == v1::JOB_STATE_CANCELLED)) {
    host_->ApplyCheckpointRetention();
  }
  // Stored first, then pushed: a watcher that misses the push finds it in the store.
  if (!stored->empty()) event.set_sequence(stored->front().sequence);
  hub_->Publish(job_id, step, event);
  return absl::OkStatus();
}

void JobRunner::RefreshJobGauges() {
  absl::StatusOr<std::vector<std::pair<StoredJobState, int64_t>>> counts =
      store_->CountJobsByState();
  if (counts.ok()) {
    std::vector<std::pair<int, int64_t>> by_state;
    int64_t running = 0;
    for (const auto& [state, count] : *counts) {
      by_state.emplace_back(static_cast<int>(state), count);
      if (state == StoredJobState::kRunning) running = count;
    }
    metrics_->SetJobsByState(by_state);
    metrics_->SetTrainingActive(running > 0);
  }
}

}  // namespace miseg

// The server's training side: the scheduler that places jobs' ranks on workers, the host
// of the ranks' I/O, and the local worker, which trains ranks on the server's own devices
// (one thread per device). Remote workers (miseg-worker) reach the same scheduler and host
// through the WorkerService.
//
// A job checkpoints every checkpoint_every steps (rank 0 writes the file atomically, then
// the step is committed); a server killed mid-job finds it running at the next start, puts
// it back in the queue and resumes it from its last checkpoint, dropping the events of the
// steps it will run again. Every step and validation is stored as an event before
// watchers are woken, so a late or reconnecting watcher sees the whole history.
//
// Jobs on different devices are independent: every random draw of a job comes from
// generators its trainer owns, seeded from the job's seed, so two jobs run at once give
// the same results as each run alone (with the same training_threads), provided the BLAS
// may be called from two threads at once (core/train/blas.h: Debian's serial OpenBLAS may
// not; Start logs a warning when several CPU devices would share it).
#ifndef MISEG_SERVER_JOBS_JOB_RUNNER_H_
#define MISEG_SERVER_JOBS_JOB_RUNNER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "miseg/v1/miseg.pb.h"
#include "server/cluster/job_host.h"
#include "server/cluster/scheduler.h"
#include "server/jobs/event_hub.h"
#include "server/metrics/metrics.h"
#include "server/rank/rank_runner.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {

struct JobRunnerOptions {
  std::vector<std::string> devices = {"cpu"};  // the local worker's; empty: none
  std::string work_dir;                         // checkpoints/ and models/ go here
  int training_threads = 0;                     // intra-op CPU threads; 0 = LibTorch default
  bool training_cuda_graphs = false;            // CUDA devices: the step as a CUDA graph
  std::string local_worker_name = "local";
  // Where local ranks 0 host a job's rendezvous: reachable by the remote workers.
  std::string rendezvous_host = "127.0.0.1";
  SchedulerOptions scheduler;
  absl::Duration collective_timeout = absl::Seconds(60);
  bool verify_replicas = false;  // debug: ranks compare parameter hashes every step
  CheckpointRetention checkpoint_retention = CheckpointRetention::kAll;
  // Test hook, empty in the server: called on rank 0's thread after the event of a step is
  // stored and published, before the next step runs. It may block (every rank then waits
  // in the next collective) and may call CancelRunning, RequestStop or the store; tests
  // use it to act at a known step.
  std::function<void(int64_t job_id, int64_t step)> after_step_event;
};

// Thread safety: every public method may be called from any thread; Start once, before
// the others.
class JobRunner {
 public:
  // store, files, metrics and hub must outlive the runner.
  JobRunner(Store* store, FileStore* files, ServerMetrics* metrics, EventHub* hub,
            JobRunnerOptions options);
  ~JobRunner();  // Shutdown()
  JobRunner(const JobRunner&) = delete;
  JobRunner& operator=(const JobRunner&) = delete;

  // Requeues jobs a crash left running, registers the local worker and starts it.
  absl::Status Start() ABSL_LOCKS_EXCLUDED(threads_mutex_);
  // A job was queued.
  void Wake();
  // Cancel a running job within a step (the store already has cancel_requested).
  void CancelRunning(int64_t job_id);
  // SIGTERM: running jobs stop within a step, checkpoint and go back to the queue; the
  // local worker exits. RequestStop returns at once; Shutdown blocks until the local
  // worker's threads have exited.
  void RequestStop();
  void Shutdown() ABSL_LOCKS_EXCLUDED(threads_mutex_);

  // Appends one event to a job's history and wakes watchers.
  absl::Status AppendEvent(int64_t job_id, int64_t step, v1::JobEvent event);
  // Jobs by state into the metrics.
  void RefreshJobGauges();

  Scheduler& scheduler() { return *scheduler_; }
  JobHost& host() { return *host_; }

 private:
  void DeviceLoop(const std::string& worker_id, int slot);

  Store* const store_;
  ServerMetrics* const metrics_;
  EventHub* const hub_;
  const JobRunnerOptions options_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<JobHost> host_;

  // Start and Shutdown only; held while Shutdown joins, so that a second Shutdown also
  // returns only once the threads have exited. Never taken by a device thread.
  absl::Mutex threads_mutex_;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(threads_mutex_);
};

}  // namespace miseg

#endif  // MISEG_SERVER_JOBS_JOB_RUNNER_H_

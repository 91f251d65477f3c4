// Runs training jobs from the durable queue in SQLite: one worker thread per device, each
// taking the oldest queued job. A job checkpoints every checkpoint_every steps (atomic file,
// then the step is committed); a server killed mid-job finds it running at the next start,
// puts it back in the queue and resumes it from its last checkpoint, dropping the events of
// the steps it will run again. Every step and validation is stored as an event before
// watchers are woken, so a late or reconnecting watcher sees the whole history.
//
// Jobs on different workers are independent: every random draw of a job comes from
// generators its trainer owns, seeded from the job's seed, so two jobs run at once give
// the same results as each run alone (with the same training_threads), provided the BLAS
// may be called from two threads at once (core/train/blas.h: Debian's serial OpenBLAS may
// not; Start logs a warning when several CPU workers would share it).
#ifndef MISEG_SERVER_JOB_RUNNER_H_
#define MISEG_SERVER_JOB_RUNNER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "miseg/v1/miseg.pb.h"
#include "server/event_hub.h"
#include "server/metrics.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {

struct JobRunnerOptions {
  std::vector<std::string> devices = {"cpu"};  // one worker each
  std::string work_dir;                         // checkpoints/ and models/ go here
  int training_threads = 0;                     // intra-op CPU threads; 0 = LibTorch default
  // Test hook, empty in the server: called on the job's worker thread after the event of a
  // step is stored and published, before the next step runs. It may block (the job waits
  // for it) and may call CancelRunning, RequestStop or the store; tests use it to act at a
  // known step.
  std::function<void(int64_t job_id, int64_t step)> after_step_event;
};

// Thread safety: every public method may be called from any thread; Start once, before
// the others. The workers are the only threads that train, store a job's progress and call
// the step hook, and they do so without holding mutex_. mutex_ guards what the workers and
// the callers share (the wake generation, the stop flag, the running jobs' cancel flags);
// it is a leaf lock: nothing is called, and no other lock taken, while it is held, so
// Wake, CancelRunning and RequestStop never wait for a training step.
class JobRunner {
 public:
  // store, files, metrics and hub must outlive the runner.
  JobRunner(Store* store, FileStore* files, ServerMetrics* metrics, EventHub* hub,
            JobRunnerOptions options);
  ~JobRunner();  // Shutdown()
  JobRunner(const JobRunner&) = delete;
  JobRunner& operator=(const JobRunner&) = delete;

  // Requeues jobs a crash left running and starts the workers.
  absl::Status Start() ABSL_LOCKS_EXCLUDED(workers_mutex_);
  // A job was queued.
  void Wake() ABSL_LOCKS_EXCLUDED(mutex_);
  // Cancel a running job within a step (the store already has cancel_requested).
  void CancelRunning(int64_t job_id) ABSL_LOCKS_EXCLUDED(mutex_);
  // SIGTERM: running jobs stop within a step, checkpoint and go back to the queue; the
  // workers exit. RequestStop returns at once; Shutdown blocks until the workers have exited.
  void RequestStop() ABSL_LOCKS_EXCLUDED(mutex_);
  void Shutdown() ABSL_LOCKS_EXCLUDED(workers_mutex_, mutex_);

  // Appends one event to a job's history and wakes watchers.
  absl::Status AppendEvent(int64_t job_id, int64_t step, v1::JobEvent event);
  // Jobs by state into the metrics.
  void RefreshJobGauges();

 private:
  // How a job left its worker, besides errors.
  enum class JobEnd {
    kSucceeded,
    kCancelled,    // by the user (CancelRunning, or cancel_requested when claimed)
    kInterrupted,  // by RequestStop: back to the queue, resumes from its checkpoint
  };
  // A job on a worker. cancel lives in the worker's RunJob frame, registered in running_
  // for as long as the job runs.
  struct RunningJob {
    std::atomic<bool>* cancel = nullptr;
    bool by_user = false;
  };

  void WorkerLoop(const std::string& device);
  void RunJob(const JobRecord& job, const std::string& device);
  absl::StatusOr<JobEnd> TrainJob(const JobRecord& job, const std::string& device,
                                  std::atomic<bool>* cancel);
  bool CancelledByUser(int64_t job_id) ABSL_LOCKS_EXCLUDED(mutex_);

  // Constant after construction.
  Store* const store_;
  FileStore* const files_;
  ServerMetrics* const metrics_;
  EventHub* const hub_;
  const JobRunnerOptions options_;

  absl::Mutex mutex_;
  int64_t wake_generation_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::map<int64_t, RunningJob> running_ ABSL_GUARDED_BY(mutex_);  // by job id

  // Start and Shutdown only; held while Shutdown joins, so that a second Shutdown also
  // returns only once the workers have exited. Never taken by a worker.
  absl::Mutex workers_mutex_ ABSL_ACQUIRED_BEFORE(mutex_);
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(workers_mutex_);
};

}  // namespace miseg

#endif  // MISEG_SERVER_JOB_RUNNER_H_

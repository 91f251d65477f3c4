// Runs training jobs from the durable queue in SQLite: one worker thread per device, each
// taking the oldest queued job. A job checkpoints every checkpoint_every steps (atomic file,
// then the step is committed); a server killed mid-job finds it running at the next start,
// puts it back in the queue and resumes it from its last checkpoint, dropping the events of
// the steps it will run again. Every step and validation is stored as an event before
// watchers are woken, so a late or reconnecting watcher sees the whole history.
#ifndef MISEG_SERVER_JOB_RUNNER_H_
#define MISEG_SERVER_JOB_RUNNER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
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
};

class JobRunner {
 public:
  JobRunner(Store* store, FileStore* files, ServerMetrics* metrics, EventHub* hub,
            JobRunnerOptions options);
  ~JobRunner();

  // Requeues jobs a crash left running and starts the workers.
  absl::Status Start();
  // A job was queued.
  void Wake();
  // Cancel a running job within a step (the store already has cancel_requested).
  void CancelRunning(int64_t job_id);
  // SIGTERM: running jobs stop within a step, checkpoint and go back to the queue; the
  // workers exit. RequestStop returns at once; Shutdown blocks until the workers have exited.
  void RequestStop();
  void Shutdown();

  // Appends one event to a job's history and wakes watchers.
  absl::Status AppendEvent(int64_t job_id, int64_t step, v1::JobEvent event);
  // Jobs by state into the metrics.
  void RefreshJobGauges();

 private:
  void WorkerLoop(const std::string& device);
  void RunJob(const JobRecord& job, const std::string& device);
  absl::Status TrainJob(const JobRecord& job, const std::string& device,
                        std::atomic<bool>* cancel);

  Store* store_;
  FileStore* files_;
  ServerMetrics* metrics_;
  EventHub* hub_;
  JobRunnerOptions options_;

  std::mutex mutex_;
  std::condition_variable wake_;
  int64_t wake_generation_ = 0;
  bool stopping_ = false;
  std::map<int64_t, std::atomic<bool>*> running_cancel_;  // job id -> its cancel flag
  std::map<int64_t, bool> cancel_by_user_;
  std::vector<std::thread> workers_;
};

}  // namespace miseg

#endif  // MISEG_SERVER_JOB_RUNNER_H_

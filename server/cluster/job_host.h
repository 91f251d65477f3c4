// The coordinator's side of a rank's I/O (server/rank/rank_io.h): a job's spec and files,
// its events, checkpoints and model. Local ranks reach it through LocalRankIo, remote ones
// through the WorkerService. Every write is fenced by the scheduler: only the current
// attempt of a job may write, and rank 0 alone.
//
// Thread safety: every method may be called from any thread.
#ifndef MISEG_SERVER_CLUSTER_JOB_HOST_H_
#define MISEG_SERVER_CLUSTER_JOB_HOST_H_

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "miseg/v1/miseg.pb.h"
#include "server/cluster/scheduler.h"
#include "server/metrics/metrics.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {

// A committed checkpoint of a job, as its file is named.
struct CheckpointFile {
  int64_t step = 0;
  std::string sha256;
};

// What is kept of a finished (failed or cancelled) job's checkpoints; a succeeded job's go
// when its model commits, whatever this says. kAll: what the job left (its last two).
enum class CheckpointRetention { kAll, kLast, kNone };
// "all", "last" or "none"; InvalidArgument otherwise.
absl::StatusOr<CheckpointRetention> ParseCheckpointRetention(const std::string& text);

struct JobHostOptions {
  std::string work_dir;  // checkpoints/ and models/ go here
  CheckpointRetention checkpoint_retention = CheckpointRetention::kAll;
  absl::Duration collective_timeout = absl::Seconds(60);
  bool verify_replicas = false;  // debug: ranks compare parameter hashes every step
};

class JobHost {
 public:
  // append stores and publishes an event (JobRunner::AppendEvent); publish only publishes
  // one the store already holds (to the watchers).
  using AppendEvent = std::function<absl::Status(int64_t job_id, int64_t step, v1::JobEvent)>;
  using PublishEvent = std::function<void(int64_t job_id, int64_t step, const v1::JobEvent&)>;
  JobHost(Store* store, FileStore* files, Scheduler* scheduler, ServerMetrics* metrics,
          AppendEvent append, PublishEvent publish, JobHostOptions options);

  // The job's resolved hyperparameters, classes and studies (labeled ones held out for
  // validation when the dataset has no validation studies, chosen by the seed so every
  // attempt holds out the same ones), and the step it resumes from: its last checkpoint
  // when that file's bytes match their SHA-256, else the newest intact earlier one (the
  // damaged file goes to quarantine/, the fallback into the job's history). DataLoss for
  // a study `miseg-server verify` found damaged.
  absl::StatusOr<v1::RankSpec> Spec(const v1::RankAssignment& rank);
  // One of the job's files, verified against its hash (DataLoss). PermissionDenied for a
  // hash that is not one of the job's files.
  absl::StatusOr<std::string> ObjectBytes(const v1::RankAssignment& rank, const std::string& sha256);
  // The same object's file, to stream to a remote rank (which verifies the hash itself).
  absl::StatusOr<std::string> ObjectPath(const v1::RankAssignment& rank, const std::string& sha256);
  // The job's last checkpoint file. NotFound when it has none.
  absl::StatusOr<std::string> CheckpointPath(const v1::RankAssignment& rank);
  // Rank 0. Stores events; true when the job must stop.
  absl::StatusOr<bool> AppendEvents(const v1::RankAssignment& rank,
                                    std::vector<v1::JobEvent> events);
  // Rank 0. path (on this machine's work_dir filesystem) is moved into place as
  // checkpoints/job-<id>-step-<step>-<sha256>.ckpt (fsynced) and recorded; the job's
  // previous checkpoint is kept, older ones removed. A full disk is ResourceExhausted and
  // leaves the previous checkpoint the job's.
  absl::Status CommitCheckpoint(const v1::RankAssignment& rank, int64_t step,
                                const std::string& path);
  absl::StatusOr<int64_t> CommitModel(const v1::RankAssignment& rank, int64_t step,
                                      const std::string& path,
                                      const v1::ValidationEvent& validation);
  // Where remote ranks' uploads are received before they are committed.
  std::string IncomingDir() const;
  std::string ModelsDir() const { return options_.work_dir + "/models"; }
  // Applies checkpoint_retention to every finished job's checkpoint files (clearing the
  // job's checkpoint path when none is left), and removes those of jobs that no longer
  // exist (a deleted dataset's). Returns the bytes freed. Called when a job fails or is
  // cancelled (before its end is published) and at startup.
  int64_t ApplyCheckpointRetention();
  // Removes every checkpoint file of these jobs; returns the bytes freed.
  int64_t RemoveCheckpointsOf(const std::vector<int64_t>& job_ids);
  Scheduler& scheduler() { return *scheduler_; }

 private:
  absl::Status CheckAllowed(const v1::RankAssignment& rank, const std::string& sha256);
  std::string CheckpointDir() const;
  // The job's checkpoint files, newest first, with their paths.
  std::vector<std::pair<CheckpointFile, std::string>> CheckpointsOf(int64_t job_id) const;
  // Called with the scheduler's lock held (within WithCurrentAttempt).
  absl::StatusOr<int64_t> VerifiedResumeStep(const JobRecord& job);
  void QuarantineFile(const std::string& path);
  absl::Status RequireLeader(const v1::RankAssignment& rank) const;
  void ObserveStep(const v1::StepEvent& step);

  Store* const store_;
  FileStore* const files_;
  Scheduler* const scheduler_;
  ServerMetrics* const metrics_;
  const AppendEvent append_;
  const PublishEvent publish_;
  const JobHostOptions options_;

  absl::Mutex mutex_;
  // The files of the latest spec of each job, by job id (with its attempt): what the
  // job's ranks may fetch.
  std::map<int64_t, std::pair<int64_t, std::set<std::string>>> allowed_objects_
      ABSL_GUARDED_BY(mutex_);
};

}  // namespace miseg

#endif  // MISEG_SERVER_CLUSTER_JOB_HOST_H_

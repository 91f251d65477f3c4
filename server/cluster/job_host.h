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
#include "server/metrics.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {

struct JobHostOptions {
  std::string work_dir;  // checkpoints/ and models/ go here
  absl::Duration collective_timeout = absl::Seconds(60);
  bool verify_replicas = false;  // debug: ranks compare parameter hashes every step
};

class JobHost {
 public:
  // append stores and publishes an event (JobRunner::AppendEvent).
  using AppendEvent = std::function<absl::Status(int64_t job_id, int64_t step, v1::JobEvent)>;
  JobHost(Store* store, FileStore* files, Scheduler* scheduler, ServerMetrics* metrics,
          AppendEvent append, JobHostOptions options);

  // The job's resolved hyperparameters, classes and studies (labeled ones held out for
  // validation when the dataset has no validation studies, chosen by the seed so every
  // attempt holds out the same ones).
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
  // Rank 0. path (on this machine's work_dir filesystem) is moved into place.
  absl::Status CommitCheckpoint(const v1::RankAssignment& rank, int64_t step,
                                const std::string& path);
  absl::StatusOr<int64_t> CommitModel(const v1::RankAssignment& rank, int64_t step,
                                      const std::string& path,
                                      const v1::ValidationEvent& validation);
  // Where remote ranks' uploads are received before they are committed.
  std::string IncomingDir() const;
  Scheduler& scheduler() { return *scheduler_; }

 private:
  absl::Status CheckAllowed(const v1::RankAssignment& rank, const std::string& sha256);
  absl::Status RequireLeader(const v1::RankAssignment& rank) const;
  void ObserveStep(const v1::StepEvent& step);

  Store* const store_;
  FileStore* const files_;
  Scheduler* const scheduler_;
  ServerMetrics* const metrics_;
  const AppendEvent append_;
  const JobHostOptions options_;

  absl::Mutex mutex_;
  // The files of the latest spec of each job, by job id (with its attempt): what the
  // job's ranks may fetch.
  std::map<int64_t, std::pair<int64_t, std::set<std::string>>> allowed_objects_
      ABSL_GUARDED_BY(mutex_);
};

}  // namespace miseg

#endif  // MISEG_SERVER_CLUSTER_JOB_HOST_H_

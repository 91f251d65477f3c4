// The coordinator's scheduler: which worker devices train which ranks of which job.
//
// Workers (the server's own devices, and miseg-worker processes) register their devices.
// A queued job of N ranks starts only when N devices are free at once, and then takes all
// of them in one step (gang placement): a job never holds some devices while waiting for
// others, so jobs cannot deadlock each other. Queued jobs are placed oldest first; a job
// that does not fit lets younger, smaller ones start on the free devices (backfill).
//
// Each placement is an attempt with an id unique to this server's life. Every call a
// rank makes names its attempt, and only the current attempt of a job may write (events,
// checkpoints, the model): a rank cut off from the coordinator, or from an earlier start
// of the server, can never overwrite what its successor wrote.
//
// Remote workers hold a lease renewed by heartbeats; a worker silent for longer than the
// lease is lost: its ranks are taken from it, their peers are told to stop, and once every
// rank of the attempt has ended (or been lost) the job goes back to the queue and resumes
// from its last checkpoint on whatever devices are free. The local worker never expires.
//
// Thread safety: every method may be called from any thread. mutex_ guards everything
// below it; calls into the store and the event sink are made while holding it, so that a
// placement, the events of a step and an attempt's end are ordered exactly as they happen.
// Nothing calls back into the scheduler while holding another lock.
#ifndef MISEG_SERVER_CLUSTER_SCHEDULER_H_
#define MISEG_SERVER_CLUSTER_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "miseg/v1/miseg.pb.h"
#include "server/rank/rank_io.h"
#include "server/store/store.h"

namespace miseg {

struct SchedulerOptions {
  absl::Duration lease = absl::Seconds(15);
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // A job interrupted this many times without a new checkpoint in between fails.
  int max_interruptions = 5;
  // A job whose rank ran out of a resource (RANK_OUTCOME_RETRY_LATER: a full disk) waits
  // this long before it is placed again, doubling with each retry without progress up to
  // the ceiling; it never fails for it.
  absl::Duration retry_later_first = absl::Seconds(1);
  absl::Duration retry_later_ceiling = absl::Seconds(30);
};

// Where the scheduler reports what happens to jobs (the job runner: store + watchers).
struct SchedulerEvents {
  // A state event of a job, to store and publish.
  std::function<void(int64_t job_id, int64_t step, v1::JobEvent event)> append;
  // Jobs changed state (gauges). Called with the scheduler's lock held: must not call it.
  std::function<void()> jobs_changed;
  // Workers by state (idle, busy, lost) and live workers' devices (free, busy). Same rule.
  std::function<void(int64_t idle, int64_t busy, int64_t lost, int64_t free_devices,
                     int64_t busy_devices)>
      workers_changed;
};

// A rank given to a device of the local worker, with its stop flag.
struct LocalRank {
  v1::RankAssignment assignment;
  std::shared_ptr<std::atomic<bool>> stop;
};

class Scheduler {
 public:
  Scheduler(Store* store, SchedulerEvents events, SchedulerOptions options);
  ~Scheduler();  // RequestStop, then joins the lease thread
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  const SchedulerOptions& options() const { return options_; }

  // Starts the lease thread.
  void Start() ABSL_LOCKS_EXCLUDED(mutex_);

  // A new worker; returns its id. InvalidArgument for no devices or a bad device name.
  absl::StatusOr<std::string> RegisterWorker(const std::string& name,
                                             const std::vector<std::string>& devices,
                                             const std::string& address, bool local)
      ABSL_LOCKS_EXCLUDED(mutex_);
  // Renews a remote worker's lease; the ranks it should start and stop. NotFound when the
  // worker is unknown or its lease ran out (it must stop its ranks and register again).
  // leaving: the worker is stopping (see HeartbeatRequest.leaving).
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const std::string& worker_id, bool leaving)
      ABSL_LOCKS_EXCLUDED(mutex_);
  // Blocks until device slot of the local worker gets a rank, or the scheduler stops.
  std::optional<LocalRank> AwaitLocalRank(const std::string& worker_id, int slot)
      ABSL_LOCKS_EXCLUDED(mutex_);
  // A rank ended. Ends of attempts that are no longer current are ignored.
  absl::Status EndRank(const std::string& worker_id, const v1::RankAssignment& rank,
                       v1::RankOutcome outcome, const std::string& message)
      ABSL_LOCKS_EXCLUDED(mutex_);

  // Jobs were queued (or devices freed): place what fits.
  void Wake() ABSL_LOCKS_EXCLUDED(mutex_);
  // The user cancelled a running job: its ranks stop within a step. False if not running.
  bool CancelRunning(int64_t job_id) ABSL_LOCKS_EXCLUDED(mutex_);
  // Shutdown: no new placements; every running rank is told to stop (rank 0 checkpoints).
  void RequestStop() ABSL_LOCKS_EXCLUDED(mutex_);

  // Runs fn while holding the scheduler's lock, if rank names its job's current attempt;
  // Aborted otherwise. For the writes of ranks (events, checkpoints, model).
  absl::Status WithCurrentAttempt(const v1::RankAssignment& rank,
                                  const std::function<absl::Status()>& fn)
      ABSL_LOCKS_EXCLUDED(mutex_);
  // True when the rank's attempt has been told to stop (or is no longer current).
  bool StopRequested(const v1::RankAssignment& rank) ABSL_LOCKS_EXCLUDED(mutex_);
  absl::Status PublishRendezvous(const v1::RankAssignment& rank,
                                 const RendezvousAddress& address) ABSL_LOCKS_EXCLUDED(mutex_);
  // The address once rank 0 has published it; nullopt before. Aborted for an attempt that
  // is no longer current.
  absl::StatusOr<std::optional<RendezvousAddress>> Rendezvous(const v1::RankAssignment& rank)
      ABSL_LOCKS_EXCLUDED(mutex_);

  std::vector<v1::Worker> ListWorkers() ABSL_LOCKS_EXCLUDED(mutex_);
  // Where a running job's ranks are, and its attempt (empty, 0 when not running).
  std::pair<std::vector<v1::RankPlacement>, int64_t> Placement(int64_t job_id)
      ABSL_LOCKS_EXCLUDED(mutex_);
  // Lease expiry now (the lease thread calls it every heartbeat interval; tests may too).
  void ExpireLeases() ABSL_LOCKS_EXCLUDED(mutex_);

 private:
  struct Slot {
    std::string device;
    int64_t job_id = 0;  // 0: free
    int64_t attempt = 0;
    int32_t rank = 0;
  };
  struct WorkerEntry {
    std::string id, name, address;
    bool local = false;
    bool lost = false;
    bool leaving = false;  // stopping: nothing new for it; forgotten when its lease ends
    std::vector<Slot> slots;
    absl::Time registered, last_heartbeat;
    std::vector<std::pair<int, v1::RankAssignment>> to_start;  // slot, rank
    std::vector<v1::RankAssignment> to_stop;
  };
  struct RankState {
    std::string worker_id;
    int slot = 0;
    std::shared_ptr<std::atomic<bool>> stop;
    bool stop_sent = false;  // remote: told by a heartbeat
    bool ended = false;
    v1::RankOutcome outcome = v1::RANK_OUTCOME_UNSPECIFIED;
    std::string message;     // "rank 1 on worker ... lost: ..."
    bool lost = false;       // its worker's lease ran out
  };
  enum class StopReason { kNone, kUser, kShutdown, kPeerLost, kRetryLater, kFailed };
  struct Attempt {
    int64_t id = 0;
    int64_t job_id = 0;
    int64_t start_step = 0;
    std::vector<RankState> ranks;
    std::optional<RendezvousAddress> rendezvous;
    StopReason reason = StopReason::kNone;
  };

  void PlaceLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool TryPlaceLocked(const JobRecord& job, int32_t ranks) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void StopAttemptLocked(Attempt& attempt, StopReason reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void EndRankLocked(Attempt& attempt, int32_t rank, v1::RankOutcome outcome,
                     const std::string& message, bool lost) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Why an attempt ended, for the job's history: the cause (a lost worker, a failed rank)
  // before its consequences (the peers' failed collectives).
  static std::string WhyEnded(const Attempt& attempt);
  void ResolveAttemptLocked(Attempt& attempt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void RequeueLocked(const Attempt& attempt, int64_t step, const std::string& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // The ends of an interrupted attempt: requeued at once (failed after max_interruptions
  // without progress), or requeued after a pause (RETRY_LATER).
  void InterruptedLocked(const Attempt& attempt, int64_t step, const std::string& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void RetryLaterLocked(const Attempt& attempt, int64_t step, const std::string& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Every lease tick: places jobs whose pause is over, and requeues jobs the store still
  // shows running although no attempt runs them (a store write that failed, e.g. on a
  // full disk, while an attempt ended).
  void RetryDeferredLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  Attempt* CurrentLocked(const v1::RankAssignment& rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  std::string DescribeRankLocked(const Attempt& attempt, int32_t rank)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void LeaseLoop() ABSL_LOCKS_EXCLUDED(mutex_);
  void PublishWorkerGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  Store* const store_;
  const SchedulerEvents events_;
  const SchedulerOptions options_;

  absl::Mutex mutex_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  int64_t next_worker_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t next_attempt_ ABSL_GUARDED_BY(mutex_) = 0;
  std::map<std::string, WorkerEntry> workers_ ABSL_GUARDED_BY(mutex_);  // by id
  std::vector<std::string> worker_order_ ABSL_GUARDED_BY(mutex_);       // registration order
  std::map<int64_t, Attempt> attempts_ ABSL_GUARDED_BY(mutex_);         // current, by job id
  // Interruptions since the job's last new checkpoint: job id -> (count, checkpoint step).
  std::map<int64_t, std::pair<int, int64_t>> interruptions_ ABSL_GUARDED_BY(mutex_);
  // RETRY_LATER ends since the job's last new checkpoint, as interruptions_.
  std::map<int64_t, std::pair<int, int64_t>> retries_ ABSL_GUARDED_BY(mutex_);
  // Queued jobs pausing after RETRY_LATER: not placed before this time.
  std::map<int64_t, absl::Time> not_before_ ABSL_GUARDED_BY(mutex_);
  // A job's end could not be written to the store: look for running jobs without attempt.
  bool stranded_ ABSL_GUARDED_BY(mutex_) = false;

  absl::Mutex lease_thread_mutex_;
  std::unique_ptr<std::thread> lease_thread_ ABSL_GUARDED_BY(lease_thread_mutex_);
};

}  // namespace miseg

#endif  // MISEG_SERVER_CLUSTER_SCHEDULER_H_

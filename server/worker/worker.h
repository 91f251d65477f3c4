// The loop of a miseg-worker process: registers its devices with the coordinator
// (miseg-server's WorkerService), heartbeats, and runs the ranks the heartbeats hand it, one
// thread per rank, each with its own RemoteRankIo and stop flag. When a rank ends, the
// worker reports how (EndRank).
//
// What happens when things go wrong:
//   - a heartbeat answered NOT_FOUND (the coordinator expired this worker's lease, or
//     restarted and forgot it): every running rank is stopped and awaited, then the worker
//     registers again. Its ranks were taken away; the coordinator places the job anew.
//   - the coordinator out of reach: heartbeats are retried with a bounded backoff while
//     the ranks run on (their collectives time out by themselves if their peers are gone).
//   - Stop (SIGTERM/SIGINT): every rank stops at its next step boundary (rank 0 commits a
//     checkpoint first), each is reported, and Run returns.
//
// The cache directory holds the fetched study files (a FileStore) and the ranks' scratch
// files. One worker per cache directory: it is locked (DirLock, exclusive) for the
// worker's life, so a second worker on the same directory is refused at start.
//
// Thread safety: Run on one thread; Stop from any thread (the signal thread).
#ifndef MISEG_SERVER_WORKER_WORKER_H_
#define MISEG_SERVER_WORKER_WORKER_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "server/rank/rank_runner.h"
#include "server/store/dir_lock.h"
#include "server/store/file_store.h"
#include "server/worker/remote_rank_io.h"

namespace miseg {

// Runs one rank to its end: RunRank in miseg-worker; tests substitute their own.
using RankFunction = std::function<RankResult(const v1::RankAssignment& rank, RankIo& io,
                                              const RankRunnerOptions& options,
                                              std::atomic<bool>* stop)>;

struct WorkerOptions {
  std::string name;                  // shown in `miseg workers list`
  std::vector<std::string> devices;  // "cpu", "cuda:0", ...
  // The host other workers reach this one at: registered as the worker's address, and
  // where its rank 0 hosts a job's rendezvous store and Gloo listens.
  std::string advertise_host = "127.0.0.1";
  std::string cache_dir;
  std::string token;  // bearer token of role worker; empty: none
  int training_threads = 0;
  bool training_cuda_graphs = false;  // CUDA devices: the step as a CUDA graph
  RankFunction run_rank;
  // Timing: the deadline of unary calls; the backoff between attempts while the
  // coordinator is out of reach (doubling from min to max).
  absl::Duration rpc_timeout = absl::Seconds(60);
  absl::Duration min_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(30);
  // Options of every rank's RemoteRankIo (the token is set from token above).
  RemoteRankIoOptions io;
  // One line per event (no patient data); default: stderr, UTC-stamped.
  std::function<void(const std::string& line)> log;
};

class Worker {
 public:
  // Creates cache_dir if missing, locks it and opens its object cache. FailedPrecondition
  // naming the directory when another worker holds it; InvalidArgument for options that
  // cannot work (no devices, no rank function).
  static absl::StatusOr<std::unique_ptr<Worker>> Create(std::shared_ptr<grpc::Channel> channel,
                                                        WorkerOptions options);
  ~Worker();  // stops and joins whatever still runs (Run normally has)
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Registers, heartbeats and runs ranks until Stop; returns OK once every rank has ended
  // and was reported. An error only for what retrying cannot fix: the coordinator refuses
  // the token (Unauthenticated, PermissionDenied) or the registration (InvalidArgument).
  absl::Status Run();
  // Any thread: ends Run (see above). Idempotent.
  void Stop();

  // The id the coordinator gave this worker; empty while unregistered.
  std::string worker_id() const;
  const std::string& cache_dir() const { return options_.cache_dir; }

 private:
  // One rank of a job given to this worker, identified by (job, attempt, rank).
  using RankKey = std::tuple<int64_t, int64_t, int32_t>;
  struct RunningRank {
    v1::RankAssignment assignment;
    std::string worker_id;  // the registration it was started under
    std::unique_ptr<RemoteRankIo> io;
    std::atomic<bool> stop{false};
    bool done = false;  // the thread has reported and may be joined
    std::thread thread;
  };

  Worker(std::shared_ptr<grpc::Channel> channel, WorkerOptions options, DirLock lock,
         FileStore cache);

  void Log(const std::string& line) const;
  void Prepare(grpc::ClientContext* context, absl::Duration timeout) const;
  // Registers until it works or Stop; the status only for what retrying cannot fix.
  absl::Status Register();
  // One heartbeat and what it asks for. NotFound: the lease is gone.
  absl::Status Heartbeat();
  void StartRank(const v1::RankAssignment& assignment) ABSL_LOCKS_EXCLUDED(mu_);
  void StopRank(const v1::RankAssignment& assignment) ABSL_LOCKS_EXCLUDED(mu_);
  void RankThread(RunningRank* rank);
  void EndRank(const RunningRank& rank, const RankResult& result);
  // Sets the stop flag of every rank still running.
  void SignalRanks(const std::string& why) ABSL_LOCKS_EXCLUDED(mu_);
  // SignalRanks, then joins them all.
  void StopAllRanks(const std::string& why) ABSL_LOCKS_EXCLUDED(mu_);
  int RunningRanks() const ABSL_LOCKS_EXCLUDED(mu_);
  // Joins the threads of ranks that have ended.
  void ReapRanks() ABSL_LOCKS_EXCLUDED(mu_);
  // Waits up to timeout, returning early (true) when Stop is called.
  bool WaitForStop(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);
  // Waits up to timeout for the next heartbeat, returning early once stopping when a rank
  // is still to be told to stop or every rank has ended.
  void WaitForWork(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);
  bool ShouldWake() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration Backoff(int failures) const;

  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::WorkerService::Stub> stub_;
  const WorkerOptions options_;
  DirLock lock_;     // held for the worker's life
  FileStore cache_;  // <cache_dir>/objects, shared by the ranks

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::string worker_id_ ABSL_GUARDED_BY(mu_);
  absl::Duration heartbeat_interval_ ABSL_GUARDED_BY(mu_) = absl::Seconds(5);
  absl::Duration lease_ ABSL_GUARDED_BY(mu_) = absl::Seconds(30);
  std::map<RankKey, std::unique_ptr<RunningRank>> ranks_ ABSL_GUARDED_BY(mu_);
};

// One line on stderr, UTC-stamped, "miseg-worker: " before it (the default log).
void LogWorkerLine(const std::string& message);

// Where a worker caches by default: $XDG_CACHE_HOME/miseg-worker, else
// $HOME/.cache/miseg-worker, else ./miseg-worker-cache.
std::string DefaultWorkerCacheDir();

}  // namespace miseg

#endif  // MISEG_SERVER_WORKER_WORKER_H_

#include "server/worker/worker.h"

#include "server/log.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;

std::string RankName(const v1::RankAssignment& rank) {
  return absl::StrCat("job ", rank.job_id(), " attempt ", rank.attempt(), " rank ", rank.rank(),
                      "/", rank.world_size());
}

std::string OutcomeName(v1::RankOutcome outcome) {
  switch (outcome) {
    case v1::RANK_OUTCOME_FINISHED: return "finished";
    case v1::RANK_OUTCOME_STOPPED: return "stopped";
    case v1::RANK_OUTCOME_FAILED: return "failed";
    case v1::RANK_OUTCOME_INTERRUPTED: return "interrupted";
    default: return "unspecified";
  }
}

// Errors that registering again cannot fix: the operator must change the worker's flags
// or the coordinator's token file.
bool IsPermanent(const absl::Status& status) {
  return absl::IsUnauthenticated(status) || absl::IsPermissionDenied(status) ||
         absl::IsInvalidArgument(status);
}

// Empties dir (creating it if missing): what a killed worker's ranks left there is never
// resumed from (their checkpoints went to the coordinator).
absl::Status ResetDirectory(const fs::path& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot remove ", dir.string(), ": ", ec.message()));
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

// Through server/log.h: the form (--log_format) is the process's; miseg-worker's main names
// the component.
void LogWorkerLine(const std::string& message) { miseg::Log(message); }

std::string DefaultWorkerCacheDir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg == '/') {
    return (fs::path(xdg) / "miseg-worker").string();
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    return (fs::path(home) / ".cache" / "miseg-worker").string();
  }
  return "miseg-worker-cache";
}

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(std::shared_ptr<grpc::Channel> channel,
                                                       WorkerOptions options) {
  if (options.devices.empty()) return absl::InvalidArgumentError("a worker needs a device");
  if (!options.run_rank) return absl::InvalidArgumentError("a worker needs a rank function");
  if (options.cache_dir.empty()) return absl::InvalidArgumentError("a worker needs a cache dir");
  std::error_code ec;
  fs::create_directories(options.cache_dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create the cache directory ", options.cache_dir, ": ", ec.message()));
  }
  // Taken before anything in the directory is touched: a second worker would empty the
  // scratch files and staged downloads of this one's running ranks.
  absl::StatusOr<DirLock> lock = DirLock::Acquire(options.cache_dir, DirLock::Mode::kExclusive);
  if (absl::IsFailedPrecondition(lock.status())) {
    return absl::FailedPreconditionError(
        absl::StrCat("another miseg-worker uses the cache directory ", options.cache_dir,
                     " (give each worker its own --cache_dir): ", lock.status().message()));
  }
  if (!lock.ok()) return lock.status();
  ASSIGN_OR_RETURN(FileStore cache, FileStore::Open(options.cache_dir));
  RETURN_IF_ERROR(ResetDirectory(fs::path(options.cache_dir) / "scratch"));
  return std::unique_ptr<Worker>(
      new Worker(std::move(channel), std::move(options), *std::move(lock), std::move(cache)));
}

Worker::Worker(std::shared_ptr<grpc::Channel> channel, WorkerOptions options, DirLock lock,
               FileStore cache)
    : channel_(std::move(channel)),
      stub_(v1::WorkerService::NewStub(channel_)),
      options_(std::move(options)),
      lock_(std::move(lock)),
      cache_(std::move(cache)) {}

Worker::~Worker() {
  Stop();
  StopAllRanks("the worker is destroyed");
}

void Worker::Log(const std::string& line) const {
  if (options_.log) {
    options_.log(line);
  } else {
    LogWorkerLine(line);
  }
}

void Worker::Prepare(grpc::ClientContext* context, absl::Duration timeout) const {
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

std::string Worker::worker_id() const {
  absl::MutexLock lock(&mu_);
  return worker_id_;
}

void Worker::Stop() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
}

bool Worker::WaitForStop(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(&stopping_), timeout);
}

bool Worker::ShouldWake() const {
  if (!stopping_) return false;
  bool all_done = true;
  for (const auto& [key, rank] : ranks_) {
    if (!rank->done && !rank->stop.load()) return true;  // a rank still to be told
    all_done = all_done && rank->done;
  }
  return all_done;
}

void Worker::WaitForWork(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(this, &Worker::ShouldWake), timeout);
}

absl::Duration Worker::Backoff(int failures) const {
  absl::Duration wait = options_.min_backoff;
  for (int i = 1; i < failures && wait < options_.max_backoff; ++i) wait *= 2;
  return std::min(wait, options_.max_backoff);
}

// After Stop the loop goes on heartbeating until every rank has ended: a stopping rank 0
// commits its checkpoint through the coordinator, which must not expire the worker first.
absl::Status Worker::Run() {
  int failures = 0;  // heartbeats in a row that did not reach the coordinator
  while (true) {
    ReapRanks();
    if (WaitForStop(absl::ZeroDuration())) {
      SignalRanks("stopping");
      if (RunningRanks() == 0) break;
    }
    if (worker_id().empty()) {
      if (WaitForStop(absl::ZeroDuration())) break;
      RETURN_IF_ERROR(Register());
      continue;
    }
    const absl::Status beat = Heartbeat();
    absl::Duration interval;
    {
      absl::MutexLock lock(&mu_);
      interval = heartbeat_interval_;
    }
    // NotFound is an answer too: the coordinator is back, but without this worker.
    if ((beat.ok() || absl::IsNotFound(beat)) && failures > 0) {
      Log("coordinator reachable again");
      failures = 0;
    }
    if (beat.ok()) {
      WaitForWork(interval);
    } else if (absl::IsNotFound(beat)) {
      Log(absl::StrCat("lease lost (", beat.message(), "): stopping this worker's ranks"));
      StopAllRanks("lease lost");
      absl::MutexLock lock(&mu_);
      worker_id_.clear();
    } else if (absl::IsUnauthenticated(beat) || absl::IsPermissionDenied(beat)) {
      StopAllRanks("the coordinator refuses this worker's token");
      return beat;
    } else {
      if (failures++ == 0) Log(absl::StrCat("coordinator unreachable (", beat.message(), "); retrying"));
      // Never longer than a heartbeat interval: the lease must not run out while waiting.
      WaitForWork(std::min(Backoff(failures), interval));
    }
  }
  StopAllRanks("stopping");
  Log("stopped");
  return absl::OkStatus();
}

absl::Status Worker::Register() {
  v1::RegisterWorkerRequest request;
  request.set_name(options_.name);
  for (const std::string& device : options_.devices) request.add_devices(device);
  request.set_address(options_.advertise_host);
  for (int failures = 0; !WaitForStop(absl::ZeroDuration());) {
    grpc::ClientContext context;
    // Short, as it is retried: a SIGTERM waits for the call in flight.
    Prepare(&context, std::min(options_.rpc_timeout, absl::Seconds(10)));
    v1::RegisterWorkerResponse response;
    const absl::Status status =
        FromGrpcStatus(stub_->RegisterWorker(&context, request, &response));
    if (status.ok()) {
      absl::MutexLock lock(&mu_);
      worker_id_ = response.worker_id();
      if (response.heartbeat_interval_ms() > 0) {
        heartbeat_interval_ = absl::Milliseconds(response.heartbeat_interval_ms());
      }
      if (response.lease_ms() > 0) lease_ = absl::Milliseconds(response.lease_ms());
      Log(absl::StrCat("registered as worker ", worker_id_, " (", options_.name, ", devices ",
                       absl::StrJoin(options_.devices, ","), ", address ",
                       options_.advertise_host, ")"));
      return absl::OkStatus();
    }
    if (IsPermanent(status)) {
      return absl::Status(status.code(),
                          absl::StrCat("the coordinator refused to register this worker: ",
                                       status.message()));
    }
    if (failures++ == 0) Log(absl::StrCat("cannot register (", status.message(), "); retrying"));
    WaitForStop(Backoff(failures));
  }
  return absl::OkStatus();
}

absl::Status Worker::Heartbeat() {
  v1::HeartbeatRequest request;
  absl::Duration timeout;
  {
    absl::MutexLock lock(&mu_);
    request.set_worker_id(worker_id_);
    request.set_leaving(stopping_);
    // An answer later than half the lease would come too late to keep it.
    timeout = std::min(std::max(lease_ / 2, absl::Seconds(1)), options_.rpc_timeout);
  }
  grpc::ClientContext context;
  Prepare(&context, timeout);
  v1::HeartbeatResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->Heartbeat(&context, request, &response)));
  // Stops first: a job re-placed in one answer stops its old attempt before the new starts.
  for (const v1::RankAssignment& rank : response.stop()) StopRank(rank);
  for (const v1::RankAssignment& rank : response.start()) StartRank(rank);
  return absl::OkStatus();
}

void Worker::StartRank(const v1::RankAssignment& assignment) {
  const RankKey key{assignment.job_id(), assignment.attempt(), assignment.rank()};
  auto rank = std::make_unique<RunningRank>();
  rank->assignment = assignment;
  RemoteRankIoOptions io = options_.io;
  io.token = options_.token;
  rank->io = std::make_unique<RemoteRankIo>(stub_.get(), &cache_, std::move(io));
  const bool ours = std::find(options_.devices.begin(), options_.devices.end(),
                              assignment.device()) != options_.devices.end();
  RankResult refused;  // reported at once, never run
  {
    absl::MutexLock lock(&mu_);
    if (ranks_.count(key)) return;  // a repeated start of a running rank
    rank->worker_id = worker_id_;
    if (stopping_) {
      // The coordinator places the job again (elsewhere, or here once restarted).
      refused.outcome = v1::RANK_OUTCOME_INTERRUPTED;
      refused.message = "the worker is stopping";
    } else if (!ours) {
      refused.outcome = v1::RANK_OUTCOME_FAILED;
      refused.message = absl::StrCat("device ", assignment.device(),
                                     " is not one of this worker's (",
                                     absl::StrJoin(options_.devices, ","), ")");
    } else {
      RunningRank* running = rank.get();
      ranks_[key] = std::move(rank);
      running->thread = std::thread(&Worker::RankThread, this, running);
      return;
    }
  }
  Log(absl::StrCat(RankName(assignment), " refused: ", refused.message));
  EndRank(*rank, refused);
}

void Worker::StopRank(const v1::RankAssignment& assignment) {
  const RankKey key{assignment.job_id(), assignment.attempt(), assignment.rank()};
  {
    absl::MutexLock lock(&mu_);
    auto it = ranks_.find(key);
    if (it == ranks_.end() || it->second->stop.exchange(true)) return;
  }
  Log(absl::StrCat(RankName(assignment), ": told to stop"));
}

void Worker::RankThread(RunningRank* rank) {
  const v1::RankAssignment& assignment = rank->assignment;
  const fs::path scratch = fs::path(options_.cache_dir) / "scratch" /
                           absl::StrCat("job-", assignment.job_id(), "-attempt-",
                                        assignment.attempt(), "-rank-", assignment.rank());
  RankResult result;
  if (absl::Status made = ResetDirectory(scratch); !made.ok()) {
    result.outcome = v1::RANK_OUTCOME_INTERRUPTED;
    result.message = std::string(made.message());
  } else {
    RankRunnerOptions runner;
    runner.rendezvous_host = options_.advertise_host;
    runner.training_threads = options_.training_threads;
    runner.cuda_graphs = options_.training_cuda_graphs;
    runner.scratch_dir = scratch.string();
    Log(absl::StrCat(RankName(assignment), " started on ", assignment.device()));
    result = options_.run_rank(assignment, *rank->io, runner, &rank->stop);
    if (result.outcome == v1::RANK_OUTCOME_UNSPECIFIED) {
      result.outcome = v1::RANK_OUTCOME_FAILED;
      if (result.message.empty()) result.message = "the rank ended without an outcome";
    }
  }
  std::error_code ec;
  fs::remove_all(scratch, ec);  // best effort: the next start of the worker empties scratch/
  Log(absl::StrCat(RankName(assignment), " ended: ", OutcomeName(result.outcome), " at step ",
                   result.step, result.message.empty() ? "" : absl::StrCat(" (", result.message, ")")));
  EndRank(*rank, result);
  absl::MutexLock lock(&mu_);
  rank->done = true;
}

// Reports a rank's end, retrying a coordinator briefly out of reach a few times. A report
// that never arrives costs little: the coordinator sees the rank's worker go silent, or the
// attempt end through its other ranks, and places the job again from its checkpoint.
void Worker::EndRank(const RunningRank& rank, const RankResult& result) {
  v1::EndRankRequest request;
  request.set_worker_id(rank.worker_id);
  *request.mutable_rank() = rank.assignment;
  request.set_outcome(result.outcome);
  request.set_message(result.message);
  absl::Status status;
  for (int attempt = 1; attempt <= 3; ++attempt) {
    grpc::ClientContext context;
    // Short: a SIGTERM'd worker reports every rank before it exits.
    Prepare(&context, std::min(options_.rpc_timeout, absl::Seconds(10)));
    v1::EndRankResponse response;
    status = FromGrpcStatus(stub_->EndRank(&context, request, &response));
    if (status.ok()) return;
    if (!absl::IsUnavailable(status) && !absl::IsDeadlineExceeded(status)) break;
    if (attempt < 3) absl::SleepFor(Backoff(attempt));
  }
  Log(absl::StrCat(RankName(rank.assignment), ": the coordinator did not take its end (",
                   status.message(), ")"));
}

void Worker::SignalRanks(const std::string& why) {
  std::vector<std::string> stopped;  // logged after the lock is released
  {
    absl::MutexLock lock(&mu_);
    for (auto& [key, rank] : ranks_) {
      if (!rank->done && !rank->stop.exchange(true)) stopped.push_back(RankName(rank->assignment));
    }
  }
  for (const std::string& name : stopped) Log(absl::StrCat(name, ": stopping (", why, ")"));
}

int Worker::RunningRanks() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(ranks_.size());
}

void Worker::StopAllRanks(const std::string& why) {
  SignalRanks(why);
  std::vector<RunningRank*> running;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [key, rank] : ranks_) running.push_back(rank.get());
  }
  // Joined without the lock: each thread takes it to say it is done. Only this thread
  // (Run's, or the destructor's) adds or removes entries, so the pointers stay valid.
  for (RunningRank* rank : running) {
    if (rank->thread.joinable()) rank->thread.join();
  }
  absl::MutexLock lock(&mu_);
  ranks_.clear();
}

void Worker::ReapRanks() {
  std::vector<std::unique_ptr<RunningRank>> ended;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = ranks_.begin(); it != ranks_.end();) {
      if (it->second->done) {
        ended.push_back(std::move(it->second));
        it = ranks_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& rank : ended) {
    if (rank->thread.joinable()) rank->thread.join();
  }
}

}  // namespace miseg

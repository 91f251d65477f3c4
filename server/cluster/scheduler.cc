#include "server/cluster/scheduler.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/log.h"

namespace miseg {
namespace {

v1::JobEvent StateEvent(v1::JobState state, int64_t step, const std::string& message) {
  v1::JobEvent event;
  event.mutable_state()->set_state(state);
  event.mutable_state()->set_step(step);
  event.mutable_state()->set_message(message);
  return event;
}

int32_t RanksOf(const JobRecord& job) {
  v1::Hyperparameters h;
  if (!h.ParseFromString(job.hyperparameters) || h.ranks() < 1) return 1;
  return h.ranks();
}

// Aborted, not FailedPrecondition: the rank's work is void, but the job goes on.
absl::Status NotCurrent(const v1::RankAssignment& rank) {
  return absl::AbortedError(absl::StrCat("attempt ", rank.attempt(), " of job ", rank.job_id(),
                                         " is no longer current"));
}

const char* OutcomeWord(v1::RankOutcome outcome) {
  switch (outcome) {
    case v1::RANK_OUTCOME_FINISHED: return "finished";
    case v1::RANK_OUTCOME_STOPPED: return "stopped";
    case v1::RANK_OUTCOME_FAILED: return "failed";
    case v1::RANK_OUTCOME_INTERRUPTED: return "interrupted";
    case v1::RANK_OUTCOME_RETRY_LATER: return "ran out of a resource";
    default: return "ended";
  }
}

int64_t UnixMs(absl::Time t) { return absl::ToUnixMillis(t); }

bool ValidDevice(const std::string& device) {
  if (device == "cpu" || device == "cuda") return true;
  if (device.rfind("cuda:", 0) != 0 || device.size() == 5 || device.size() > 8) return false;
  return std::all_of(device.begin() + 5, device.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

Scheduler::Scheduler(Store* store, SchedulerEvents events, SchedulerOptions options)
    : store_(store), events_(std::move(events)), options_(options) {
  // Attempt ids stay unique across restarts of the server: a rank of an attempt from
  // before a restart must never pass for one of after it.
  next_attempt_ = absl::ToUnixMillis(absl::Now()) * 1000;
}

Scheduler::~Scheduler() {
  RequestStop();
  absl::MutexLock lock(&lease_thread_mutex_);
  if (lease_thread_ && lease_thread_->joinable()) lease_thread_->join();
}

void Scheduler::Start() {
  absl::MutexLock lock(&lease_thread_mutex_);
  if (!lease_thread_) lease_thread_ = std::make_unique<std::thread>([this] { LeaseLoop(); });
}

void Scheduler::LeaseLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mutex_);
      const auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_; };
      if (mutex_.AwaitWithTimeout(absl::Condition(&stopping), options_.heartbeat_interval)) {
        return;
      }
      RetryDeferredLocked();
    }
    ExpireLeases();
  }
}

absl::StatusOr<std::string> Scheduler::RegisterWorker(const std::string& name,
                                                      const std::vector<std::string>& devices,
                                                      const std::string& address, bool local) {
  if (devices.empty() || devices.size() > 64) {
    return absl::InvalidArgumentError("a worker registers 1 to 64 devices");
  }
  for (const std::string& device : devices) {
    if (!ValidDevice(device)) {
      return absl::InvalidArgumentError(
          absl::StrCat("device '", device, "' is not cpu, cuda or cuda:N"));
    }
  }
  if (name.size() > 128 || address.size() > 256) {
    return absl::InvalidArgumentError("worker name or address too long");
  }
  absl::MutexLock lock(&mutex_);
  WorkerEntry worker;
  worker.id = absl::StrCat(local ? "local-" : "w", ++next_worker_);
  worker.name = name;
  worker.address = address;
  worker.local = local;
  worker.registered = worker.last_heartbeat = absl::Now();
  for (const std::string& device : devices) worker.slots.push_back(Slot{device});
  const std::string id = worker.id;
  workers_[id] = std::move(worker);
  worker_order_.push_back(id);
  Log(absl::StrCat("worker ", id, " (", name, ") registered ", devices.size(), " device(s)"));
  PlaceLocked();
  return id;
}

absl::StatusOr<v1::HeartbeatResponse> Scheduler::Heartbeat(const std::string& worker_id,
                                                           bool leaving) {
  absl::MutexLock lock(&mutex_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || it->second.lost) {
    return absl::NotFoundError(absl::StrCat("worker ", worker_id,
                                            " is not registered (or its lease ran out): "
                                            "stop its ranks and register again"));
  }
  WorkerEntry& worker = it->second;
  worker.last_heartbeat = absl::Now();
  v1::HeartbeatResponse response;
  if (leaving && !worker.leaving) {
    worker.leaving = true;
    Log(absl::StrCat("worker ", worker_id, " (", worker.name, ") is leaving"));
    // Ranks given but not started: their attempts cannot run; take them back.
    std::vector<v1::RankAssignment> unstarted;
    for (auto& [slot, rank] : worker.to_start) unstarted.push_back(rank);
    worker.to_start.clear();
    for (const v1::RankAssignment& rank : unstarted) {
      if (Attempt* attempt = CurrentLocked(rank)) {
        EndRankLocked(*attempt, rank.rank(), v1::RANK_OUTCOME_INTERRUPTED,
                      "its worker is leaving", /*lost=*/false);
      }
    }
  }
  for (auto& [slot, rank] : worker.to_start) *response.add_start() = rank;
  worker.to_start.clear();
  for (const v1::RankAssignment& rank : worker.to_stop) *response.add_stop() = rank;
  worker.to_stop.clear();
  return response;
}

std::optional<LocalRank> Scheduler::AwaitLocalRank(const std::string& worker_id, int slot) {
  absl::MutexLock lock(&mutex_);
  const auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (stopping_) return true;
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) return true;
    for (const auto& [s, rank] : it->second.to_start) {
      if (s == slot) return true;
    }
    return false;
  };
  mutex_.Await(absl::Condition(&ready));
  auto it = workers_.find(worker_id);
  if (stopping_ || it == workers_.end()) return std::nullopt;
  auto& pending = it->second.to_start;
  for (auto p = pending.begin(); p != pending.end(); ++p) {
    if (p->first != slot) continue;
    LocalRank local{p->second, nullptr};
    pending.erase(p);
    auto attempt = attempts_.find(local.assignment.job_id());
    if (attempt != attempts_.end() && attempt->second.id == local.assignment.attempt()) {
      local.stop = attempt->second.ranks[local.assignment.rank()].stop;
    } else {
      local.stop = std::make_shared<std::atomic<bool>>(true);  // superseded already
    }
    return local;
  }
  return std::nullopt;
}

void Scheduler::Wake() {
  absl::MutexLock lock(&mutex_);
  PlaceLocked();
}

void Scheduler::PlaceLocked() {
  if (stopping_) return;
  absl::StatusOr<std::vector<JobRecord>> queued = store_->ListQueuedJobs();
  if (!queued.ok()) {
    Log(absl::StrCat("scheduler: cannot list queued jobs: ", queued.status().ToString()));
    return;
  }
  bool placed = false;
  const absl::Time now = absl::Now();
  std::map<int64_t, absl::Time> pausing;  // pauses of jobs still queued (cancelled: gone)
  for (const JobRecord& job : *queued) {
    auto pause = not_before_.find(job.id);
    if (pause != not_before_.end() && pause->second > now) {
      pausing.insert(*pause);  // still pausing after RETRY_LATER
      continue;
    }
    placed |= TryPlaceLocked(job, RanksOf(job));
  }
  not_before_ = std::move(pausing);
  if (placed && events_.jobs_changed) events_.jobs_changed();
  PublishWorkerGaugesLocked();
}

void Scheduler::PublishWorkerGaugesLocked() {
  if (!events_.workers_changed) return;
  int64_t idle = 0, busy = 0, lost = 0, free_devices = 0, busy_devices = 0;
  for (const auto& [id, worker] : workers_) {
    if (worker.lost) {
      ++lost;
      continue;
    }
    int64_t used = 0;
    for (const Slot& slot : worker.slots) used += slot.job_id != 0 ? 1 : 0;
    (used > 0 ? busy : idle) += 1;
    busy_devices += used;
    free_devices += static_cast<int64_t>(worker.slots.size()) - used;
  }
  events_.workers_changed(idle, busy, lost, free_devices, busy_devices);
}

bool Scheduler::TryPlaceLocked(const JobRecord& job, int32_t ranks) {
  // Free devices, the workers with the most free first: ranks of one job stay together.
  std::vector<std::pair<std::string, int>> free;
  std::vector<std::string> order = worker_order_;
  const auto free_count = [&](const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    const WorkerEntry& w = workers_.at(id);
    if (w.lost || w.leaving) return 0;
    return static_cast<int>(std::count_if(w.slots.begin(), w.slots.end(),
                                          [](const Slot& s) { return s.job_id == 0; }));
  };
  std::stable_sort(order.begin(), order.end(), [&](const std::string& a, const std::string& b)
                                                   ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return free_count(a) > free_count(b);
  });
  for (const std::string& id : order) {
    const WorkerEntry& w = workers_.at(id);
    if (w.lost || w.leaving) continue;
    for (size_t s = 0; s < w.slots.size(); ++s) {
      if (w.slots[s].job_id == 0) free.emplace_back(id, static_cast<int>(s));
    }
  }
  if (static_cast<int32_t>(free.size()) < ranks) return false;
  free.resize(static_cast<size_t>(ranks));

  std::vector<std::string> where;
  for (const auto& [id, slot] : free) {
    where.push_back(absl::StrCat(workers_.at(id).name, "/", workers_.at(id).slots[slot].device));
  }
  const std::string placement = absl::StrJoin(where, ",");
  absl::StatusOr<std::optional<JobRecord>> claimed = store_->ClaimJob(job.id, placement);
  if (!claimed.ok() || !claimed->has_value()) return false;
  // The claim dropped the events of steps beyond the checkpoint: this attempt produces
  // them again.
  const JobRecord& running = **claimed;

  Attempt attempt;
  attempt.id = ++next_attempt_;
  attempt.job_id = job.id;
  attempt.start_step = running.step;
  for (int32_t r = 0; r < ranks; ++r) {
    auto& [id, slot] = free[static_cast<size_t>(r)];
    WorkerEntry& w = workers_.at(id);
    w.slots[slot].job_id = job.id;
    w.slots[slot].attempt = attempt.id;
    w.slots[slot].rank = r;
    v1::RankAssignment rank;
    rank.set_job_id(job.id);
    rank.set_attempt(attempt.id);
    rank.set_rank(r);
    rank.set_world_size(ranks);
    rank.set_device(w.slots[slot].device);
    w.to_start.emplace_back(slot, rank);
    attempt.ranks.push_back(RankState{id, slot, std::make_shared<std::atomic<bool>>(false)});
  }
  attempts_[job.id] = std::move(attempt);
  Log(absl::StrCat("job ", job.id, " placed on ", placement));
  const std::string message =
      running.step > 0 ? absl::StrCat("resumed from step ", running.step, " on ", placement)
                       : absl::StrCat("started on ", placement);
  if (events_.append) {
    events_.append(job.id, running.step, StateEvent(v1::JOB_STATE_RUNNING, running.step, message));
  }
  return true;
}

Scheduler::Attempt* Scheduler::CurrentLocked(const v1::RankAssignment& rank) {
  auto it = attempts_.find(rank.job_id());
  if (it == attempts_.end() || it->second.id != rank.attempt()) return nullptr;
  if (rank.rank() < 0 || rank.rank() >= static_cast<int32_t>(it->second.ranks.size())) {
    return nullptr;
  }
  return &it->second;
}

std::string Scheduler::DescribeRankLocked(const Attempt& attempt, int32_t rank) {
  const RankState& state = attempt.ranks[static_cast<size_t>(rank)];
  auto it = workers_.find(state.worker_id);
  if (it == workers_.end()) return absl::StrCat("rank ", rank);
  return absl::StrCat("rank ", rank, " on worker ", it->second.name, " (", state.worker_id, ", ",
                      it->second.slots[state.slot].device, ")");
}

void Scheduler::StopAttemptLocked(Attempt& attempt, StopReason reason) {
  // A failure decides the job's fate over an interruption, a user's cancel over both; a
  // resource that ran out over the peers it took down with it.
  const bool overrides_interruption =
      attempt.reason == StopReason::kPeerLost || attempt.reason == StopReason::kRetryLater;
  if (attempt.reason == StopReason::kNone || reason == StopReason::kUser ||
      (reason == StopReason::kFailed && overrides_interruption) ||
      (reason == StopReason::kRetryLater && attempt.reason == StopReason::kPeerLost)) {
    attempt.reason = reason;
  }
  for (size_t r = 0; r < attempt.ranks.size(); ++r) {
    RankState& rank = attempt.ranks[r];
    rank.stop->store(true);
    if (rank.ended || rank.stop_sent) continue;
    auto it = workers_.find(rank.worker_id);
    if (it == workers_.end() || it->second.local) continue;
    v1::RankAssignment assignment;
    assignment.set_job_id(attempt.job_id);
    assignment.set_attempt(attempt.id);
    assignment.set_rank(static_cast<int32_t>(r));
    assignment.set_world_size(static_cast<int32_t>(attempt.ranks.size()));
    assignment.set_device(it->second.slots[rank.slot].device);
    it->second.to_stop.push_back(assignment);
    rank.stop_sent = true;
  }
}

absl::Status Scheduler::EndRank(const std::string& worker_id, const v1::RankAssignment& rank,
                                v1::RankOutcome outcome, const std::string& message) {
  absl::MutexLock lock(&mutex_);
  Attempt* attempt = CurrentLocked(rank);
  if (attempt == nullptr) return absl::OkStatus();  // superseded: its end changes nothing
  if (attempt->ranks[static_cast<size_t>(rank.rank())].worker_id != worker_id) {
    return absl::PermissionDeniedError("this rank was not given to this worker");
  }
  EndRankLocked(*attempt, rank.rank(), outcome, message, /*lost=*/false);
  return absl::OkStatus();
}

void Scheduler::EndRankLocked(Attempt& attempt, int32_t rank, v1::RankOutcome outcome,
                              const std::string& message, bool lost) {
  RankState& state = attempt.ranks[static_cast<size_t>(rank)];
  if (state.ended) return;
  state.ended = true;
  state.outcome = outcome;
  state.lost = lost;
  state.message = absl::StrCat(DescribeRankLocked(attempt, rank),
                               lost ? " lost: " : absl::StrCat(" ", OutcomeWord(outcome), ": "),
                               message);
  auto worker = workers_.find(state.worker_id);
  if (worker != workers_.end()) {
    Slot& slot = worker->second.slots[state.slot];
    if (slot.attempt == attempt.id) slot = Slot{slot.device};
  }
  Log(absl::StrCat("job ", attempt.job_id, ": ", state.message));
  if (outcome == v1::RANK_OUTCOME_FAILED) {
    StopAttemptLocked(attempt, StopReason::kFailed);
  } else if (outcome == v1::RANK_OUTCOME_RETRY_LATER) {
    StopAttemptLocked(attempt, StopReason::kRetryLater);
  } else if (outcome == v1::RANK_OUTCOME_INTERRUPTED ||
             (outcome == v1::RANK_OUTCOME_STOPPED && attempt.reason == StopReason::kNone)) {
    StopAttemptLocked(attempt, StopReason::kPeerLost);
  }
  const bool all_ended = std::all_of(attempt.ranks.begin(), attempt.ranks.end(),
                                     [](const RankState& r) { return r.ended; });
  if (all_ended) ResolveAttemptLocked(attempt);  // erases the attempt
}

std::string Scheduler::WhyEnded(const Attempt& attempt) {
  const auto first = [&](auto&& pred) -> const RankState* {
    for (const RankState& r : attempt.ranks) {
      if (pred(r)) return &r;
    }
    return nullptr;
  };
  const RankState* cause = first([](const RankState& r) { return r.lost; });
  if (!cause) cause = first([](const RankState& r) { return r.outcome == v1::RANK_OUTCOME_FAILED; });
  if (!cause) {
    cause = first([](const RankState& r) { return r.outcome == v1::RANK_OUTCOME_RETRY_LATER; });
  }
  if (!cause) {
    cause = first([](const RankState& r) { return r.outcome == v1::RANK_OUTCOME_INTERRUPTED; });
  }
  if (!cause) cause = first([](const RankState& r) { return !r.message.empty(); });
  return cause ? cause->message : "ended";
}

void Scheduler::ResolveAttemptLocked(Attempt& attempt) {
  const int64_t job_id = attempt.job_id;
  const Attempt ended = std::move(attempt);
  attempts_.erase(job_id);
  absl::StatusOr<JobRecord> job = store_->GetJob(job_id);
  if (!job.ok() || job->state != StoredJobState::kRunning) {
    // Succeeded (rank 0 committed the model) or already settled.
    interruptions_.erase(job_id);
    retries_.erase(job_id);
    if (events_.jobs_changed) events_.jobs_changed();
    PlaceLocked();
    return;
  }
  const int64_t step = job->step;
  const std::string why = WhyEnded(ended);
  if (ended.reason == StopReason::kUser || job->cancel_requested) {
    if (!store_->CancelJob(job_id).ok()) {
      stranded_ = true;
    } else if (events_.append) {
      events_.append(job_id, step, StateEvent(v1::JOB_STATE_CANCELLED, step, "cancelled"));
    }
  } else if (ended.reason == StopReason::kFailed) {
    if (!store_->FailJob(job_id, why).ok()) {
      stranded_ = true;
    } else if (events_.append) {
      events_.append(job_id, step, StateEvent(v1::JOB_STATE_FAILED, step, why));
    }
  } else if (stopping_ || ended.reason == StopReason::kShutdown) {
    RequeueLocked(ended, step, absl::StrCat("server shutting down: resumes from step ", step,
                                            " at the next start"));
  } else if (ended.reason == StopReason::kRetryLater) {
    RetryLaterLocked(ended, step, why);
  } else {
    InterruptedLocked(ended, step, why);
  }
  if (events_.jobs_changed) events_.jobs_changed();
  PlaceLocked();
}

void Scheduler::InterruptedLocked(const Attempt& attempt, int64_t step, const std::string& why) {
  auto& [count, at_step] = interruptions_[attempt.job_id];
  if (at_step != step) count = 0;  // progress since the last interruption
  at_step = step;
  if (++count <= options_.max_interruptions) {
    RequeueLocked(attempt, step, absl::StrCat(why, "; resumes from step ", step));
    return;
  }
  const std::string error = absl::StrCat("interrupted ", count, " times at step ", step,
                                         " without progress; last: ", why);
  if (!store_->FailJob(attempt.job_id, error).ok()) {
    stranded_ = true;
  } else if (events_.append) {
    events_.append(attempt.job_id, step, StateEvent(v1::JOB_STATE_FAILED, step, error));
  }
}

void Scheduler::RetryLaterLocked(const Attempt& attempt, int64_t step, const std::string& why) {
  auto& [count, at_step] = retries_[attempt.job_id];
  if (at_step != step) count = 0;  // progress since the last retry
  at_step = step;
  absl::Duration pause = options_.retry_later_first;
  for (int i = 0; i < count && pause < options_.retry_later_ceiling; ++i) pause *= 2;
  pause = std::min(pause, options_.retry_later_ceiling);
  ++count;
  not_before_[attempt.job_id] = absl::Now() + pause;
  RequeueLocked(attempt, step,
                absl::StrCat(why, "; retries in ", absl::FormatDuration(pause), " from step ",
                             step));
}

void Scheduler::RequeueLocked(const Attempt& attempt, int64_t step, const std::string& message) {
  if (!store_->RequeueJob(attempt.job_id).ok()) {
    stranded_ = true;  // still running in the store: RetryDeferredLocked tries again
    return;
  }
  if (events_.append) {
    events_.append(attempt.job_id, step, StateEvent(v1::JOB_STATE_QUEUED, step, message));
  }
}

void Scheduler::RetryDeferredLocked() {
  if (stopping_) return;
  bool place = false;
  const absl::Time now = absl::Now();
  for (const auto& [job_id, when] : not_before_) place |= when <= now;
  if (stranded_) {
    absl::StatusOr<std::vector<JobRecord>> running =
        store_->ListJobsInState(StoredJobState::kRunning);
    if (running.ok()) {
      stranded_ = false;
      for (const JobRecord& job : *running) {
        if (attempts_.count(job.id)) continue;
        if (!store_->RequeueJob(job.id).ok()) {
          stranded_ = true;
          continue;
        }
        place = true;
        if (events_.append) {
          events_.append(job.id, job.step,
                         StateEvent(v1::JOB_STATE_QUEUED, job.step,
                                    absl::StrCat("requeued: its end could not be stored "
                                                 "earlier; resumes from step ", job.step)));
        }
      }
    }
  }
  if (!place) return;
  if (events_.jobs_changed) events_.jobs_changed();
  PlaceLocked();
}

bool Scheduler::CancelRunning(int64_t job_id) {
  absl::MutexLock lock(&mutex_);
  auto it = attempts_.find(job_id);
  if (it == attempts_.end()) return false;
  StopAttemptLocked(it->second, StopReason::kUser);
  return true;
}

void Scheduler::RequestStop() {
  absl::MutexLock lock(&mutex_);
  stopping_ = true;
  for (auto& [id, attempt] : attempts_) {
    StopAttemptLocked(attempt, StopReason::kShutdown);
  }
}

absl::Status Scheduler::WithCurrentAttempt(const v1::RankAssignment& rank,
                                           const std::function<absl::Status()>& fn) {
  absl::MutexLock lock(&mutex_);
  if (CurrentLocked(rank) == nullptr) {
    return NotCurrent(rank);
  }
  return fn();
}

bool Scheduler::StopRequested(const v1::RankAssignment& rank) {
  absl::MutexLock lock(&mutex_);
  Attempt* attempt = CurrentLocked(rank);
  return attempt == nullptr || attempt->ranks[static_cast<size_t>(rank.rank())].stop->load();
}

absl::Status Scheduler::PublishRendezvous(const v1::RankAssignment& rank,
                                          const RendezvousAddress& address) {
  absl::MutexLock lock(&mutex_);
  Attempt* attempt = CurrentLocked(rank);
  if (attempt == nullptr) {
    return NotCurrent(rank);
  }
  if (rank.rank() != 0) return absl::PermissionDeniedError("only rank 0 hosts the rendezvous");
  attempt->rendezvous = address;
  return absl::OkStatus();
}

absl::StatusOr<std::optional<RendezvousAddress>> Scheduler::Rendezvous(
    const v1::RankAssignment& rank) {
  absl::MutexLock lock(&mutex_);
  Attempt* attempt = CurrentLocked(rank);
  if (attempt == nullptr) {
    return NotCurrent(rank);
  }
  return attempt->rendezvous;
}

void Scheduler::ExpireLeases() {
  absl::MutexLock lock(&mutex_);
  const absl::Time now = absl::Now();
  std::vector<std::string> departed;
  for (auto& [id, worker] : workers_) {
    if (worker.local || worker.lost || now - worker.last_heartbeat <= options_.lease) continue;
    worker.lost = true;
    const bool busy = std::any_of(worker.slots.begin(), worker.slots.end(),
                                  [](const Slot& s) { return s.job_id != 0; });
    if (worker.leaving && !busy) {
      departed.push_back(id);  // stopped cleanly: nothing to take back, nothing to show
      continue;
    }
    worker.to_start.clear();
    worker.to_stop.clear();
    Log(absl::StrCat("worker ", id, " (", worker.name, ") lost: no heartbeat for ",
                     absl::FormatDuration(now - worker.last_heartbeat)));
    for (Slot& slot : worker.slots) {
      if (slot.job_id == 0) continue;
      auto attempt = attempts_.find(slot.job_id);
      const int32_t rank = slot.rank;
      if (attempt == attempts_.end() || attempt->second.id != slot.attempt) {
        slot = Slot{slot.device};
        continue;
      }
      EndRankLocked(attempt->second, rank, v1::RANK_OUTCOME_INTERRUPTED,
                    absl::StrCat("its worker stopped heartbeating (lease ",
                                 absl::FormatDuration(options_.lease), ")"),
                    /*lost=*/true);
    }
  }
  for (const std::string& id : departed) {
    Log(absl::StrCat("worker ", id, " left"));
    workers_.erase(id);
    worker_order_.erase(std::remove(worker_order_.begin(), worker_order_.end(), id),
                        worker_order_.end());
  }
  PublishWorkerGaugesLocked();
  // Lost workers stay listed for a while, so operators see what went.
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->second.lost && now - it->second.last_heartbeat > 20 * options_.lease) {
      worker_order_.erase(std::remove(worker_order_.begin(), worker_order_.end(), it->first),
                          worker_order_.end());
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

std::vector<v1::Worker> Scheduler::ListWorkers() {
  absl::MutexLock lock(&mutex_);
  std::vector<v1::Worker> out;
  for (const std::string& id : worker_order_) {
    const WorkerEntry& w = workers_.at(id);
    v1::Worker worker;
    worker.set_id(w.id);
    worker.set_name(w.name);
    worker.set_local(w.local);
    worker.set_address(w.address);
    worker.set_registered_unix_ms(UnixMs(w.registered));
    worker.set_last_heartbeat_unix_ms(UnixMs(w.local ? absl::Now() : w.last_heartbeat));
    bool busy = false;
    for (const Slot& slot : w.slots) {
      v1::WorkerDevice* device = worker.add_devices();
      device->set_device(slot.device);
      device->set_job_id(slot.job_id);
      device->set_rank(slot.rank);
      busy |= slot.job_id != 0;
    }
    worker.set_state(w.lost ? v1::WORKER_STATE_LOST
                            : (busy ? v1::WORKER_STATE_BUSY : v1::WORKER_STATE_IDLE));
    out.push_back(std::move(worker));
  }
  return out;
}

std::pair<std::vector<v1::RankPlacement>, int64_t> Scheduler::Placement(int64_t job_id) {
  absl::MutexLock lock(&mutex_);
  auto it = attempts_.find(job_id);
  if (it == attempts_.end()) return {{}, 0};
  std::vector<v1::RankPlacement> placement;
  for (size_t r = 0; r < it->second.ranks.size(); ++r) {
    const RankState& rank = it->second.ranks[r];
    v1::RankPlacement p;
    p.set_rank(static_cast<int32_t>(r));
    p.set_worker(rank.worker_id);
    auto worker = workers_.find(rank.worker_id);
    if (worker != workers_.end()) {
      p.set_worker_name(worker->second.name);
      p.set_device(worker->second.slots[rank.slot].device);
    }
    placement.push_back(std::move(p));
  }
  return {std::move(placement), it->second.id};
}

}  // namespace miseg

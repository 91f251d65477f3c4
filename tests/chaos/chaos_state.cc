#include "tests/chaos/chaos_state.h"

namespace miseg::chaos {

std::optional<ServerLink::Current> ServerLink::Await(int after) {
  absl::MutexLock lock(&mutex_);
  const auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return finished_ || (up_ && generation_ > after);
  };
  mutex_.Await(absl::Condition(&ready));
  if (finished_ && !(up_ && generation_ > after)) return std::nullopt;
  return Current{address_, generation_};
}

bool ServerLink::StillUp(int generation) {
  absl::MutexLock lock(&mutex_);
  return up_ && generation_ == generation;
}

void ServerLink::Down() {
  absl::MutexLock lock(&mutex_);
  up_ = false;
}

void ServerLink::Up(const std::string& address) {
  absl::MutexLock lock(&mutex_);
  address_ = address;
  ++generation_;
  up_ = true;
}

void ServerLink::Finish() {
  absl::MutexLock lock(&mutex_);
  finished_ = true;
}

bool ServerLink::finished() {
  absl::MutexLock lock(&mutex_);
  return finished_;
}

bool ServerLink::SleepUnlessFinished(absl::Duration d) {
  absl::MutexLock lock(&mutex_);
  const auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return finished_; };
  return mutex_.AwaitWithTimeout(absl::Condition(&done), d);
}

void Verdict::Check(bool ok, const std::string& what) {
  absl::MutexLock lock(&mutex_);
  ++checks_;
  if (!ok) violations_.push_back(what);
}

void Verdict::Violation(const std::string& what) { Check(false, what); }

int64_t Verdict::checks() {
  absl::MutexLock lock(&mutex_);
  return checks_;
}

std::vector<std::string> Verdict::violations() {
  absl::MutexLock lock(&mutex_);
  return violations_;
}

void Ledger::AckUpload(const std::string& series, int instances) {
  absl::MutexLock lock(&mutex_);
  uploads_[series] = instances;
}

void Ledger::AckCStore(const std::string& sop_instance, const std::string& series,
                       int series_size) {
  absl::MutexLock lock(&mutex_);
  cstores_[sop_instance] = series;
  cstore_series_[series] = series_size;
}

std::map<std::string, int> Ledger::uploads() {
  absl::MutexLock lock(&mutex_);
  return uploads_;
}

std::map<std::string, std::string> Ledger::cstores() {
  absl::MutexLock lock(&mutex_);
  return cstores_;
}

std::map<std::string, int> Ledger::cstore_series() {
  absl::MutexLock lock(&mutex_);
  return cstore_series_;
}

void Ledger::Tried(const std::string& series, int instances) {
  absl::MutexLock lock(&mutex_);
  tried_[series] = instances;
}

std::map<std::string, int> Ledger::tried() {
  absl::MutexLock lock(&mutex_);
  return tried_;
}

void Ledger::Count(int64_t Counts::*field, int64_t n) {
  absl::MutexLock lock(&mutex_);
  counts_.*field += n;
}

Ledger::Counts Ledger::counts() {
  absl::MutexLock lock(&mutex_);
  return counts_;
}

void JobBook::Add(int64_t job_id) {
  absl::MutexLock lock(&mutex_);
  jobs_.insert(job_id);
}

std::vector<int64_t> JobBook::jobs() {
  absl::MutexLock lock(&mutex_);
  return {jobs_.begin(), jobs_.end()};
}

std::optional<int64_t> JobBook::NextAfter(int64_t after) {
  absl::MutexLock lock(&mutex_);
  const auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return closed_ || jobs_.upper_bound(after) != jobs_.end();
  };
  mutex_.Await(absl::Condition(&ready));
  auto it = jobs_.upper_bound(after);
  if (it == jobs_.end()) return std::nullopt;
  return *it;
}

void JobBook::NoMoreJobs() {
  absl::MutexLock lock(&mutex_);
  closed_ = true;
}

void JobBook::Saw(int watcher, int64_t job_id, std::vector<v1::JobEvent> events) {
  absl::MutexLock lock(&mutex_);
  seen_[{watcher, job_id}] = std::move(events);
}

std::map<std::pair<int, int64_t>, std::vector<v1::JobEvent>> JobBook::seen() {
  absl::MutexLock lock(&mutex_);
  return seen_;
}

}  // namespace miseg::chaos

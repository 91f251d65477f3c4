// Pushes each stored job event to the streams that follow that job live. The job runner
// stores an event first (so a late or reconnecting watcher finds it in SQLite) and then
// publishes it here with its sequence; a subscriber gets it on the publishing thread and
// must not block (it queues the event and returns). No thread and no SQLite query per
// watcher per event: one publish walks the job's subscribers once.
//
// Thread safety: every method may be called from any thread. Subscriber callbacks run with
// the hub's mutex held, so a subscriber must never call back into the hub from them; the
// lock order is hub -> subscriber.
#ifndef MISEG_SERVER_JOBS_EVENT_HUB_H_
#define MISEG_SERVER_JOBS_EVENT_HUB_H_

#include <cstdint>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "miseg/v1/miseg.pb.h"

namespace miseg {

class EventSubscriber {
 public:
  virtual ~EventSubscriber() = default;
  // An event of the subscribed job at `step`, sequence set. Must not block.
  virtual void OnJobEvent(int64_t step, const v1::JobEvent& event) = 0;
  // The server is shutting down: no more events will come.
  virtual void OnHubClosed() = 0;
};

class EventHub {
 public:
  // False when the hub is closed (the subscriber is then not registered).
  bool Subscribe(int64_t job_id, EventSubscriber* subscriber) {
    absl::MutexLock lock(&mutex_);
    if (closed_) return false;
    subscribers_[job_id].insert(subscriber);
    return true;
  }
  // After it returns, the subscriber gets no further callback.
  void Unsubscribe(int64_t job_id, EventSubscriber* subscriber) {
    absl::MutexLock lock(&mutex_);
    auto it = subscribers_.find(job_id);
    if (it == subscribers_.end()) return;
    it->second.erase(subscriber);
    if (it->second.empty()) subscribers_.erase(it);
  }
  void Publish(int64_t job_id, int64_t step, const v1::JobEvent& event) {
    absl::MutexLock lock(&mutex_);
    auto it = subscribers_.find(job_id);
    if (it == subscribers_.end()) return;
    for (EventSubscriber* subscriber : it->second) subscriber->OnJobEvent(step, event);
  }
  // At shutdown: tells every subscriber and refuses new ones.
  void Close() {
    absl::MutexLock lock(&mutex_);
    closed_ = true;
    for (auto& [job_id, set] : subscribers_) {
      for (EventSubscriber* subscriber : set) subscriber->OnHubClosed();
    }
  }
  int64_t subscriber_count() {
    absl::MutexLock lock(&mutex_);
    int64_t count = 0;
    for (const auto& [job_id, set] : subscribers_) count += static_cast<int64_t>(set.size());
    return count;
  }

 private:
  absl::Mutex mutex_;
  absl::flat_hash_map<int64_t, absl::flat_hash_set<EventSubscriber*>> subscribers_
      ABSL_GUARDED_BY(mutex_);
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace miseg

#endif  // MISEG_SERVER_JOBS_EVENT_HUB_H_

// Wakes the streams that follow jobs live when new events are stored. One generation
// counter for all jobs: a watcher re-reads its own job's events from the store after each
// wake, so a missed notification only delays it until its next bounded wait.
#ifndef MISEG_SERVER_EVENT_HUB_H_
#define MISEG_SERVER_EVENT_HUB_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace miseg {

class EventHub {
 public:
  void Notify() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++generation_;
    }
    changed_.notify_all();
  }
  int64_t generation() {
    std::lock_guard<std::mutex> lock(mutex_);
    return generation_;
  }
  // Returns when the generation differs from `seen` or at the deadline; the current one.
  int64_t WaitForChange(int64_t seen, std::chrono::steady_clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait_until(lock, deadline, [&] { return generation_ != seen; });
    return generation_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int64_t generation_ = 0;
};

}  // namespace miseg

#endif  // MISEG_SERVER_EVENT_HUB_H_

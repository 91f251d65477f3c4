// A fixed set of threads the server owns, running queued work in order. The gRPC reactors
// never block: what takes time (checking and committing an upload, a segmentation) is
// scheduled here, and the reactor is told the outcome by a callback.
//
// Thread safety: Schedule may be called from any thread. The destructor runs the work
// already queued, then joins the threads.
#ifndef MISEG_SERVER_DOMAIN_WORK_POOL_H_
#define MISEG_SERVER_DOMAIN_WORK_POOL_H_

#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace miseg {

class WorkPool {
 public:
  explicit WorkPool(int threads);
  ~WorkPool();
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  void Schedule(std::function<void()> work);
  // Work queued and not yet started.
  int64_t queued();

 private:
  void Loop();
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return stopping_ || !queue_.empty();
  }

  absl::Mutex mutex_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> threads_;  // constant after construction
};

}  // namespace miseg

#endif  // MISEG_SERVER_DOMAIN_WORK_POOL_H_

// A loader thread with a bounded queue: produce(0), produce(1), ... produce(count - 1) run in
// order on a thread of its own, at most `capacity` results ahead of the consumer, so that
// preparing the next items overlaps with using the current one. The trainer prepares the
// batches of its next steps this way (trainer.cc); the items and their order are exactly
// those of calling produce in a loop.
//
// Thread safety: one consumer thread calls Next and Stop; produce runs on the loader thread
// only, so whatever it alone touches needs no lock.
#ifndef MISEG_CORE_TRAIN_PREFETCHER_H_
#define MISEG_CORE_TRAIN_PREFETCHER_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <stdexcept>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace miseg {

template <typename T>
class Prefetcher {
 public:
  Prefetcher(std::function<T(int64_t)> produce, int64_t count, size_t capacity)
      : produce_(std::move(produce)), count_(count), capacity_(capacity < 1 ? 1 : capacity) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~Prefetcher() { (void)Stop(); }
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // The next item, waiting for it. What produce threw is thrown here, in its place in the
  // order (the items before it come first); std::out_of_range after the last item.
  T Next() {
    absl::MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(this, &Prefetcher::CanTake));
    if (!ready_.empty()) {
      T item = std::move(ready_.front());
      ready_.pop_front();
      return item;
    }
    if (error_) std::rethrow_exception(error_);
    throw std::out_of_range("Prefetcher: no more items");
  }

  // Stops the loader thread (once the item it is producing is done, which is kept) and
  // returns the items produced but not taken, in order. Idempotent.
  std::deque<T> Stop() {
    {
      absl::MutexLock lock(&mutex_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
    absl::MutexLock lock(&mutex_);
    return std::exchange(ready_, {});
  }

 private:
  bool CanProduce() const ABSL_SHARED_LOCKS_REQUIRED(mutex_) {
    return stop_ || ready_.size() < capacity_;
  }
  bool CanTake() const ABSL_SHARED_LOCKS_REQUIRED(mutex_) {
    return !ready_.empty() || error_ != nullptr || done_;
  }

  void Loop() {
    for (int64_t i = 0; i < count_; ++i) {
      {
        absl::MutexLock lock(&mutex_);
        mutex_.Await(absl::Condition(this, &Prefetcher::CanProduce));
        if (stop_) break;
      }
      try {
        T item = produce_(i);
        absl::MutexLock lock(&mutex_);
        ready_.push_back(std::move(item));
      } catch (...) {
        absl::MutexLock lock(&mutex_);
        error_ = std::current_exception();
        break;
      }
    }
    absl::MutexLock lock(&mutex_);
    done_ = true;
  }

  const std::function<T(int64_t)> produce_;
  const int64_t count_;
  const size_t capacity_;
  absl::Mutex mutex_;
  std::deque<T> ready_ ABSL_GUARDED_BY(mutex_);
  std::exception_ptr error_ ABSL_GUARDED_BY(mutex_);
  bool stop_ ABSL_GUARDED_BY(mutex_) = false;
  bool done_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_PREFETCHER_H_

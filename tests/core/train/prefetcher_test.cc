// The loader thread's queue (core/train/prefetcher.h): order, bound, errors, stopping.
#include "core/train/prefetcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <stdexcept>
#include <string>

#include "absl/synchronization/notification.h"

namespace miseg {
namespace {

TEST(Prefetcher, GivesEveryItemInOrderThenOutOfRange) {
  Prefetcher<int64_t> loader([](int64_t i) { return i * i; }, 50, 2);
  for (int64_t i = 0; i < 50; ++i) EXPECT_EQ(loader.Next(), i * i);
  EXPECT_THROW(loader.Next(), std::out_of_range);
}

// Nothing taken: the loader produces `capacity` items and waits. The third produce call
// would only come after a Next, so Stop finds exactly two (the barrier: the second item's
// production has finished before Stop is called).
TEST(Prefetcher, ProducesAtMostCapacityAheadAndStopReturnsWhatWasNotTaken) {
  std::atomic<int> calls{0};
  absl::Notification second_made;
  Prefetcher<int> loader(
      [&](int64_t i) {
        ++calls;
        if (i == 1) second_made.Notify();
        return static_cast<int>(i);
      },
      10, 2);
  second_made.WaitForNotification();
  std::deque<int> left = loader.Stop();
  EXPECT_EQ(left, (std::deque<int>{0, 1}));
  EXPECT_EQ(calls.load(), 2);
  EXPECT_TRUE(loader.Stop().empty());  // idempotent
}

TEST(Prefetcher, AnErrorComesAfterTheItemsBeforeIt) {
  Prefetcher<int> loader(
      [](int64_t i) {
        if (i == 2) throw std::runtime_error("bad batch 2");
        return static_cast<int>(i);
      },
      5, 4);
  EXPECT_EQ(loader.Next(), 0);
  EXPECT_EQ(loader.Next(), 1);
  try {
    loader.Next();
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "bad batch 2");
  }
}

// Destroyed while the loader waits on a full queue: it stops and joins (no hang, no leak).
TEST(Prefetcher, DestroyedWithAFullQueueStops) {
  absl::Notification full;
  {
    Prefetcher<std::string> loader(
        [&](int64_t i) {
          if (i == 0) full.Notify();
          return std::string(1000, 'x');
        },
        1000, 1);
    full.WaitForNotification();
  }
  SUCCEED();
}

}  // namespace
}  // namespace miseg

// The segmentation engine in-process, with a real store and file store: admission control
// and deadlines, made deterministic by holding the engine's worker in the test hook for
// exactly as long as the test needs (no timing assumptions about the model's speed).
#include "server/segmentation_engine.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/synchronization/notification.h"
#include "server/metrics.h"
#include "server/store/file_store.h"
#include "server/store/store.h"
#include "tests/server/child_process.h"

namespace miseg {
namespace {

class SegmentationEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(dir_.path() + "/miseg.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto files = FileStore::Open(dir_.path());
    ASSERT_TRUE(files.ok()) << files.status();
    files_.emplace(*std::move(files));
  }

  std::unique_ptr<SegmentationEngine> MakeEngine(int concurrency, int queue) {
    SegmentationEngineOptions options;
    options.concurrency = concurrency;
    options.queue = queue;
    options.before_each_job = [this] {
      std::call_once(entered_once_, [this] { entered_.Notify(); });
      release_.WaitForNotification();  // released once: later jobs pass straight through
    };
    return std::make_unique<SegmentationEngine>(store_.get(), &*files_, &metrics_, options);
  }

  // A job that fails fast once it runs (its dataset does not exist).
  static SegmentationJob UnknownDatasetJob() {
    SegmentationJob job;
    job.dataset = "absent";
    job.files.push_back({"x.dcm", "not DICOM"});
    return job;
  }

  testing::TempDir dir_;
  std::unique_ptr<Store> store_;
  std::optional<FileStore> files_;
  ServerMetrics metrics_{"test"};
  std::once_flag entered_once_;
  absl::Notification entered_, release_;
};

struct Outcome {
  absl::Notification done;
  absl::Status status;
};

SegmentationCallback Record(Outcome* outcome) {
  return [outcome](absl::StatusOr<SegmentationResult> result) {
    outcome->status = result.status();
    outcome->done.Notify();
  };
}

TEST_F(SegmentationEngineTest, BeyondRunningAndQueuedSlotsIsResourceExhaustedAtOnce) {
  std::unique_ptr<SegmentationEngine> engine = MakeEngine(/*concurrency=*/1, /*queue=*/1);
  const auto far = std::chrono::system_clock::now() + std::chrono::hours(1);
  Outcome running, waiting;
  ASSERT_TRUE(engine->Submit(UnknownDatasetJob(), far, Record(&running)).ok());
  entered_.WaitForNotification();  // the only worker is now held
  ASSERT_TRUE(engine->Submit(UnknownDatasetJob(), far, Record(&waiting)).ok());

  Outcome refused;
  const absl::Status third = engine->Submit(UnknownDatasetJob(), far, Record(&refused));
  EXPECT_TRUE(absl::IsResourceExhausted(third)) << third;
  EXPECT_NE(third.message().find("queue is full"), absl::string_view::npos) << third;
  EXPECT_FALSE(refused.done.HasBeenNotified());  // refused at once, never called back

  release_.Notify();
  running.done.WaitForNotification();
  waiting.done.WaitForNotification();
  EXPECT_TRUE(absl::IsNotFound(running.status)) << running.status;
  EXPECT_TRUE(absl::IsNotFound(waiting.status)) << waiting.status;
  // The slots are free again.
  Outcome after;
  ASSERT_TRUE(engine->Submit(UnknownDatasetJob(), far, Record(&after)).ok());
  after.done.WaitForNotification();
}

TEST_F(SegmentationEngineTest, AJobWhoseDeadlinePassesInTheQueueEndsWithoutRunning) {
  std::unique_ptr<SegmentationEngine> engine = MakeEngine(/*concurrency=*/1, /*queue=*/2);
  const auto far = std::chrono::system_clock::now() + std::chrono::hours(1);
  Outcome running, expired;
  ASSERT_TRUE(engine->Submit(UnknownDatasetJob(), far, Record(&running)).ok());
  entered_.WaitForNotification();
  const auto soon = std::chrono::system_clock::now() + std::chrono::milliseconds(1);
  ASSERT_TRUE(engine->Submit(UnknownDatasetJob(), soon, Record(&expired)).ok());
  // The held worker cannot start it before its deadline, however fast the machine.
  while (std::chrono::system_clock::now() <= soon) std::this_thread::yield();
  release_.Notify();
  expired.done.WaitForNotification();
  EXPECT_TRUE(absl::IsDeadlineExceeded(expired.status)) << expired.status;
  EXPECT_NE(expired.status.message().find("waiting in the queue"), absl::string_view::npos);
  running.done.WaitForNotification();
  EXPECT_TRUE(absl::IsNotFound(running.status)) << running.status;
}

TEST_F(SegmentationEngineTest, TheBlockingFormReturnsTheOutcome) {
  std::unique_ptr<SegmentationEngine> engine = MakeEngine(/*concurrency=*/2, /*queue=*/0);
  release_.Notify();
  absl::StatusOr<SegmentationResult> result = engine->Segment(
      UnknownDatasetJob(), std::chrono::system_clock::now() + std::chrono::minutes(1));
  EXPECT_TRUE(absl::IsNotFound(result.status())) << result.status();
}

}  // namespace
}  // namespace miseg

// The segmentation engine in-process, with a real store and file store: admission control
// and deadlines, made deterministic by holding the engine's worker in the test hook for
// exactly as long as the test needs (no timing assumptions about the model's speed).
#include "server/domain/segmentation_engine.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/dicom/segmentation.h"
#include "core/dicom/series_reader.h"
#include "core/phantom/phantom.h"
#include "core/train/trainer.h"
#include "server/metrics/metrics.h"
#include "server/store/file_store.h"
#include "server/store/store.h"
#include "tests/server/child_process.h"
#include "tests/server/test_studies.h"

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

// Dynamic batching: jobs running at once on one model share network forwards, and each
// job's SEG holds exactly the labels it holds when the jobs run one at a time.
class SegmentationBatchingTest : public SegmentationEngineTest {
 protected:
  void SetUp() override {
    SegmentationEngineTest::SetUp();
    // A small model, trained a few steps so that its labels are not all background.
    TrainerConfig config;
    config.model.widths = {8, 16};
    config.model.grid_size = 32;
    config.labeled_batch = 2;
    config.unlabeled_batch = 2;
    config.total_steps = 20;
    config.warmup_steps = 2;
    config.rampup_steps = 3;
    config.learning_rate = 1e-2;
    config.validate_every = 0;
    TrainingData data;
    for (int i = 0; i < 3; ++i) {
      PhantomSubject subject = GeneratePhantomSubject(3, i, SmallPhantomOptions());
      TrainingVolume volume{absl::StrCat("train-", i), std::move(subject.image), {}};
      if (i < 2) volume.labels = std::move(subject.labels);
      (i < 2 ? data.labeled : data.unlabeled).push_back(std::move(volume));
    }
    auto trainer = Trainer::Create(config, data);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    ASSERT_TRUE((*trainer)->Run({}).ok());
    const std::string path = dir_.path() + "/small.model";
    ASSERT_TRUE((*trainer)->ExportModel(path).ok());
    DatasetRecord dataset;
    dataset.name = "batching";
    dataset.class_names = PhantomClassNames();
    dataset.modality = "MR";
    auto created = store_->CreateDataset(dataset);
    ASSERT_TRUE(created.ok()) << created.status();
    ModelRecord model;
    model.dataset_id = created->id;
    model.path = path;
    auto inserted = store_->InsertImportedModel(model);
    ASSERT_TRUE(inserted.ok()) << inserted.status();
    ASSERT_TRUE(store_->PromoteModel(inserted->id).ok());
  }

  SegmentationJob Job(const PhantomStudy& study) {
    SegmentationJob job;
    job.dataset = "batching";
    job.files = study.image_files;
    return job;
  }

  // The labels of a finished job's SEG, read back onto its source series.
  static std::vector<uint8_t> SegLabels(const PhantomStudy& study,
                                        const absl::StatusOr<SegmentationResult>& result) {
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return {};
    auto bytes = ReadFileToString(result->seg_file->path());
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    auto series = ReadSeries(study.image_files);
    EXPECT_TRUE(series.ok()) << series.status();
    auto labels = ReadSegmentation({"seg.dcm", *bytes}, series->front(), PhantomClassNames());
    EXPECT_TRUE(labels.ok()) << labels.status();
    return labels.ok() ? labels->labels.voxels : std::vector<uint8_t>{};
  }
};

TEST_F(SegmentationBatchingTest, BatchedJobsGetTheLabelsTheyGetAlone) {
  constexpr int kJobs = 3;
  std::vector<PhantomStudy> studies;
  int64_t slices = 0;
  for (int i = 0; i < kJobs; ++i) {
    auto study = testing::SmallPhantomStudy(/*population_seed=*/17, i, false);
    ASSERT_TRUE(study.ok()) << study.status();
    slices += static_cast<int64_t>(study->image_files.size());
    studies.push_back(*std::move(study));
  }
  const auto far = std::chrono::system_clock::now() + std::chrono::hours(1);
  SegmentationEngineOptions options;
  options.batch_slices = 64;  // each study is one slice batch
  options.concurrency = 1;
  std::vector<std::vector<uint8_t>> alone;
  {
    SegmentationEngine engine(store_.get(), &*files_, &metrics_, options);
    for (const PhantomStudy& study : studies) {
      alone.push_back(SegLabels(study, engine.Segment(Job(study), far)));
    }
  }
  std::set<uint8_t> classes_seen;
  for (const auto& labels : alone) classes_seen.insert(labels.begin(), labels.end());
  EXPECT_GE(classes_seen.size(), 2u) << "a model that labels nothing proves nothing";

  // All jobs' slices must be waiting before the one forward runs: the batch is held open
  // (for hours) until it is full, so it completes only if the three jobs share it.
  options.concurrency = kJobs;
  options.max_batch_slices = slices;
  options.batch_wait_ms = 1e7;
  SegmentationEngine engine(store_.get(), &*files_, &metrics_, options);
  std::vector<std::optional<absl::StatusOr<SegmentationResult>>> results(kJobs);
  absl::Notification done[kJobs];
  for (int i = 0; i < kJobs; ++i) {
    ASSERT_TRUE(engine
                    .Submit(Job(studies[i]), far,
                            [&results, &done, i](absl::StatusOr<SegmentationResult> result) {
                              results[i] = std::move(result);
                              done[i].Notify();
                            })
                    .ok());
  }
  for (int i = 0; i < kJobs; ++i) {
    done[i].WaitForNotification();
    EXPECT_EQ(SegLabels(studies[i], *results[i]), alone[i]) << "job " << i;
  }
}

}  // namespace
}  // namespace miseg

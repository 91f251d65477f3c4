// The trainer on small phantoms: the loss goes down, a resumed run reproduces the
// uninterrupted one exactly, two trainers at once on two threads give what each gives
// alone, cancellation stops between steps, exported models segment on the source grid, and
// bad configurations, data and checkpoints are refused.
#include "core/train/trainer.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <future>
#include <numeric>
#include <thread>

#include <gtest/gtest.h>

#include "core/phantom/phantom.h"
#include "tests/core/train/trainer_fixtures.h"
#include "core/train/blas.h"
#include "core/train/inference.h"

namespace miseg {
namespace {

using testing::PhantomVolume;

TrainingData SmallData() {
  TrainingData data;
  data.labeled = {PhantomVolume(0, true), PhantomVolume(1, true)};
  data.unlabeled = {PhantomVolume(2, false), PhantomVolume(3, false)};
  data.validation = {PhantomVolume(4, true)};
  return data;
}

TrainerConfig SmallConfig() {
  TrainerConfig config = testing::SmallModelConfig();
  config.labeled_batch = 4;
  config.unlabeled_batch = 4;
  config.total_steps = 80;
  config.warmup_steps = 5;
  config.rampup_steps = 20;
  config.threads = 2;
  return config;
}

// A scratch directory per test.
class TempDir : public testing::TempDir {
 public:
  TempDir() : testing::TempDir("miseg_trainer_test") {}
};

TEST(Trainer, ShortRunLowersTheLossAndReportsEveryTerm) {
  auto trainer = Trainer::Create(SmallConfig(), SmallData());
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  std::vector<StepMetrics> steps;
  std::vector<ValidationMetrics> validations;
  auto outcome = (*trainer)->Run({[&](const StepMetrics& m) { steps.push_back(m); },
                                  [&](const ValidationMetrics& v) { validations.push_back(v); }});
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(*outcome, RunOutcome::kFinished);
  ASSERT_EQ(steps.size(), 80u);
  const auto mean_supervised = [&](size_t from, size_t to) {
    double sum = 0;
    for (size_t i = from; i < to; ++i) sum += steps[i].supervised;
    return sum / static_cast<double>(to - from);
  };
  EXPECT_LT(mean_supervised(70, 80), 0.5 * mean_supervised(0, 10));
  for (const StepMetrics& m : steps) {
    EXPECT_TRUE(std::isfinite(m.loss));
    EXPECT_LE(m.mutual_information, 0);  // -I averaged over displacements
    EXPECT_GE(m.consistency, 0);
    EXPECT_GT(m.learning_rate, 0);
    EXPECT_GT(m.steps_per_second, 0);
    EXPECT_DOUBLE_EQ(m.slices_per_second, m.steps_per_second * 12);
  }
  EXPECT_DOUBLE_EQ(steps.back().unsupervised_weight, 1.0);
  EXPECT_LT(steps.front().unsupervised_weight, 0.01);
  ASSERT_EQ(validations.size(), 1u);  // at the end
  ASSERT_EQ(validations[0].dice_per_class.size(), 3u);
  for (double d : validations[0].dice_per_class) {
    EXPECT_GE(d, 0.0);
    EXPECT_LE(d, 1.0);
  }
}

TEST(Trainer, ResumeReproducesTheUninterruptedRun) {
  TempDir dir;
  TrainerConfig config = SmallConfig();
  config.total_steps = 8;
  const TrainingData data = SmallData();
  std::vector<double> uninterrupted;
  {
    auto trainer = Trainer::Create(config, data);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    ASSERT_TRUE((*trainer)->Run({[&](const StepMetrics& m) { uninterrupted.push_back(m.loss); }}).ok());
    ASSERT_TRUE((*trainer)->ExportModel(dir.file("uninterrupted.model")).ok());
  }
  std::vector<double> resumed;
  {
    auto first = Trainer::Create(config, data);
    ASSERT_TRUE(first.ok());
    auto outcome = (*first)->Run({[&](const StepMetrics& m) { resumed.push_back(m.loss); }},
                                 nullptr, /*max_steps=*/4);
    ASSERT_TRUE(outcome.ok());
    EXPECT_EQ(*outcome, RunOutcome::kStepLimit);
    ASSERT_TRUE((*first)->SaveCheckpoint(dir.file("step4.ckpt")).ok());
  }
  {
    // A fresh process would do exactly this: build from the config, then load.
    TrainerConfig other_seed = config;
    other_seed.seed = 99;  // the checkpoint's random state must win over the seed
    auto second = Trainer::Create(other_seed, data);
    ASSERT_TRUE(second.ok());
    absl::Status loaded = (*second)->LoadCheckpoint(dir.file("step4.ckpt"));
    ASSERT_TRUE(loaded.ok()) << loaded;
    EXPECT_EQ((*second)->step(), 4);
    ASSERT_TRUE((*second)->Run({[&](const StepMetrics& m) { resumed.push_back(m.loss); }}).ok());
    ASSERT_TRUE((*second)->ExportModel(dir.file("resumed.model")).ok());
  }
  ASSERT_EQ(resumed.size(), uninterrupted.size());
  for (size_t i = 0; i < resumed.size(); ++i) {
    EXPECT_EQ(resumed[i], uninterrupted[i]) << "step " << i + 1;
  }
  // Same weights: identical segmentations of an unseen volume.
  auto a = Segmenter::Load(dir.file("uninterrupted.model"));
  auto b = Segmenter::Load(dir.file("resumed.model"));
  ASSERT_TRUE(a.ok() && b.ok());
  const TrainingVolume unseen = PhantomVolume(9, false);
  EXPECT_EQ((*a)->Segment(unseen.image)->voxels, (*b)->Segment(unseen.image)->voxels);
}

absl::StatusOr<std::vector<StepMetrics>> TrainAndRecord(const TrainerConfig& config,
                                                        const TrainingData& data) {
  auto trainer = Trainer::Create(config, data);
  if (!trainer.ok()) return trainer.status();
  std::vector<StepMetrics> steps;
  auto outcome = (*trainer)->Run({[&](const StepMetrics& m) { steps.push_back(m); }});
  if (!outcome.ok()) return outcome.status();
  return steps;
}

// Two trainers on two threads at once give, loss for loss, what each gives alone: no
// random draw of a trainer comes from state another shares (LibTorch's global generator
// was one: weight initialisation drew from it). One intra-op thread each, so that the
// arithmetic is the same alone and together. Skipped where the BLAS is not thread safe,
// since there the two corrupt each other's arithmetic (core/train/blas.h).
TEST(Trainer, TrainersOnTwoThreadsEqualTheSameTrainersOneAfterTheOther) {
  if (const BlasInfo blas = DescribeBlas(); !BlasSafeForThreads(blas)) {
    GTEST_SKIP() << "the BLAS is not thread safe (" << blas.config
                 << "): trainers running at once corrupt each other's results whatever their "
                    "random generators; see core/train/blas.h";
  }
  TrainerConfig first = SmallConfig();
  first.total_steps = 3;
  first.threads = 1;
  first.seed = 5;
  TrainerConfig second = first;
  second.seed = 7;
  second.w_mi = 0.5;
  const TrainingData data = SmallData();

  auto first_alone = TrainAndRecord(first, data);
  auto second_alone = TrainAndRecord(second, data);
  ASSERT_TRUE(first_alone.ok()) << first_alone.status();
  ASSERT_TRUE(second_alone.ok()) << second_alone.status();

  const auto expect_same = [](const std::vector<StepMetrics>& alone,
                              const std::vector<StepMetrics>& together, const char* which) {
    ASSERT_EQ(alone.size(), together.size()) << which;
    for (size_t i = 0; i < alone.size(); ++i) {
      EXPECT_EQ(alone[i].loss, together[i].loss) << which << " step " << i + 1;
      EXPECT_EQ(alone[i].supervised, together[i].supervised) << which << " step " << i + 1;
      EXPECT_EQ(alone[i].consistency, together[i].consistency) << which << " step " << i + 1;
      EXPECT_EQ(alone[i].mutual_information, together[i].mutual_information)
          << which << " step " << i + 1;
    }
  };
  // Both threads are released at once, so that the models are built at about the same
  // time; two rounds, since shared state shows only when the two overlap.
  for (int round = 0; round < 2; ++round) {
    std::promise<void> go;
    std::shared_future<void> released = go.get_future().share();
    absl::StatusOr<std::vector<StepMetrics>> first_together, second_together;
    std::thread a([&] {
      released.wait();
      first_together = TrainAndRecord(first, data);
    });
    std::thread b([&] {
      released.wait();
      second_together = TrainAndRecord(second, data);
    });
    go.set_value();
    a.join();
    b.join();
    ASSERT_TRUE(first_together.ok()) << first_together.status();
    ASSERT_TRUE(second_together.ok()) << second_together.status();
    SCOPED_TRACE(::testing::Message() << "round " << round);
    expect_same(*first_alone, *first_together, "first");
    expect_same(*second_alone, *second_together, "second");
  }
  EXPECT_NE(first_alone->front().loss, second_alone->front().loss);  // two different runs
}

TEST(Trainer, CancellationStopsBetweenSteps) {
  std::atomic<bool> cancel{false};
  auto trainer = Trainer::Create(SmallConfig(), SmallData());
  ASSERT_TRUE(trainer.ok());
  auto outcome = (*trainer)->Run({[&](const StepMetrics& m) {
                                   if (m.step == 3) cancel = true;
                                 }},
                                 &cancel);
  ASSERT_TRUE(outcome.ok());
  EXPECT_EQ(*outcome, RunOutcome::kCancelled);
  EXPECT_EQ((*trainer)->step(), 3);
}

// The loader thread (config.prefetch_batches) changes when batches are drawn, never which:
// the same losses, bit for bit, as drawing each on the training thread, for every objective
// (the mean teacher and entropy draw differently from the method).
TEST(Trainer, PrefetchedBatchesTrainExactlyAsBatchesDrawnInPlace) {
  for (Objective objective :
       {Objective::kMutualInformation, Objective::kLabeledOnly, Objective::kMeanTeacher}) {
    SCOPED_TRACE(ObjectiveName(objective));
    TrainerConfig config = SmallConfig();
    config.objective = objective;
    config.total_steps = 6;
    std::vector<std::vector<double>> losses;
    for (int prefetch : {0, 1, 2}) {
      config.prefetch_batches = prefetch;
      auto steps = TrainAndRecord(config, SmallData());
      ASSERT_TRUE(steps.ok()) << steps.status();
      std::vector<double> run;
      for (const StepMetrics& m : *steps) run.push_back(m.loss);
      losses.push_back(run);
    }
    ASSERT_EQ(losses[0].size(), 6u);
    EXPECT_EQ(losses[1], losses[0]);
    EXPECT_EQ(losses[2], losses[0]);
  }
}

// A cancelled run leaves batches prepared for steps that never ran; they give their draws
// back, so continuing (in the same trainer, or from a checkpoint taken there) trains exactly
// as the uninterrupted run.
TEST(Trainer, CancelledRunWithPrefetchedBatchesContinuesExactly) {
  TempDir dir;
  TrainerConfig config = SmallConfig();
  config.total_steps = 8;
  config.prefetch_batches = 2;
  const TrainingData data = SmallData();
  auto steps = TrainAndRecord(config, data);
  ASSERT_TRUE(steps.ok()) << steps.status();
  std::vector<double> uninterrupted;
  for (const StepMetrics& m : *steps) uninterrupted.push_back(m.loss);
  std::vector<double> continued;
  std::atomic<bool> cancel{false};
  auto trainer = Trainer::Create(config, data);
  ASSERT_TRUE(trainer.ok());
  const auto record = [&](const StepMetrics& m) {
    continued.push_back(m.loss);
    if (m.step == 3) cancel = true;
  };
  auto outcome = (*trainer)->Run({record}, &cancel);
  ASSERT_TRUE(outcome.ok());
  ASSERT_EQ(*outcome, RunOutcome::kCancelled);
  ASSERT_EQ((*trainer)->step(), 3);
  ASSERT_TRUE((*trainer)->SaveCheckpoint(dir.file("step3.ckpt")).ok());
  cancel = false;
  ASSERT_TRUE((*trainer)->Run({[&](const StepMetrics& m) { continued.push_back(m.loss); }}).ok());
  EXPECT_EQ(continued, uninterrupted);

  std::vector<double> resumed(uninterrupted.begin(), uninterrupted.begin() + 3);
  auto second = Trainer::Create(config, data);
  ASSERT_TRUE(second.ok());
  ASSERT_TRUE((*second)->LoadCheckpoint(dir.file("step3.ckpt")).ok());
  ASSERT_TRUE((*second)->Run({[&](const StepMetrics& m) { resumed.push_back(m.loss); }}).ok());
  EXPECT_EQ(resumed, uninterrupted);
}

TEST(Trainer, LabeledOnlyAblationSkipsTheUnlabeledBranch) {
  TrainerConfig config = SmallConfig();
  config.w_mi = 0;
  config.w_cons = 0;
  config.total_steps = 3;
  auto trainer = Trainer::Create(config, SmallData());
  ASSERT_TRUE(trainer.ok());
  std::vector<StepMetrics> steps;
  ASSERT_TRUE((*trainer)->Run({[&](const StepMetrics& m) { steps.push_back(m); }}).ok());
  for (const StepMetrics& m : steps) {
    EXPECT_EQ(m.mutual_information, 0);
    EXPECT_EQ(m.consistency, 0);
    EXPECT_DOUBLE_EQ(m.loss, m.supervised);
    EXPECT_DOUBLE_EQ(m.slices_per_second, m.steps_per_second * 4);
  }
}

// Every objective trains: finite losses, its own terms reported, the others zero.
TEST(Trainer, EveryObjectiveTrainsAndReportsItsOwnTerms) {
  for (Objective objective :
       {Objective::kMutualInformation, Objective::kLabeledOnly, Objective::kEntropyMinimization,
        Objective::kMeanTeacher, Objective::kConsistencyOnly, Objective::kMutualInformationOnly}) {
    SCOPED_TRACE(ObjectiveName(objective));
    TrainerConfig config = SmallConfig();
    config.objective = objective;
    config.total_steps = 3;
    config.rampup_steps = 0;  // the unsupervised term at full weight from the first step
    auto steps = TrainAndRecord(config, SmallData());
    ASSERT_TRUE(steps.ok()) << steps.status();
    ASSERT_EQ(steps->size(), 3u);
    for (const StepMetrics& m : *steps) {
      EXPECT_TRUE(std::isfinite(m.loss));
      const bool mi = objective == Objective::kMutualInformation ||
                      objective == Objective::kMutualInformationOnly;
      const bool cons = objective == Objective::kMutualInformation ||
                        objective == Objective::kConsistencyOnly ||
                        objective == Objective::kMeanTeacher;
      EXPECT_EQ(m.mutual_information != 0, mi);
      EXPECT_EQ(m.consistency != 0, cons);
      EXPECT_EQ(m.entropy != 0, objective == Objective::kEntropyMinimization);
      if (objective == Objective::kLabeledOnly) EXPECT_DOUBLE_EQ(m.loss, m.supervised);
    }
  }
}

// A mean-teacher run resumed from a checkpoint continues exactly: the teacher's weights
// are in the checkpoint.
TEST(Trainer, MeanTeacherResumesExactly) {
  TempDir dir;
  TrainerConfig config = SmallConfig();
  config.objective = Objective::kMeanTeacher;
  config.total_steps = 6;
  config.rampup_steps = 0;
  const TrainingData data = SmallData();
  auto uninterrupted = TrainAndRecord(config, data);
  ASSERT_TRUE(uninterrupted.ok()) << uninterrupted.status();
  std::vector<double> resumed;
  {
    auto first = Trainer::Create(config, data);
    ASSERT_TRUE(first.ok());
    ASSERT_TRUE((*first)->Run({[&](const StepMetrics& m) { resumed.push_back(m.loss); }},
                              nullptr, /*max_steps=*/3).ok());
    ASSERT_TRUE((*first)->SaveCheckpoint(dir.file("mt.ckpt")).ok());
  }
  auto second = Trainer::Create(config, data);
  ASSERT_TRUE(second.ok());
  ASSERT_TRUE((*second)->LoadCheckpoint(dir.file("mt.ckpt")).ok());
  ASSERT_TRUE((*second)->Run({[&](const StepMetrics& m) { resumed.push_back(m.loss); }}).ok());
  ASSERT_EQ(resumed.size(), uninterrupted->size());
  for (size_t i = 0; i < resumed.size(); ++i) {
    EXPECT_EQ(resumed[i], (*uninterrupted)[i].loss) << "step " << i + 1;
  }
  // A checkpoint without a teacher cannot resume a mean-teacher run.
  TrainerConfig method = config;
  method.objective = Objective::kMutualInformation;
  auto plain = Trainer::Create(method, data);
  ASSERT_TRUE(plain.ok());
  ASSERT_TRUE((*plain)->SaveCheckpoint(dir.file("plain.ckpt")).ok());
  auto third = Trainer::Create(config, data);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ((*third)->LoadCheckpoint(dir.file("plain.ckpt")).code(), absl::StatusCode::kDataLoss);
}

TEST(Trainer, ExportedModelSegmentsOnTheSourceGrid) {
  TempDir dir;
  TrainerConfig config = SmallConfig();
  config.total_steps = 2;
  auto trainer = Trainer::Create(config, SmallData());
  ASSERT_TRUE(trainer.ok());
  ASSERT_TRUE((*trainer)->Run({}).ok());
  ASSERT_TRUE((*trainer)->ExportModel(dir.file("m.model")).ok());
  EXPECT_FALSE(std::filesystem::exists(dir.file("m.model.tmp")));
  for (bool tta : {false, true}) {
    auto segmenter = Segmenter::Load(dir.file("m.model"), {"cpu", 2, tta});
    ASSERT_TRUE(segmenter.ok()) << segmenter.status();
    EXPECT_EQ((*segmenter)->spec().grid_size, 48);
    const TrainingVolume v = PhantomVolume(7, false);
    auto labels = (*segmenter)->Segment(v.image);
    ASSERT_TRUE(labels.ok()) << labels.status();
    EXPECT_TRUE(labels->geometry.SameGrid(v.image.geometry));
    EXPECT_EQ(labels->voxels.size(), v.image.voxels.size());
    for (uint8_t l : labels->voxels) ASSERT_LT(l, 4);
  }
}

TEST(Trainer, RefusesBadConfigurationsAndData) {
  TrainerConfig config = SmallConfig();
  config.model.grid_size = 50;  // not a multiple of 4 for a 3-level U-Net
  EXPECT_EQ(Trainer::Create(config, SmallData()).status().code(), absl::StatusCode::kInvalidArgument);
  config = SmallConfig();
  config.learning_rate = -1;
  EXPECT_EQ(Trainer::Create(config, SmallData()).status().code(), absl::StatusCode::kInvalidArgument);
  config = SmallConfig();
  config.device = "tpu:0";
  EXPECT_EQ(Trainer::Create(config, SmallData()).status().code(), absl::StatusCode::kInvalidArgument);
  config = SmallConfig();
  config.w_entropy = -0.1;
  EXPECT_EQ(Trainer::Create(config, SmallData()).status().code(), absl::StatusCode::kInvalidArgument);
  config = SmallConfig();
  config.ema_decay = 1.0;  // a teacher that never learns
  EXPECT_EQ(Trainer::Create(config, SmallData()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseObjective("mean_teacher").value(), Objective::kMeanTeacher);
  EXPECT_EQ(ParseObjective("pseudo_labels").status().code(), absl::StatusCode::kInvalidArgument);

  TrainingData no_labels = SmallData();
  no_labels.labeled[1].labels.reset();
  auto refused = Trainer::Create(SmallConfig(), no_labels);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("phantom-1"), std::string::npos);

  TrainingData none;
  EXPECT_EQ(Trainer::Create(SmallConfig(), none).status().code(), absl::StatusCode::kInvalidArgument);

  TrainingData mismatched = SmallData();
  mismatched.validation[0].labels = PhantomVolume(5, true).labels;
  EXPECT_EQ(Trainer::Create(SmallConfig(), mismatched).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Trainer, RefusesMissingCorruptAndForeignCheckpoints) {
  TempDir dir;
  auto trainer = Trainer::Create(SmallConfig(), SmallData());
  ASSERT_TRUE(trainer.ok());
  EXPECT_EQ((*trainer)->LoadCheckpoint(dir.file("absent.ckpt")).code(), absl::StatusCode::kNotFound);

  std::ofstream(dir.file("garbage.ckpt")) << "this is not a checkpoint";
  EXPECT_EQ((*trainer)->LoadCheckpoint(dir.file("garbage.ckpt")).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Segmenter::Load(dir.file("garbage.ckpt")).status().code(), absl::StatusCode::kDataLoss);

  ASSERT_TRUE((*trainer)->SaveCheckpoint(dir.file("good.ckpt")).ok());
  const auto size = std::filesystem::file_size(dir.file("good.ckpt"));
  std::filesystem::copy_file(dir.file("good.ckpt"), dir.file("truncated.ckpt"));
  std::filesystem::resize_file(dir.file("truncated.ckpt"), size / 2);
  EXPECT_EQ((*trainer)->LoadCheckpoint(dir.file("truncated.ckpt")).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ((*trainer)->step(), 0);  // a refused checkpoint leaves the trainer untouched

  TrainerConfig wider = SmallConfig();
  wider.model.widths = {8, 16, 64};
  auto other = Trainer::Create(wider, SmallData());
  ASSERT_TRUE(other.ok());
  EXPECT_EQ((*other)->LoadCheckpoint(dir.file("good.ckpt")).code(),
            absl::StatusCode::kFailedPrecondition);

  // An exported model (no optimizer state) is not a resumable checkpoint.
  ASSERT_TRUE((*trainer)->ExportModel(dir.file("only.model")).ok());
  EXPECT_EQ((*trainer)->LoadCheckpoint(dir.file("only.model")).code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace miseg

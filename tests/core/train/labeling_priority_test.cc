// Tests of active learning's per-study scores on cases whose answer is known: an
// equivariant model does not disagree with itself, a constant or uniform prediction has no
// neighbour information, two clean regions have about ln 2; and of the combined ranking.
#include "core/train/labeling_priority.h"

#include <cmath>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "core/train/inference.h"
#include "core/train/labeling_scores.h"
#include "core/train/unet.h"
#include "tests/core/train/trainer_fixtures.h"

namespace miseg {
namespace {

// Per-pixel scores from the intensity alone: commutes exactly with every pixel permutation.
torch::Tensor PointwiseModel(const torch::Tensor& x) {
  return torch::softmax(torch::cat({x, -x, 2 * x, 0.5 * x.pow(2)}, 1), 1);
}

torch::Tensor Images(int64_t slices, int64_t size) {
  at::Generator generator = at::detail::createCPUGenerator(/*seed_in=*/3);
  return torch::randn({slices, 1, size, size}, generator, torch::kFloat32);
}

TEST(LabelingScores, EquivariantModelHasZeroDisagreement) {
  const LabelingScores s = ScoreSlices(PointwiseModel, Images(3, 16), /*batch_slices=*/2);
  EXPECT_EQ(s.slices, 3);
  EXPECT_NEAR(s.disagreement, 0.0, 1e-12);
  EXPECT_GT(s.entropy, 0.1);
  EXPECT_GT(s.mutual_information, 0.0);
}

TEST(LabelingScores, PositionDependentModelDisagrees) {
  const auto model = [](const torch::Tensor& x) {
    const torch::Tensor ramp = torch::linspace(-3, 3, x.size(2)).view({1, 1, -1, 1});
    return PointwiseModel(x + ramp);
  };
  EXPECT_GT(ScoreSlices(model, Images(3, 16), 3).disagreement, 0.01);
}

TEST(LabelingScores, ConstantPredictionHasNoInformationNorEntropy) {
  const auto model = [](const torch::Tensor& x) {
    torch::Tensor p = torch::zeros({x.size(0), 4, x.size(2), x.size(3)});
    p.select(1, 1).fill_(1.0);
    return p;
  };
  const LabelingScores s = ScoreSlices(model, Images(2, 8), 1);
  EXPECT_EQ(s.mutual_information, 0.0);
  EXPECT_NEAR(s.entropy, 0.0, 1e-9);
  EXPECT_EQ(s.disagreement, 0.0);
}

TEST(LabelingScores, UniformPredictionHasNoInformationAndMaximalEntropy) {
  const auto model = [](const torch::Tensor& x) {
    return torch::full({x.size(0), 4, x.size(2), x.size(3)}, 0.25);
  };
  const LabelingScores s = ScoreSlices(model, Images(2, 8), 2);
  EXPECT_NEAR(s.mutual_information, 0.0, 1e-12);
  EXPECT_NEAR(s.entropy, std::log(4.0), 1e-9);
  EXPECT_NEAR(s.disagreement, 0.0, 1e-12);
}

TEST(LabelingScores, TwoCleanRegionsHaveAboutLn2OfInformation) {
  torch::Tensor images = torch::full({2, 1, 128, 128}, -10.0);
  images.narrow(3, 64, 64).fill_(10.0);
  const auto model = [](const torch::Tensor& x) { return torch::softmax(torch::cat({x, -x}, 1), 1); };
  const LabelingScores s = ScoreSlices(model, images, 2);
  // Only the pixel pairs across the boundary (1 in 128 for horizontal displacements, and
  // the quarter-turned views' horizontal boundary likewise) fall short of ln 2.
  EXPECT_GT(s.mutual_information, 0.65);
  EXPECT_LE(s.mutual_information, std::log(2.0) + 1e-9);
  EXPECT_NEAR(s.entropy, 0.0, 1e-6);
}

TEST(LabelingScores, DoNotDependOnTheBatchSize) {
  UNet net(UNetOptions{1, 3, {4, 8}});
  at::Generator generator = at::detail::createCPUGenerator(/*seed_in=*/7);
  net->InitializeParameters(generator);
  net->eval();
  const auto model = [&](const torch::Tensor& x) { return torch::softmax(net->forward(x), 1); };
  const torch::Tensor images = Images(5, 16);
  const LabelingScores one = ScoreSlices(model, images, 1);
  const LabelingScores all = ScoreSlices(model, images, 5);
  EXPECT_GT(one.disagreement, 0.0);  // a random network is not equivariant
  EXPECT_NEAR(one.disagreement, all.disagreement, 1e-6);
  EXPECT_NEAR(one.mutual_information, all.mutual_information, 1e-6);
  EXPECT_NEAR(one.entropy, all.entropy, 1e-6);
}

TEST(LabelingScores, RejectsNonSquareSlices) {
  EXPECT_THROW(ScoreSlices(PointwiseModel, torch::zeros({1, 1, 8, 6}), 1), c10::Error);
  EXPECT_THROW(ScoreSlices(PointwiseModel, torch::zeros({0, 1, 8, 8}), 1), c10::Error);
}

TEST(LabelingScores, SegmenterScoresAStudyOnItsGrid) {
  testing::TempDir dir("labeling_priority");
  TrainerConfig config = testing::SmallModelConfig();
  config.total_steps = 1;
  TrainingData data;
  data.labeled.push_back(testing::PhantomVolume(0, true));
  auto trainer = Trainer::Create(config, data);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  ASSERT_TRUE((*trainer)->ExportModel(dir.file("model")).ok());
  InferenceOptions options;
  options.batch_slices = 2;
  auto segmenter = Segmenter::Load(dir.file("model"), options);
  ASSERT_TRUE(segmenter.ok()) << segmenter.status();
  const TrainingVolume volume = testing::PhantomVolume(1, false);
  auto scores = (*segmenter)->ScoreForLabeling(volume.image);
  ASSERT_TRUE(scores.ok()) << scores.status();
  EXPECT_EQ(scores->slices, volume.image.geometry.slices);
  EXPECT_GT(scores->disagreement, 0.0);
  EXPECT_GE(scores->mutual_information, 0.0);
  EXPECT_LE(scores->mutual_information, std::log(4.0) + 1e-9);
  EXPECT_GT(scores->entropy, 0.0);
  ImageVolume broken = volume.image;
  broken.voxels.pop_back();
  EXPECT_EQ((*segmenter)->ScoreForLabeling(broken).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CombinedPriority, NormalisedRanksShareTies) {
  EXPECT_EQ(NormalisedRanks({3, 1, 2}), (std::vector<double>{1, 0, 0.5}));
  EXPECT_EQ(NormalisedRanks({1, 1, 2}), (std::vector<double>{0.25, 0.25, 1}));
  EXPECT_EQ(NormalisedRanks({7}), (std::vector<double>{0.5}));
  EXPECT_TRUE(NormalisedRanks({}).empty());
}

TEST(CombinedPriority, HighDisagreementAndLowInformationComeFirst) {
  std::vector<LabelingScores> scores(3);
  scores[0].disagreement = 0.1, scores[0].mutual_information = 0.5;  // confident, coherent
  scores[1].disagreement = 0.3, scores[1].mutual_information = 0.1;  // label this one
  scores[2].disagreement = 0.2, scores[2].mutual_information = 0.3;
  EXPECT_EQ(CombinedPriority(scores), (std::vector<double>{0.0, 2.0, 1.0}));
  EXPECT_EQ(CombinedPriority({scores[0]}), (std::vector<double>{1.0}));
}

}  // namespace
}  // namespace miseg

// The frozen inference network (batch norm folded, channels-last, inference mode) gives the
// logits of the trained U-Net in eval mode to float tolerance, and the same labels, on a
// phantom study: through FrozenUNet directly and through SegmentPrepared.
#include "core/train/frozen_unet.h"

#include <cstring>

#include <gtest/gtest.h>

#include "core/train/model_io.h"
#include "core/train/segment_prepared.h"
#include "core/train/preprocess.h"
#include "tests/core/train/trainer_fixtures.h"

namespace miseg {
namespace {

using testing::PhantomVolume;

// A model trained a few steps, so that its batch-norm statistics and affine parameters are
// far from their initial constants, loaded as the segmenter loads it (eval mode).
LoadedModel TrainedModel(const std::string& path) {
  TrainerConfig config = testing::SmallModelConfig();
  config.labeled_batch = 4;
  config.unlabeled_batch = 4;
  config.total_steps = 12;
  config.threads = 2;
  TrainingData data;
  data.labeled = {PhantomVolume(0, true), PhantomVolume(1, true)};
  data.unlabeled = {PhantomVolume(2, false)};
  auto trainer = Trainer::Create(config, data);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  EXPECT_TRUE((*trainer)->Run({}).ok());
  EXPECT_TRUE((*trainer)->ExportModel(path).ok());
  auto loaded = LoadModel(path, torch::kCPU);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  return std::move(*loaded);
}

TEST(FrozenUNet, SameLogitsAndLabelsAsTheEvalModeNetwork) {
  testing::TempDir dir("miseg_frozen_unet_test");
  LoadedModel loaded = TrainedModel(dir.file("model.pt"));
  const TrainingVolume study = PhantomVolume(5, /*labeled=*/false);
  auto prepared = PrepareVolume(study.image, nullptr, loaded.spec);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  torch::Tensor expected;
  {
    torch::NoGradGuard no_grad;
    expected = loaded.model->forward(prepared->images);
  }
  const LabelVolume labels = SegmentPrepared(loaded.model, *prepared, torch::kCPU, 2, false);
  for (bool channels_last : {true, false}) {
    SCOPED_TRACE(channels_last ? "channels-last" : "NCHW");
    const FrozenUNet frozen = FrozenUNet::Fold(loaded.model, channels_last);
    const torch::Tensor logits = frozen.forward(prepared->images);
    ASSERT_EQ(logits.sizes(), expected.sizes());
    const double scale = expected.abs().max().item<double>();
    const double worst = (logits - expected).abs().max().item<double>();
    EXPECT_LE(worst, 1e-5 * scale + 1e-6) << "largest logit " << scale;
    EXPECT_TRUE(torch::equal(logits.argmax(1), expected.argmax(1)));
    const LabelVolume frozen_labels = SegmentPrepared(
        [&frozen](const torch::Tensor& x) { return frozen.forward(x); }, *prepared, torch::kCPU,
        2, false);
    ASSERT_EQ(frozen_labels.voxels.size(), labels.voxels.size());
    EXPECT_TRUE(frozen_labels.voxels == labels.voxels);
  }
}

}  // namespace
}  // namespace miseg

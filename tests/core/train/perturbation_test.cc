// Dihedral perturbations invert exactly; augmentation keeps labels valid and is seeded.
#include "core/train/perturbation.h"

#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

namespace miseg {
namespace {

std::vector<DihedralTransform> AllDihedral() {
  std::vector<DihedralTransform> all;
  for (int turns = 0; turns < 4; ++turns)
    for (bool flip : {false, true}) all.push_back({flip, false, turns});
  return all;
}

TEST(Dihedral, InverseIsExactForAllEightElements) {
  const torch::Tensor x = torch::randn({2, 3, 8, 8});
  for (const DihedralTransform& t : AllDihedral()) {
    EXPECT_TRUE(torch::equal(InvertDihedral(t, ApplyDihedral(t, x)), x));
    EXPECT_TRUE(torch::equal(ApplyDihedral(t, InvertDihedral(t, x)), x));
  }
  // Flip combinations on non-square images.
  const torch::Tensor rect = torch::randn({1, 1, 5, 9});
  for (bool rows : {false, true})
    for (bool cols : {false, true}) {
      const DihedralTransform t{rows, cols, 0};
      EXPECT_TRUE(torch::equal(InvertDihedral(t, ApplyDihedral(t, rect)), rect));
    }
}

TEST(Dihedral, EightElementsAreDistinct) {
  const torch::Tensor x = torch::arange(16, torch::kFloat32).view({1, 1, 4, 4});
  const auto all = AllDihedral();
  for (size_t i = 0; i < all.size(); ++i)
    for (size_t j = i + 1; j < all.size(); ++j)
      EXPECT_FALSE(torch::equal(ApplyDihedral(all[i], x), ApplyDihedral(all[j], x))) << i << "," << j;
}

// The gather form CUDA graphs use is the per-sample flips and turns exactly, gradients too.
TEST(Dihedral, ByIndexEqualsTheFlipsAndTurnsWithTheirGradients) {
  const std::vector<DihedralTransform> transforms = AllDihedral();
  const int64_t n = static_cast<int64_t>(transforms.size());
  const torch::Tensor x = torch::randn({n, 3, 6, 6}, torch::requires_grad());
  const torch::Tensor index = DihedralIndex(transforms, 6, 6);
  ASSERT_EQ(index.sizes(), torch::IntArrayRef({n, 36}));
  const torch::Tensor by_index = ApplyDihedralByIndex(x, index);
  const torch::Tensor direct = ApplyDihedral(transforms, x);
  EXPECT_TRUE(torch::equal(by_index, direct));
  const torch::Tensor weights = torch::randn({n, 3, 6, 6});
  const torch::Tensor grad_by_index = torch::autograd::grad({(by_index * weights).sum()}, {x})[0];
  const torch::Tensor grad_direct = torch::autograd::grad({(direct * weights).sum()}, {x})[0];
  EXPECT_TRUE(torch::equal(grad_by_index, grad_direct));
  // Flips of a non-square slice; a quarter turn of one is refused.
  const torch::Tensor rect = torch::randn({2, 1, 5, 9});
  const std::vector<DihedralTransform> flips = {{true, false, 0}, {true, true, 0}};
  EXPECT_TRUE(torch::equal(ApplyDihedralByIndex(rect, DihedralIndex(flips, 5, 9)),
                           ApplyDihedral(flips, rect)));
  EXPECT_THROW(DihedralIndex({{false, false, 1}}, 5, 9), c10::Error);
}

TEST(Dihedral, KnownResults) {
  const torch::Tensor x = torch::tensor({1, 2, 3, 4, 5, 6}, torch::kFloat32).view({2, 3});
  EXPECT_TRUE(torch::equal(ApplyDihedral({false, true, 0}, x),
                           torch::tensor({3, 2, 1, 6, 5, 4}, torch::kFloat32).view({2, 3})));
  EXPECT_TRUE(torch::equal(ApplyDihedral({true, false, 0}, x),
                           torch::tensor({4, 5, 6, 1, 2, 3}, torch::kFloat32).view({2, 3})));
  // One counter-clockwise quarter turn: the last column becomes the first row.
  EXPECT_TRUE(torch::equal(ApplyDihedral({false, false, 1}, x),
                           torch::tensor({3, 6, 2, 5, 1, 4}, torch::kFloat32).view({3, 2})));
}

TEST(Dihedral, PerSampleTransformsInvertExactly) {
  const torch::Tensor x = torch::randn({8, 4, 6, 6});
  const std::vector<DihedralTransform> transforms = AllDihedral();
  const torch::Tensor y = ApplyDihedral(transforms, x);
  for (int64_t i = 0; i < 8; ++i) {
    EXPECT_TRUE(torch::equal(y[i], ApplyDihedral(transforms[i], x[i])));
  }
  EXPECT_TRUE(torch::equal(InvertDihedral(transforms, y), x));
}

TEST(Dihedral, SamplingHonoursProbabilities) {
  std::mt19937_64 rng(1);
  int flips = 0, turns = 0;
  for (int i = 0; i < 4000; ++i) {
    const DihedralTransform t = SampleDihedral(rng, 0.8, false);
    flips += t.flip_rows + t.flip_cols;
    turns += t.quarter_turns;
  }
  EXPECT_NEAR(flips / 8000.0, 0.8, 0.03);
  EXPECT_EQ(turns, 0);
}

TEST(Augment, NeutralOptionsAreIdentity) {
  torch::Tensor images = torch::randn({3, 1, 16, 16});
  torch::Tensor labels = torch::randint(0, 4, {3, 16, 16});
  const torch::Tensor images_before = images.clone(), labels_before = labels.clone();
  AugmentationOptions neutral{0.0, 0.0, 1.0, 1.0, 0};
  std::mt19937_64 rng(2);
  Augment(neutral, rng, images, labels);
  EXPECT_TRUE(torch::allclose(images, images_before, 1e-5, 1e-5));
  EXPECT_TRUE(torch::equal(labels, labels_before));
}

TEST(Augment, LabelsStayValidAndMoveWithTheImage) {
  // The image equals its label map, so after any augmentation (intensity fixed) the sampled
  // image must agree with the nearest-sampled labels away from class borders.
  torch::Tensor labels = torch::zeros({4, 32, 32}, torch::kInt64);
  labels.narrow(1, 8, 12).narrow(2, 10, 14).fill_(3);
  labels.narrow(1, 12, 4).narrow(2, 14, 4).fill_(2);
  torch::Tensor images = labels.to(torch::kFloat32).unsqueeze(1);
  AugmentationOptions options{45.0, 0.5, 1.0, 1.0, 24};
  std::mt19937_64 rng(3);
  Augment(options, rng, images, labels);
  ASSERT_EQ(images.sizes(), (std::vector<int64_t>{4, 1, 24, 24}));
  ASSERT_EQ(labels.sizes(), (std::vector<int64_t>{4, 24, 24}));
  EXPECT_GE(labels.min().item<int64_t>(), 0);
  EXPECT_LE(labels.max().item<int64_t>(), 3);
  const torch::Tensor interior = (images.squeeze(1) - images.squeeze(1).round()).abs() < 1e-3;
  const torch::Tensor agree = images.squeeze(1).round().to(torch::kInt64) == labels;
  EXPECT_TRUE(agree.masked_select(interior).all().item<bool>());
}

TEST(Augment, SameSeedSameResult) {
  const torch::Tensor images = torch::randn({2, 1, 16, 16});
  torch::Tensor a = images.clone(), b = images.clone(), la, lb;
  std::mt19937_64 r1(9), r2(9);
  Augment({}, r1, a, la);
  Augment({}, r2, b, lb);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(la.defined());
}

TEST(PerturbIntensity, SeededAndShapePreserving) {
  const torch::Tensor x = torch::randn({4, 1, 8, 8});
  std::mt19937_64 r1(5), r2(5);
  at::Generator g1 = at::make_generator<at::CPUGeneratorImpl>(11);
  at::Generator g2 = at::make_generator<at::CPUGeneratorImpl>(11);
  const torch::Tensor y1 = PerturbIntensity(x, {}, r1, g1);
  const torch::Tensor y2 = PerturbIntensity(x, {}, r2, g2);
  EXPECT_EQ(y1.sizes(), x.sizes());
  EXPECT_TRUE(torch::equal(y1, y2));
  EXPECT_FALSE(torch::allclose(y1, x));
  std::mt19937_64 r3(5);
  at::Generator g3 = at::make_generator<at::CPUGeneratorImpl>(11);
  EXPECT_TRUE(torch::allclose(PerturbIntensity(x, {0.0, 0.0, 0.0}, r3, g3), x, 1e-5, 1e-5));
}

}  // namespace
}  // namespace miseg

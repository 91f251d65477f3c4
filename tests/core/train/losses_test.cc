// Tests of the objective's terms: the MI loss against a plain per-displacement reference in
// double precision, its defining properties and its gradients; consistency, supervised,
// ramp-up and learning-rate schedule values.
#include "core/train/losses.h"

#include <cmath>
#include <vector>

#include <gtest/gtest.h>
#include <torch/nn/functional/activation.h>

namespace miseg {
namespace {

// Straight from docs/method.md: one J_t per displacement, c zero outside the image.
double ReferenceMiLoss(const torch::Tensor& a_t, const torch::Tensor& c_t, int64_t d,
                       double lambda, double eps) {
  const torch::Tensor a_c = a_t.to(torch::kFloat64).contiguous();
  const torch::Tensor c_c = c_t.to(torch::kFloat64).contiguous();
  const double* a = a_c.data_ptr<double>();
  const double* c = c_c.data_ptr<double>();
  const int64_t B = a_t.size(0), K = a_t.size(1), H = a_t.size(2), W = a_t.size(3);
  const auto at = [&](const double* p, int64_t b, int64_t k, int64_t y, int64_t x) {
    return p[((b * K + k) * H + y) * W + x];
  };
  double total = 0;
  for (int64_t dy = -d; dy <= d; ++dy) {
    for (int64_t dx = -d; dx <= d; ++dx) {
      std::vector<double> joint(K * K, 0.0);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < K; ++i)
          for (int64_t j = 0; j < K; ++j)
            for (int64_t y = 0; y < H; ++y)
              for (int64_t x = 0; x < W; ++x) {
                const int64_t y2 = y + dy, x2 = x + dx;
                if (y2 < 0 || y2 >= H || x2 < 0 || x2 >= W) continue;
                joint[i * K + j] += at(a, b, i, y, x) * at(c, b, j, y2, x2);
              }
      double sum = 0;
      for (double v : joint) sum += v;
      std::vector<double> sym(K * K);
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < K; ++j)
          sym[i * K + j] = (joint[i * K + j] + joint[j * K + i]) / (2 * sum);
      std::vector<double> r(K, 0), s(K, 0);
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < K; ++j) {
          r[i] += sym[i * K + j];
          s[j] += sym[i * K + j];
        }
      double info = 0;
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < K; ++j) {
          const double v = sym[i * K + j];
          info += v * (std::log(std::max(v, eps)) - lambda * std::log(std::max(r[i], eps)) -
                       lambda * std::log(std::max(s[j], eps)));
        }
      total += info;
    }
  }
  return -total / static_cast<double>((2 * d + 1) * (2 * d + 1));
}

torch::Tensor RandomProbabilities(std::vector<int64_t> shape, double sharpness = 1.0) {
  return torch::softmax(sharpness * torch::randn(shape, torch::kFloat64), 1);
}

// Balanced one-hot maps: class k fills vertical stripes of equal width.
torch::Tensor StripeOneHot(int64_t batch, int64_t classes, int64_t size, int64_t stripe) {
  torch::Tensor labels = torch::div(torch::arange(size), stripe, "floor").remainder(classes);
  labels = labels.view({1, 1, size}).expand({batch, size, size});
  return torch::one_hot(labels, classes).permute({0, 3, 1, 2}).to(torch::kFloat64);
}

TEST(MutualInformationLoss, MatchesPerDisplacementReference) {
  torch::manual_seed(7);
  for (int64_t d : {0, 1, 2}) {
    for (double lambda : {1.0, 1.5}) {
      const torch::Tensor a = RandomProbabilities({3, 4, 9, 7});
      const torch::Tensor c = RandomProbabilities({3, 4, 9, 7});
      const double got = MutualInformationLoss(a, c, {d, lambda, 1e-8}).item<double>();
      EXPECT_NEAR(got, ReferenceMiLoss(a, c, d, lambda, 1e-8), 1e-12) << "d=" << d;
    }
  }
}

TEST(MutualInformationLoss, ReferenceAgreesInFloat32) {
  torch::manual_seed(8);
  const torch::Tensor a = RandomProbabilities({8, 4, 32, 32}, 3.0).to(torch::kFloat32);
  const torch::Tensor c = RandomProbabilities({8, 4, 32, 32}, 3.0).to(torch::kFloat32);
  EXPECT_NEAR(MutualInformationLoss(a, c).item<double>(), ReferenceMiLoss(a, c, 1, 1.0, 1e-8),
              1e-5);
}

TEST(MutualInformationLoss, IsMinusLnKForIdenticalBalancedOneHotMaps) {
  for (int64_t k : {2, 3, 4}) {
    const torch::Tensor a = StripeOneHot(2, k, 12 * k, 1);
    // d = 0: I_0 = ln K exactly.
    EXPECT_NEAR(MutualInformationLoss(a, a, {0, 1.0, 1e-8}).item<double>(), -std::log(k), 1e-9);
  }
  // d = 1: only pixels at stripe borders change class under a shift, so I_t approaches
  // ln K from below as the stripes widen.
  const double narrow = MutualInformationLoss(StripeOneHot(1, 4, 256, 16), StripeOneHot(1, 4, 256, 16)).item<double>();
  const double wide = MutualInformationLoss(StripeOneHot(1, 4, 256, 64), StripeOneHot(1, 4, 256, 64)).item<double>();
  EXPECT_GT(narrow, wide);
  EXPECT_GT(wide, -std::log(4.0));
  EXPECT_LT(wide, -std::log(4.0) + 0.05);
}

TEST(MutualInformationLoss, IsAboutZeroForIndependentMaps) {
  torch::manual_seed(3);
  const auto random_one_hot = [] {
    const torch::Tensor labels = torch::randint(0, 4, {4, 64, 64});
    return torch::one_hot(labels, 4).permute({0, 3, 1, 2}).to(torch::kFloat64);
  };
  const double loss = MutualInformationLoss(random_one_hot(), random_one_hot()).item<double>();
  EXPECT_LT(std::abs(loss), 1e-3);  // the plug-in estimator's bias is ~(K-1)^2 / (2N)
}

TEST(MutualInformationLoss, InvariantToPermutingClassesOfBothInputs) {
  torch::manual_seed(4);
  const torch::Tensor a = RandomProbabilities({2, 4, 16, 16}, 2.0);
  const torch::Tensor c = RandomProbabilities({2, 4, 16, 16}, 2.0);
  const torch::Tensor perm = torch::tensor({2, 0, 3, 1});
  const double base = MutualInformationLoss(a, c).item<double>();
  EXPECT_NEAR(MutualInformationLoss(a.index_select(1, perm), c.index_select(1, perm)).item<double>(),
              base, 1e-12);
  // Permuting c alone changes it: the symmetrisation ties the two class axes together.
  EXPECT_GT(std::abs(MutualInformationLoss(a, c.index_select(1, perm)).item<double>() - base), 1e-6);
}

TEST(MutualInformationLoss, GradientsMatchFiniteDifferences) {
  torch::manual_seed(5);
  torch::Tensor a = RandomProbabilities({2, 3, 6, 5}).requires_grad_(true);
  torch::Tensor c = RandomProbabilities({2, 3, 6, 5}).requires_grad_(true);
  MutualInformationLoss(a, c).backward();
  const torch::Tensor grad_a = a.grad().clone();
  const torch::Tensor grad_c = c.grad().clone();
  ASSERT_GT(grad_a.abs().sum().item<double>(), 0);
  ASSERT_GT(grad_c.abs().sum().item<double>(), 0);
  torch::NoGradGuard no_grad;
  constexpr double kStep = 1e-6;
  for (torch::Tensor* input : {&a, &c}) {
    const torch::Tensor& analytic = input == &a ? grad_a : grad_c;
    torch::Tensor flat = input->view({-1});
    for (int64_t index = 0; index < flat.numel(); index += 7) {
      const double original = flat[index].item<double>();
      flat[index] = original + kStep;
      const double plus = MutualInformationLoss(a, c).item<double>();
      flat[index] = original - kStep;
      const double minus = MutualInformationLoss(a, c).item<double>();
      flat[index] = original;
      EXPECT_NEAR(analytic.view({-1})[index].item<double>(), (plus - minus) / (2 * kStep), 1e-6)
          << (input == &a ? "a" : "c") << "[" << index << "]";
    }
  }
}

TEST(ConsistencyLoss, MeanSquaredErrorAndStopGradient) {
  torch::Tensor c = torch::tensor({0.2, 0.8, 0.6, 0.4}, torch::kFloat64).view({1, 2, 1, 2});
  torch::Tensor a = torch::tensor({0.0, 1.0, 1.0, 0.0}, torch::kFloat64).view({1, 2, 1, 2});
  c.requires_grad_(true);
  a.requires_grad_(true);
  const torch::Tensor loss = ConsistencyLoss(c, a);
  EXPECT_NEAR(loss.item<double>(), (0.04 + 0.04 + 0.16 + 0.16) / 4, 1e-12);
  loss.backward();
  EXPECT_FALSE(a.grad().defined() && a.grad().abs().sum().item<double>() != 0);
  EXPECT_GT(c.grad().abs().sum().item<double>(), 0);
}

TEST(ConsistencyLoss, KullbackLeiblerIsZeroOnlyForEqualMaps) {
  torch::manual_seed(6);
  const torch::Tensor p = RandomProbabilities({2, 3, 4, 4});
  const torch::Tensor q = RandomProbabilities({2, 3, 4, 4});
  EXPECT_NEAR(ConsistencyLoss(p, p, ConsistencyKind::kKullbackLeibler).item<double>(), 0, 1e-12);
  EXPECT_GT(ConsistencyLoss(q, p, ConsistencyKind::kKullbackLeibler).item<double>(), 1e-3);
}

TEST(EntropyLoss, ZeroForOneHotLogKForUniformAndTheMeanOfPixelEntropies) {
  const torch::Tensor one_hot =
      torch::tensor({1.0, 0.0, 0.0, 1.0}, torch::kFloat64).view({1, 2, 1, 2});
  EXPECT_NEAR(EntropyLoss(one_hot).item<double>(), 0, 1e-9);
  const torch::Tensor uniform = torch::full({2, 4, 3, 3}, 0.25, torch::kFloat64);
  EXPECT_NEAR(EntropyLoss(uniform).item<double>(), std::log(4.0), 1e-12);
  // Two pixels: (0.5, 0.5) and (0.9, 0.1).
  const torch::Tensor mixed =
      torch::tensor({0.5, 0.9, 0.5, 0.1}, torch::kFloat64).view({1, 2, 1, 2});
  const double h2 = -(0.9 * std::log(0.9) + 0.1 * std::log(0.1));
  EXPECT_NEAR(EntropyLoss(mixed).item<double>(), (std::log(2.0) + h2) / 2, 1e-12);
}

TEST(EntropyLoss, GradientSharpensTowardsTheLikelierClass) {
  torch::Tensor logits = torch::tensor({1.0, 0.0}, torch::kFloat64).view({1, 2, 1, 1});
  logits.requires_grad_(true);
  EntropyLoss(torch::softmax(logits, 1)).backward();
  // Descending the entropy raises the larger logit and lowers the smaller one.
  EXPECT_LT(logits.grad()[0][0][0][0].item<double>(), 0);
  EXPECT_GT(logits.grad()[0][1][0][0].item<double>(), 0);
}

TEST(UpdateMovingAverage, TeacherMovesByOneMinusAlphaTowardsTheStudent) {
  std::vector<torch::Tensor> teacher = {torch::tensor({1.0, 2.0}, torch::kFloat64)};
  const std::vector<torch::Tensor> student = {torch::tensor({3.0, -2.0}, torch::kFloat64)};
  UpdateMovingAverage(teacher, student, 0.75);
  EXPECT_NEAR(teacher[0][0].item<double>(), 0.75 * 1 + 0.25 * 3, 1e-12);
  EXPECT_NEAR(teacher[0][1].item<double>(), 0.75 * 2 + 0.25 * -2, 1e-12);
  UpdateMovingAverage(teacher, student, 0.0);  // alpha 0: the student itself
  EXPECT_NEAR(teacher[0][1].item<double>(), -2, 1e-12);
}

TEST(SupervisedLoss, CrossEntropyAndOptionalDice) {
  const torch::Tensor logits = torch::tensor({2.0, 0.0, 0.0, 1.0}, torch::kFloat64).view({1, 2, 1, 2});
  const torch::Tensor labels = torch::tensor({0, 1}, torch::kInt64).view({1, 1, 2});
  const double ce = (std::log(1 + std::exp(-2.0)) + std::log(1 + std::exp(-1.0))) / 2;
  EXPECT_NEAR(SupervisedLoss(logits, labels).item<double>(), ce, 1e-12);
  const double p1 = 1 / (1 + std::exp(2.0)), q1 = 1 / (1 + std::exp(-1.0));
  const double dice1 = (2 * q1 + 1e-5) / (p1 + q1 + 1 + 1e-5);
  EXPECT_NEAR(SupervisedLoss(logits, labels, 0.5).item<double>(), ce + 0.5 * (1 - dice1), 1e-9);
}

TEST(Schedules, RampUpWeight) {
  EXPECT_DOUBLE_EQ(RampUpWeight(0, 100), std::exp(-5.0));
  EXPECT_DOUBLE_EQ(RampUpWeight(50, 100), std::exp(-5.0 * 0.25));
  EXPECT_DOUBLE_EQ(RampUpWeight(100, 100), 1.0);
  EXPECT_DOUBLE_EQ(RampUpWeight(1000, 100), 1.0);
  EXPECT_DOUBLE_EQ(RampUpWeight(0, 0), 1.0);
}

TEST(Schedules, WarmUpThenCosineDecay) {
  EXPECT_DOUBLE_EQ(LearningRateAt(0, 1000, 10, 1e-3, 1e-5), 1e-4);
  EXPECT_DOUBLE_EQ(LearningRateAt(9, 1000, 10, 1e-3, 1e-5), 1e-3);
  EXPECT_DOUBLE_EQ(LearningRateAt(10, 1000, 10, 1e-3, 1e-5), 1e-3);
  EXPECT_NEAR(LearningRateAt(505, 1000, 10, 1e-3, 1e-5), (1e-3 + 1e-5) / 2, 1e-12);
  EXPECT_NEAR(LearningRateAt(1000, 1000, 10, 1e-3, 1e-5), 1e-5, 1e-15);
}

}  // namespace
}  // namespace miseg

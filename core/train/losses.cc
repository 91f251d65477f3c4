// Loss terms of the objective. The MI loss follows the IIC "uncollapsed" segmentation loss
// exactly as docs/method.md specifies it (clamping only inside the logs).
#include "core/train/losses.h"

#include <algorithm>
#include <cmath>

namespace miseg {

torch::Tensor NeighbourJoints(const torch::Tensor& a, const torch::Tensor& c, int64_t window) {
  TORCH_CHECK(a.dim() == 4 && a.sizes() == c.sizes(),
              "MutualInformationLoss: a and c must both be B x K x H x W of the same shape");
  const int64_t d = window;
  const int64_t classes = a.size(1);
  const int64_t displacements = (2 * d + 1) * (2 * d + 1);
  // conv2d(input = a as K x B x H x W, weight = c as K x B x H x W, padding d) gives
  // out[i, j, p, q] = sum_b,u a[b, i, u + s] * c[b, j, u] with s = (p - d, q - d): the joint
  // for displacement -s. Every t with |t| <= d appears exactly once, which is all we sum.
  const torch::Tensor joint = torch::conv2d(a.transpose(0, 1), c.transpose(0, 1), /*bias=*/{},
                                            /*stride=*/1, /*padding=*/d);
  return joint.permute({2, 3, 0, 1}).reshape({displacements, classes, classes});
}

torch::Tensor MeanInformation(const torch::Tensor& joints, const MutualInformationOptions& options) {
  torch::Tensor joint = joints / joints.sum({1, 2}, /*keepdim=*/true);
  joint = (joint + joint.transpose(1, 2)) / 2;
  const torch::Tensor row_marginal = joint.sum(2, /*keepdim=*/true);  // r[i]
  const torch::Tensor col_marginal = joint.sum(1, /*keepdim=*/true);  // s[j]
  const double eps = options.epsilon;
  const torch::Tensor information =
      (joint * (torch::log(torch::clamp_min(joint, eps)) -
                options.lambda * torch::log(torch::clamp_min(row_marginal, eps)) -
                options.lambda * torch::log(torch::clamp_min(col_marginal, eps))))
          .sum({1, 2});
  return information.mean();
}

torch::Tensor MutualInformationLoss(const torch::Tensor& a, const torch::Tensor& c,
                                    const MutualInformationOptions& options) {
  return -MeanInformation(NeighbourJoints(a, c, options.window), options);
}

torch::Tensor ConsistencyLoss(const torch::Tensor& c, const torch::Tensor& a,
                              ConsistencyKind kind) {
  TORCH_CHECK(c.sizes() == a.sizes(), "ConsistencyLoss: shapes differ");
  const torch::Tensor target = a.detach();
  if (kind == ConsistencyKind::kKullbackLeibler) {
    constexpr double kEps = 1e-8;
    return (target * (torch::log(torch::clamp_min(target, kEps)) -
                      torch::log(torch::clamp_min(c, kEps))))
        .sum(1)
        .mean();
  }
  return (c - target).pow(2).mean();
}

torch::Tensor EntropyLoss(const torch::Tensor& probs, double epsilon) {
  TORCH_CHECK(probs.dim() == 4, "EntropyLoss: probabilities must be B x K x H x W");
  return -(probs * torch::log(torch::clamp_min(probs, epsilon))).sum(1).mean();
}

void UpdateMovingAverage(const std::vector<torch::Tensor>& teacher,
                         const std::vector<torch::Tensor>& student, double alpha) {
  TORCH_CHECK(teacher.size() == student.size(), "UpdateMovingAverage: models differ");
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < teacher.size(); ++i) {
    teacher[i].mul_(alpha).add_(student[i].detach(), 1.0 - alpha);
  }
}

torch::Tensor SupervisedLoss(const torch::Tensor& logits, const torch::Tensor& labels,
                             double dice_weight) {
  torch::Tensor loss = torch::cross_entropy_loss(logits, labels);
  if (dice_weight > 0) {
    const int64_t classes = logits.size(1);
    const torch::Tensor probs = torch::softmax(logits, 1);
    const torch::Tensor truth =
        torch::one_hot(labels, classes).permute({0, 3, 1, 2}).to(probs.scalar_type());
    constexpr double kSmooth = 1e-5;
    const torch::Tensor intersection = (probs * truth).sum({0, 2, 3});
    const torch::Tensor total = probs.sum({0, 2, 3}) + truth.sum({0, 2, 3});
    const torch::Tensor dice = (2 * intersection + kSmooth) / (total + kSmooth);
    loss = loss + dice_weight * (1 - dice.slice(0, 1).mean());
  }
  return loss;
}

double RampUpWeight(int64_t step, int64_t rampup_steps) {
  if (rampup_steps <= 0) return 1.0;
  const double phase =
      1.0 - static_cast<double>(std::min(std::max<int64_t>(step, 0), rampup_steps)) /
                static_cast<double>(rampup_steps);
  return std::exp(-5.0 * phase * phase);
}

double LearningRateAt(int64_t step, int64_t total_steps, int64_t warmup_steps, double base_lr,
                      double min_lr) {
  if (warmup_steps > 0 && step < warmup_steps) {
    return base_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  const int64_t decay_steps = std::max<int64_t>(total_steps - warmup_steps, 1);
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps));
  return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace miseg

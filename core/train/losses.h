// The terms of the training objective of docs/method.md: supervised cross-entropy
// (optionally plus soft Dice), the local-window mutual-information loss of IIC as used by
// Peng et al., the consistency loss, and the ramp-up weight. All take and return tensors on
// any device; every loss is a scalar that backpropagates into its (non-detached) inputs.
#ifndef MISEG_CORE_TRAIN_LOSSES_H_
#define MISEG_CORE_TRAIN_LOSSES_H_

#include <cstdint>
#include <vector>

#include <torch/types.h>

#include "core/train/config.h"

namespace miseg {

struct MutualInformationOptions {
  int64_t window = 1;     // d: displacements (dy, dx) with |dy|, |dx| <= d
  double lambda = 1.0;    // weight of the marginal entropies
  double epsilon = 1e-8;  // clamp inside the logarithms only
};

// L_mi = -(1 / (2d+1)^2) * sum_t I_t for probabilities a = T(p(x)) and c = p(T x), both
// B x K x H x W. J_t is computed for all t at once as a convolution (classes as batch, batch
// as channels, c as the kernel, zero padding d), as in the IIC reference.
torch::Tensor MutualInformationLoss(const torch::Tensor& a, const torch::Tensor& c,
                                    const MutualInformationOptions& options = {});

// The two halves of MutualInformationLoss, for callers that accumulate the joints over
// several batches before taking the information (per-study scores, labeling_priority.h).
// NeighbourJoints: the unnormalised J_t, (2d+1)^2 x K x K, summed over the batch and pixels.
// MeanInformation: mean over t of I_t of those joints (each normalised and symmetrised).
torch::Tensor NeighbourJoints(const torch::Tensor& a, const torch::Tensor& c, int64_t window);
torch::Tensor MeanInformation(const torch::Tensor& joints,
                              const MutualInformationOptions& options = {});

// Mean over pixels and classes of (c - stopgrad(a))^2, or the KL divergence
// KL(stopgrad(a) || c) averaged over pixels.
torch::Tensor ConsistencyLoss(const torch::Tensor& c, const torch::Tensor& a,
                              ConsistencyKind kind = ConsistencyKind::kMeanSquaredError);

// Entropy minimisation's term (Grandvalet and Bengio 2005): the mean over pixels of the
// Shannon entropy -sum_k p_k log p_k of probabilities B x K x H x W (classes on dim 1).
// 0 for one-hot pixels, log K for uniform ones; gradients flow into probs.
torch::Tensor EntropyLoss(const torch::Tensor& probs, double epsilon = 1e-8);

// Mean teacher's update (Tarvainen and Valpola 2017): teacher = alpha teacher + (1 - alpha)
// student, in place, tensor by tensor (same shapes, same order), outside autograd.
void UpdateMovingAverage(const std::vector<torch::Tensor>& teacher,
                         const std::vector<torch::Tensor>& student, double alpha);

// Pixel-wise cross-entropy of logits (B x K x H x W) against int64 labels (B x H x W), plus
// dice_weight times the soft Dice loss averaged over the foreground classes.
torch::Tensor SupervisedLoss(const torch::Tensor& logits, const torch::Tensor& labels,
                             double dice_weight = 0.0);

// exp(-5 (1 - min(step, R) / R)^2); 1 when R is 0.
double RampUpWeight(int64_t step, int64_t rampup_steps);

// Linear warm-up to base_lr over warmup_steps, then cosine decay to min_lr at total_steps.
double LearningRateAt(int64_t step, int64_t total_steps, int64_t warmup_steps, double base_lr,
                      double min_lr);

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_LOSSES_H_

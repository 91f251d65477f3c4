// The tensor-level half of labeling_priority.h: LabelingScores of a stack of slices under
// any per-pixel class-probability function (a U-Net's softmax in practice, simple functions
// in tests). Internal to the training core.
#ifndef MISEG_CORE_TRAIN_LABELING_SCORES_H_
#define MISEG_CORE_TRAIN_LABELING_SCORES_H_

#include <cstdint>
#include <functional>

#include <torch/types.h>

#include "core/train/labeling_priority.h"
#include "core/train/losses.h"

namespace miseg {

// B x C x G x G images -> B x K x G x G class probabilities.
using ProbabilityFn = std::function<torch::Tensor(const torch::Tensor&)>;

// images: S x C x G x G (square: quarter turns are among the transforms), predicted
// batch_slices at a time so memory is bounded by one batch whatever S is. Runs under
// NoGradGuard. Throws c10::Error for bad shapes (callers guard with GuardTorch).
LabelingScores ScoreSlices(const ProbabilityFn& predict, const torch::Tensor& images,
                           int64_t batch_slices, const MutualInformationOptions& mi = {});

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_LABELING_SCORES_H_

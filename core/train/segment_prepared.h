// Prediction on a prepared volume, shared by the trainer (validation) and the segmenter;
// internal to the training core (LibTorch types).
#ifndef MISEG_CORE_TRAIN_SEGMENT_PREPARED_H_
#define MISEG_CORE_TRAIN_SEGMENT_PREPARED_H_

#include <cstdint>
#include <functional>

#include <torch/types.h>

#include "core/train/preprocess.h"
#include "core/train/unet.h"
#include "core/volume/volume.h"

namespace miseg {

// Segments a prepared volume: forward passes of batch_slices slices, optional flip test-time
// augmentation (mean of the identity and the three flips), probabilities mapped back to the
// original grid, argmax. The caller sets eval mode; this runs under NoGradGuard.
LabelVolume SegmentPrepared(UNet& model, const PreparedVolume& volume, const torch::Device& device,
                            int64_t batch_slices, bool flip_tta);
// The same with any network: forward maps a normalised S x 1 x G x G batch to logits.
using ForwardFn = std::function<torch::Tensor(const torch::Tensor&)>;
LabelVolume SegmentPrepared(const ForwardFn& forward, const PreparedVolume& volume,
                            const torch::Device& device, int64_t batch_slices, bool flip_tta);

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_SEGMENT_PREPARED_H_

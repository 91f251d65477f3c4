// The U-Net frozen for inference (issue 15): each convolution's batch norm folded into its
// weights and bias (eval mode: y = gamma (conv(x) - mean) / sqrt(var + eps) + beta is a
// convolution with weights W gamma / sqrt(var + eps) and bias beta - mean gamma / sqrt(var
// + eps)), weights in channels-last where the device prefers it (CUDA), the forward pass under
// c10::InferenceMode with in-place ReLU. Half the elementwise passes of the eval-mode
// network and no autograd bookkeeping; the logits agree with UNet's in eval mode to float
// rounding (tests/core/train/frozen_unet_test.cc).
#ifndef MISEG_CORE_TRAIN_FROZEN_UNET_H_
#define MISEG_CORE_TRAIN_FROZEN_UNET_H_

#include <vector>

#include <torch/types.h>

#include "core/train/unet.h"

namespace miseg {

class FrozenUNet {
 public:
  // Folds model's current weights and running statistics (whatever its train/eval mode),
  // on model's device. The result does not refer to model.
  static FrozenUNet Fold(UNet& model, bool channels_last);

  // Logits B x classes x H x W of x (B x in_channels x H x W), as UNet::forward in eval mode
  // gives them. Thread safe: reads its weights only. The result is an inference tensor.
  torch::Tensor forward(const torch::Tensor& x) const;

  // The folded convolutions forward applies, and its layout: core/train/export.cc writes
  // them as a TorchScript module that runs this very forward pass.
  struct Conv {
    torch::Tensor weight, bias;
  };
  const std::vector<std::vector<Conv>>& encoders() const { return encoders_; }
  const std::vector<Conv>& upsamplers() const { return upsamplers_; }
  const std::vector<std::vector<Conv>>& decoders() const { return decoders_; }
  const Conv& head() const { return head_; }
  bool channels_last() const { return channels_last_; }

 private:
  std::vector<std::vector<Conv>> encoders_;  // two folded convolutions per level
  std::vector<Conv> upsamplers_;             // transposed convolutions, as they are
  std::vector<std::vector<Conv>> decoders_;
  Conv head_;
  bool channels_last_ = false;
};

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_FROZEN_UNET_H_

// The 2D U-Net of the training core: per level two 3x3 convolutions with batch norm and
// ReLU, max-pool down, transposed convolution up, skip connections by concatenation, a 1x1
// head to K class scores. Submodule names are the checkpoint keys: never rename them.
#ifndef MISEG_CORE_TRAIN_UNET_H_
#define MISEG_CORE_TRAIN_UNET_H_

#include <cstdint>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

namespace miseg {

struct UNetOptions {
  int64_t in_channels = 1;
  int64_t classes = 4;
  std::vector<int64_t> widths = {16, 32, 64, 128, 256};
};

class UNetImpl : public torch::nn::Module {
 public:
  explicit UNetImpl(const UNetOptions& options);

  // x: B x in_channels x H x W with H and W multiples of 2^(levels-1). Returns logits
  // B x classes x H x W.
  torch::Tensor forward(torch::Tensor x);

  const UNetOptions& options() const { return options_; }

 private:
  UNetOptions options_;
  torch::nn::ModuleList encoders_{nullptr};  // one double conv per level
  torch::nn::ModuleList upsamplers_{nullptr};
  torch::nn::ModuleList decoders_{nullptr};
  torch::nn::Conv2d head_{nullptr};
};
TORCH_MODULE(UNet);

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_UNET_H_

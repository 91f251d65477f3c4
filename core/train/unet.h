// The 2D U-Net of the training core: per level two 3x3 convolutions with batch norm and
// ReLU, max-pool down, transposed convolution up, skip connections by concatenation, a 1x1
// head to K class scores. Submodule names are the checkpoint keys: never rename them.
// Initial weights come from a generator the caller owns (InitializeParameters), never from
// LibTorch's process-wide one, so networks built on different threads are independent.
#ifndef MISEG_CORE_TRAIN_UNET_H_
#define MISEG_CORE_TRAIN_UNET_H_

#include <cstdint>
#include <vector>

#include <ATen/core/Generator.h>
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

  // Redraws the random initial weights of a newly built network from `generator` (a CPU
  // generator; call it before moving the network to its device, so every device starts from
  // the same weights). The distributions are LibTorch's defaults for convolutions (Kaiming
  // uniform with a = sqrt(5), biases uniform in +-1/sqrt(fan_in)), drawn in the order a GCC
  // build of the constructor drew them: a generator seeded with s gives the network that
  // at::manual_seed(s) before construction gave. Batch norm starts at its constants.
  void InitializeParameters(at::Generator& generator);

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

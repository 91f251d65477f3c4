// U-Net construction and forward pass.
#include "core/train/unet.h"

#include <torch/nn/functional/pooling.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/batchnorm.h>

namespace miseg {
namespace {

torch::nn::Sequential DoubleConv(int64_t in, int64_t out) {
  // Bias-free convolutions: the batch norm that follows has its own shift.
  return torch::nn::Sequential(
      torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, /*kernel_size=*/3).padding(1).bias(false)),
      torch::nn::BatchNorm2d(out), torch::nn::ReLU(torch::nn::ReLUOptions().inplace(true)),
      torch::nn::Conv2d(torch::nn::Conv2dOptions(out, out, /*kernel_size=*/3).padding(1).bias(false)),
      torch::nn::BatchNorm2d(out), torch::nn::ReLU(torch::nn::ReLUOptions().inplace(true)));
}

}  // namespace

UNetImpl::UNetImpl(const UNetOptions& options) : options_(options) {
  TORCH_CHECK(!options_.widths.empty(), "UNet needs at least one level");
  const auto& w = options_.widths;
  const size_t levels = w.size();
  encoders_ = register_module("encoders", torch::nn::ModuleList());
  upsamplers_ = register_module("upsamplers", torch::nn::ModuleList());
  decoders_ = register_module("decoders", torch::nn::ModuleList());
  for (size_t level = 0; level < levels; ++level) {
    encoders_->push_back(DoubleConv(level == 0 ? options_.in_channels : w[level - 1], w[level]));
  }
  // Decoder level i takes the level below (w[i+1]) up to w[i], concatenates the skip (w[i]).
  for (size_t level = 0; level + 1 < levels; ++level) {
    upsamplers_->push_back(torch::nn::ConvTranspose2d(
        torch::nn::ConvTranspose2dOptions(w[level + 1], w[level], /*kernel_size=*/2).stride(2)));
    decoders_->push_back(DoubleConv(2 * w[level], w[level]));
  }
  head_ = register_module(
      "head", torch::nn::Conv2d(torch::nn::Conv2dOptions(w[0], options_.classes, /*kernel_size=*/1)));
}

torch::Tensor UNetImpl::forward(torch::Tensor x) {
  const size_t levels = options_.widths.size();
  std::vector<torch::Tensor> skips;
  skips.reserve(levels);
  for (size_t level = 0; level < levels; ++level) {
    if (level > 0) x = torch::max_pool2d(x, /*kernel_size=*/2);
    x = encoders_[level]->as<torch::nn::Sequential>()->forward(x);
    skips.push_back(x);
  }
  for (size_t level = levels - 1; level-- > 0;) {
    x = upsamplers_[level]->as<torch::nn::ConvTranspose2d>()->forward(x);
    x = decoders_[level]->as<torch::nn::Sequential>()->forward(torch::cat({skips[level], x}, 1));
  }
  return head_->forward(x);
}

}  // namespace miseg

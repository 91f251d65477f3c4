// U-Net construction and forward pass.
#include "core/train/unet.h"

#include <cmath>
#include <tuple>
#include <vector>

#include <torch/nn/functional/pooling.h>
#include <torch/nn/init.h>
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

// What ConvNdImpl::reset_parameters does, from `generator` instead of the global one; the
// same expressions, so a seed gives bit-identical weights.
void InitializeConvolution(torch::Tensor weight, torch::Tensor bias, at::Generator& generator) {
  torch::NoGradGuard no_grad;
  const int64_t fan_in = std::get<0>(torch::nn::init::_calculate_fan_in_and_fan_out(weight));
  const double gain = torch::nn::init::calculate_gain(torch::kLeakyReLU, /*param=*/std::sqrt(5));
  const double weight_bound = std::sqrt(3.0) * (gain / std::sqrt(fan_in));
  weight.uniform_(-weight_bound, weight_bound, generator);
  if (bias.defined()) {
    const double bias_bound = 1 / std::sqrt(fan_in);
    bias.uniform_(-bias_bound, bias_bound, generator);
  }
}

// Last convolution first. Before InitializeParameters existed, weights were drawn while
// DoubleConv's Sequential was constructed, whose arguments GCC evaluates right to left; this
// order keeps every earlier seed's network (and so bench/RESULTS.md) bit for bit, and unlike
// that one it no longer depends on the compiler.
void InitializeDoubleConv(torch::nn::SequentialImpl& block, at::Generator& generator) {
  std::vector<torch::nn::Conv2dImpl*> convs;
  for (const auto& module : block) {
    if (auto* conv = module.ptr()->as<torch::nn::Conv2dImpl>()) convs.push_back(conv);
  }
  for (auto it = convs.rbegin(); it != convs.rend(); ++it) {
    InitializeConvolution((*it)->weight, (*it)->bias, generator);
  }
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

void UNetImpl::InitializeParameters(at::Generator& generator) {
  for (size_t level = 0; level < encoders_->size(); ++level) {
    InitializeDoubleConv(*encoders_[level]->as<torch::nn::Sequential>(), generator);
  }
  // The constructor builds each upsampler just before the decoder of its level.
  for (size_t level = 0; level < upsamplers_->size(); ++level) {
    auto* up = upsamplers_[level]->as<torch::nn::ConvTranspose2dImpl>();
    InitializeConvolution(up->weight, up->bias, generator);
    InitializeDoubleConv(*decoders_[level]->as<torch::nn::Sequential>(), generator);
  }
  InitializeConvolution(head_->weight, head_->bias, generator);
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

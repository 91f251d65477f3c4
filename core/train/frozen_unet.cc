// Batch-norm folding and the frozen forward pass.
#include "core/train/frozen_unet.h"

#include <string>

#include <c10/core/InferenceMode.h>
#include <torch/nn/modules/batchnorm.h>

#include "core/train/memory_layout.h"

namespace miseg {
namespace {

// The submodules by their checkpoint names (core/train/unet.h): a double conv is
// Sequential(conv 0, bn 1, relu 2, conv 3, bn 4, relu 5).
torch::Tensor Get(const torch::OrderedDict<std::string, torch::Tensor>& tensors,
                  const std::string& name) {
  const torch::Tensor* t = tensors.find(name);
  TORCH_CHECK(t != nullptr, "FrozenUNet: the network has no ", name);
  return t->detach();
}

}  // namespace

FrozenUNet FrozenUNet::Fold(UNet& model, bool channels_last) {
  torch::NoGradGuard no_grad;
  const auto params = model->named_parameters();
  const auto buffers = model->named_buffers();
  const auto modules = model->named_modules();
  const auto layout = [&](torch::Tensor t) {
    return channels_last ? ChannelsLast(t).clone(torch::MemoryFormat::Preserve) : t.contiguous();
  };
  // Conv `prefix.conv` followed by batch norm `prefix.bn`, folded in double precision.
  const auto fold = [&](const std::string& prefix, int conv, int bn) {
    const std::string c = prefix + "." + std::to_string(conv), b = prefix + "." + std::to_string(bn);
    const double eps =
        (*modules.find(b))->as<torch::nn::BatchNorm2dImpl>()->options.eps();
    const torch::Tensor weight = Get(params, c + ".weight");
    const torch::Tensor scale = Get(params, b + ".weight").to(torch::kFloat64) /
                                torch::sqrt(Get(buffers, b + ".running_var").to(torch::kFloat64) + eps);
    const torch::Tensor shift = Get(params, b + ".bias").to(torch::kFloat64) -
                                Get(buffers, b + ".running_mean").to(torch::kFloat64) * scale;
    return Conv{layout((weight.to(torch::kFloat64) * scale.reshape({-1, 1, 1, 1})).to(weight.dtype())),
                shift.to(weight.dtype())};
  };
  const auto plain = [&](const std::string& name) {
    return Conv{layout(Get(params, name + ".weight")), Get(params, name + ".bias")};
  };
  FrozenUNet frozen;
  frozen.channels_last_ = channels_last;
  const size_t levels = model->options().widths.size();
  for (size_t level = 0; level < levels; ++level) {
    const std::string e = "encoders." + std::to_string(level);
    frozen.encoders_.push_back({fold(e, 0, 1), fold(e, 3, 4)});
  }
  for (size_t level = 0; level + 1 < levels; ++level) {
    const std::string d = "decoders." + std::to_string(level);
    frozen.upsamplers_.push_back(plain("upsamplers." + std::to_string(level)));
    frozen.decoders_.push_back({fold(d, 0, 1), fold(d, 3, 4)});
  }
  frozen.head_ = plain("head");
  return frozen;
}

torch::Tensor FrozenUNet::forward(const torch::Tensor& input) const {
  c10::InferenceMode inference;
  const auto conv_relu = [](const torch::Tensor& x, const Conv& c) {
    return torch::conv2d(x, c.weight, c.bias, /*stride=*/1, /*padding=*/1).relu_();
  };
  torch::Tensor x = channels_last_ ? ChannelsLast(input) : input;
  std::vector<torch::Tensor> skips;
  for (size_t level = 0; level < encoders_.size(); ++level) {
    if (level > 0) x = torch::max_pool2d(x, /*kernel_size=*/2);
    x = conv_relu(conv_relu(x, encoders_[level][0]), encoders_[level][1]);
    skips.push_back(x);
  }
  for (size_t level = upsamplers_.size(); level-- > 0;) {
    x = torch::conv_transpose2d(x, upsamplers_[level].weight, upsamplers_[level].bias,
                                /*stride=*/2);
    x = torch::cat({skips[level], x}, 1);
    x = conv_relu(conv_relu(x, decoders_[level][0]), decoders_[level][1]);
  }
  return torch::conv2d(x, head_.weight, head_.bias);
}

}  // namespace miseg

// The U-Net's initial weights come from the generator its builder passes, never from
// LibTorch's process-wide one, so networks built on different threads are independent.
#include "core/train/unet.h"

#include <cmath>
#include <cstdint>

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

namespace miseg {
namespace {

UNet BuildAndInitialize(uint64_t global_seed, uint64_t seed) {
  UNetOptions options;
  options.classes = 3;
  options.widths = {4, 8, 16};
  at::manual_seed(global_seed);  // what the constructor's own draws come from
  UNet net(options);
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  net->InitializeParameters(generator);
  return net;
}

TEST(UNet, InitialWeightsDependOnlyOnTheGivenGenerator) {
  const UNet a = BuildAndInitialize(/*global_seed=*/1, /*seed=*/7);
  const UNet b = BuildAndInitialize(/*global_seed=*/2, /*seed=*/7);
  const UNet c = BuildAndInitialize(/*global_seed=*/1, /*seed=*/8);
  const auto pa = a->named_parameters();
  const auto pb = b->named_parameters();
  const auto pc = c->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  int convolutions = 0;
  for (const auto& item : pa) {
    const torch::Tensor& wa = item.value();
    EXPECT_TRUE(torch::equal(wa, pb[item.key()])) << item.key();
    if (wa.dim() == 4) {  // convolution weights: random; batch norm's are constants
      ++convolutions;
      EXPECT_FALSE(torch::equal(wa, pc[item.key()])) << item.key();
    }
  }
  // 2 per double convolution (3 encoders, 2 decoders), 2 upsamplers, the head.
  EXPECT_EQ(convolutions, 13);
}

TEST(UNet, InitialWeightsHaveLibTorchsDefaultBounds) {
  const UNet net = BuildAndInitialize(/*global_seed=*/1, /*seed=*/3);
  for (const auto& item : net->named_parameters()) {
    const torch::Tensor& w = item.value();
    if (w.dim() != 4) continue;
    // Kaiming uniform with a = sqrt(5) is uniform in +-1/sqrt(fan_in).
    const double fan_in = static_cast<double>(w.size(1) * w.size(2) * w.size(3));
    const double bound = 1 / std::sqrt(fan_in);
    EXPECT_LE(w.abs().max().item<double>(), bound * (1 + 1e-6)) << item.key();
    EXPECT_GT(w.abs().max().item<double>(), 0.5 * bound) << item.key();
  }
}

}  // namespace
}  // namespace miseg

// GraphedForward (core/train/graphed_forward.h): on the CPU its static-buffer path (padding to
// a fixed row count, chunking, one buffer set per slice shape, concurrent callers) is run with
// the forward called where the CUDA graph would be replayed, and checked against the eager
// frozen U-Net; without that test option the CPU runs eagerly, bit for bit. The replay itself
// is checked where a CUDA device and a CUDA LibTorch are (bench/gpu.sh runs this test there).
#include "core/train/graphed_forward.h"

#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "core/train/cuda_graph.h"
#include "core/train/frozen_unet.h"
#include "core/train/unet.h"
#include "tests/core/train/unet_fixtures.h"

namespace miseg {
namespace {

// A small U-Net with batch-norm statistics far from their initial constants, frozen.
FrozenUNet SmallFrozenUNet(const torch::Device& device) {
  torch::manual_seed(5);
  UNetOptions options;
  options.widths = {8, 16, 32};
  UNet model(options);
  testing::RandomiseBatchNormStatistics(model);
  model->eval();
  model->to(device);
  return FrozenUNet::Fold(model, /*channels_last=*/false);
}

// Within float rounding of `want` (oneDNN picks kernels by batch size: one ulp moves), and
// the same labels.
void ExpectSameLogits(const torch::Tensor& got, const torch::Tensor& want) {
  ASSERT_EQ(got.sizes(), want.sizes());
  const double scale = want.abs().max().item<double>();
  EXPECT_LE((got - want).abs().max().item<double>(), 1e-5 * scale);
  EXPECT_TRUE(torch::equal(got.argmax(1), want.argmax(1)));
}

GraphedForward::Options StaticBuffers(int64_t rows) {
  GraphedForward::Options options;
  options.rows = rows;
  options.static_buffers_without_graphs = true;
  return options;
}

TEST(GraphedForward, PaddedAndChunkedBatchesGiveTheEagerLogits) {
  const FrozenUNet frozen = SmallFrozenUNet(torch::kCPU);
  GraphedForward graphed([&frozen](const torch::Tensor& x) { return frozen.forward(x); },
                         torch::kCPU, StaticBuffers(4));
  for (int64_t slices : {4, 3, 11, 1}) {  // full, padded, two chunks and a padded one, one
    SCOPED_TRACE(slices);
    const torch::Tensor x = torch::randn({slices, 1, 32, 32});
    ExpectSameLogits(graphed(x), frozen.forward(x));
  }
  EXPECT_EQ(graphed.shapes(), 1u);
  EXPECT_EQ(graphed.eager_forwards(), 0);
}

TEST(GraphedForward, ResultsAreTheCallersOwnAfterLaterBatches) {
  const FrozenUNet frozen = SmallFrozenUNet(torch::kCPU);
  GraphedForward graphed([&frozen](const torch::Tensor& x) { return frozen.forward(x); },
                         torch::kCPU, StaticBuffers(4));
  const torch::Tensor first_input = torch::randn({2, 1, 32, 32});
  const torch::Tensor first = graphed(first_input);
  const torch::Tensor kept = first.clone();
  graphed(torch::randn({4, 1, 32, 32}));  // overwrites the static output
  EXPECT_TRUE(torch::equal(first, kept));
}

TEST(GraphedForward, OnTheCpuRunsEagerlyBitForBit) {
  const FrozenUNet frozen = SmallFrozenUNet(torch::kCPU);
  GraphedForward graphed([&frozen](const torch::Tensor& x) { return frozen.forward(x); },
                         torch::kCPU, GraphedForward::Options{});
  const torch::Tensor x = torch::randn({3, 1, 32, 32});
  EXPECT_TRUE(torch::equal(graphed(x), frozen.forward(x)));
  EXPECT_EQ(graphed.shapes(), 0u);
  EXPECT_EQ(graphed.eager_forwards(), 1);
}

TEST(GraphedForward, ShapesBeyondTheBoundRunEagerly) {
  const FrozenUNet frozen = SmallFrozenUNet(torch::kCPU);
  GraphedForward::Options options = StaticBuffers(4);
  options.max_shapes = 1;
  GraphedForward graphed([&frozen](const torch::Tensor& x) { return frozen.forward(x); },
                         torch::kCPU, options);
  const torch::Tensor small = torch::randn({2, 1, 32, 32});
  const torch::Tensor large = torch::randn({2, 1, 64, 64});
  ExpectSameLogits(graphed(small), frozen.forward(small));
  EXPECT_TRUE(torch::equal(graphed(large), frozen.forward(large)));
  ExpectSameLogits(graphed(small), frozen.forward(small));
  EXPECT_EQ(graphed.shapes(), 1u);
  EXPECT_EQ(graphed.eager_forwards(), 1);
}

TEST(GraphedForward, ConcurrentCallersGetTheirOwnRows) {
  const FrozenUNet frozen = SmallFrozenUNet(torch::kCPU);
  GraphedForward graphed([&frozen](const torch::Tensor& x) { return frozen.forward(x); },
                         torch::kCPU, StaticBuffers(4));
  constexpr int kCallers = 6;
  std::vector<torch::Tensor> inputs, results(kCallers);
  for (int i = 0; i < kCallers; ++i) inputs.push_back(torch::randn({1 + i, 1, 32, 32}));
  std::vector<std::thread> threads;
  for (int i = 0; i < kCallers; ++i) {
    threads.emplace_back([&, i] {
      for (int repeat = 0; repeat < 5; ++repeat) results[i] = graphed(inputs[i]);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kCallers; ++i) {
    SCOPED_TRACE(i);
    ExpectSameLogits(results[i], frozen.forward(inputs[i]));
  }
}

TEST(GraphedForward, ReplaysMatchTheEagerNetworkOnTheGpu) {
  if (!CudaGraphsCompiledIn() || !torch::cuda::is_available()) {
    GTEST_SKIP() << "needs a CUDA device and a CUDA LibTorch (bench/gpu.sh)";
  }
  const torch::Device device(torch::kCUDA, 0);
  const FrozenUNet frozen = SmallFrozenUNet(device);
  GraphedForward::Options options;
  options.rows = 4;
  GraphedForward graphed([&frozen](const torch::Tensor& x) { return frozen.forward(x); }, device,
                         options);
  for (int64_t slices : {4, 3, 9}) {
    SCOPED_TRACE(slices);
    const torch::Tensor x = torch::randn({slices, 1, 32, 32}, device);
    ExpectSameLogits(graphed(x), frozen.forward(x));
  }
  EXPECT_EQ(graphed.shapes(), 1u);
  EXPECT_EQ(graphed.eager_forwards(), 0);
}

}  // namespace
}  // namespace miseg

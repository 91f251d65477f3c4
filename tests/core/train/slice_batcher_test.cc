// The dynamic batcher (core/train/slice_batcher.h) with a fake network that records the
// batches it sees, and with the real frozen U-Net: slices of concurrent callers go through
// one forward, each caller gets exactly its own rows, and a slice's logits do not depend on
// the batch it went in (to float rounding: see below). No timing: the batches are held open
// with an unbounded wait until they are full, so which callers share a forward is decided by
// the bound alone.
#include "core/train/slice_batcher.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "core/train/frozen_unet.h"
#include "core/train/unet.h"
#include "tests/core/train/unet_fixtures.h"

namespace miseg {
namespace {

// A row-wise "network" (each output row from its input row alone) that records the size of
// every batch and refuses batches holding a negative value.
class FakeNetwork {
 public:
  torch::Tensor Forward(const torch::Tensor& x) {
    {
      absl::MutexLock lock(&mutex_);
      batches_.push_back(x.size(0));
    }
    if (x.lt(0).any().item<bool>()) throw std::runtime_error("poisoned slice");
    return x * 10 + 1;
  }
  std::vector<int64_t> batches() {
    absl::MutexLock lock(&mutex_);
    return batches_;
  }

 private:
  absl::Mutex mutex_;
  std::vector<int64_t> batches_ ABSL_GUARDED_BY(mutex_);
};

SliceBatcher::Options Unbounded(int64_t max_slices) {
  SliceBatcher::Options options;
  options.max_slices = max_slices;
  options.wait = absl::InfiniteDuration();
  return options;
}

// Caller i's slices are all i + 1 (or -1 when poisoned).
torch::Tensor CallerSlices(int caller, int64_t slices, bool poisoned = false) {
  return torch::full({slices, 1, 4, 4}, poisoned ? -1.0 : caller + 1.0);
}

struct Outcome {
  torch::Tensor output;
  std::string error;
};

// Runs one caller per entry of `slices` on its own thread; their outcomes, by caller.
std::vector<Outcome> RunCallers(SliceBatcher& batcher, const std::vector<int64_t>& slices,
                                int poisoned = -1) {
  std::vector<Outcome> outcomes(slices.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < slices.size(); ++i) {
    threads.emplace_back([&, i] {
      try {
        outcomes[i].output = batcher.Run(
            CallerSlices(static_cast<int>(i), slices[i], static_cast<int>(i) == poisoned));
      } catch (const std::exception& e) {
        outcomes[i].error = e.what();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return outcomes;
}

void ExpectOwnRows(const Outcome& outcome, int caller, int64_t slices) {
  SCOPED_TRACE(caller);
  ASSERT_EQ(outcome.error, "");
  ASSERT_TRUE(outcome.output.defined());
  EXPECT_TRUE(torch::equal(outcome.output, CallerSlices(caller, slices) * 10 + 1));
}

TEST(SliceBatcher, OneForwardForAllCallersEachGetsItsOwnRows) {
  FakeNetwork network;
  std::vector<int64_t> observed;
  SliceBatcher::Options options = Unbounded(3 + 1 + 4 + 2 + 3 + 3 + 1 + 5);
  options.on_batch = [&observed](int64_t slices) { observed.push_back(slices); };  // leader only
  SliceBatcher batcher([&network](const torch::Tensor& x) { return network.Forward(x); }, options);
  const std::vector<int64_t> slices = {3, 1, 4, 2, 3, 3, 1, 5};
  const std::vector<Outcome> outcomes = RunCallers(batcher, slices);
  EXPECT_EQ(network.batches(), std::vector<int64_t>{22});
  EXPECT_EQ(observed, std::vector<int64_t>{22});
  for (size_t i = 0; i < slices.size(); ++i)
    ExpectOwnRows(outcomes[i], static_cast<int>(i), slices[i]);
}

TEST(SliceBatcher, BatchesNeverExceedTheBound) {
  FakeNetwork network;
  SliceBatcher batcher([&network](const torch::Tensor& x) { return network.Forward(x); },
                       Unbounded(4));
  const std::vector<int64_t> slices = {2, 2, 2, 2, 2, 2};
  const std::vector<Outcome> outcomes = RunCallers(batcher, slices);
  EXPECT_EQ(network.batches(), (std::vector<int64_t>{4, 4, 4}));
  for (size_t i = 0; i < slices.size(); ++i)
    ExpectOwnRows(outcomes[i], static_cast<int>(i), slices[i]);
}

TEST(SliceBatcher, ABatchOverTheBoundRunsAlone) {
  FakeNetwork network;
  SliceBatcher batcher([&network](const torch::Tensor& x) { return network.Forward(x); },
                       Unbounded(4));
  const std::vector<Outcome> outcomes = RunCallers(batcher, {7});
  EXPECT_EQ(network.batches(), std::vector<int64_t>{7});
  ExpectOwnRows(outcomes[0], 0, 7);
}

TEST(SliceBatcher, ALoneCallerIsNotHeldBeyondTheWait) {
  FakeNetwork network;
  for (absl::Duration wait : {absl::ZeroDuration(), absl::Milliseconds(1)}) {
    SliceBatcher::Options options;
    options.max_slices = 64;
    options.wait = wait;
    SliceBatcher batcher([&network](const torch::Tensor& x) { return network.Forward(x); },
                         options);
    ExpectOwnRows(RunCallers(batcher, {3})[0], 0, 3);
  }
  EXPECT_EQ(network.batches(), (std::vector<int64_t>{3, 3}));
}

TEST(SliceBatcher, DifferentSliceShapesNeverShareAForward) {
  FakeNetwork network;
  SliceBatcher::Options options;
  options.max_slices = 64;
  options.wait = absl::Milliseconds(1);
  SliceBatcher batcher([&network](const torch::Tensor& x) { return network.Forward(x); }, options);
  std::vector<torch::Tensor> outputs(2);
  std::thread small([&] { outputs[0] = batcher.Run(torch::ones({2, 1, 4, 4})); });
  std::thread large([&] { outputs[1] = batcher.Run(torch::ones({3, 1, 8, 8})); });
  small.join();
  large.join();
  EXPECT_EQ(outputs[0].sizes(), (std::vector<int64_t>{2, 1, 4, 4}));
  EXPECT_EQ(outputs[1].sizes(), (std::vector<int64_t>{3, 1, 8, 8}));
  std::vector<int64_t> batches = network.batches();
  std::sort(batches.begin(), batches.end());
  EXPECT_EQ(batches, (std::vector<int64_t>{2, 3}));
}

TEST(SliceBatcher, AFailingCallerDoesNotFailTheOthers) {
  FakeNetwork network;
  SliceBatcher batcher([&network](const torch::Tensor& x) { return network.Forward(x); },
                       Unbounded(2 + 3 + 4));
  const std::vector<int64_t> slices = {2, 3, 4};
  const std::vector<Outcome> outcomes = RunCallers(batcher, slices, /*poisoned=*/1);
  // The combined forward fails, then each caller's slices run alone.
  std::vector<int64_t> batches = network.batches();
  ASSERT_EQ(batches.size(), 4u);
  EXPECT_EQ(batches[0], 9);
  std::sort(batches.begin() + 1, batches.end());
  EXPECT_EQ(batches, (std::vector<int64_t>{9, 2, 3, 4}));
  ExpectOwnRows(outcomes[0], 0, 2);
  EXPECT_EQ(outcomes[1].error, "poisoned slice");
  ExpectOwnRows(outcomes[2], 2, 4);
}

// The real network (the frozen U-Net of the server's default widths, batch norm statistics
// not trivial, CPU, float32), alone and through the batcher with concurrent callers.
// Measured here (LibTorch 1.13): oneDNN picks its convolution kernels by batch size, and a
// slice's logits move by up to one float ulp (~6e-8) between a forward of fewer than 16
// slices and a larger one; with oneDNN off they are bit-identical. So: bit-identical
// without oneDNN, within 1e-6 of the largest logit and the same labels with it.
void ExpectBatchIndependent(const FrozenUNet& frozen, bool exact) {
  const std::vector<int64_t> slices = {16, 5, 16, 3};
  std::vector<torch::Tensor> inputs, alone;
  for (int64_t n : slices) {
    inputs.push_back(torch::randn({n, 1, 64, 64}));
    alone.push_back(frozen.forward(inputs.back()));
  }
  const auto expect_same = [exact](const torch::Tensor& got, const torch::Tensor& want) {
    if (exact) {
      EXPECT_TRUE(torch::equal(got, want));
      return;
    }
    const double scale = want.abs().max().item<double>();
    EXPECT_LE((got - want).abs().max().item<double>(), 1e-6 * scale);
    EXPECT_TRUE(torch::equal(got.argmax(1), want.argmax(1)));
  };
  const torch::Tensor together = frozen.forward(torch::cat(inputs, 0));
  int64_t offset = 0;
  for (size_t i = 0; i < slices.size(); ++i) {
    SCOPED_TRACE(i);
    expect_same(together.narrow(0, offset, slices[i]), alone[i]);
    offset += slices[i];
  }
  SliceBatcher batcher([&frozen](const torch::Tensor& x) { return frozen.forward(x); },
                       Unbounded(offset));
  std::vector<torch::Tensor> batched(slices.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < slices.size(); ++i) {
    threads.emplace_back([&, i] { batched[i] = batcher.Run(inputs[i]); });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < slices.size(); ++i) {
    SCOPED_TRACE(i);
    expect_same(batched[i], alone[i]);
  }
}

TEST(SliceBatcher, FrozenUNetLogitsDoNotDependOnTheBatch) {
  torch::manual_seed(11);
  UNetOptions unet_options;
  unet_options.classes = 4;
  UNet model(unet_options);
  testing::RandomiseBatchNormStatistics(model);
  model->eval();
  const FrozenUNet frozen = FrozenUNet::Fold(model, /*channels_last=*/false);
  {
    SCOPED_TRACE("oneDNN (the default)");
    ExpectBatchIndependent(frozen, /*exact=*/false);
  }
  const bool mkldnn = at::globalContext().userEnabledMkldnn();
  at::globalContext().setUserEnabledMkldnn(false);
  {
    SCOPED_TRACE("oneDNN off");
    ExpectBatchIndependent(frozen, /*exact=*/true);
  }
  at::globalContext().setUserEnabledMkldnn(mkldnn);
}

}  // namespace
}  // namespace miseg

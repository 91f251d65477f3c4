// StepGraph (core/train/step_graph.h): each Run's losses and gradients are those of an eager
// step on that Run's inputs (the static inputs are refreshed, the gradients rewritten, not
// accumulated). On the CPU the static-buffer path runs without a graph; where a CUDA device
// and a CUDA LibTorch are, the replayed graph is checked against eager steps, and the
// batch-norm statistics against their values before the capture's warm-up.
#include "core/train/step_graph.h"

#include <cmath>
#include <memory>
#include <vector>

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "core/train/cuda_graph.h"
#include "core/train/losses.h"
#include "core/train/perturbation.h"
#include "core/train/unet.h"

namespace miseg {
namespace {

UNet SmallUNet(const torch::Device& device) {
  torch::manual_seed(3);
  UNetOptions options;
  options.widths = {4, 8};
  UNet model(options);
  model->to(device);
  model->train();
  return model;
}

// A step of the method's shape: supervised loss on the labeled slices, the consistency
// between p(T x) and T p(x) on the unlabeled ones, T as a gather index.
StepLosses MethodLosses(UNet& model, const StepTensors& in) {
  StepLosses losses;
  losses.supervised = SupervisedLoss(model->forward(in.labeled_input), in.labels, 1.0);
  const int64_t n = in.unlabeled.size(0);
  const torch::Tensor probs =
      torch::softmax(model->forward(torch::cat({in.unlabeled, in.perturbed}, 0)), 1);
  const torch::Tensor a = ApplyDihedralByIndex(probs.narrow(0, 0, n), in.dihedral_index);
  losses.consistency = ConsistencyLoss(probs.narrow(0, n, n), a);
  losses.loss = losses.supervised + in.unsupervised_weight * losses.consistency;
  return losses;
}

StepTensors RandomStep(const torch::Device& device, uint64_t seed) {
  torch::manual_seed(seed);
  const auto on = torch::TensorOptions().device(device);
  StepTensors in;
  in.labeled_input = torch::randn({2, 1, 16, 16}, on);
  in.labels = torch::randint(0, 4, {2, 16, 16}, on.dtype(torch::kInt64));
  in.unlabeled = torch::randn({3, 1, 16, 16}, on);
  in.perturbed = torch::randn({3, 1, 16, 16}, on);
  in.dihedral_index =
      DihedralIndex({{true, false, 1}, {false, true, 0}, {false, false, 3}}, 16, 16).to(device);
  in.unsupervised_weight = torch::full({}, 0.25 * static_cast<double>(seed), on);
  return in;
}

std::vector<torch::Tensor> Gradients(UNet& model) {
  std::vector<torch::Tensor> grads;
  for (const torch::Tensor& p : model->parameters()) grads.push_back(p.grad().clone());
  return grads;
}

// The eager step: gradients from none, backward, as the trainer's eager path.
std::pair<double, std::vector<torch::Tensor>> EagerStep(UNet& model, const StepTensors& in) {
  for (torch::Tensor p : model->parameters()) p.mutable_grad() = torch::Tensor();
  const StepLosses losses = MethodLosses(model, in);
  losses.loss.backward();
  return {losses.loss.item<double>(), Gradients(model)};
}

void ExpectClose(const std::vector<torch::Tensor>& got, const std::vector<torch::Tensor>& want,
                 double tolerance) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE(i);
    const double scale = want[i].abs().max().item<double>() + 1e-12;
    EXPECT_LE((got[i] - want[i]).abs().max().item<double>(), tolerance * scale);
  }
}

// The method's step captured on copies of RandomStep(device, 1).
absl::StatusOr<std::unique_ptr<StepGraph>> CaptureMethodStep(UNet& model,
                                                             const torch::Device& device,
                                                             bool static_buffers) {
  StepGraph::Options options;
  options.static_buffers_without_graphs = static_buffers;
  return StepGraph::Capture(
      RandomStep(device, 1), [&model](const StepTensors& in) { return MethodLosses(model, in); },
      model->parameters(), model->buffers(), options);
}

// Each seed's Run gives the losses and gradients of an eager step on the same inputs.
void ExpectRunsAreEagerSteps(StepGraph& graph, UNet& model, const torch::Device& device,
                             const std::vector<uint64_t>& seeds, double tolerance) {
  for (uint64_t seed : seeds) {
    SCOPED_TRACE(seed);
    const StepTensors in = RandomStep(device, seed);
    auto losses = graph.Run(in);
    ASSERT_TRUE(losses.ok()) << losses.status();
    const double loss = losses->loss.item<double>();
    const std::vector<torch::Tensor> grads = Gradients(model);
    const auto [eager_loss, eager_grads] = EagerStep(model, in);
    EXPECT_NEAR(loss, eager_loss, tolerance * std::abs(eager_loss));
    ExpectClose(grads, eager_grads, tolerance);
  }
}

TEST(StepGraph, EachRunIsTheEagerStepOnItsInputs) {
  UNet model = SmallUNet(torch::kCPU);
  auto graph = CaptureMethodStep(model, torch::kCPU, /*static_buffers=*/true);
  ASSERT_TRUE(graph.ok()) << graph.status();
  // Bit for bit; the repeat: gradients are rewritten, not accumulated.
  ExpectRunsAreEagerSteps(**graph, model, torch::kCPU, {2, 3, 3}, 0.0);
}

TEST(StepGraph, InputsOfAnotherBranchAreRefused) {
  UNet model = SmallUNet(torch::kCPU);
  auto graph = CaptureMethodStep(model, torch::kCPU, /*static_buffers=*/true);
  ASSERT_TRUE(graph.ok());
  StepTensors labeled_only = RandomStep(torch::kCPU, 2);
  labeled_only.unlabeled = torch::Tensor();
  EXPECT_EQ((*graph)->Run(labeled_only).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StepGraph, ReplaysMatchEagerStepsOnTheGpu) {
  if (!CudaGraphsCompiledIn() || !torch::cuda::is_available()) {
    GTEST_SKIP() << "needs a CUDA device and a CUDA LibTorch (bench/gpu.sh)";
  }
  const torch::Device device(torch::kCUDA, 0);
  UNet model = SmallUNet(device);
  std::vector<torch::Tensor> before;
  for (const torch::Tensor& b : model->buffers()) before.push_back(b.clone());
  auto graph = CaptureMethodStep(model, device, /*static_buffers=*/false);
  ASSERT_TRUE(graph.ok()) << graph.status();
  std::vector<torch::Tensor> after;
  for (const torch::Tensor& b : model->buffers()) after.push_back(b);
  ExpectClose(after, before, 0.0);  // the warm-up's statistics were undone
  ExpectRunsAreEagerSteps(**graph, model, device, {2, 3}, 1e-4);
}

}  // namespace
}  // namespace miseg

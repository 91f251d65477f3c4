#include "core/train/step_graph.h"

#include <stdexcept>
#include <utility>

#include "core/common/status_macros.h"
#include "core/train/torch_status.h"

namespace miseg {
namespace {

torch::Tensor CloneIfDefined(const torch::Tensor& t) { return t.defined() ? t.clone() : t; }

void CopyIfDefined(torch::Tensor& to, const torch::Tensor& from) {
  if (to.defined() != from.defined()) throw std::invalid_argument("step inputs changed branches");
  if (to.defined()) to.copy_(from, /*non_blocking=*/true);
}

}  // namespace

StepGraph::StepGraph(LossFn loss_fn, std::vector<torch::Tensor> parameters)
    : loss_fn_(std::move(loss_fn)), parameters_(std::move(parameters)) {}

// Gradients are set to none first, so each run's backward writes them afresh (in the graph's
// pool during the capture) instead of adding to the warm-up's.
void StepGraph::ForwardBackward() {
  for (torch::Tensor p : parameters_) p.mutable_grad() = torch::Tensor();
  losses_ = loss_fn_(inputs_);
  losses_.loss.backward();
}

absl::StatusOr<std::unique_ptr<StepGraph>> StepGraph::Capture(
    const StepTensors& first, LossFn loss_fn, std::vector<torch::Tensor> parameters,
    const std::vector<torch::Tensor>& buffers, const Options& options) {
  std::unique_ptr<StepGraph> graph(new StepGraph(std::move(loss_fn), std::move(parameters)));
  RETURN_IF_ERROR(GuardTorch("preparing the step graph", absl::StatusCode::kInternal, [&] {
    graph->inputs_ = {first.labeled_input.clone(),          CloneIfDefined(first.labels),
                      CloneIfDefined(first.unlabeled),      CloneIfDefined(first.perturbed),
                      CloneIfDefined(first.dihedral_index), first.unsupervised_weight.clone()};
    return absl::OkStatus();
  }));
  if (options.static_buffers_without_graphs) return graph;
  std::vector<torch::Tensor> saved;
  {
    torch::NoGradGuard no_grad;
    for (const torch::Tensor& b : buffers) saved.push_back(b.clone());
  }
  auto captured = CudaGraph::Capture(options.device_index, options.warmup,
                                     [g = graph.get()] { g->ForwardBackward(); });
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < buffers.size(); ++i) {
    torch::Tensor b = buffers[i];
    b.copy_(saved[i]);
  }
  if (!captured.ok()) return captured.status();
  graph->graph_ = std::move(*captured);
  return graph;
}

absl::StatusOr<StepLosses> StepGraph::Run(const StepTensors& inputs) {
  RETURN_IF_ERROR(GuardTorch("copying the step's batches", absl::StatusCode::kInternal, [&] {
    torch::NoGradGuard no_grad;
    CopyIfDefined(inputs_.labeled_input, inputs.labeled_input);
    CopyIfDefined(inputs_.labels, inputs.labels);
    CopyIfDefined(inputs_.unlabeled, inputs.unlabeled);
    CopyIfDefined(inputs_.perturbed, inputs.perturbed);
    CopyIfDefined(inputs_.dihedral_index, inputs.dihedral_index);
    CopyIfDefined(inputs_.unsupervised_weight, inputs.unsupervised_weight);
    return absl::OkStatus();
  }));
  if (graph_) {
    RETURN_IF_ERROR(graph_->Replay());
  } else {
    RETURN_IF_ERROR(GuardTorch("training step", absl::StatusCode::kInternal, [&] {
      ForwardBackward();
      return absl::OkStatus();
    }));
  }
  return losses_;
}

}  // namespace miseg

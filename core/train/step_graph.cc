#include "core/train/step_graph.h"

#include <utility>
#include <vector>

#include "core/common/status_macros.h"
#include "core/train/torch_status.h"

namespace miseg {
namespace {

// The inputs' tensors in one order, so that clones and copies treat every one alike.
std::vector<torch::Tensor*> Fields(StepTensors& t) {
  return {&t.labeled_input, &t.labels, &t.unlabeled, &t.perturbed, &t.dihedral_index,
          &t.unsupervised_weight};
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
    graph->inputs_ = first;
    for (torch::Tensor* field : Fields(graph->inputs_)) {
      if (field->defined()) *field = field->clone();
    }
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
    StepTensors given = inputs;
    const std::vector<torch::Tensor*> to = Fields(inputs_), from = Fields(given);
    for (size_t i = 0; i < to.size(); ++i) {
      if (to[i]->defined() != from[i]->defined()) {
        return absl::InvalidArgumentError("the step's inputs changed branches since the capture");
      }
      if (to[i]->defined()) to[i]->copy_(*from[i], /*non_blocking=*/true);
    }
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

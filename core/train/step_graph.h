// The training step's forward passes, losses and backward pass as one CUDA graph (issue 15).
// Replayed each step with that step's batches copied into its static inputs; the optimizer,
// the teacher's moving average and data-parallel averaging stay outside it (they read and
// write the parameters and gradients in place, which the graph leaves where they are).
//
// What changes from step to step must be a tensor: the batches, the dihedral transforms (as a
// gather index, perturbation.h's DihedralIndex) and the ramp-up weight. The warm-up runs
// before the capture update batch-norm statistics; the given buffers are restored after it,
// so the first replay is the first step. After the capture the parameters' gradients are
// tensors of the graph's memory pool that every replay rewrites: they are not reset between
// steps. On the CPU (or a LibTorch without CUDA) there is no graph: Options::
// static_buffers_without_graphs (tests) runs the same path with the work called eagerly.
#ifndef MISEG_CORE_TRAIN_STEP_GRAPH_H_
#define MISEG_CORE_TRAIN_STEP_GRAPH_H_

#include <functional>
#include <memory>
#include <vector>

#include <torch/types.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/train/cuda_graph.h"

namespace miseg {

// One step's inputs, on the device. Undefined tensors: the branch is off (no unlabeled data).
struct StepTensors {
  torch::Tensor labeled_input, labels;
  torch::Tensor unlabeled, perturbed;
  torch::Tensor dihedral_index;       // n x H*W (DihedralIndex), on the device
  torch::Tensor unsupervised_weight;  // 0-dim float: the ramp-up weight of this step
};

// The step's losses; undefined where the objective does not compute a term.
struct StepLosses {
  torch::Tensor loss, supervised, consistency, mutual_information, entropy;
};

class StepGraph {
 public:
  using LossFn = std::function<StepLosses(const StepTensors&)>;
  struct Options {
    int device_index = 0;
    int warmup = 3;
    bool static_buffers_without_graphs = false;
  };
  // Captures loss_fn on copies of `first` and the backward of its loss into `parameters`'
  // gradients; `buffers` (batch-norm statistics) come back to their values before.
  static absl::StatusOr<std::unique_ptr<StepGraph>> Capture(
      const StepTensors& first, LossFn loss_fn, std::vector<torch::Tensor> parameters,
      const std::vector<torch::Tensor>& buffers, const Options& options);

  // Copies `inputs` into the static inputs and replays: the losses returned (static, valid
  // until the next Run) and the parameters' gradients are this step's.
  absl::StatusOr<StepLosses> Run(const StepTensors& inputs);

 private:
  StepGraph(LossFn loss_fn, std::vector<torch::Tensor> parameters);
  void ForwardBackward();

  const LossFn loss_fn_;
  const std::vector<torch::Tensor> parameters_;
  StepTensors inputs_;                // static: the graph reads these
  StepLosses losses_;                 // static: the graph writes these
  std::unique_ptr<CudaGraph> graph_;  // null: static buffers without a graph (tests)
};

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_STEP_GRAPH_H_

#include "core/train/graphed_forward.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include <torch/csrc/autograd/generated/variable_factories.h>

#include "core/train/cuda_graph.h"

namespace miseg {

struct GraphedForward::Shape {
  absl::Mutex mu;                    // one replay at a time: the static buffers are shared
  torch::Tensor input;               // rows x C x H x W
  torch::Tensor output;              // rows x K x H' x W', written by each replay
  std::unique_ptr<CudaGraph> graph;  // null with static_buffers_without_graphs
};

GraphedForward::GraphedForward(Forward forward, torch::Device device, Options options)
    : forward_(std::move(forward)),
      device_(device),
      options_(options),
      use_graphs_(options.static_buffers_without_graphs ||
                  (device.is_cuda() && CudaGraphsCompiledIn())) {}

GraphedForward::~GraphedForward() = default;

size_t GraphedForward::shapes() const {
  absl::MutexLock lock(&mu_);
  return static_cast<size_t>(std::count_if(
      shapes_.begin(), shapes_.end(), [](const auto& entry) { return entry.second != nullptr; }));
}

int64_t GraphedForward::eager_forwards() const {
  absl::MutexLock lock(&mu_);
  return eager_forwards_;
}

// The shape's buffers and graph, captured on first sight; null: run eagerly.
GraphedForward::Shape* GraphedForward::ShapeFor(const torch::Tensor& x) {
  const std::vector<int64_t> key(x.sizes().begin() + 1, x.sizes().end());
  absl::MutexLock lock(&mu_);
  auto found = shapes_.find(key);
  if (found != shapes_.end()) return found->second.get();
  if (shapes_.size() >= options_.max_shapes) return nullptr;
  auto shape = std::make_unique<Shape>();
  std::vector<int64_t> sizes = {options_.rows};
  sizes.insert(sizes.end(), key.begin(), key.end());
  shape->input = torch::zeros(sizes, x.options());
  const auto work = [this, s = shape.get()] { s->output = forward_(s->input); };
  if (options_.static_buffers_without_graphs) {
    work();
  } else {
    auto graph =
        CudaGraph::Capture(device_.index() < 0 ? 0 : device_.index(), options_.warmup, work);
    // A failed capture (an op that cannot be captured, memory): this shape runs eagerly.
    if (graph.ok()) {
      shape->graph = std::move(*graph);
    } else {
      shape.reset();
    }
  }
  Shape* result = shape.get();
  shapes_.emplace(key, std::move(shape));
  return result;
}

torch::Tensor GraphedForward::RunChunk(Shape& shape, const torch::Tensor& chunk) {
  const int64_t n = chunk.size(0);
  absl::MutexLock lock(&shape.mu);
  shape.input.narrow(0, 0, n).copy_(chunk);
  // Padding rows are zeroed so that no stale slice runs through the network.
  if (n < options_.rows) shape.input.narrow(0, n, options_.rows - n).zero_();
  if (shape.graph) {
    const absl::Status replayed = shape.graph->Replay();
    if (!replayed.ok()) throw std::runtime_error(std::string(replayed.message()));
  } else {
    shape.output = forward_(shape.input);
  }
  return shape.output.narrow(0, 0, n).clone();
}

torch::Tensor GraphedForward::operator()(const torch::Tensor& x) {
  Shape* shape = use_graphs_ && x.dim() >= 2 ? ShapeFor(x) : nullptr;
  if (shape == nullptr) {
    {
      absl::MutexLock lock(&mu_);
      ++eager_forwards_;
    }
    return forward_(x);
  }
  std::vector<torch::Tensor> parts;
  for (int64_t start = 0; start < x.size(0); start += options_.rows) {
    parts.push_back(
        RunChunk(*shape, x.narrow(0, start, std::min(options_.rows, x.size(0) - start))));
  }
  return parts.size() == 1 ? parts.front() : torch::cat(parts, 0);
}

}  // namespace miseg

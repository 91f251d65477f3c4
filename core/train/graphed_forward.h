// A network forward served from CUDA graphs at fixed shapes (issue 15). Segment's batches are
// padded to `rows` slices, so one captured graph per slice shape (the model grid's, in
// practice one) serves every batch: the frozen network's rows are independent (batch norm is
// folded, eval mode), so padding rows change nothing in the others. Each shape has a static
// input, a static output and its graph; a batch is copied in, the graph replayed and the
// output copied out, under the shape's mutex (one replay at a time per graph).
//
// Where graphs cannot be captured (a CPU device, a LibTorch without CUDA, a capture that
// failed), the forward runs eagerly, unpadded, exactly as without this class. For tests on
// the CPU, Options::static_buffers_without_graphs runs the same static-buffer path with the
// forward called where the replay would be.
#ifndef MISEG_CORE_TRAIN_GRAPHED_FORWARD_H_
#define MISEG_CORE_TRAIN_GRAPHED_FORWARD_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include <torch/types.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace miseg {

class GraphedForward {
 public:
  using Forward = std::function<torch::Tensor(const torch::Tensor&)>;
  struct Options {
    int64_t rows = 16;      // slices per replay; larger batches run in chunks of rows
    int warmup = 3;         // eager runs before each capture
    size_t max_shapes = 4;  // graphs kept (static buffers bound the memory); beyond: eager
    bool static_buffers_without_graphs = false;  // tests: the padded path, no capture
  };
  // forward: N x C x H x W to N x K x H' x W', row i of the result from row i of the input
  // only. device: where the inputs live.
  GraphedForward(Forward forward, torch::Device device, Options options);
  ~GraphedForward();

  // forward(x), through a graph where one is (or can be) captured for x's slice shape.
  torch::Tensor operator()(const torch::Tensor& x);

  // Shapes with a graph (or static buffers) now, and forwards that ran eagerly.
  size_t shapes() const;
  int64_t eager_forwards() const;

 private:
  struct Shape;
  Shape* ShapeFor(const torch::Tensor& x);
  torch::Tensor RunChunk(Shape& shape, const torch::Tensor& chunk);

  const Forward forward_;
  const torch::Device device_;
  const Options options_;
  const bool use_graphs_;
  mutable absl::Mutex mu_;
  // Keyed by C, H, W. A shape whose capture failed stays with a null entry: it runs eagerly.
  std::map<std::vector<int64_t>, std::unique_ptr<Shape>> shapes_ ABSL_GUARDED_BY(mu_);
  int64_t eager_forwards_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_GRAPHED_FORWARD_H_

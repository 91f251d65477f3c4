// CUDA graphs (issue 15): a fixed-shape piece of GPU work captured once and replayed, so the
// hundreds of kernel launches of a U-Net forward (or a training step's forward and backward)
// cost the CPU one launch. Compiled in only against a CUDA LibTorch (MISEG_CUDA_GRAPHS, set by
// core/CMakeLists.txt when LibTorch has CUDA); elsewhere Capture answers Unimplemented and the
// callers run their work eagerly, so CPU builds are unchanged. Torch-free header: callers
// capture whatever tensors they like in `work`.
#ifndef MISEG_CORE_TRAIN_CUDA_GRAPH_H_
#define MISEG_CORE_TRAIN_CUDA_GRAPH_H_

#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace miseg {

// Whether this build can capture CUDA graphs at all (a CUDA LibTorch).
bool CudaGraphsCompiledIn();

class CudaGraph {
 public:
  // Runs `work` `warmup` times on a side stream of CUDA device `device_index` (cuDNN's
  // algorithm search and the caching allocator settle outside the capture), then once more
  // under capture, in a memory pool of the graph's own. `work` must be graph safe: fixed
  // shapes, reading and writing only device tensors that outlive the graph (its static
  // inputs and outputs), no host synchronisation (.item(), .cpu(), data-dependent shapes).
  // The capture is thread-local where LibTorch allows it (2.x), so other threads' CUDA work
  // does not break it. The side stream waits for the current stream before, and the current
  // stream for the side stream after.
  static absl::StatusOr<std::unique_ptr<CudaGraph>> Capture(int device_index, int warmup,
                                                            const std::function<void()>& work);
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Replays the captured work on the current stream of the graph's device: its static outputs
  // then hold the results for its static inputs' current values. Not thread safe: one replay
  // at a time per graph (callers serialise).
  absl::Status Replay();

 private:
  struct Impl;
  explicit CudaGraph(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_CUDA_GRAPH_H_

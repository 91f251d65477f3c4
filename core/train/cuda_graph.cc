// The capture follows PyTorch's own recipe (torch.cuda.graph): warm up on a side stream,
// capture on it (a capture cannot run on the legacy default stream), and order the streams
// with events so the capture sees the inputs the current stream wrote. at::cuda::CUDAGraph's
// capture_begin/capture_end/replay exist in LibTorch 1.13 and every 2.x; the capture mode
// argument (thread-local capture) from 2.0 on.
#include "core/train/cuda_graph.h"

#include <utility>

#include "core/train/torch_status.h"

#ifdef MISEG_CUDA_GRAPHS
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/version.h>
#endif

namespace miseg {

#ifdef MISEG_CUDA_GRAPHS

bool CudaGraphsCompiledIn() { return true; }

struct CudaGraph::Impl {
  int device_index = 0;
  at::cuda::CUDAGraph graph;
};

namespace {

// `waiting` waits for everything `after` has queued so far.
void WaitFor(const c10::cuda::CUDAStream& waiting, const c10::cuda::CUDAStream& after) {
  at::cuda::CUDAEvent done;
  done.record(after);
  done.block(waiting);
}

void BeginCapture(at::cuda::CUDAGraph& graph) {
#if TORCH_VERSION_MAJOR >= 2
  graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
#else
  graph.capture_begin();
#endif
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaGraph>> CudaGraph::Capture(int device_index, int warmup,
                                                              const std::function<void()>& work) {
  auto impl = std::make_unique<Impl>();
  impl->device_index = device_index;
  absl::Status status = GuardTorch("capturing a CUDA graph", absl::StatusCode::kInternal, [&] {
    const c10::cuda::CUDAGuard device_guard(static_cast<c10::DeviceIndex>(device_index));
    const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream();
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    WaitFor(side, current);
    {
      const c10::cuda::CUDAStreamGuard on_side(side);
      for (int i = 0; i < warmup; ++i) work();
      side.synchronize();
      BeginCapture(impl->graph);
      try {
        work();
      } catch (...) {
        // End the capture so the stream is usable again; the half-captured graph is dropped.
        try {
          impl->graph.capture_end();
        } catch (...) {
        }
        throw;
      }
      impl->graph.capture_end();
    }
    WaitFor(current, side);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return std::unique_ptr<CudaGraph>(new CudaGraph(std::move(impl)));
}

absl::Status CudaGraph::Replay() {
  return GuardTorch("replaying a CUDA graph", absl::StatusCode::kInternal, [&] {
    const c10::cuda::CUDAGuard device_guard(static_cast<c10::DeviceIndex>(impl_->device_index));
    impl_->graph.replay();
    return absl::OkStatus();
  });
}

#else  // no CUDA LibTorch

bool CudaGraphsCompiledIn() { return false; }

struct CudaGraph::Impl {};

absl::StatusOr<std::unique_ptr<CudaGraph>> CudaGraph::Capture(int, int,
                                                              const std::function<void()>&) {
  return absl::UnimplementedError("CUDA graphs need a CUDA build of LibTorch");
}

absl::Status CudaGraph::Replay() {
  return absl::UnimplementedError("CUDA graphs need a CUDA build of LibTorch");
}

#endif  // MISEG_CUDA_GRAPHS

CudaGraph::CudaGraph(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaGraph::~CudaGraph() = default;

}  // namespace miseg

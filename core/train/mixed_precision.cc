// Autocast and pinned copies. LibTorch 2.4 replaced the CUDA-only autocast functions
// (at::autocast::is_enabled, set_autocast_gpu_dtype, ...) by per-device-type ones; both
// exist from 2.4 on, the old ones deprecated, so the new ones are used where they exist.
#include "core/train/mixed_precision.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace miseg {
namespace {

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool AutocastEnabled() { return at::autocast::is_autocast_enabled(at::kCUDA); }
void SetAutocastEnabled(bool on) { at::autocast::set_autocast_enabled(at::kCUDA, on); }
at::ScalarType AutocastDtype() { return at::autocast::get_autocast_dtype(at::kCUDA); }
void SetAutocastDtype(at::ScalarType t) { at::autocast::set_autocast_dtype(at::kCUDA, t); }
#else
bool AutocastEnabled() { return at::autocast::is_enabled(); }
void SetAutocastEnabled(bool on) { at::autocast::set_enabled(on); }
at::ScalarType AutocastDtype() { return at::autocast::get_autocast_gpu_dtype(); }
void SetAutocastDtype(at::ScalarType t) { at::autocast::set_autocast_gpu_dtype(t); }
#endif

}  // namespace

ScopedCudaAutocast::ScopedCudaAutocast(const torch::Device& device, bool enable)
    : active_(enable && device.is_cuda()) {
  if (!active_) return;
  was_enabled_ = AutocastEnabled();
  was_dtype_ = AutocastDtype();
  SetAutocastDtype(at::kBFloat16);
  SetAutocastEnabled(true);
  at::autocast::increment_nesting();
}

ScopedCudaAutocast::~ScopedCudaAutocast() {
  if (!active_) return;
  // As torch.autocast's __exit__: the cast weights cache lives for the outermost region.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  SetAutocastEnabled(was_enabled_);
  SetAutocastDtype(was_dtype_);
}

torch::Tensor ForwardMixed(UNet& net, const torch::Tensor& x, const torch::Device& device,
                           bool bf16) {
  if (!bf16 || !device.is_cuda()) return net->forward(x);
  torch::Tensor logits;
  {
    ScopedCudaAutocast autocast(device, true);
    logits = net->forward(x);
  }
  return logits.to(torch::kFloat32);
}

torch::Tensor ToDevice(const torch::Tensor& host, const torch::Device& device) {
  if (!device.is_cuda() || !host.device().is_cpu()) return host.to(device);
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

}  // namespace miseg

// The GPU fast path of the trainer (issue 15), all of it behind device checks: on a CPU
// device every function here is the identity, so CPU training is bit for bit unchanged.
// - Mixed precision: the network's forward passes under CUDA autocast in bfloat16 (no loss
//   scaling needed: bf16 has float32's range); the logits come back as float32, so every
//   loss (softmax, cross-entropy, the MI joints and logs) is computed in float32.
// - Host-to-device copies from pinned (page-locked) memory, non-blocking: the copy overlaps
//   whatever the stream is doing.
// Autocast state is per thread; the guard restores the previous state, so trainers on other
// threads are unaffected. Uses only APIs of LibTorch 1.13 and 2.x (see the .cc).
#ifndef MISEG_CORE_TRAIN_MIXED_PRECISION_H_
#define MISEG_CORE_TRAIN_MIXED_PRECISION_H_

#include <torch/types.h>

#include "core/train/unet.h"

namespace miseg {

// CUDA autocast to bfloat16 in its scope when `enable` (and the device is CUDA).
class ScopedCudaAutocast {
 public:
  ScopedCudaAutocast(const torch::Device& device, bool enable);
  ~ScopedCudaAutocast();
  ScopedCudaAutocast(const ScopedCudaAutocast&) = delete;
  ScopedCudaAutocast& operator=(const ScopedCudaAutocast&) = delete;

 private:
  bool active_ = false;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kHalf;
};

// net->forward(x); on CUDA with bf16 enabled, under autocast, logits returned as float32.
torch::Tensor ForwardMixed(UNet& net, const torch::Tensor& x, const torch::Device& device,
                           bool bf16);

// host to device: on CUDA through pinned memory with a non-blocking copy; elsewhere
// host.to(device) (a no-op on the CPU).
torch::Tensor ToDevice(const torch::Tensor& host, const torch::Device& device);

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_MIXED_PRECISION_H_

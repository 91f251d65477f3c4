// Where the training core keeps 4D tensors in channels-last (NHWC) memory format, and the
// conversion. cuDNN's tensor-core kernels work natively in NHWC; on the CPU it was tried and
// measured no faster (below). Channels-last changes memory layout only, never values:
// results agree with NCHW to float rounding (tests/core/train/loss_curve_test.cc).
#ifndef MISEG_CORE_TRAIN_MEMORY_LAYOUT_H_
#define MISEG_CORE_TRAIN_MEMORY_LAYOUT_H_

#include <torch/nn/module.h>
#include <torch/types.h>

namespace miseg {

// True where channels-last pays: CUDA devices only. Measured on the CPU with Debian's
// LibTorch 1.13 (bench/RESULTS.md, issue 15): in training, channels-last made batch norm's
// forward and backward and the copies around the convolutions' backward pass cost more than
// oneDNN saved (batch norm 10% -> 18% of the step, copy_ 2% -> 9%); the frozen inference
// network ran as fast in NCHW (3194 ms vs 3276 ms for 10 slices of 256 x 256).
bool PrefersChannelsLast(const torch::Device& device);

// Every 4D parameter and buffer of module (and its children) to channels-last, in place
// (the same Parameter objects, so optimizers built on them stay valid). Call it before
// an optimizer has state.
void ToChannelsLast(torch::nn::Module& module);

// x in channels-last when x is 4D, else x.
torch::Tensor ChannelsLast(const torch::Tensor& x);

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_MEMORY_LAYOUT_H_

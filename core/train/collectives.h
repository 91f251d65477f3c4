// The collective operations data-parallel training needs, behind an interface so that the
// trainer (miseg_train) depends on neither c10d nor a transport: core/dist/process_group.h
// builds the real one (Gloo, or NCCL for CUDA devices) and the trainer only calls it.
//
// Internal to the training core: torch types, so include it only from .cc files.
//
// Every rank must call the same operations in the same order with tensors of the same
// shapes and dtypes (the usual contract of collectives). No method throws: a c10d or Gloo
// error (a peer that closed its connections or died, a timeout) is returned as
// UnavailableError("collective <op> failed: ..."), which callers treat as retryable: the
// group is then broken and must be rebuilt under a fresh store prefix.
#ifndef MISEG_CORE_TRAIN_COLLECTIVES_H_
#define MISEG_CORE_TRAIN_COLLECTIVES_H_

#include <vector>

#include <torch/types.h>

#include "absl/status/status.h"

namespace miseg {

class Collectives {
 public:
  virtual ~Collectives() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // In place: each tensor becomes the elementwise sum of that tensor over the ranks. The
  // tensors of the vector are reduced independently of one another (one operation each,
  // all issued before the first is waited for). Any device and dtype the backend supports;
  // a tensor not on the backend's device makes a round trip through it.
  virtual absl::Status AllReduceSum(std::vector<torch::Tensor>& tensors) = 0;

  // In place: every tensor takes the value it has on rank `root`. Tensors may differ in
  // shape and dtype from one another.
  virtual absl::Status Broadcast(std::vector<torch::Tensor>& tensors, int root) = 0;

  // outputs receives world_size() tensors, input's value on rank 0, 1, ... (same shape and
  // dtype on every rank).
  virtual absl::Status AllGather(const torch::Tensor& input,
                                 std::vector<torch::Tensor>* outputs) = 0;

  // Returns when every rank has called it.
  virtual absl::Status Barrier() = 0;
};

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_COLLECTIVES_H_

// Dynamic batching of slices across concurrent Segment calls on one model (issue 15), as
// Triton's dynamic batcher does it: each caller hands in its slice batch (S_i x 1 x G x G)
// and blocks; one network forward runs over the concatenation of the batches waiting, up
// to max_slices slices, and each caller gets back exactly its own rows of the logits.
// Internal to the training core (LibTorch types); the Segmenter owns one per loaded model
// (InferenceOptions::max_batch_slices).
//
// Leader/follower: the first caller that finds no batch running becomes the leader. It
// waits until max_slices slices are pending or `wait` has passed since the oldest pending
// batch arrived, takes the pending batches in arrival order as long as they fit (always at
// least one), runs the forward outside the lock, hands the rows out, and steps down; a
// waiting caller then leads the next batch. One batch runs at a time per batcher (one
// "model instance"): batches arriving meanwhile queue and go together into the next one.
//
// Exactness: the network's operations act on each slice alone (convolutions, pooling,
// ReLU, no batch statistics in eval mode), so a slice's logits do not depend on the other
// slices in its batch, up to float rounding: measured on the CPU in float32
// (tests/core/train/slice_batcher_test.cc), oneDNN chooses its convolution kernels by batch
// size and a logit moves by at most one ulp between a forward of fewer than 16 slices and a
// larger one (bit-identical with oneDNN off). The labels (argmax) agree unless two classes
// tie to the last bit.
//
// Failures stay with their owner: if the combined forward throws, each batch in it is run
// again alone, so a caller gets its own exception (rethrown on its thread) or its rows. A
// caller never leaves while its batch is queued or running (Segment has no cancellation
// inside the network; deadlines are checked between phases), so no batch is abandoned.
//
// Memory: a combined forward holds at most max_slices slices (the concatenated input and
// its logits; each caller gets a copy of its rows, so no combined batch outlives its
// forward); waiting batches are the callers' own tensors, one per blocked caller.
//
// Thread safety: Run may be called from any number of threads at once.
#ifndef MISEG_CORE_TRAIN_SLICE_BATCHER_H_
#define MISEG_CORE_TRAIN_SLICE_BATCHER_H_

#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <vector>

#include <torch/types.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace miseg {

class SliceBatcher {
 public:
  using Forward = std::function<torch::Tensor(const torch::Tensor&)>;
  struct Options {
    int64_t max_slices = 64;  // slices per combined forward (>= 1)
    // How long the oldest waiting batch may wait for more before its forward starts; zero:
    // it takes what is waiting when the previous forward ends. InfiniteDuration: it waits
    // until max_slices are there (tests).
    absl::Duration wait = absl::ZeroDuration();
    // Called by the leader with the slices of each forward it runs (metrics; tests).
    std::function<void(int64_t slices)> on_batch;
  };

  // forward maps S x C x H x W to S x K x H' x W' (row i of the result from row i of the
  // input only); it must stay valid for the batcher's life.
  SliceBatcher(Forward forward, Options options);
  SliceBatcher(const SliceBatcher&) = delete;
  SliceBatcher& operator=(const SliceBatcher&) = delete;

  // forward(slices), computed together with other callers' slices; blocks until done.
  // Rethrows forward's exception for these slices. A batch of max_slices slices or more
  // forms a forward of its own; batches of different slice shapes never share one.
  torch::Tensor Run(const torch::Tensor& slices);

 private:
  struct Request {
    torch::Tensor input;
    torch::Tensor output;
    std::exception_ptr error;
    absl::Time arrived;
    bool done = false;
  };

  void Lead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  std::vector<Request*> TakeBatch() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void Execute(const std::vector<Request*>& batch);  // outside the lock; never throws

  const Forward forward_;
  const Options options_;

  absl::Mutex mutex_;
  std::deque<Request*> pending_ ABSL_GUARDED_BY(mutex_);  // arrival order; owned by callers
  int64_t pending_slices_ ABSL_GUARDED_BY(mutex_) = 0;
  bool leading_ ABSL_GUARDED_BY(mutex_) = false;  // a leader is collecting or running a batch
};

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_SLICE_BATCHER_H_

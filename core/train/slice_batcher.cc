// The dynamic batcher: leader/follower over one mutex, callers' requests on their stacks.
#include "core/train/slice_batcher.h"

#include <utility>

namespace miseg {

SliceBatcher::SliceBatcher(Forward forward, Options options)
    : forward_(std::move(forward)), options_(std::move(options)) {}

torch::Tensor SliceBatcher::Run(const torch::Tensor& slices) {
  Request request;
  request.input = slices;
  absl::MutexLock lock(&mutex_);
  request.arrived = absl::Now();
  pending_.push_back(&request);
  pending_slices_ += slices.size(0);
  const auto done_or_leaderless = [&] { return request.done || !leading_; };
  while (true) {
    mutex_.Await(absl::Condition(&done_or_leaderless));
    if (request.done) break;
    Lead();  // the batch led may or may not hold our request: loop until it is done
  }
  if (request.error) std::rethrow_exception(request.error);
  return std::move(request.output);
}

void SliceBatcher::Lead() {
  leading_ = true;
  // The oldest waiting batch sets the bound: a batch that waited through the previous
  // forward closes at once (Triton's max_queue_delay, measured from arrival).
  const absl::Time close = pending_.front()->arrived + options_.wait;
  const auto full = [this] { return pending_slices_ >= options_.max_slices; };
  mutex_.AwaitWithDeadline(absl::Condition(&full), close);
  const std::vector<Request*> batch = TakeBatch();
  mutex_.Unlock();
  Execute(batch);
  mutex_.Lock();
  for (Request* request : batch) request->done = true;
  leading_ = false;
}

std::vector<SliceBatcher::Request*> SliceBatcher::TakeBatch() {
  std::vector<Request*> batch = {pending_.front()};
  int64_t slices = pending_.front()->input.size(0);
  pending_.pop_front();
  const auto same_shape = [&](const Request* r) {
    return r->input.sizes().slice(1) == batch.front()->input.sizes().slice(1) &&
           r->input.scalar_type() == batch.front()->input.scalar_type() &&
           r->input.device() == batch.front()->input.device();
  };
  while (!pending_.empty() && slices + pending_.front()->input.size(0) <= options_.max_slices &&
         same_shape(pending_.front())) {
    slices += pending_.front()->input.size(0);
    batch.push_back(pending_.front());
    pending_.pop_front();
  }
  pending_slices_ -= slices;
  return batch;
}

void SliceBatcher::Execute(const std::vector<Request*>& batch) {
  const auto alone = [this](Request* request) {
    try {
      request->output = forward_(request->input);
    } catch (...) {
      request->error = std::current_exception();
    }
  };
  int64_t slices = 0;
  std::vector<torch::Tensor> inputs;
  for (const Request* request : batch) {
    slices += request->input.size(0);
    inputs.push_back(request->input);
  }
  if (options_.on_batch) options_.on_batch(slices);
  if (batch.size() == 1) return alone(batch.front());
  try {
    const torch::Tensor output = forward_(torch::cat(inputs, 0));
    int64_t offset = 0;
    for (Request* request : batch) {
      const int64_t count = request->input.size(0);
      request->output = output.narrow(0, offset, count).clone();
      offset += count;
    }
    return;
  } catch (...) {
    // Someone's slices (or the size of the whole) made the forward fail: each batch again
    // alone, so that the error reaches its owner only.
  }
  for (Request* request : batch) alone(request);
}

}  // namespace miseg

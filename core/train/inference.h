// Inference: a 3D volume in, a label volume on the same grid out. Torch-free header, so
// the server can hold a Segmenter without compiling LibTorch headers.
#ifndef MISEG_CORE_TRAIN_INFERENCE_H_
#define MISEG_CORE_TRAIN_INFERENCE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/train/config.h"
#include "core/train/labeling_priority.h"
#include "core/volume/volume.h"

namespace miseg {

// How a model file is read: miseg's U-Net archive (trained here, model_io.h) or a
// TorchScript module with the spec inside (imported, export.h).
enum class ModelFormat { kMiseg, kTorchScript };

struct InferenceOptions {
  std::string device = "cpu";
  int64_t batch_slices = 16;  // slices per forward pass: bounds memory on large volumes
  bool flip_tta = false;      // average the predictions of the identity and the three flips
  // Last, so that callers initialising the fields above in order keep compiling.
  ModelFormat format = ModelFormat::kMiseg;
  // Dynamic batching across concurrent Segment calls (core/train/slice_batcher.h): the
  // batch_slices-slice batches of calls running at once go through one forward of at most
  // max_batch_slices slices, the oldest waiting at most batch_wait_ms for others. Each
  // call's labels are the ones it gets alone (logits to one float ulp: slice_batcher.h).
  // 0: off, each call runs its own forwards.
  int64_t max_batch_slices = 0;
  double batch_wait_ms = 0;
  std::function<void(int64_t slices)> on_batch;  // with batching: each forward's slices
  // On a CUDA device (and a CUDA LibTorch): the frozen network's forwards replay CUDA graphs
  // captured at the model grid, batches padded to max(batch_slices, max_batch_slices) slices
  // (core/train/graphed_forward.h). Ignored elsewhere and for TorchScript models.
  bool cuda_graphs = false;
};

// A loaded model, ready to segment. Segment is const and safe to call from several threads
// at once: the network is in eval mode and only read.
class Segmenter {
 public:
  // Loads a model file or a training checkpoint (or, with format kTorchScript, an
  // imported module). NotFound, DataLoss (corrupt or not a model), InvalidArgument /
  // FailedPrecondition (device).
  static absl::StatusOr<std::unique_ptr<Segmenter>> Load(const std::string& model_path,
                                                         const InferenceOptions& options = {});
  ~Segmenter();
  Segmenter(const Segmenter&) = delete;
  Segmenter& operator=(const Segmenter&) = delete;

  const ModelSpec& spec() const;

  // Labels in 0..classes-1 on exactly the grid of image. InvalidArgument for an
  // inconsistent volume.
  absl::StatusOr<LabelVolume> Segment(const ImageVolume& image) const;

  // Active learning's per-study scores (core/train/labeling_priority.h) of image on the
  // model grid, batch_slices slices at a time. InvalidArgument for an inconsistent volume.
  absl::StatusOr<LabelingScores> ScoreForLabeling(const ImageVolume& image) const;

 private:
  struct State;
  explicit Segmenter(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_INFERENCE_H_

// Segmenter: a model loaded once, applied to whole volumes.
#include "core/train/inference.h"

#include "absl/strings/str_cat.h"
#include "core/train/model_io.h"
#include "core/train/preprocess.h"
#include "core/train/torch_status.h"

namespace miseg {

struct Segmenter::State {
  InferenceOptions options;
  torch::Device device{torch::kCPU};
  LoadedModel loaded;
};

Segmenter::Segmenter(std::unique_ptr<State> state) : state_(std::move(state)) {}
Segmenter::~Segmenter() = default;

absl::StatusOr<std::unique_ptr<Segmenter>> Segmenter::Load(const std::string& model_path,
                                                          const InferenceOptions& options) {
  if (options.batch_slices < 1) return absl::InvalidArgumentError("batch_slices must be >= 1");
  auto state = std::make_unique<State>();
  state->options = options;
  auto device = ResolveDevice(options.device);
  if (!device.ok()) return device.status();
  state->device = *device;
  auto loaded = LoadModel(model_path, state->device);
  if (!loaded.ok()) return loaded.status();
  state->loaded = std::move(*loaded);
  return std::unique_ptr<Segmenter>(new Segmenter(std::move(state)));
}

const ModelSpec& Segmenter::spec() const { return state_->loaded.spec; }

absl::StatusOr<LabelVolume> Segmenter::Segment(const ImageVolume& image) const {
  auto prepared = PrepareVolume(image, nullptr, state_->loaded.spec);
  if (!prepared.ok()) return prepared.status();
  LabelVolume labels;
  absl::Status status = GuardTorch("segmenting", absl::StatusCode::kInternal, [&] {
    labels = SegmentPrepared(state_->loaded.model, *prepared, state_->device,
                             state_->options.batch_slices, state_->options.flip_tta);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return labels;
}

}  // namespace miseg

// Segmenter: a model loaded once, applied to whole volumes.
#include "core/train/inference.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include <torch/script.h>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/train/export.h"
#include "core/train/frozen_unet.h"
#include "core/train/graphed_forward.h"
#include "core/train/labeling_scores.h"
#include "core/train/memory_layout.h"
#include "core/train/model_io.h"
#include "core/train/perturbation.h"
#include "core/train/preprocess.h"
#include "core/train/segment_prepared.h"
#include "core/train/slice_batcher.h"
#include "core/train/torch_status.h"

namespace miseg {
namespace {

// An imported module and the spec inside it, on device, in eval mode.
absl::Status LoadTorchScript(const std::string& path, const torch::Device& device,
                             ModelSpec* spec, torch::jit::Module* module) {
  if (!std::filesystem::is_regular_file(path)) {
    return absl::NotFoundError(absl::StrCat("model file not found: ", path));
  }
  torch::jit::ExtraFilesMap extra{{kTorchScriptSpecFile, ""}};
  RETURN_IF_ERROR(GuardTorch(absl::StrCat("reading ", path), absl::StatusCode::kDataLoss, [&] {
    *module = torch::jit::load(path, device, extra);
    module->eval();
    return absl::OkStatus();
  }));
  if (extra[kTorchScriptSpecFile].empty()) {
    return absl::DataLossError(absl::StrCat("not an imported miseg model: no spec inside ", path));
  }
  ASSIGN_OR_RETURN(*spec, ParseModelSpec(extra[kTorchScriptSpecFile]));
  return absl::OkStatus();
}

// The network Segment runs on a normalised slice batch: the frozen U-Net (through CUDA
// graphs when `graphed`) or the module.
ForwardFn NetworkForward(const ModelFormat format, torch::jit::Module* scripted,
                         const FrozenUNet* frozen, GraphedForward* graphed) {
  if (format == ModelFormat::kTorchScript) {
    // A scripted module's forward may run on several threads at once (eval mode, read only).
    return [scripted](const torch::Tensor& x) { return scripted->forward({x}).toTensor(); };
  }
  if (graphed != nullptr) return [graphed](const torch::Tensor& x) { return (*graphed)(x); };
  return [frozen](const torch::Tensor& x) { return frozen->forward(x); };
}

}  // namespace

struct Segmenter::State {
  InferenceOptions options;
  torch::Device device{torch::kCPU};
  LoadedModel loaded;           // kMiseg: the U-Net; kTorchScript: its spec only
  torch::jit::Module scripted;  // kTorchScript
  // kMiseg: what Segment runs, the U-Net with batch norm folded (core/train/frozen_unet.h).
  std::optional<FrozenUNet> frozen;
  // With options.cuda_graphs on CUDA: the frozen network's forwards through CUDA graphs.
  std::unique_ptr<GraphedForward> graphed;
  // With options.max_batch_slices > 0: Segment's forwards go through it. Last: it calls
  // the networks above.
  std::unique_ptr<SliceBatcher> batcher;
};

Segmenter::Segmenter(std::unique_ptr<State> state) : state_(std::move(state)) {}
Segmenter::~Segmenter() = default;

absl::StatusOr<std::unique_ptr<Segmenter>> Segmenter::Load(const std::string& model_path,
                                                          const InferenceOptions& options) {
  if (options.batch_slices < 1) return absl::InvalidArgumentError("batch_slices must be >= 1");
  if (options.max_batch_slices < 0 || options.batch_wait_ms < 0) {
    return absl::InvalidArgumentError("max_batch_slices and batch_wait_ms must be >= 0");
  }
  auto state = std::make_unique<State>();
  state->options = options;
  auto device = ResolveDevice(options.device);
  if (!device.ok()) return device.status();
  state->device = *device;
  if (options.format == ModelFormat::kTorchScript) {
    RETURN_IF_ERROR(
        LoadTorchScript(model_path, state->device, &state->loaded.spec, &state->scripted));
  } else {
    auto loaded = LoadModel(model_path, state->device);
    if (!loaded.ok()) return loaded.status();
    state->loaded = std::move(*loaded);
    RETURN_IF_ERROR(GuardTorch("freezing the model", absl::StatusCode::kInternal, [&] {
      state->frozen = FrozenUNet::Fold(state->loaded.model, PrefersChannelsLast(state->device));
      return absl::OkStatus();
    }));
    if (options.cuda_graphs && state->device.is_cuda()) {
      GraphedForward::Options graphs;
      graphs.rows = std::max(options.batch_slices, options.max_batch_slices);
      const FrozenUNet* frozen = &*state->frozen;
      state->graphed = std::make_unique<GraphedForward>(
          [frozen](const torch::Tensor& x) { return frozen->forward(x); }, state->device, graphs);
    }
  }
  if (options.max_batch_slices > 0) {
    SliceBatcher::Options batching;
    batching.max_slices = options.max_batch_slices;
    batching.wait = absl::Microseconds(options.batch_wait_ms * 1000);
    batching.on_batch = options.on_batch;
    state->batcher = std::make_unique<SliceBatcher>(
        NetworkForward(options.format, &state->scripted, state->frozen ? &*state->frozen : nullptr,
                       state->graphed.get()),
        std::move(batching));
  }
  return std::unique_ptr<Segmenter>(new Segmenter(std::move(state)));
}

const ModelSpec& Segmenter::spec() const { return state_->loaded.spec; }

absl::StatusOr<LabelVolume> Segmenter::Segment(const ImageVolume& image) const {
  auto prepared = PrepareVolume(image, nullptr, state_->loaded.spec);
  if (!prepared.ok()) return prepared.status();
  LabelVolume labels;
  const InferenceOptions& options = state_->options;
  absl::Status status = GuardTorch("segmenting", absl::StatusCode::kInternal, [&] {
    SliceBatcher* batcher = state_->batcher.get();
    const ForwardFn forward =
        batcher != nullptr
            ? ForwardFn([batcher](const torch::Tensor& x) { return batcher->Run(x); })
            : NetworkForward(options.format, &state_->scripted,
                             state_->frozen ? &*state_->frozen : nullptr, state_->graphed.get());
    labels =
        SegmentPrepared(forward, *prepared, state_->device, options.batch_slices, options.flip_tta);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return labels;
}

absl::StatusOr<LabelingScores> Segmenter::ScoreForLabeling(const ImageVolume& image) const {
  auto prepared = PrepareVolume(image, nullptr, state_->loaded.spec);
  if (!prepared.ok()) return prepared.status();
  LabelingScores scores;
  const torch::Device device = state_->device;
  absl::Status status = GuardTorch("scoring for labeling", absl::StatusCode::kInternal, [&] {
    ProbabilityFn predict;
    if (state_->options.format == ModelFormat::kTorchScript) {
      torch::jit::Module& module = state_->scripted;
      predict = [&module, device](const torch::Tensor& x) {
        return torch::softmax(module.forward({x.to(device)}).toTensor(), 1);
      };
    } else {
      UNet& model = state_->loaded.model;
      predict = [&model, device](const torch::Tensor& x) {
        return torch::softmax(model->forward(x.to(device)), 1);
      };
    }
    scores = ScoreSlices(predict, prepared->images, state_->options.batch_slices);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return scores;
}

LabelVolume SegmentPrepared(UNet& model, const PreparedVolume& volume, const torch::Device& device,
                            int64_t batch_slices, bool flip_tta) {
  return SegmentPrepared([&model](const torch::Tensor& x) { return model->forward(x); }, volume,
                         device, batch_slices, flip_tta);
}

LabelVolume SegmentPrepared(const ForwardFn& forward, const PreparedVolume& volume,
                            const torch::Device& device, int64_t batch_slices, bool flip_tta) {
  torch::NoGradGuard no_grad;
  const VolumeGeometry& g = volume.geometry;
  LabelVolume labels(g);
  const std::vector<DihedralTransform> flips = {
      {}, {true, false, 0}, {false, true, 0}, {true, true, 0}};
  const size_t views = flip_tta ? flips.size() : 1;
  for (int64_t start = 0; start < g.slices; start += batch_slices) {
    const int64_t count = std::min(batch_slices, g.slices - start);
    const torch::Tensor input = volume.images.narrow(0, start, count).to(device);
    torch::Tensor probs;
    for (size_t v = 0; v < views; ++v) {
      const torch::Tensor view_probs = InvertDihedral(
          flips[v], torch::softmax(forward(ApplyDihedral(flips[v], input)), 1));
      probs = probs.defined() ? probs + view_probs : view_probs;
    }
    if (views > 1) probs = probs / static_cast<double>(views);
    const torch::Tensor predicted =
        ArgmaxOverClasses(ProbabilitiesToOriginalGrid(probs, volume.mapping)).to(torch::kCPU).contiguous();
    std::memcpy(&labels.voxels[static_cast<size_t>(start * g.slice_size())],
                predicted.data_ptr<uint8_t>(), static_cast<size_t>(count * g.slice_size()));
  }
  return labels;
}

}  // namespace miseg

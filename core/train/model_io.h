// Model files shared by the trainer and the segmenter (internal to the training core). A model file is a LibTorch archive holding the ModelSpec text under
// "miseg/spec" and the U-Net parameters and buffers under "model"; a training checkpoint
// is a model file with optimizer, step and random state added, so it can be served as is.
#ifndef MISEG_CORE_TRAIN_MODEL_IO_H_
#define MISEG_CORE_TRAIN_MODEL_IO_H_

#include <string>

#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/train/config.h"
#include "core/train/preprocess.h"
#include "core/train/unet.h"
#include "core/volume/volume.h"

namespace miseg {

UNetOptions UNetOptionsFor(const ModelSpec& spec);

// Parses a torch device string and checks it can be used here: InvalidArgument for a
// malformed string, FailedPrecondition for CUDA without a CUDA build or device.
absl::StatusOr<torch::Device> ResolveDevice(const std::string& name);

// Adds the spec and the model's parameters and buffers to archive.
void WriteModel(torch::serialize::OutputArchive& archive, const ModelSpec& spec, UNet& model);

// Saves to path + ".tmp", then renames: a crash never leaves a half-written file at path.
absl::Status SaveArchiveAtomically(torch::serialize::OutputArchive& archive,
                                   const std::string& path);

// Opens a model file or checkpoint. NotFound if missing, DataLoss if unreadable or corrupt.
absl::StatusOr<torch::serialize::InputArchive> OpenArchive(const std::string& path);
absl::StatusOr<ModelSpec> ReadSpec(torch::serialize::InputArchive& archive);

struct LoadedModel {
  ModelSpec spec;
  UNet model{nullptr};
};
// Builds the network from the archive's spec and loads its weights, on device, in eval mode.
absl::StatusOr<LoadedModel> LoadModel(const std::string& path, const torch::Device& device);

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_MODEL_IO_H_

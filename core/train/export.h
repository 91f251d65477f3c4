// Models out of miseg and back in, as TorchScript. A miseg model is a LibTorch C++-frontend
// U-Net, which cannot be scripted: ExportTorchScript builds a torch::jit::Module holding
// the weights miseg serves with (FrozenUNet: batch norm folded into the convolutions, in
// channels-last where this LibTorch prefers it) and a TorchScript forward written to run
// exactly the operations of FrozenUNet::forward, so Python's torch.jit.load computes the
// logits miseg computes, bit for bit on the same LibTorch build. The ModelSpec travels inside as the extra file "miseg/spec"
// (torch.jit.load ignores it); ImportTorchScript checks a module against a spec and writes
// it the same way, so the segmenter can serve it (inference.h, ModelFormat::kTorchScript).
#ifndef MISEG_CORE_TRAIN_EXPORT_H_
#define MISEG_CORE_TRAIN_EXPORT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/train/config.h"
#include "core/train/inference.h"

namespace miseg {

// The name of the extra file that carries the spec inside an exported module.
inline constexpr char kTorchScriptSpecFile[] = "miseg/spec";

// Writes the model at model_path (a miseg model file or checkpoint, or an already imported
// TorchScript module) to out_path as a TorchScript module: forward(x) with x a normalised
// B x 1 x H x W float batch (H, W multiples of 2^(levels-1)) returns B x K x H x W logits.
// Written to a temporary name, then renamed. Returns the model's spec. NotFound / DataLoss
// for a missing or unreadable model; the disk's errors.
absl::StatusOr<ModelSpec> ExportTorchScript(const std::string& model_path, ModelFormat format,
                                            const std::string& out_path);

// Checks the TorchScript module at in_path for serving a dataset of spec.classes classes:
// it loads (InvalidArgument: not a TorchScript archive), and a test batch of 2 x 1 x G x G
// (G = spec.grid_size) gives a 2 x classes x G x G tensor of finite values (InvalidArgument
// naming what it gave). Then writes it to out_path with the spec inside (temporary name,
// rename).
absl::Status ImportTorchScript(const std::string& in_path, const ModelSpec& spec,
                               const std::string& out_path);

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_EXPORT_H_

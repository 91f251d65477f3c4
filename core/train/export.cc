// TorchScript export and import of models.
#include "core/train/export.h"

#include <torch/script.h>

#include <filesystem>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/common/status_macros.h"
#include "core/train/frozen_unet.h"
#include "core/train/memory_layout.h"
#include "core/train/model_io.h"
#include "core/train/torch_status.h"

namespace miseg {
namespace {

// The frozen forward pass (FrozenUNet::forward, frozen_unet.cc) as TorchScript, op for op:
// conv2d with the folded bias then relu_, max_pool2d(2), conv_transpose2d(stride 2), cat,
// and the input in channels-last when the weights are, so that the same LibTorch computes
// bit for bit the logits miseg serves.
std::string ForwardSource(size_t levels, bool channels_last) {
  std::string src = R"(
def conv_relu(self, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return torch.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1).relu_()

def forward(self, x: Tensor) -> Tensor:
)";
  // 2 is c10::MemoryFormat::ChannelsLast (torch.channels_last, a name a module defined from
  // C++ cannot resolve).
  if (channels_last) absl::StrAppend(&src, "    x = x.contiguous(memory_format=2)\n");
  for (size_t level = 0; level < levels; ++level) {
    if (level > 0) absl::StrAppend(&src, "    x = torch.max_pool2d(x, [2, 2], [2, 2])\n");
    absl::StrAppend(&src, "    x = self.conv_relu(self.conv_relu(x, self.e", level, "_0_w, self.e",
                    level, "_0_b), self.e", level, "_1_w, self.e", level, "_1_b)\n    s", level,
                    " = x\n");
  }
  for (size_t level = levels - 1; level-- > 0;) {
    absl::StrAppend(&src, "    x = torch.conv_transpose2d(x, self.u", level, "_w, self.u", level,
                    "_b, [2, 2], [0, 0], [0, 0], 1, [1, 1])\n");
    absl::StrAppend(&src, "    x = torch.cat([s", level, ", x], 1)\n");
    absl::StrAppend(&src, "    x = self.conv_relu(self.conv_relu(x, self.d", level, "_0_w, self.d",
                    level, "_0_b), self.d", level, "_1_w, self.d", level, "_1_b)\n");
  }
  absl::StrAppend(&src,
                  "    return torch.conv2d(x, self.head_w, self.head_b, [1, 1], [0, 0], [1, 1], "
                  "1)\n");
  return src;
}

void Register(torch::jit::Module& module, const std::string& name, const FrozenUNet::Conv& conv) {
  module.register_parameter(name + "_w", conv.weight.clone(torch::MemoryFormat::Preserve), false);
  module.register_parameter(name + "_b", conv.bias.clone(), false);
}

// The network as miseg serves it (FrozenUNet: batch norm folded into the convolutions,
// channels-last where LibTorch prefers it on this machine's CPU) as a scripted module.
torch::jit::Module ScriptUNet(UNet& model) {
  const FrozenUNet frozen =
      FrozenUNet::Fold(model, PrefersChannelsLast(torch::Device(torch::kCPU)));
  torch::jit::Module scripted("__torch__.miseg.UNet");
  for (size_t level = 0; level < frozen.encoders().size(); ++level) {
    for (size_t i = 0; i < 2; ++i) {
      Register(scripted, absl::StrCat("e", level, "_", i), frozen.encoders()[level][i]);
    }
  }
  for (size_t level = 0; level < frozen.decoders().size(); ++level) {
    Register(scripted, absl::StrCat("u", level), frozen.upsamplers()[level]);
    for (size_t i = 0; i < 2; ++i) {
      Register(scripted, absl::StrCat("d", level, "_", i), frozen.decoders()[level][i]);
    }
  }
  Register(scripted, "head", frozen.head());
  scripted.define(ForwardSource(frozen.encoders().size(), frozen.channels_last()));
  scripted.eval();
  return scripted;
}

// module.save to a temporary name in out_path's directory, then rename.
absl::Status SaveModuleAtomically(const torch::jit::Module& module, const ModelSpec& spec,
                                  const std::string& out_path) {
  const std::string temporary = absl::StrCat(out_path, ".", std::random_device()(), ".tmp");
  torch::jit::ExtraFilesMap extra{{kTorchScriptSpecFile, SerializeModelSpec(spec)}};
  absl::Status saved =
      GuardTorch(absl::StrCat("writing ", out_path), absl::StatusCode::kInternal, [&] {
        module.save(temporary, extra);
        return absl::OkStatus();
      });
  std::error_code error;
  if (saved.ok()) std::filesystem::rename(temporary, out_path, error);
  if (!saved.ok() || error) {
    std::filesystem::remove(temporary, error);
    return saved.ok() ? absl::InternalError(absl::StrCat("renaming into ", out_path)) : saved;
  }
  return absl::OkStatus();
}

// Runs a fixed test batch through module; InvalidArgument unless it answers finite logits
// of 2 x classes x G x G.
absl::Status CheckTestBatch(torch::jit::Module& module, const ModelSpec& spec) {
  torch::NoGradGuard no_grad;
  const int64_t g = spec.grid_size;
  const torch::Tensor batch =
      torch::sin(torch::arange(2 * g * g, torch::kFloat) * 0.01).reshape({2, 1, g, g});
  const c10::IValue out = module.forward({batch});
  if (!out.isTensor()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the module's forward returns a ", out.tagKind(), ", not a tensor of logits"));
  }
  const torch::Tensor logits = out.toTensor();
  const std::vector<int64_t> expected = {2, spec.classes, g, g};
  if (logits.sizes().vec() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("the module turns a 2 x 1 x ", g, " x ", g, " batch into [",
                     absl::StrJoin(logits.sizes(), ", "), "], not [", absl::StrJoin(expected, ", "),
                     "] (", spec.classes, " classes)"));
  }
  if (!logits.is_floating_point() || !torch::isfinite(logits).all().item<bool>()) {
    return absl::InvalidArgumentError(
        "the module's logits on the test batch are not finite floats");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelSpec> ExportTorchScript(const std::string& model_path, ModelFormat format,
                                            const std::string& out_path) {
  if (format == ModelFormat::kTorchScript) {
    // Imported already: its file is a TorchScript module with the spec inside.
    torch::jit::ExtraFilesMap extra{{kTorchScriptSpecFile, ""}};
    torch::jit::Module module;
    RETURN_IF_ERROR(
        GuardTorch(absl::StrCat("reading ", model_path), absl::StatusCode::kDataLoss, [&] {
          module = torch::jit::load(model_path, torch::Device(torch::kCPU), extra);
          return absl::OkStatus();
        }));
    ASSIGN_OR_RETURN(ModelSpec spec, ParseModelSpec(extra[kTorchScriptSpecFile]));
    RETURN_IF_ERROR(SaveModuleAtomically(module, spec, out_path));
    return spec;
  }
  ASSIGN_OR_RETURN(LoadedModel loaded, LoadModel(model_path, torch::Device(torch::kCPU)));
  torch::jit::Module scripted;
  RETURN_IF_ERROR(GuardTorch("scripting the U-Net", absl::StatusCode::kInternal, [&] {
    try {
      scripted = ScriptUNet(loaded.model);
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrReplaceAll(e.what_without_backtrace(), {{"\n", " "}}));
    } catch (const std::exception& e) {
      // The TorchScript compiler's reports start on a new line: keep them whole.
      return absl::InternalError(absl::StrReplaceAll(e.what(), {{"\n", " "}}));
    }
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(SaveModuleAtomically(scripted, loaded.spec, out_path));
  return loaded.spec;
}

absl::Status ImportTorchScript(const std::string& in_path, const ModelSpec& spec,
                               const std::string& out_path) {
  RETURN_IF_ERROR(ValidateModelSpec(spec));
  torch::jit::Module module;
  RETURN_IF_ERROR(
      GuardTorch("model.pt is not a TorchScript module", absl::StatusCode::kInvalidArgument, [&] {
        module = torch::jit::load(in_path, torch::Device(torch::kCPU));
        module.eval();
        return absl::OkStatus();
      }));
  RETURN_IF_ERROR(GuardTorch("model.pt failed on a test batch", absl::StatusCode::kInvalidArgument,
                             [&] { return CheckTestBatch(module, spec); }));
  return SaveModuleAtomically(module, spec, out_path);
}

}  // namespace miseg

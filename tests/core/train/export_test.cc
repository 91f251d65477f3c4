// TorchScript export and import (core/train/export.h): the scripted module computes
// exactly what miseg serves with (the frozen U-Net), and imports refuse what miseg could not
// serve.
#include "core/train/export.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/train/frozen_unet.h"
#include "core/train/inference.h"
#include "core/train/memory_layout.h"
#include "core/train/model_io.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class ExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("miseg-export-test-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    spec_.classes = 3;
    spec_.widths = {4, 8, 16};
    spec_.grid_size = 32;
    // A network whose batch norms carry non-trivial running statistics, as a trained one.
    UNet model(UNetOptionsFor(spec_));
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(5);
    model->InitializeParameters(generator);
    {
      torch::NoGradGuard no_grad;
      for (auto& item : model->named_buffers()) {
        if (item.key().find("running_") == std::string::npos) continue;
        item.value().uniform_(0.5, 1.5, generator);
      }
      for (auto& item : model->named_parameters()) {
        if (item.value().dim() == 1) item.value().uniform_(-0.5, 0.5, generator);
      }
    }
    model->eval();
    model_ = model;
    torch::serialize::OutputArchive archive;
    WriteModel(archive, spec_, model);
    ASSERT_TRUE(SaveArchiveAtomically(archive, Path("trained.model")).ok());
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
  ModelSpec spec_;
  UNet model_{nullptr};
};

TEST_F(ExportTest, ScriptedModuleGivesBitIdenticalLogits) {
  absl::StatusOr<ModelSpec> spec =
      ExportTorchScript(Path("trained.model"), ModelFormat::kMiseg, Path("model.pt"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->classes, 3);
  torch::jit::Module scripted = torch::jit::load(Path("model.pt"));
  scripted.eval();
  torch::NoGradGuard no_grad;
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(9);
  const torch::Tensor x = torch::randn({3, 1, 32, 32}, generator, torch::kFloat);
  // What miseg serves with (the frozen network), bit for bit; the trained network itself to
  // float rounding.
  const FrozenUNet frozen = FrozenUNet::Fold(model_, PrefersChannelsLast(torch::kCPU));
  const torch::Tensor expected = frozen.forward(x.clone()).clone();
  const torch::Tensor trained = model_->forward(x.clone());
  for (int run = 0; run < 3; ++run) {  // the profiling executor optimises after a few runs
    const torch::Tensor got = scripted.forward({x.clone()}).toTensor();
    EXPECT_TRUE(torch::equal(got, expected))
        << "run " << run << ": max difference " << (got - expected).abs().max().item<float>();
    EXPECT_TRUE(torch::allclose(got, trained, /*rtol=*/1e-4, /*atol=*/1e-4));
  }
}

TEST_F(ExportTest, ImportedModuleSegmentsAsTheTrainedModel) {
  ASSERT_TRUE(ExportTorchScript(Path("trained.model"), ModelFormat::kMiseg, Path("model.pt")).ok());
  ASSERT_TRUE(ImportTorchScript(Path("model.pt"), spec_, Path("imported.model")).ok());
  InferenceOptions miseg_options;
  InferenceOptions script_options;
  script_options.format = ModelFormat::kTorchScript;
  auto trained = Segmenter::Load(Path("trained.model"), miseg_options);
  auto imported = Segmenter::Load(Path("imported.model"), script_options);
  ASSERT_TRUE(trained.ok()) << trained.status();
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ((*imported)->spec().grid_size, 32);
  ImageVolume image;
  image.geometry.slices = 2;
  image.geometry.rows = 40;
  image.geometry.cols = 36;
  image.voxels.resize(2 * 40 * 36);
  for (size_t i = 0; i < image.voxels.size(); ++i)
    image.voxels[i] = static_cast<float>((i * 37) % 101);
  auto a = (*trained)->Segment(image);
  auto b = (*imported)->Segment(image);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->voxels, b->voxels);
  // An imported module exports again as it is.
  absl::StatusOr<ModelSpec> again =
      ExportTorchScript(Path("imported.model"), ModelFormat::kTorchScript, Path("again.pt"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->grid_size, 32);
}

TEST_F(ExportTest, ImportRefusesWrongClassesCorruptFilesAndNonFiniteOutput) {
  ASSERT_TRUE(ExportTorchScript(Path("trained.model"), ModelFormat::kMiseg, Path("model.pt")).ok());
  ModelSpec four = spec_;
  four.classes = 4;
  absl::Status status = ImportTorchScript(Path("model.pt"), four, Path("x.model"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("not [2, 4, 32, 32]"));
  EXPECT_FALSE(fs::exists(Path("x.model")));

  std::ofstream(Path("corrupt.pt")) << "not a zip archive";
  status = ImportTorchScript(Path("corrupt.pt"), spec_, Path("x.model"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("not a TorchScript module"));

  torch::jit::Module nan_module("__torch__.NaNs");
  nan_module.define(R"(
def forward(self, x: Tensor) -> Tensor:
    return torch.full([x.size(0), 3, x.size(2), x.size(3)], float("nan"))
)");
  nan_module.save(Path("nan.pt"));
  status = ImportTorchScript(Path("nan.pt"), spec_, Path("x.model"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("not finite"));
  EXPECT_FALSE(fs::exists(Path("x.model")));
}

}  // namespace
}  // namespace miseg

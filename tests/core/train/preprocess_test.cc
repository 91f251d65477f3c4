// Normalisation and the round trip original grid -> model grid -> original grid.
#include "core/train/preprocess.h"

#include <cmath>

#include <gtest/gtest.h>

namespace miseg {
namespace {

VolumeGeometry Geometry(int64_t slices, int64_t rows, int64_t cols, double row_mm, double col_mm) {
  VolumeGeometry g;
  g.slices = slices;
  g.rows = rows;
  g.cols = cols;
  g.row_spacing_mm = row_mm;
  g.col_spacing_mm = col_mm;
  return g;
}

// An ellipse of class 3 with a smaller class 1 disc inside it, per slice, in mm.
LabelVolume Ellipses(const VolumeGeometry& g) {
  LabelVolume labels(g);
  for (int64_t k = 0; k < g.slices; ++k)
    for (int64_t r = 0; r < g.rows; ++r)
      for (int64_t c = 0; c < g.cols; ++c) {
        const double y = (r + 0.5) * g.row_spacing_mm - 0.45 * g.rows * g.row_spacing_mm;
        const double x = (c + 0.5) * g.col_spacing_mm - 0.55 * g.cols * g.col_spacing_mm;
        const double e = (y * y) / (30.0 * 30.0) + (x * x) / (45.0 * 45.0);
        labels.at(k, r, c) = e < 0.25 ? 1 : (e < 1 ? 3 : 0);
      }
  return labels;
}

// Original labels -> model grid -> one-hot -> back to the original grid.
torch::Tensor RoundTrip(const LabelVolume& labels, const ModelSpec& spec) {
  const GridMapping m = MakeGridMapping(labels.geometry, spec);
  const VolumeGeometry& g = labels.geometry;
  const torch::Tensor original = torch::from_blob(const_cast<uint8_t*>(labels.voxels.data()),
                                                  {g.slices, g.rows, g.cols}, torch::kUInt8);
  const torch::Tensor model_grid = LabelsToModelGrid(original, m, spec.classes);
  EXPECT_EQ(model_grid.size(1), spec.grid_size);
  const torch::Tensor one_hot =
      torch::one_hot(model_grid, spec.classes).permute({0, 3, 1, 2}).to(torch::kFloat32);
  return ProbabilitiesToOriginalGrid(one_hot, m).argmax(1);
}

torch::Tensor AsTensor(const LabelVolume& v) {
  const VolumeGeometry& g = v.geometry;
  return torch::from_blob(const_cast<uint8_t*>(v.voxels.data()), {g.slices, g.rows, g.cols},
                          torch::kUInt8).to(torch::kInt64);
}

// Weighted centroid (row, col) of a S x rows x cols map.
std::pair<double, double> Centroid(const torch::Tensor& weight) {
  const torch::Tensor w = weight.to(torch::kFloat64);
  const torch::Tensor rows = torch::arange(w.size(1), torch::kFloat64).view({1, -1, 1});
  const torch::Tensor cols = torch::arange(w.size(2), torch::kFloat64).view({1, 1, -1});
  const double n = w.sum().item<double>();
  return {(w * rows).sum().item<double>() / n, (w * cols).sum().item<double>() / n};
}

// A smooth blob (Gaussian, sigma 12 mm) away from the centre, as class-1 probability.
torch::Tensor Blob(const VolumeGeometry& g) {
  const torch::Tensor y = (torch::arange(g.rows, torch::kFloat64) + 0.5) * g.row_spacing_mm -
                          0.4 * g.rows * g.row_spacing_mm;
  const torch::Tensor x = (torch::arange(g.cols, torch::kFloat64) + 0.5) * g.col_spacing_mm -
                          0.6 * g.cols * g.col_spacing_mm;
  const torch::Tensor r2 = y.view({-1, 1}).pow(2) + x.view({1, -1}).pow(2);
  return torch::exp(-r2 / (2 * 12.0 * 12.0)).to(torch::kFloat32).unsqueeze(0);
}

TEST(Preprocess, SameGridRoundTripIsExact) {
  ModelSpec spec;
  spec.grid_size = 64;
  const LabelVolume labels = Ellipses(Geometry(3, 64, 64, 1.5, 1.5));
  EXPECT_TRUE(torch::equal(RoundTrip(labels, spec), AsTensor(labels)));
}

TEST(Preprocess, OddGridsMapBackAligned) {
  ModelSpec spec;
  spec.grid_size = 128;
  for (const VolumeGeometry& g : {Geometry(2, 97, 143, 1.3, 0.9), Geometry(2, 211, 180, 0.7, 0.8),
                                  Geometry(1, 60, 200, 2.0, 0.6)}) {
    const LabelVolume labels = Ellipses(g);
    const torch::Tensor back = RoundTrip(labels, spec);
    const torch::Tensor truth = AsTensor(labels);
    ASSERT_EQ(back.sizes(), truth.sizes());
    EXPECT_GT((back == truth).to(torch::kFloat64).mean().item<double>(), 0.98);
    // Alignment, free of the label discretisation: a smooth probability map goes to the
    // model grid and back with its centroid in place to a small fraction of a voxel.
    const torch::Tensor blob = Blob(g);
    const torch::Tensor probs = torch::stack({1 - blob, blob}, 1);
    const GridMapping m = MakeGridMapping(g, spec);
    const torch::Tensor round_trip = ProbabilitiesToOriginalGrid(ToModelGrid(probs, m), m);
    const auto [r0, c0] = Centroid(blob);
    const auto [r1, c1] = Centroid(round_trip.select(1, 1));
    EXPECT_NEAR(r0, r1, 0.05) << g.rows << "x" << g.cols;
    EXPECT_NEAR(c0, c1, 0.05) << g.rows << "x" << g.cols;
  }
}

TEST(Preprocess, TargetSpacingCropsTheFieldOfView) {
  ModelSpec spec;
  spec.grid_size = 32;
  spec.target_spacing_mm = 1.0;  // 32 mm field of view out of 100 mm
  LabelVolume labels(Geometry(1, 100, 100, 1.0, 1.0));
  labels.at(0, 50, 50) = 2;  // centre: kept
  labels.at(0, 2, 2) = 1;    // far corner: outside the model's field of view
  const GridMapping m = MakeGridMapping(labels.geometry, spec);
  EXPECT_DOUBLE_EQ(m.model_spacing_mm, 1.0);
  const torch::Tensor model_grid = LabelsToModelGrid(AsTensor(labels), m, 3);
  EXPECT_EQ((model_grid == 2).sum().item<int64_t>(), 1);
  EXPECT_EQ((model_grid == 1).sum().item<int64_t>(), 0);
  // Back on the original grid, everything outside the model's view is background.
  const torch::Tensor back = ProbabilitiesToOriginalGrid(
      torch::one_hot(model_grid, 3).permute({0, 3, 1, 2}).to(torch::kFloat32), m).argmax(1);
  EXPECT_EQ(back[0][50][50].item<int64_t>(), 2);
  EXPECT_EQ(back[0][2][2].item<int64_t>(), 0);
}

TEST(Preprocess, NormalisesRobustly) {
  ImageVolume image(Geometry(2, 50, 50, 1, 1));
  for (size_t i = 0; i < image.voxels.size(); ++i) image.voxels[i] = static_cast<float>(i % 100);
  image.voxels[7] = 1e9f;  // one hot pixel must not squash the rest
  float clip_low = 0;
  auto normalized = NormalizeIntensities(image, 0.5, 99.5, &clip_low);
  ASSERT_TRUE(normalized.ok()) << normalized.status();
  double sum = 0, sum_sq = 0, max = -1e30;
  for (float v : *normalized) {
    sum += v;
    sum_sq += v * v;
    max = std::max<double>(max, v);
  }
  const double n = static_cast<double>(normalized->size());
  EXPECT_NEAR(sum / n, 0.0, 1e-4);
  EXPECT_NEAR(sum_sq / n, 1.0, 1e-3);
  EXPECT_LT(max, 2.0);  // the outlier is clipped to the 99.5th percentile
  EXPECT_NEAR(clip_low, -1.7, 0.1);
}

TEST(Preprocess, ConstantImageBecomesZeros) {
  ImageVolume image(Geometry(1, 4, 4, 1, 1));
  std::fill(image.voxels.begin(), image.voxels.end(), 42.0f);
  float clip_low = 1;
  auto normalized = NormalizeIntensities(image, 0.5, 99.5, &clip_low);
  ASSERT_TRUE(normalized.ok());
  for (float v : *normalized) EXPECT_EQ(v, 0.0f);
}

TEST(Preprocess, RefusesBadVolumes) {
  ModelSpec spec;
  spec.grid_size = 16;
  ImageVolume image(Geometry(2, 8, 8, 1, 1));
  ImageVolume broken = image;
  broken.voxels.pop_back();
  EXPECT_EQ(PrepareVolume(broken, nullptr, spec).status().code(), absl::StatusCode::kInvalidArgument);
  ImageVolume nan = image;
  nan.voxels[3] = std::nanf("");
  EXPECT_EQ(PrepareVolume(nan, nullptr, spec).status().code(), absl::StatusCode::kInvalidArgument);
  ImageVolume zero_spacing = image;
  zero_spacing.geometry.col_spacing_mm = 0;
  EXPECT_EQ(PrepareVolume(zero_spacing, nullptr, spec).status().code(),
            absl::StatusCode::kInvalidArgument);
  LabelVolume other_grid(Geometry(2, 8, 9, 1, 1));
  EXPECT_EQ(PrepareVolume(image, &other_grid, spec).status().code(),
            absl::StatusCode::kInvalidArgument);
  LabelVolume too_many(Geometry(2, 8, 8, 1, 1));
  too_many.voxels[0] = 4;
  auto refused = PrepareVolume(image, &too_many, spec);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("label 4"), std::string::npos);
}

TEST(Preprocess, PreparedShapes) {
  ModelSpec spec;
  spec.grid_size = 32;
  const VolumeGeometry g = Geometry(5, 40, 70, 1.2, 1.2);
  ImageVolume image(g);
  for (size_t i = 0; i < image.voxels.size(); ++i) image.voxels[i] = static_cast<float>(i % 17);
  const LabelVolume labels = Ellipses(g);
  auto prepared = PrepareVolume(image, &labels, spec);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(prepared->images.sizes(), (std::vector<int64_t>{5, 1, 32, 32}));
  EXPECT_EQ(prepared->labels.sizes(), (std::vector<int64_t>{5, 32, 32}));
  EXPECT_EQ(prepared->labels.scalar_type(), torch::kInt64);
}

TEST(Preprocess, ArgmaxOverClassesMatchesTorchArgmaxIncludingTies) {
  torch::manual_seed(12);
  // Quantised scores make ties common; the first class must win them, as in torch's argmax.
  const torch::Tensor scores = torch::randint(0, 3, {3, 5, 17, 9}).to(torch::kFloat32);
  EXPECT_TRUE(torch::equal(ArgmaxOverClasses(scores), scores.argmax(1).to(torch::kUInt8)));
  const torch::Tensor probs = torch::softmax(torch::randn({2, 4, 8, 8}), 1);
  EXPECT_TRUE(torch::equal(ArgmaxOverClasses(probs), probs.argmax(1).to(torch::kUInt8)));
}

}  // namespace
}  // namespace miseg

// Normalisation and in-plane resampling between a volume's own grid and the model grid.
#include "core/train/preprocess.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace miseg {
namespace {

// Slices per resampling call: bounds the one-hot and sampling-grid memory of big volumes.
constexpr int64_t kSliceChunk = 16;

// Normalised sampling coordinates (align_corners = false) of `count` output pixel centres
// with physical offsets (i + 0.5 - count / 2) * out_spacing from the shared centre, in an
// input of in_count pixels of in_spacing.
torch::Tensor AxisCoordinates(int64_t count, double out_spacing, int64_t in_count,
                              double in_spacing) {
  torch::Tensor index = torch::arange(count, torch::kFloat64);
  torch::Tensor offset = (index + 0.5 - static_cast<double>(count) / 2) * out_spacing;
  return (2.0 * offset / (static_cast<double>(in_count) * in_spacing)).to(torch::kFloat32);
}

// Sampling grid 1 x out_rows x out_cols x 2 (x = column, y = row), as grid_sampler wants.
torch::Tensor SamplingGrid(const torch::Tensor& y, const torch::Tensor& x) {
  const torch::Tensor gy = y.view({-1, 1}).expand({y.size(0), x.size(0)});
  const torch::Tensor gx = x.view({1, -1}).expand({y.size(0), x.size(0)});
  return torch::stack({gx, gy}, -1).unsqueeze(0);
}

torch::Tensor Resample(const torch::Tensor& x, const torch::Tensor& grid) {
  std::vector<torch::Tensor> parts;
  // One contiguous grid for a whole chunk, made once: grid_sampler ran twice as slow on the
  // expanded view.
  const torch::Tensor chunk_grid =
      grid.to(x.device())
          .expand({std::min(kSliceChunk, x.size(0)), grid.size(1), grid.size(2), 2})
          .contiguous();
  for (int64_t start = 0; start < x.size(0); start += kSliceChunk) {
    const torch::Tensor chunk = x.narrow(0, start, std::min(kSliceChunk, x.size(0) - start));
    parts.push_back(torch::grid_sampler(chunk, chunk_grid.narrow(0, 0, chunk.size(0)),
                                        /*interpolation_mode=*/0,
                                        /*padding_mode=*/0, /*align_corners=*/false));
  }
  return torch::cat(parts, 0);
}

// Gives the probability mass that fell outside the sampled field of view to background.
torch::Tensor CompleteBackground(torch::Tensor probs) {
  const torch::Tensor missing = 1 - probs.sum(1);
  probs.select(1, 0).add_(missing);
  return probs;
}

}  // namespace

GridMapping MakeGridMapping(const VolumeGeometry& geometry, const ModelSpec& spec) {
  GridMapping m;
  m.rows = geometry.rows;
  m.cols = geometry.cols;
  m.row_spacing_mm = geometry.row_spacing_mm;
  m.col_spacing_mm = geometry.col_spacing_mm;
  m.grid_size = spec.grid_size;
  m.model_spacing_mm = spec.target_spacing_mm > 0
                           ? spec.target_spacing_mm
                           : std::max(m.rows * m.row_spacing_mm, m.cols * m.col_spacing_mm) /
                                 static_cast<double>(spec.grid_size);
  return m;
}

absl::StatusOr<std::vector<float>> NormalizeIntensities(const ImageVolume& image,
                                                        double low_percentile,
                                                        double high_percentile,
                                                        float* clip_low) {
  if (!image.consistent()) {
    return absl::InvalidArgumentError("image volume: voxel count does not match its geometry");
  }
  // Percentiles from at most ~4M evenly strided voxels: exact enough, bounded memory.
  const size_t n = image.voxels.size();
  const size_t stride = std::max<size_t>(1, n / (size_t{1} << 22));
  std::vector<float> sample;
  sample.reserve(n / stride + 1);
  for (size_t i = 0; i < n; i += stride) {
    if (!std::isfinite(image.voxels[i])) {
      return absl::InvalidArgumentError("image volume: contains NaN or infinite intensities");
    }
    sample.push_back(image.voxels[i]);
  }
  const auto percentile = [&](double p) {
    const size_t k = std::min(sample.size() - 1,
                              static_cast<size_t>(std::llround(p / 100.0 * (sample.size() - 1))));
    std::nth_element(sample.begin(), sample.begin() + static_cast<std::ptrdiff_t>(k), sample.end());
    return sample[k];
  };
  const float lo = percentile(low_percentile);
  const float hi = percentile(high_percentile);
  double sum = 0, sum_sq = 0;
  for (float v : image.voxels) {
    const double c = std::clamp(v, lo, hi);
    sum += c;
    sum_sq += c * c;
  }
  const double mean = sum / static_cast<double>(n);
  const double variance = std::max(0.0, sum_sq / static_cast<double>(n) - mean * mean);
  // A constant image has no contrast to normalise: keep it at zero rather than divide by 0.
  const double scale = variance > 1e-12 ? 1.0 / std::sqrt(variance) : 0.0;
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = static_cast<float>((std::clamp(image.voxels[i], lo, hi) - mean) * scale);
  }
  *clip_low = static_cast<float>((lo - mean) * scale);
  return out;
}

torch::Tensor ToModelGrid(const torch::Tensor& x, const GridMapping& m, double fill) {
  const torch::Tensor grid =
      SamplingGrid(AxisCoordinates(m.grid_size, m.model_spacing_mm, m.rows, m.row_spacing_mm),
                   AxisCoordinates(m.grid_size, m.model_spacing_mm, m.cols, m.col_spacing_mm));
  if (fill == 0.0) return Resample(x, grid);
  return Resample(x - fill, grid) + fill;
}

torch::Tensor ProbabilitiesToOriginalGrid(const torch::Tensor& probs, const GridMapping& m) {
  const torch::Tensor grid =
      SamplingGrid(AxisCoordinates(m.rows, m.row_spacing_mm, m.grid_size, m.model_spacing_mm),
                   AxisCoordinates(m.cols, m.col_spacing_mm, m.grid_size, m.model_spacing_mm));
  return CompleteBackground(Resample(probs, grid));
}

torch::Tensor LabelsToModelGrid(const torch::Tensor& labels, const GridMapping& m,
                                int64_t classes) {
  std::vector<torch::Tensor> parts;
  for (int64_t start = 0; start < labels.size(0); start += kSliceChunk) {
    const torch::Tensor chunk =
        labels.narrow(0, start, std::min(kSliceChunk, labels.size(0) - start)).to(torch::kInt64);
    const torch::Tensor one_hot =
        torch::one_hot(chunk, classes).permute({0, 3, 1, 2}).to(torch::kFloat32);
    parts.push_back(ArgmaxOverClasses(CompleteBackground(ToModelGrid(one_hot, m))).to(torch::kInt64));
  }
  return torch::cat(parts, 0);
}

torch::Tensor ArgmaxOverClasses(const torch::Tensor& scores) {
  torch::Tensor best = scores.select(1, 0).clone();
  torch::Tensor index = torch::zeros_like(best, torch::kUInt8);
  for (int64_t k = 1; k < scores.size(1); ++k) {
    const torch::Tensor candidate = scores.select(1, k);
    index.masked_fill_(candidate > best, k);
    best = torch::maximum(best, candidate);
  }
  return index;
}

absl::StatusOr<PreparedVolume> PrepareVolume(const ImageVolume& image, const LabelVolume* labels,
                                             const ModelSpec& spec) {
  const VolumeGeometry& g = image.geometry;
  if (!image.consistent()) {
    return absl::InvalidArgumentError("image volume: empty or voxel count does not match geometry");
  }
  if (!(g.row_spacing_mm > 0 && g.col_spacing_mm > 0 && std::isfinite(g.row_spacing_mm) &&
        std::isfinite(g.col_spacing_mm))) {
    return absl::InvalidArgumentError("image volume: pixel spacing must be positive");
  }
  float clip_low = 0;
  auto normalized = NormalizeIntensities(image, spec.clip_low_percentile,
                                         spec.clip_high_percentile, &clip_low);
  if (!normalized.ok()) return normalized.status();
  PreparedVolume out;
  out.geometry = g;
  out.mapping = MakeGridMapping(g, spec);
  const torch::Tensor original =
      torch::from_blob(normalized->data(), {g.slices, 1, g.rows, g.cols}, torch::kFloat32);
  out.images = ToModelGrid(original, out.mapping, clip_low).contiguous();
  if (labels != nullptr) {
    if (!labels->consistent() || !labels->geometry.SameGrid(g)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "label volume: grid ", labels->geometry.slices, "x", labels->geometry.rows, "x",
          labels->geometry.cols, " does not match image grid ", g.slices, "x", g.rows, "x", g.cols));
    }
    const uint8_t max_label = *std::max_element(labels->voxels.begin(), labels->voxels.end());
    if (max_label >= spec.classes) {
      return absl::InvalidArgumentError(absl::StrCat("label volume: label ", int{max_label},
                                                     " is not below the class count ",
                                                     spec.classes));
    }
    const torch::Tensor original_labels = torch::from_blob(
        const_cast<uint8_t*>(labels->voxels.data()), {g.slices, g.rows, g.cols}, torch::kUInt8);
    out.labels = LabelsToModelGrid(original_labels, out.mapping, spec.classes).contiguous();
  }
  return out;
}

}  // namespace miseg

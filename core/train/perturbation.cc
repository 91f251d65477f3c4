// Dihedral transforms, intensity perturbation and affine training augmentation.
#include "core/train/perturbation.h"

#include <cmath>

namespace miseg {

double UniformReal(std::mt19937_64& rng, double lo, double hi) {
  const double unit = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
  return lo + (hi - lo) * unit;
}

int64_t UniformInt(std::mt19937_64& rng, int64_t n) {
  return static_cast<int64_t>(UniformReal(rng, 0.0, static_cast<double>(n)));
}

torch::Tensor ApplyDihedral(const DihedralTransform& t, const torch::Tensor& x) {
  torch::Tensor y = x;
  if (t.flip_rows) y = y.flip({-2});
  if (t.flip_cols) y = y.flip({-1});
  if (t.quarter_turns % 4 != 0) y = torch::rot90(y, t.quarter_turns, {-2, -1});
  return y;
}

torch::Tensor InvertDihedral(const DihedralTransform& t, const torch::Tensor& x) {
  torch::Tensor y = x;
  if (t.quarter_turns % 4 != 0) y = torch::rot90(y, -t.quarter_turns, {-2, -1});
  if (t.flip_cols) y = y.flip({-1});
  if (t.flip_rows) y = y.flip({-2});
  return y;
}

namespace {

template <typename Fn>
torch::Tensor PerSample(const std::vector<DihedralTransform>& transforms, const torch::Tensor& x,
                        Fn fn) {
  TORCH_CHECK(static_cast<int64_t>(transforms.size()) == x.size(0),
              "one dihedral transform per sample expected");
  std::vector<torch::Tensor> parts;
  parts.reserve(transforms.size());
  for (size_t i = 0; i < transforms.size(); ++i) {
    parts.push_back(fn(transforms[i], x.narrow(0, static_cast<int64_t>(i), 1)));
  }
  return torch::cat(parts, 0);
}

}  // namespace

torch::Tensor ApplyDihedral(const std::vector<DihedralTransform>& transforms,
                            const torch::Tensor& x) {
  return PerSample(transforms, x, [](const DihedralTransform& t, const torch::Tensor& s) {
    return ApplyDihedral(t, s);
  });
}

torch::Tensor InvertDihedral(const std::vector<DihedralTransform>& transforms,
                             const torch::Tensor& x) {
  return PerSample(transforms, x, [](const DihedralTransform& t, const torch::Tensor& s) {
    return InvertDihedral(t, s);
  });
}

torch::Tensor DihedralIndex(const std::vector<DihedralTransform>& transforms, int64_t height,
                            int64_t width) {
  // Transforming the pixels' own flat positions gives, at each output pixel, its source.
  const torch::Tensor positions =
      torch::arange(height * width, torch::kInt64).view({1, 1, height, width});
  std::vector<torch::Tensor> rows;
  rows.reserve(transforms.size());
  for (const DihedralTransform& t : transforms) {
    const torch::Tensor moved = ApplyDihedral(t, positions);
    TORCH_CHECK(moved.size(-2) == height && moved.size(-1) == width,
                "a quarter turn of a non-square slice changes its shape");
    rows.push_back(moved.reshape({1, height * width}));
  }
  return torch::cat(rows, 0);
}

torch::Tensor ApplyDihedralByIndex(const torch::Tensor& x, const torch::Tensor& index) {
  const int64_t n = x.size(0), channels = x.size(1);
  const torch::Tensor expanded = index.unsqueeze(1).expand({n, channels, index.size(1)});
  return x.flatten(2).gather(2, expanded).view(x.sizes());
}

DihedralTransform SampleDihedral(std::mt19937_64& rng, double flip_probability, bool rotate90) {
  DihedralTransform t;
  t.flip_rows = UniformReal(rng, 0, 1) < flip_probability;
  t.flip_cols = UniformReal(rng, 0, 1) < flip_probability;
  t.quarter_turns = rotate90 ? static_cast<int>(UniformInt(rng, 4)) : 0;
  return t;
}

torch::Tensor PerturbIntensity(const torch::Tensor& x, const IntensityPerturbation& options,
                               std::mt19937_64& rng, at::Generator& generator) {
  const int64_t batch = x.size(0);
  std::vector<float> contrast(batch), gamma(batch);
  for (int64_t i = 0; i < batch; ++i) {
    contrast[i] = static_cast<float>(UniformReal(rng, 1 - options.contrast, 1 + options.contrast));
    gamma[i] = static_cast<float>(UniformReal(rng, 1 - options.gamma, 1 + options.gamma));
  }
  const auto per_sample = [&](const std::vector<float>& v) {
    return torch::from_blob(const_cast<float*>(v.data()), {batch, 1, 1, 1}, torch::kFloat32)
        .clone()
        .to(x.device());
  };
  const torch::Tensor flat = x.reshape({batch, -1});
  const torch::Tensor lo = std::get<0>(flat.min(1)).reshape({batch, 1, 1, 1});
  const torch::Tensor hi = std::get<0>(flat.max(1)).reshape({batch, 1, 1, 1});
  const torch::Tensor range = torch::clamp_min(hi - lo, 1e-6);
  // Gamma on the slice's own [min, max] range, then back to its units.
  torch::Tensor y = lo + range * torch::pow((x - lo) / range, per_sample(gamma));
  const torch::Tensor mean = y.mean({1, 2, 3}, /*keepdim=*/true);
  y = mean + (y - mean) * per_sample(contrast);
  if (options.noise_std > 0) {
    // Noise is drawn on the CPU from our own generator so runs replay on any device.
    y = y + options.noise_std *
                torch::randn(x.sizes(), generator, torch::TensorOptions().dtype(torch::kFloat32))
                    .to(x.device());
  }
  return y;
}

void Augment(const AugmentationOptions& options, std::mt19937_64& rng, torch::Tensor& images,
             torch::Tensor& labels) {
  const int64_t batch = images.size(0);
  const int64_t size = images.size(-1);
  const int64_t out = options.crop_size > 0 ? options.crop_size : size;
  const double scale = static_cast<double>(out) / static_cast<double>(size);
  std::vector<float> theta(static_cast<size_t>(batch) * 6);
  std::vector<float> intensity(batch);
  for (int64_t i = 0; i < batch; ++i) {
    const double angle =
        UniformReal(rng, -options.max_rotation_deg, options.max_rotation_deg) * M_PI / 180.0;
    const double sx = UniformReal(rng, 0, 1) < options.flip_probability ? -scale : scale;
    const double sy = UniformReal(rng, 0, 1) < options.flip_probability ? -scale : scale;
    const double tx = UniformReal(rng, -(1 - scale), 1 - scale);
    const double ty = UniformReal(rng, -(1 - scale), 1 - scale);
    intensity[i] = static_cast<float>(UniformReal(rng, options.intensity_min, options.intensity_max));
    // theta maps output coordinates to input coordinates (normalised to [-1, 1]).
    float* th = &theta[static_cast<size_t>(i) * 6];
    th[0] = static_cast<float>(std::cos(angle) * sx);
    th[1] = static_cast<float>(-std::sin(angle) * sy);
    th[2] = static_cast<float>(tx);
    th[3] = static_cast<float>(std::sin(angle) * sx);
    th[4] = static_cast<float>(std::cos(angle) * sy);
    th[5] = static_cast<float>(ty);
  }
  const auto device = images.device();
  const torch::Tensor theta_t =
      torch::from_blob(theta.data(), {batch, 2, 3}, torch::kFloat32).clone().to(device);
  const torch::Tensor grid =
      torch::affine_grid_generator(theta_t, {batch, 1, out, out}, /*align_corners=*/false);
  // grid_sampler modes: interpolation 0 bilinear, 1 nearest; padding 0 zeros, 1 border.
  images = torch::grid_sampler(images, grid, /*interpolation_mode=*/0, /*padding_mode=*/1,
                               /*align_corners=*/false);
  images = images *
           torch::from_blob(intensity.data(), {batch, 1, 1, 1}, torch::kFloat32).clone().to(device);
  if (labels.defined()) {
    labels = torch::grid_sampler(labels.unsqueeze(1).to(torch::kFloat32), grid,
                                 /*interpolation_mode=*/1, /*padding_mode=*/0,
                                 /*align_corners=*/false)
                 .squeeze(1)
                 .round()
                 .to(torch::kInt64);
  }
}

}  // namespace miseg

// Perturbations of the training core. Dihedral transforms (flips and quarter turns) move a
// prediction into the frame of the perturbed input and back exactly, pixel for pixel, which
// the MI and consistency losses rely on. Intensity perturbations need no inverse. Training
// augmentation (rotation, flips, crop, intensity scaling) applies one random affine map per
// slice to image and labels together.
#ifndef MISEG_CORE_TRAIN_PERTURBATION_H_
#define MISEG_CORE_TRAIN_PERTURBATION_H_

#include <cstdint>
#include <random>
#include <vector>

#include <torch/types.h>

namespace miseg {

// One element of the dihedral group D4 acting on the last two (row, column) dimensions:
// first the flips, then quarter_turns counter-clockwise quarter turns.
struct DihedralTransform {
  bool flip_rows = false;  // reverse row order (vertical flip)
  bool flip_cols = false;  // reverse column order (horizontal flip)
  int quarter_turns = 0;   // 0..3; odd values need square images

  bool operator==(const DihedralTransform& o) const {
    return flip_rows == o.flip_rows && flip_cols == o.flip_cols && quarter_turns == o.quarter_turns;
  }
};

// x: ... x H x W.
torch::Tensor ApplyDihedral(const DihedralTransform& t, const torch::Tensor& x);
torch::Tensor InvertDihedral(const DihedralTransform& t, const torch::Tensor& x);
// Per-sample versions: transforms.size() == x.size(0).
torch::Tensor ApplyDihedral(const std::vector<DihedralTransform>& transforms, const torch::Tensor& x);
torch::Tensor InvertDihedral(const std::vector<DihedralTransform>& transforms,
                             const torch::Tensor& x);

// Each flip with flip_probability; quarter turns uniform in 0..3 when allowed.
// The same per-sample transforms as one gather, for CUDA graphs (whose kernels cannot depend
// on which flips a step drew): index[i][p] is the flat source pixel of output pixel p of
// sample i, for slices of height x width (square where a transform turns). An int64 CPU
// tensor n x (height * width); ApplyDihedralByIndex(x, index) equals ApplyDihedral exactly.
torch::Tensor DihedralIndex(const std::vector<DihedralTransform>& transforms, int64_t height,
                            int64_t width);
torch::Tensor ApplyDihedralByIndex(const torch::Tensor& x, const torch::Tensor& index);

DihedralTransform SampleDihedral(std::mt19937_64& rng, double flip_probability, bool rotate90);

struct IntensityPerturbation {
  double contrast = 0.2;    // multiplicative contrast about the slice mean in [1-c, 1+c]
  double gamma = 0.3;       // gamma in [1-g, 1+g] applied on the slice's min-max range
  double noise_std = 0.05;  // additive Gaussian noise
};

// Perturbs each slice of x (B x 1 x H x W) independently. Noise comes from generator.
torch::Tensor PerturbIntensity(const torch::Tensor& x, const IntensityPerturbation& options,
                               std::mt19937_64& rng, at::Generator& generator);

struct AugmentationOptions {
  double max_rotation_deg = 45.0;
  double flip_probability = 0.5;
  double intensity_min = 0.5;
  double intensity_max = 1.5;
  int64_t crop_size = 0;  // 0: output the input size
};

// Augments images (B x 1 x G x G, bilinear, border padding) and labels (B x G x G int64,
// nearest, background padding) with one random rotation, flip, crop and intensity scale per
// slice. labels may be undefined (unlabeled slices).
void Augment(const AugmentationOptions& options, std::mt19937_64& rng, torch::Tensor& images,
             torch::Tensor& labels);

// Uniform double in [lo, hi) from raw engine output: std distributions are
// implementation-defined, and a checkpoint must resume identically wherever it runs.
double UniformReal(std::mt19937_64& rng, double lo, double hi);
int64_t UniformInt(std::mt19937_64& rng, int64_t n);  // in [0, n)

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_PERTURBATION_H_

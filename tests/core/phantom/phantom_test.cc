// Tests of the synthetic cardiac phantom: it must be deterministic, geometrically sound, have
// exact and anatomically ordered labels, SSFP-like contrast, a population that actually
// varies (or the semi-supervised demo has nothing to learn from unlabeled subjects), and a
// noise switch that really turns noise off.
#include "core/phantom/phantom.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "core/volume/volume.h"

namespace miseg {
namespace {

constexpr uint64_t kPopulation = 20240611;

// Default-option subjects, generated once and shared: generation takes ~0.1 s each.
const std::vector<PhantomSubject>& DefaultPopulation() {
  static const std::vector<PhantomSubject> population = [] {
    std::vector<PhantomSubject> subjects;
    for (int index = 0; index < 20; ++index) {
      subjects.push_back(GeneratePhantomSubject(kPopulation, index));
    }
    return subjects;
  }();
  return population;
}

double Dot(const std::array<double, 3>& a, const std::array<double, 3>& b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

std::array<double, 3> Cross(const std::array<double, 3>& a, const std::array<double, 3>& b) {
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}

double MeanIntensity(const PhantomSubject& subject, uint8_t label) {
  double sum = 0.0;
  int64_t count = 0;
  for (size_t i = 0; i < subject.labels.voxels.size(); ++i) {
    if (subject.labels.voxels[i] == label) {
      sum += subject.image.voxels[i];
      ++count;
    }
  }
  return count > 0 ? sum / count : 0.0;
}

double CoefficientOfVariation(const std::vector<double>& values) {
  double mean = 0.0;
  for (double v : values) mean += v;
  mean /= values.size();
  double variance = 0.0;
  for (double v : values) variance += (v - mean) * (v - mean);
  variance /= values.size() - 1;
  return std::sqrt(variance) / mean;
}

// Pixels of `label` whose 8 neighbours in the slice all carry the same label: away from
// edges, where partial volume and blur do not reach.
std::vector<size_t> InteriorVoxels(const LabelVolume& labels, uint8_t label) {
  const VolumeGeometry& g = labels.geometry;
  std::vector<size_t> interior;
  for (int64_t k = 0; k < g.slices; ++k) {
    for (int64_t r = 2; r + 2 < g.rows; ++r) {
      for (int64_t c = 2; c + 2 < g.cols; ++c) {
        bool inside = true;
        for (int64_t dr = -2; dr <= 2 && inside; ++dr) {
          for (int64_t dc = -2; dc <= 2 && inside; ++dc) {
            inside = labels.at(k, r + dr, c + dc) == label;
          }
        }
        if (inside) interior.push_back(static_cast<size_t>((k * g.rows + r) * g.cols + c));
      }
    }
  }
  return interior;
}

TEST(Phantom, ClassNamesInLabelOrder) {
  const std::vector<std::string>& names = PhantomClassNames();
  ASSERT_EQ(names.size(), 4u);
  EXPECT_EQ(names[kPhantomBackground], "background");
  EXPECT_EQ(names[kPhantomRightVentricle], "right_ventricle");
  EXPECT_EQ(names[kPhantomMyocardium], "myocardium");
  EXPECT_EQ(names[kPhantomLeftVentricle], "left_ventricle");
}

TEST(Phantom, SameSeedAndIndexGiveIdenticalSubjects) {
  const PhantomSubject a = GeneratePhantomSubject(kPopulation, 3);
  const PhantomSubject b = GeneratePhantomSubject(kPopulation, 3);
  EXPECT_EQ(a.seed, b.seed);
  ASSERT_TRUE(a.image.geometry.SameGrid(b.image.geometry));
  EXPECT_EQ(a.image.geometry.origin_mm, b.image.geometry.origin_mm);
  EXPECT_EQ(a.image.geometry.row_direction, b.image.geometry.row_direction);
  EXPECT_EQ(a.image.geometry.row_spacing_mm, b.image.geometry.row_spacing_mm);
  EXPECT_EQ(a.labels.voxels, b.labels.voxels);
  // Bitwise, not approximately: the demo and the tests rely on reproducible data.
  ASSERT_EQ(a.image.voxels.size(), b.image.voxels.size());
  EXPECT_EQ(0, std::memcmp(a.image.voxels.data(), b.image.voxels.data(),
                           a.image.voxels.size() * sizeof(float)));
}

// Pins the generator's output. A failure on a new platform or compiler means the output
// is not portable (most likely floating-point contraction into FMA: build phantom.cc with
// -ffp-contract=off); after a deliberate change of the phantom, update the constants.
TEST(Phantom, OutputIsPinned) {
  const PhantomSubject subject = GeneratePhantomSubject(7, 2);
  uint64_t hash = 1469598103934665603ULL;  // FNV-1a over labels, then image bytes
  for (uint8_t label : subject.labels.voxels) hash = (hash ^ label) * 1099511628211ULL;
  for (float value : subject.image.voxels) {
    uint32_t bits = 0;
    std::memcpy(&bits, &value, sizeof(bits));
    for (int byte = 0; byte < 4; ++byte) {
      hash = (hash ^ ((bits >> (8 * byte)) & 0xFF)) * 1099511628211ULL;
    }
  }
  EXPECT_EQ(subject.seed, 9222458426386937722ULL) << "seed";
  EXPECT_EQ(hash, 3586321431453587035ULL) << "hash";
}

TEST(Phantom, DifferentIndicesGiveDifferentSubjects) {
  const PhantomSubject a = GeneratePhantomSubject(kPopulation, 0);
  const PhantomSubject b = GeneratePhantomSubject(kPopulation, 1);
  const PhantomSubject c = GeneratePhantomSubject(kPopulation + 1, 0);
  EXPECT_NE(a.seed, b.seed);
  EXPECT_NE(a.seed, c.seed);
  EXPECT_NE(a.image.voxels, b.image.voxels);
  EXPECT_NE(a.image.voxels, c.image.voxels);
}

TEST(Phantom, GeometryIsConsistentAndInRange) {
  const PhantomOptions options;
  for (int index = 0; index < 10; ++index) {
    const PhantomSubject& subject = DefaultPopulation()[index];
    const VolumeGeometry& g = subject.image.geometry;
    ASSERT_TRUE(subject.image.consistent()) << index;
    ASSERT_TRUE(subject.labels.consistent()) << index;
    ASSERT_TRUE(g.SameGrid(subject.labels.geometry)) << index;
    EXPECT_EQ(g.origin_mm, subject.labels.geometry.origin_mm);
    EXPECT_GE(g.slices, options.min_slices);
    EXPECT_LE(g.slices, options.max_slices);
    EXPECT_GE(g.rows, options.min_matrix);
    EXPECT_LE(g.rows, options.max_matrix);
    EXPECT_GE(g.cols, options.min_matrix);
    EXPECT_LE(g.cols, options.max_matrix);
    EXPECT_EQ(g.row_spacing_mm, g.col_spacing_mm);
    EXPECT_GE(g.row_spacing_mm, options.min_pixel_mm);
    EXPECT_LE(g.row_spacing_mm, options.max_pixel_mm);
    EXPECT_GE(g.slice_spacing_mm, options.min_slice_mm);
    EXPECT_LE(g.slice_spacing_mm, options.max_slice_mm);
    EXPECT_NEAR(Dot(g.row_direction, g.row_direction), 1.0, 1e-12);
    EXPECT_NEAR(Dot(g.col_direction, g.col_direction), 1.0, 1e-12);
    EXPECT_NEAR(Dot(g.slice_direction, g.slice_direction), 1.0, 1e-12);
    EXPECT_NEAR(Dot(g.row_direction, g.col_direction), 0.0, 1e-12);
    EXPECT_NEAR(Dot(g.row_direction, g.slice_direction), 0.0, 1e-12);
    EXPECT_NEAR(Dot(g.col_direction, g.slice_direction), 0.0, 1e-12);
    // Documented: the stack runs base to apex, opposite to row x col.
    const std::array<double, 3> normal = Cross(g.row_direction, g.col_direction);
    EXPECT_NEAR(Dot(normal, g.slice_direction), -1.0, 1e-12);
    // Oblique, not an axis-aligned toy orientation.
    EXPECT_LT(std::fabs(g.slice_direction[2]), 0.99);
  }
}

TEST(Phantom, OptionsFixTheGrid) {
  PhantomOptions options;
  options.min_slices = options.max_slices = 5;
  options.min_matrix = options.max_matrix = 96;
  options.min_pixel_mm = options.max_pixel_mm = 1.5;
  options.min_slice_mm = options.max_slice_mm = 8.0;
  const PhantomSubject subject = GeneratePhantomSubject(kPopulation, 4, options);
  const VolumeGeometry& g = subject.image.geometry;
  EXPECT_EQ(g.slices, 5);
  EXPECT_EQ(g.rows, 96);
  EXPECT_EQ(g.cols, 96);
  EXPECT_DOUBLE_EQ(g.row_spacing_mm, 1.5);
  EXPECT_DOUBLE_EQ(g.slice_spacing_mm, 8.0);

  // Inverted ranges are reordered rather than rejected.
  PhantomOptions inverted;
  inverted.min_slices = 12;
  inverted.max_slices = 9;
  const PhantomSubject other = GeneratePhantomSubject(kPopulation, 4, inverted);
  EXPECT_GE(other.image.geometry.slices, 9);
  EXPECT_LE(other.image.geometry.slices, 12);
}

TEST(Phantom, LabelsAreValidAndEveryClassIsPresent) {
  for (int index = 0; index < 10; ++index) {
    const PhantomSubject& subject = DefaultPopulation()[index];
    const VolumeGeometry& g = subject.labels.geometry;
    std::array<int64_t, 4> counts{};
    for (uint8_t label : subject.labels.voxels) {
      ASSERT_LE(label, 3) << index;
      ++counts[label];
    }
    for (int label = 1; label <= 3; ++label) EXPECT_GT(counts[label], 0) << index;
    // Background dominates, as in real scans.
    EXPECT_GT(counts[0], g.voxel_count() / 2) << index;

    // Most slices show all three structures; the RV fades out before the apex.
    int slices_with_all = 0;
    std::vector<int64_t> rv_per_slice(static_cast<size_t>(g.slices), 0);
    for (int64_t k = 0; k < g.slices; ++k) {
      std::array<bool, 4> seen{};
      for (int64_t r = 0; r < g.rows; ++r) {
        for (int64_t c = 0; c < g.cols; ++c) {
          const uint8_t label = subject.labels.at(k, r, c);
          seen[label] = true;
          if (label == kPhantomRightVentricle) ++rv_per_slice[static_cast<size_t>(k)];
        }
      }
      if (seen[1] && seen[2] && seen[3]) ++slices_with_all;
    }
    EXPECT_GE(slices_with_all * 2, g.slices) << index;
    EXPECT_LT(rv_per_slice.back(), rv_per_slice[static_cast<size_t>(g.slices / 2)]) << index;
    EXPECT_GT(rv_per_slice.front(), 0) << index;
  }
}

TEST(Phantom, MyocardiumSeparatesLeftVentricleFromEverythingElse) {
  for (int index = 0; index < 10; ++index) {
    const PhantomSubject& subject = DefaultPopulation()[index];
    const VolumeGeometry& g = subject.labels.geometry;
    int slices_with_lv_touching_background = 0;
    for (int64_t k = 0; k < g.slices; ++k) {
      bool touches_background = false;
      for (int64_t r = 1; r + 1 < g.rows; ++r) {
        for (int64_t c = 1; c + 1 < g.cols; ++c) {
          if (subject.labels.at(k, r, c) != kPhantomLeftVentricle) continue;
          const uint8_t neighbours[4] = {
              subject.labels.at(k, r - 1, c), subject.labels.at(k, r + 1, c),
              subject.labels.at(k, r, c - 1), subject.labels.at(k, r, c + 1)};
          for (uint8_t n : neighbours) {
            // The RV never touches the LV cavity: the septum is in between.
            ASSERT_NE(n, kPhantomRightVentricle) << "subject " << index << " slice " << k;
            if (n == kPhantomBackground) touches_background = true;
          }
        }
      }
      if (touches_background) ++slices_with_lv_touching_background;
    }
    // Only a partial basal slice (cut through the outflow tract) may open the ring.
    EXPECT_LE(slices_with_lv_touching_background, 1) << index;
  }
}

TEST(Phantom, BloodIsBrighterThanMyocardium) {
  for (int index = 0; index < 10; ++index) {
    const PhantomSubject& subject = DefaultPopulation()[index];
    const double lv = MeanIntensity(subject, kPhantomLeftVentricle);
    const double rv = MeanIntensity(subject, kPhantomRightVentricle);
    const double myocardium = MeanIntensity(subject, kPhantomMyocardium);
    EXPECT_GT(lv, 1.3 * myocardium) << index;
    EXPECT_GT(rv, 1.3 * myocardium) << index;
    EXPECT_GT(myocardium, 0.0) << index;
  }
}

TEST(Phantom, PopulationVaries) {
  std::vector<double> lv_volume_ml, lv_intensity, blood_to_myocardium;
  std::set<int64_t> slice_counts, row_counts;
  int non_square = 0;
  std::vector<double> pixel_spacings;
  for (int index = 0; index < 20; ++index) {
    const PhantomSubject& subject = DefaultPopulation()[index];
    const VolumeGeometry& g = subject.labels.geometry;
    const int64_t lv_voxels = std::count(subject.labels.voxels.begin(), subject.labels.voxels.end(),
                                         static_cast<uint8_t>(kPhantomLeftVentricle));
    lv_volume_ml.push_back(lv_voxels * g.row_spacing_mm * g.col_spacing_mm * g.slice_spacing_mm /
                           1000.0);
    const double lv = MeanIntensity(subject, kPhantomLeftVentricle);
    lv_intensity.push_back(lv);
    blood_to_myocardium.push_back(lv / MeanIntensity(subject, kPhantomMyocardium));
    slice_counts.insert(g.slices);
    row_counts.insert(g.rows);
    if (g.rows != g.cols) ++non_square;
    pixel_spacings.push_back(g.row_spacing_mm);
  }
  EXPECT_GT(CoefficientOfVariation(lv_volume_ml), 0.15);
  EXPECT_GT(CoefficientOfVariation(lv_intensity), 0.2);
  EXPECT_GT(CoefficientOfVariation(blood_to_myocardium), 0.15);
  EXPECT_GE(slice_counts.size(), 4u);
  EXPECT_GE(row_counts.size(), 10u);
  EXPECT_GE(non_square, 15);
  EXPECT_GT(*std::max_element(pixel_spacings.begin(), pixel_spacings.end()) -
                *std::min_element(pixel_spacings.begin(), pixel_spacings.end()),
            0.3);
  // Plausible adult LV volumes (labels include the stack's full cavity, in mL).
  for (double volume : lv_volume_ml) {
    EXPECT_GT(volume, 15.0);
    EXPECT_LT(volume, 400.0);
  }
}

TEST(Phantom, NoiseLevelChangesOnlyTheNoise) {
  PhantomOptions clean_options;
  clean_options.noise_level = 0.0;
  PhantomOptions noisy_options;
  PhantomOptions noisier_options;
  noisier_options.noise_level = 2.0;
  for (int index = 0; index < 3; ++index) {
    const PhantomSubject clean = GeneratePhantomSubject(kPopulation, index, clean_options);
    const PhantomSubject noisy = GeneratePhantomSubject(kPopulation, index, noisy_options);
    const PhantomSubject noisier = GeneratePhantomSubject(kPopulation, index, noisier_options);
    // Anatomy and geometry do not depend on the noise.
    EXPECT_EQ(clean.labels.voxels, noisy.labels.voxels);
    EXPECT_EQ(clean.image.geometry.origin_mm, noisy.image.geometry.origin_mm);

    // Inside the blood pool (away from edges) the noiseless image is smooth: its pixel-scale
    // roughness (second differences along rows, blind to the slow bias and texture
    // gradients) is a small fraction of what the default noise produces.
    const std::vector<size_t> interior = InteriorVoxels(clean.labels, kPhantomLeftVentricle);
    ASSERT_GT(interior.size(), 100u);
    std::vector<double> clean_roughness, noisy_roughness;
    double residual2 = 0.0, residual2_noisier = 0.0, blood = 0.0;
    for (size_t i : interior) {
      auto second_difference = [i](const ImageVolume& image) {
        return std::fabs(image.voxels[i - 1] - 2.0 * image.voxels[i] + image.voxels[i + 1]);
      };
      clean_roughness.push_back(second_difference(clean.image));
      noisy_roughness.push_back(second_difference(noisy.image));
      const double d1 = noisy.image.voxels[i] - clean.image.voxels[i];
      const double d2 = noisier.image.voxels[i] - clean.image.voxels[i];
      residual2 += d1 * d1;
      residual2_noisier += d2 * d2;
      blood += clean.image.voxels[i];
    }
    blood /= interior.size();
    auto median = [](std::vector<double> values) {
      std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
      return values[values.size() / 2];
    };
    EXPECT_LT(median(clean_roughness), 0.3 * median(noisy_roughness)) << index;
    EXPECT_LT(median(clean_roughness), 0.01 * blood) << index;
    EXPECT_GT(median(noisy_roughness), 0.02 * blood) << index;
    // noise_level scales the noise: twice the level, about twice the standard deviation.
    const double ratio = std::sqrt(residual2_noisier / residual2);
    EXPECT_NEAR(ratio, 2.0, 0.2) << index;

  }
}

TEST(Phantom, BiasFieldSwitchKeepsAnatomy) {
  PhantomOptions flat;
  flat.bias_field = false;
  flat.noise_level = 0.0;
  PhantomOptions biased;
  biased.noise_level = 0.0;
  const PhantomSubject a = GeneratePhantomSubject(kPopulation, 5, flat);
  const PhantomSubject b = GeneratePhantomSubject(kPopulation, 5, biased);
  EXPECT_EQ(a.labels.voxels, b.labels.voxels);
  double largest_ratio_deviation = 0.0;
  for (size_t i = 0; i < a.image.voxels.size(); ++i) {
    if (a.image.voxels[i] > 1.0f) {
      largest_ratio_deviation = std::max(
          largest_ratio_deviation, std::fabs(b.image.voxels[i] / a.image.voxels[i] - 1.0));
    }
  }
  EXPECT_GT(largest_ratio_deviation, 0.02);
  EXPECT_LE(largest_ratio_deviation, 0.3 + 1e-5);
}

}  // namespace
}  // namespace miseg

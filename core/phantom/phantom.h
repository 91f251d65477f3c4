// Synthetic cardiac cine-MR phantom: short-axis stacks with SSFP-like contrast and exact
// labels (right ventricle, left-ventricular myocardium, left ventricle), generated from a
// population seed. It is the data of the semi-supervised segmentation demo and of the tests,
// so subjects differ the way real ones do (anatomy, field of view, spacing, contrast,
// noise, bias field, distracting organs) and a few labeled subjects do not cover the whole
// population. Plain C++17, no dependency beyond the shared volume types, and the same
// output for the same seed across compilers and standard libraries: own random
// distributions and own sin/cos/log/exp. (Fused multiply-adds change double results in the
// last bit, which the float output absorbs in practice; -ffp-contract=off is the strict
// setting for this file.)
#ifndef MISEG_CORE_PHANTOM_PHANTOM_H_
#define MISEG_CORE_PHANTOM_PHANTOM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/volume/volume.h"

namespace miseg {

// Population ranges; every subject draws its own value inside each range. The defaults give a
// varied population. Inverted ranges are reordered, and counts are clamped to sane minima
// (at least 2 slices, at least 32 rows and columns).
struct PhantomOptions {
  int min_slices = 8, max_slices = 14;              // slice count varies per subject
  int min_matrix = 144, max_matrix = 224;           // rows and cols drawn independently
  double min_pixel_mm = 1.25, max_pixel_mm = 1.9;   // in-plane spacing, equal for rows and cols
  double min_slice_mm = 7.0, max_slice_mm = 10.0;   // distance between slice centres
  double noise_level = 1.0;  // scales the Rician noise; 0 gives a noiseless image
  bool bias_field = true;    // smooth multiplicative coil-sensitivity field (up to +-30%)
};

// Small subjects for demos and tests: 4-6 slices of 64-72 pixels at about 3 mm (the whole
// heart still in view), so that uploads, training and segmentation take seconds.
inline PhantomOptions SmallPhantomOptions() {
  PhantomOptions options;
  options.min_slices = 4;
  options.max_slices = 6;
  options.min_matrix = 64;
  options.max_matrix = 72;
  options.min_pixel_mm = 2.8;
  options.max_pixel_mm = 3.2;
  return options;
}

// Label values of PhantomSubject::labels, in the order of PhantomClassNames().
enum PhantomLabel : uint8_t {
  kPhantomBackground = 0,
  kPhantomRightVentricle = 1,
  kPhantomMyocardium = 2,
  kPhantomLeftVentricle = 3,
};

struct PhantomSubject {
  ImageVolume image;   // MR-like arbitrary units (roughly 0..1500), scale differs per subject
  LabelVolume labels;  // same geometry; PhantomLabel values
  uint64_t seed = 0;   // the per-subject seed derived from (population_seed, subject_index)
};

// Deterministic: the same (population_seed, subject_index, options) gives a bit-identical
// subject. Slice 0 is the most basal slice, the last one the most apical; slice_direction
// points from base to apex (so it equals -(row_direction x col_direction): the image is
// displayed as seen from the apex, as short-axis views usually are). The anatomy does not
// depend on noise_level or bias_field, only the intensities do.
PhantomSubject GeneratePhantomSubject(uint64_t population_seed, int subject_index,
                                      const PhantomOptions& options = {});

// Class names in label order: {"background", "right_ventricle", "myocardium",
// "left_ventricle"}.
const std::vector<std::string>& PhantomClassNames();

}  // namespace miseg

#endif  // MISEG_CORE_PHANTOM_PHANTOM_H_

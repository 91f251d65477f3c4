// Vector arithmetic in patient space (millimetres, DICOM's patient coordinate system), shared
// by the series reader, the series writer and the SEG writer and reader so that a slice's
// position is computed the same way where it is written and where it is matched.
// Internal to core/dicom; plain C++.
#ifndef MISEG_CORE_DICOM_PATIENT_SPACE_H_
#define MISEG_CORE_DICOM_PATIENT_SPACE_H_

#include <array>
#include <cmath>
#include <cstdint>

#include "core/volume/volume.h"

namespace miseg {

inline std::array<double, 3> Cross(const std::array<double, 3>& a, const std::array<double, 3>& b) {
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}

inline double Dot(const std::array<double, 3>& a, const std::array<double, 3>& b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

inline double Norm(const std::array<double, 3>& a) { return std::sqrt(Dot(a, a)); }

// The centre of the first voxel of slice `k` of `g` (its ImagePositionPatient).
inline std::array<double, 3> SlicePosition(const VolumeGeometry& g, int64_t k) {
  std::array<double, 3> p;
  for (int i = 0; i < 3; ++i)
    p[i] = g.origin_mm[i] + static_cast<double>(k) * g.slice_spacing_mm * g.slice_direction[i];
  return p;
}

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_PATIENT_SPACE_H_

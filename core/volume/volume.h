// Plain C++ volumes shared by every layer: the phantom makes them, the DICOM reader will
// produce them, the training core consumes them. No dependencies on purpose, so that the
// phantom stays plain C++ and the client never drags in LibTorch to hold an image.
#ifndef MISEG_CORE_VOLUME_VOLUME_H_
#define MISEG_CORE_VOLUME_VOLUME_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace miseg {

// Where a volume sits in patient space, in the DICOM convention: voxel (slice k, row r,
// column c) has its centre at origin + c * col_spacing * row_direction
// + r * row_spacing * col_direction + k * slice_spacing * slice_direction (millimetres).
// row_direction is DICOM's first ImageOrientationPatient vector (along a row, i.e. as the
// column index grows); col_direction the second.
struct VolumeGeometry {
  int64_t slices = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  double row_spacing_mm = 1.0;    // distance between rows (DICOM PixelSpacing[0])
  double col_spacing_mm = 1.0;    // distance between columns (DICOM PixelSpacing[1])
  double slice_spacing_mm = 1.0;  // distance between slice centres along the normal
  std::array<double, 3> origin_mm = {0.0, 0.0, 0.0};
  std::array<double, 3> row_direction = {1.0, 0.0, 0.0};
  std::array<double, 3> col_direction = {0.0, 1.0, 0.0};
  std::array<double, 3> slice_direction = {0.0, 0.0, 1.0};

  int64_t voxel_count() const { return slices * rows * cols; }
  int64_t slice_size() const { return rows * cols; }
  bool SameGrid(const VolumeGeometry& other) const {
    return slices == other.slices && rows == other.rows && cols == other.cols;
  }
};

// A dense volume stored slice-major, then row, then column: index (k * rows + r) * cols + c.
template <typename T>
struct Volume {
  VolumeGeometry geometry;
  std::vector<T> voxels;

  Volume() = default;
  explicit Volume(const VolumeGeometry& g)
      : geometry(g), voxels(static_cast<size_t>(g.voxel_count()), T{}) {}

  T& at(int64_t slice, int64_t row, int64_t col) {
    return voxels[static_cast<size_t>((slice * geometry.rows + row) * geometry.cols + col)];
  }
  const T& at(int64_t slice, int64_t row, int64_t col) const {
    return voxels[static_cast<size_t>((slice * geometry.rows + row) * geometry.cols + col)];
  }
  // True when the voxel buffer matches the geometry; every consumer checks this first.
  bool consistent() const {
    return geometry.slices > 0 && geometry.rows > 0 && geometry.cols > 0 &&
           voxels.size() == static_cast<size_t>(geometry.voxel_count());
  }
};

// Intensities in real-world units (after DICOM rescale), as float.
using ImageVolume = Volume<float>;
// Class indices: 0 is background, 1..K-1 the foreground classes of the dataset.
using LabelVolume = Volume<uint8_t>;

}  // namespace miseg

#endif  // MISEG_CORE_VOLUME_VOLUME_H_

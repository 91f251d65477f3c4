// Writing an ImageVolume as a DICOM image series (MR or CT Image Storage, one Part-10 file
// per slice): the phantom's way into DICOM, and the source series of every test SEG. The
// geometry comes from the volume's VolumeGeometry, the intensities are stored as 16-bit
// integers with RescaleSlope / RescaleIntercept, and the caller can get back the
// SeriesVolume that the series reader would make of the files, so tests need not round-trip
// through the reader to know what to expect.
#ifndef MISEG_CORE_DICOM_SERIES_WRITER_H_
#define MISEG_CORE_DICOM_SERIES_WRITER_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/volume/dicom_series.h"
#include "core/volume/volume.h"

namespace miseg {

// Patient, study and series attributes of a written series. Empty strings are written as
// empty Type 2 attributes; empty UIDs are generated (under uid_root when set, else 2.25).
struct ImageSeriesInfo {
  std::string patient_id;
  std::string patient_name;        // DICOM PN, e.g. "PHANTOM^001"
  std::string patient_birth_date;  // YYYYMMDD or empty
  std::string patient_sex;         // M, F, O or empty
  std::string study_instance_uid;
  std::string study_date;  // YYYYMMDD or empty
  std::string study_time;  // HHMMSS or empty
  std::string study_description;
  std::string accession_number;
  std::string study_id;            // DICOM StudyID (SH), e.g. "1"
  std::string body_part_examined;  // e.g. "HEART"; when empty, Laterality is written empty
  std::string series_instance_uid;
  std::string frame_of_reference_uid;
  std::string series_description;
  std::string modality = "MR";  // "MR" (MR Image Storage) or "CT" (CT Image Storage)
  std::string uid_root;
  int32_t series_number = 1;
};

// Writes `image` as one file per slice (explicit VR little endian), slice k at
// ImagePositionPatient = origin + k * slice_spacing * slice_direction, InstanceNumber k + 1.
//
// Pixels: when every value is an integer that fits 16 bits the values are stored as they are
// (slope 1, intercept 0: exact). Otherwise they are stored unsigned with
// intercept = min and slope = (max - min) / 65534 (both rounded to the 9 significant digits a
// DS value keeps), so the dequantised value stored * slope + intercept differs from the input
// by at most (max - min) / 131068 plus float rounding (|v| * 2^-24): about 8e-6 of the
// range, e.g. 0.011 for a 0..1500 MR image.
//
// SOP Instance UIDs are derived deterministically from the Series Instance UID and the slice
// index (DeterministicUid), so a given series UID always yields the same files' UIDs.
//
// When `described` is not null it receives what ReadSeries would produce from the files:
// the dequantised image with the slices ordered by ascending position along the normal
// row_direction x col_direction (so reversed when slice_direction points the other way, as
// it does for the phantom), geometry as parsed back from the written DS values, the slices'
// UIDs in that order and reference_header = the first of those instances without its pixel
// data. Use described->image's slice order for labels that go with this series.
//
// InvalidArgument for an inconsistent volume, non-finite values, sizes beyond 65535 rows or
// columns, or an unknown modality.
absl::StatusOr<std::vector<DicomBuffer>> WriteImageSeries(const ImageVolume& image,
                                                          const ImageSeriesInfo& info,
                                                          SeriesVolume* described = nullptr);

// True when the reader's ordering (ascending along row_direction x col_direction) reverses
// the slice order of a volume with this geometry; labels made on such a volume's grid must
// be flipped with FlipSlices to go with the written series.
bool ReaderReversesSlices(const VolumeGeometry& geometry);

// The same volume with its slices in reverse order and the geometry adjusted (origin at the
// old last slice, slice_direction negated), i.e. the same voxels in patient space.
template <typename T>
Volume<T> FlipSlices(const Volume<T>& volume) {
  Volume<T> out(volume.geometry);
  const VolumeGeometry& g = volume.geometry;
  const int64_t n = g.slice_size();
  for (int64_t k = 0; k < g.slices; ++k) {
    const int64_t from = g.slices - 1 - k;
    std::copy(volume.voxels.begin() + from * n, volume.voxels.begin() + (from + 1) * n,
              out.voxels.begin() + k * n);
  }
  for (int i = 0; i < 3; ++i) {
    out.geometry.origin_mm[i] = g.origin_mm[i] + static_cast<double>(g.slices - 1) *
                                                     g.slice_spacing_mm * g.slice_direction[i];
    out.geometry.slice_direction[i] = -g.slice_direction[i];
  }
  return out;
}

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_SERIES_WRITER_H_

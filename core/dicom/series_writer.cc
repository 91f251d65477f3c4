// Writes an ImageVolume as an MR or CT image series, one Part-10 file per slice, with every
// Type 1 and Type 2 attribute of the MR (or CT) Image IOD that dciodvfy checks, and
// describes the result the way the series reader will see it.
#include "core/dicom/series_writer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/ofstd/ofstd.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/patient_space.h"

namespace miseg {
namespace {

constexpr double kMaxStored = 65534.0;  // unsigned 16-bit codes 0..65534 for the float range

// The value a reader gets back from FormatDs(value).
double ParseDs(const std::string& text) {
  OFBool ok = OFFalse;
  const double value = OFStandard::atof(text.c_str(), &ok);
  return ok ? value : 0.0;
}

std::string JoinDs(const std::vector<double>& values) {
  std::vector<std::string> parts;
  parts.reserve(values.size());
  for (double v : values) parts.push_back(FormatDs(v));
  return absl::StrJoin(parts, "\\");
}

bool IsAscii(const std::string& s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// How floats become stored 16-bit values; see the header for the error bound.
struct Quantisation {
  bool exact = true;  // integers stored as they are
  bool is_signed = false;
  std::string slope_ds = "1", intercept_ds = "0";
  double slope = 1.0, intercept = 0.0;

  int32_t Store(float v) const {
    if (exact) return static_cast<int32_t>(v);
    const double code = std::round((static_cast<double>(v) - intercept) / slope);
    return static_cast<int32_t>(std::clamp(code, 0.0, 65535.0));
  }
  float Load(int32_t stored) const {
    return static_cast<float>(static_cast<double>(stored) * slope + intercept);
  }
};

Quantisation ChooseQuantisation(const std::vector<float>& voxels) {
  const auto [lo_it, hi_it] = std::minmax_element(voxels.begin(), voxels.end());
  const double lo = *lo_it, hi = *hi_it;
  const bool integral =
      std::all_of(voxels.begin(), voxels.end(), [](float v) { return std::nearbyint(v) == v; });
  Quantisation q;
  if (integral && lo >= 0.0 && hi <= 65535.0) return q;
  if (integral && lo >= -32768.0 && hi <= 32767.0) {
    q.is_signed = true;
    return q;
  }
  q.exact = false;
  q.intercept_ds = FormatDs(lo);
  q.intercept = ParseDs(q.intercept_ds);
  // Round the slope up in its last DS digit so that (hi - intercept) / slope stays within
  // the code range after the DS rounding.
  const double wanted = hi > lo ? (hi - q.intercept) / kMaxStored : 1.0;
  q.slope_ds = FormatDs(wanted * (1.0 + 1e-8));
  q.slope = ParseDs(q.slope_ds);
  if (q.slope <= 0.0) {
    q.slope_ds = "1";
    q.slope = 1.0;
  }
  return q;
}

// Inserts a string attribute, empty for Type 2 when value is empty; a value that does not
// fit the attribute's VR and VM (a backslash in a name, a date that is not YYYYMMDD, a
// description over 64 characters) is InvalidArgument rather than an invalid file.
absl::Status Put(DcmItem& item, const DcmTagKey& tag, const std::string& value,
                 const char* vm = "1") {
  const std::string context = absl::StrCat("writing ", DcmTag(tag).getTagName());
  if (value.empty())
    return FromCondition(item.insertEmptyElement(tag), context, absl::StatusCode::kInternal);
  RETURN_IF_ERROR(FromCondition(item.putAndInsertString(tag, value.c_str()), context));
  DcmElement* element = nullptr;
  RETURN_IF_ERROR(
      FromCondition(item.findAndGetElement(tag, element), context, absl::StatusCode::kInternal));
  // The value itself stays out of the message: it may be a patient's name.
  return FromCondition(element->checkValue(vm), context);
}

absl::Status PutU16(DcmItem& item, const DcmTagKey& tag, uint16_t value) {
  return FromCondition(item.putAndInsertUint16(tag, value),
                       absl::StrCat("writing ", DcmTag(tag).getTagName()),
                       absl::StatusCode::kInternal);
}

// Checks what DICOM cannot hold; returns the SOP class for the modality.
absl::StatusOr<const char*> SopClassForWriting(const ImageVolume& image,
                                               const ImageSeriesInfo& info) {
  if (!image.consistent()) {
    return absl::InvalidArgumentError(
        "WriteImageSeries: the volume's voxels do not match its geometry");
  }
  const VolumeGeometry& g = image.geometry;
  if (g.rows > 65535 || g.cols > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("WriteImageSeries: ", g.rows, "x", g.cols,
                                                   " slices exceed DICOM's 65535 rows or columns"));
  }
  if (!(g.row_spacing_mm > 0.0 && g.col_spacing_mm > 0.0 && g.slice_spacing_mm > 0.0)) {
    return absl::InvalidArgumentError("WriteImageSeries: spacings must be positive");
  }
  for (float v : image.voxels) {
    if (!std::isfinite(v))
      return absl::InvalidArgumentError("WriteImageSeries: the volume holds NaN or infinity");
  }
  if (info.modality == "MR") return UID_MRImageStorage;
  if (info.modality == "CT") return UID_CTImageStorage;
  return absl::InvalidArgumentError(
      absl::StrCat("WriteImageSeries: modality must be MR or CT, not '", info.modality, "'"));
}

// What every instance of the series shares.
struct SeriesConstants {
  const char* sop_class = nullptr;
  std::string study_uid, series_uid, for_uid;
  Quantisation q;
  double window_center = 0, window_width = 1;
  std::string orientation_ds, spacing_ds, slice_spacing_ds;
  std::array<double, 3> normal{};
  bool needs_utf8 = false;
};

SeriesConstants SeriesConstantsFor(const ImageVolume& image, const ImageSeriesInfo& info,
                                   const char* sop_class) {
  const VolumeGeometry& g = image.geometry;
  SeriesConstants c;
  c.sop_class = sop_class;
  c.study_uid = info.study_instance_uid.empty() ? NewUid(info.uid_root) : info.study_instance_uid;
  c.series_uid =
      info.series_instance_uid.empty() ? NewUid(info.uid_root) : info.series_instance_uid;
  c.for_uid =
      info.frame_of_reference_uid.empty() ? NewUid(info.uid_root) : info.frame_of_reference_uid;
  c.q = ChooseQuantisation(image.voxels);
  const auto [lo_it, hi_it] = std::minmax_element(image.voxels.begin(), image.voxels.end());
  c.window_width = std::max(1.0, static_cast<double>(*hi_it) - *lo_it);
  c.window_center = 0.5 * (static_cast<double>(*hi_it) + *lo_it);
  c.orientation_ds =
      JoinDs({g.row_direction[0], g.row_direction[1], g.row_direction[2], g.col_direction[0],
              g.col_direction[1], g.col_direction[2]});
  c.spacing_ds = JoinDs({g.row_spacing_mm, g.col_spacing_mm});
  c.slice_spacing_ds = FormatDs(g.slice_spacing_mm);
  c.normal = Cross(g.row_direction, g.col_direction);
  c.needs_utf8 = !IsAscii(info.patient_name) || !IsAscii(info.patient_id) ||
                 !IsAscii(info.study_description) || !IsAscii(info.series_description) ||
                 !IsAscii(info.accession_number);
  return c;
}

// SOP Common, Patient, General Study, General Series and General Equipment.
absl::Status PutIdentity(DcmDataset& ds, const ImageSeriesInfo& info, const SeriesConstants& c,
                         const std::string& sop_uid) {
  if (c.needs_utf8) RETURN_IF_ERROR(Put(ds, DCM_SpecificCharacterSet, "ISO_IR 192"));
  RETURN_IF_ERROR(
      Put(ds, DCM_ImageType,
          info.modality == "CT" ? "DERIVED\\PRIMARY\\AXIAL" : "DERIVED\\PRIMARY\\OTHER", "2-n"));
  RETURN_IF_ERROR(Put(ds, DCM_SOPClassUID, c.sop_class));
  RETURN_IF_ERROR(Put(ds, DCM_SOPInstanceUID, sop_uid));
  RETURN_IF_ERROR(Put(ds, DCM_StudyDate, info.study_date));
  RETURN_IF_ERROR(Put(ds, DCM_SeriesDate, info.study_date));
  RETURN_IF_ERROR(Put(ds, DCM_ContentDate, info.study_date));
  RETURN_IF_ERROR(Put(ds, DCM_StudyTime, info.study_time));
  RETURN_IF_ERROR(Put(ds, DCM_SeriesTime, info.study_time));
  RETURN_IF_ERROR(Put(ds, DCM_ContentTime, info.study_time));
  RETURN_IF_ERROR(Put(ds, DCM_AccessionNumber, info.accession_number));
  RETURN_IF_ERROR(Put(ds, DCM_Modality, info.modality));
  RETURN_IF_ERROR(Put(ds, DCM_Manufacturer, "miseg"));
  RETURN_IF_ERROR(Put(ds, DCM_ReferringPhysicianName, ""));
  if (!info.study_description.empty())
    RETURN_IF_ERROR(Put(ds, DCM_StudyDescription, info.study_description));
  if (!info.series_description.empty()) {
    RETURN_IF_ERROR(Put(ds, DCM_SeriesDescription, info.series_description));
  }
  RETURN_IF_ERROR(Put(ds, DCM_ManufacturerModelName, "miseg series writer"));
  RETURN_IF_ERROR(Put(ds, DCM_PatientName, info.patient_name));
  RETURN_IF_ERROR(Put(ds, DCM_PatientID, info.patient_id));
  RETURN_IF_ERROR(Put(ds, DCM_PatientBirthDate, info.patient_birth_date));
  RETURN_IF_ERROR(Put(ds, DCM_PatientSex, info.patient_sex));
  RETURN_IF_ERROR(Put(ds, DCM_PatientPosition, "HFS"));
  RETURN_IF_ERROR(Put(ds, DCM_StudyInstanceUID, c.study_uid));
  RETURN_IF_ERROR(Put(ds, DCM_SeriesInstanceUID, c.series_uid));
  RETURN_IF_ERROR(Put(ds, DCM_StudyID, info.study_id));
  // Laterality (2C) is needed for paired body parts; with no body part named we cannot
  // tell, so it is present and empty ("unknown").
  if (info.body_part_examined.empty()) {
    RETURN_IF_ERROR(Put(ds, DCM_Laterality, ""));
  } else {
    RETURN_IF_ERROR(Put(ds, DCM_BodyPartExamined, info.body_part_examined));
  }
  RETURN_IF_ERROR(Put(ds, DCM_SeriesNumber, absl::StrCat(info.series_number)));
  RETURN_IF_ERROR(Put(ds, DCM_AcquisitionNumber, "1"));
  return absl::OkStatus();
}

// MR or CT Image module: acquisition attributes (Type 2 where unknown).
absl::Status PutAcquisition(DcmDataset& ds, const ImageSeriesInfo& info, const SeriesConstants& c) {
  if (info.modality == "MR") {
    // A synthetic 2D gradient-echo (SSFP-like) acquisition; timings unknown (Type 2).
    RETURN_IF_ERROR(Put(ds, DCM_ScanningSequence, "GR"));
    RETURN_IF_ERROR(Put(ds, DCM_SequenceVariant, "NONE"));
    RETURN_IF_ERROR(Put(ds, DCM_ScanOptions, ""));
    RETURN_IF_ERROR(Put(ds, DCM_MRAcquisitionType, "2D"));
    RETURN_IF_ERROR(Put(ds, DCM_SliceThickness, c.slice_spacing_ds));
    RETURN_IF_ERROR(Put(ds, DCM_RepetitionTime, ""));
    RETURN_IF_ERROR(Put(ds, DCM_EchoTime, ""));
    RETURN_IF_ERROR(Put(ds, DCM_EchoTrainLength, ""));
    RETURN_IF_ERROR(Put(ds, DCM_SpacingBetweenSlices, c.slice_spacing_ds));
  } else {
    RETURN_IF_ERROR(Put(ds, DCM_SliceThickness, c.slice_spacing_ds));
    RETURN_IF_ERROR(Put(ds, DCM_KVP, ""));
    RETURN_IF_ERROR(Put(ds, DCM_SpacingBetweenSlices, c.slice_spacing_ds));
  }
  return absl::OkStatus();
}

// General Image, Image Plane, Image Pixel and VOI LUT for slice k.
absl::Status PutPlaneAndPixelDescription(DcmDataset& ds, const VolumeGeometry& g,
                                         const SeriesConstants& c, int64_t k,
                                         const std::array<double, 3>& position,
                                         const std::array<std::string, 3>& position_ds) {
  RETURN_IF_ERROR(Put(ds, DCM_InstanceNumber, absl::StrCat(k + 1)));
  RETURN_IF_ERROR(Put(ds, DCM_ImagePositionPatient, absl::StrJoin(position_ds, "\\"), "3"));
  RETURN_IF_ERROR(Put(ds, DCM_ImageOrientationPatient, c.orientation_ds, "6"));
  RETURN_IF_ERROR(Put(ds, DCM_FrameOfReferenceUID, c.for_uid));
  RETURN_IF_ERROR(Put(ds, DCM_PositionReferenceIndicator, ""));
  RETURN_IF_ERROR(Put(ds, DCM_SliceLocation, FormatDs(Dot(position, c.normal))));
  RETURN_IF_ERROR(PutU16(ds, DCM_SamplesPerPixel, 1));
  RETURN_IF_ERROR(Put(ds, DCM_PhotometricInterpretation, "MONOCHROME2"));
  RETURN_IF_ERROR(PutU16(ds, DCM_Rows, static_cast<uint16_t>(g.rows)));
  RETURN_IF_ERROR(PutU16(ds, DCM_Columns, static_cast<uint16_t>(g.cols)));
  RETURN_IF_ERROR(Put(ds, DCM_PixelSpacing, c.spacing_ds, "2"));
  RETURN_IF_ERROR(PutU16(ds, DCM_BitsAllocated, 16));
  RETURN_IF_ERROR(PutU16(ds, DCM_BitsStored, 16));
  RETURN_IF_ERROR(PutU16(ds, DCM_HighBit, 15));
  RETURN_IF_ERROR(PutU16(ds, DCM_PixelRepresentation, c.q.is_signed ? 1 : 0));
  RETURN_IF_ERROR(Put(ds, DCM_WindowCenter, FormatDs(c.window_center)));
  RETURN_IF_ERROR(Put(ds, DCM_WindowWidth, FormatDs(c.window_width)));
  RETURN_IF_ERROR(Put(ds, DCM_RescaleIntercept, c.q.intercept_ds));
  RETURN_IF_ERROR(Put(ds, DCM_RescaleSlope, c.q.slope_ds));
  return absl::OkStatus();
}

absl::Status PutPixels(DcmDataset& ds, const ImageVolume& image, const Quantisation& q, int64_t k) {
  const int64_t slice_size = image.geometry.slice_size();
  std::vector<Uint16> pixels(static_cast<size_t>(slice_size));
  const float* slice = image.voxels.data() + k * slice_size;
  for (int64_t i = 0; i < slice_size; ++i) {
    pixels[static_cast<size_t>(i)] = static_cast<Uint16>(q.Store(slice[i]) & 0xFFFF);
  }
  RETURN_IF_ERROR(
      FromCondition(ds.putAndInsertUint16Array(DCM_PixelData, pixels.data(),
                                               static_cast<unsigned long>(pixels.size())),
                    "writing PixelData", absl::StatusCode::kInternal));
  return absl::OkStatus();
}

// The series as the reader will see it: stored values, slice order and the geometry
// derived from the DS strings (unit directions, the normal as their cross product, the
// spacing from the first and last positions along it).
SeriesVolume DescribeAsRead(const ImageVolume& image, const ImageSeriesInfo& info,
                            const SeriesConstants& c, const std::vector<std::string>& sop_uids,
                            const std::vector<std::array<std::string, 3>>& positions_ds,
                            std::string reference_header) {
  const VolumeGeometry& g = image.geometry;
  const Quantisation& q = c.q;
  SeriesVolume out;
  out.study_instance_uid = c.study_uid;
  out.series_instance_uid = c.series_uid;
  out.frame_of_reference_uid = c.for_uid;
  out.modality = info.modality;
  out.series_description = info.series_description;
  out.reference_header = std::move(reference_header);
  out.image = ImageVolume(g);
  for (size_t i = 0; i < image.voxels.size(); ++i)
    out.image.voxels[i] = q.Load(q.Store(image.voxels[i]));
  out.slices.reserve(sop_uids.size());
  for (const std::string& uid : sop_uids) out.slices.push_back(SliceSource{uid, c.sop_class, 1});
  std::vector<std::array<std::string, 3>> ordered_positions = positions_ds;
  if (ReaderReversesSlices(g)) {
    out.image = FlipSlices(out.image);
    std::reverse(out.slices.begin(), out.slices.end());
    std::reverse(ordered_positions.begin(), ordered_positions.end());
  }
  VolumeGeometry& dg = out.image.geometry;
  std::array<double, 3> row, col;
  for (int i = 0; i < 3; ++i) {
    row[i] = ParseDs(FormatDs(g.row_direction[i]));
    col[i] = ParseDs(FormatDs(g.col_direction[i]));
  }
  const double row_norm = std::sqrt(Dot(row, row)), col_norm = std::sqrt(Dot(col, col));
  for (int i = 0; i < 3; ++i) {
    row[i] /= row_norm;
    col[i] /= col_norm;
  }
  const std::array<double, 3> parsed_normal = Cross(row, col);
  std::array<double, 3> first, last;
  for (int i = 0; i < 3; ++i) {
    first[i] = ParseDs(ordered_positions.front()[i]);
    last[i] = ParseDs(ordered_positions.back()[i]);
  }
  dg.origin_mm = first;
  dg.row_direction = row;
  dg.col_direction = col;
  dg.slice_direction = parsed_normal;
  dg.row_spacing_mm = ParseDs(FormatDs(g.row_spacing_mm));
  dg.col_spacing_mm = ParseDs(FormatDs(g.col_spacing_mm));
  dg.slice_spacing_mm = g.slices > 1 ? (Dot(last, parsed_normal) - Dot(first, parsed_normal)) /
                                           static_cast<double>(g.slices - 1)
                                     : ParseDs(c.slice_spacing_ds);
  return out;
}

}  // namespace

bool ReaderReversesSlices(const VolumeGeometry& geometry) {
  return Dot(geometry.slice_direction, Cross(geometry.row_direction, geometry.col_direction)) < 0.0;
}

absl::StatusOr<std::vector<DicomBuffer>> WriteImageSeries(const ImageVolume& image,
                                                          const ImageSeriesInfo& info,
                                                          SeriesVolume* described) {
  ASSIGN_OR_RETURN(const char* sop_class, SopClassForWriting(image, info));
  const SeriesConstants c = SeriesConstantsFor(image, info, sop_class);
  const VolumeGeometry& g = image.geometry;
  std::vector<DicomBuffer> files;
  std::vector<std::string> sop_uids;
  std::vector<std::array<std::string, 3>> positions_ds;
  std::string reference_header;
  const size_t reader_first = ReaderReversesSlices(g) ? static_cast<size_t>(g.slices - 1) : 0;
  for (int64_t k = 0; k < g.slices; ++k) {
    const std::string sop_uid =
        DeterministicUid(absl::StrCat(c.series_uid, "/slice/", k), info.uid_root);
    const std::array<double, 3> position = SlicePosition(g, k);
    const std::array<std::string, 3> position_ds = {FormatDs(position[0]), FormatDs(position[1]),
                                                    FormatDs(position[2])};
    DcmFileFormat file;
    DcmDataset& ds = *file.getDataset();
    RETURN_IF_ERROR(PutIdentity(ds, info, c, sop_uid));
    RETURN_IF_ERROR(PutAcquisition(ds, info, c));
    RETURN_IF_ERROR(PutPlaneAndPixelDescription(ds, g, c, k, position, position_ds));
    // The first instance in the reader's order, without pixel data, is what a derived object
    // (a SEG) imports its patient and study from.
    if (static_cast<size_t>(k) == reader_first && described != nullptr) {
      ASSIGN_OR_RETURN(reference_header, SerializeDicom(file));
    }
    RETURN_IF_ERROR(PutPixels(ds, image, c.q, k));
    ASSIGN_OR_RETURN(std::string bytes, SerializeDicom(file));
    files.push_back(DicomBuffer{absl::StrCat(sop_uid, ".dcm"), std::move(bytes)});
    sop_uids.push_back(sop_uid);
    positions_ds.push_back(position_ds);
  }
  if (described != nullptr) {
    *described = DescribeAsRead(image, info, c, sop_uids, positions_ds, std::move(reference_header));
  }
  return files;
}

}  // namespace miseg

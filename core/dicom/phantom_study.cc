// Phantom subjects as DICOM studies: MR series through WriteImageSeries, labels through
// WriteSegmentation, files onto disk atomically.
#include "core/dicom/phantom_study.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdeftag.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/segmentation.h"
#include "core/dicom/series_writer.h"

namespace miseg {
namespace {

// The SOP Instance UID of a Part-10 buffer, to name its file.
absl::StatusOr<std::string> SopInstanceUid(const DicomBuffer& buffer) {
  ASSIGN_OR_RETURN(auto file, ParseDicom(buffer.bytes, buffer.name));
  OFString uid;
  if (file->getDataset()->findAndGetOFString(DCM_SOPInstanceUID, uid).bad() || uid.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(buffer.name, ": no SOP Instance UID"));
  }
  return std::string(uid.c_str());
}

absl::Status WriteAtomically(const std::filesystem::path& path, const std::string& bytes) {
  const std::filesystem::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", temporary.string()));
  }
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec) {
    std::filesystem::remove(temporary, ec);
    return absl::InternalError(
        absl::StrCat("cannot rename ", temporary.string(), " to ", path.string()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PhantomStudy> MakePhantomStudy(const PhantomSubject& subject,
                                              const std::string& subject_id,
                                              bool with_segmentation) {
  if (subject_id.empty() || subject_id.size() > 48 ||
      subject_id.find_first_of("\\^=") != std::string::npos) {
    return absl::InvalidArgumentError(
        "MakePhantomStudy: subject_id must be 1-48 characters without \\ ^ =");
  }
  for (char c : subject_id) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7F) {
      return absl::InvalidArgumentError("MakePhantomStudy: subject_id must be printable ASCII");
    }
  }
  if (!subject.image.consistent() || !subject.labels.consistent() ||
      !subject.labels.geometry.SameGrid(subject.image.geometry)) {
    return absl::InvalidArgumentError(
        "MakePhantomStudy: the subject's image and labels are inconsistent");
  }
  const std::string key = absl::StrCat("miseg-phantom/", subject_id);
  ImageSeriesInfo info;
  info.patient_id = absl::StrCat("PHANTOM-", subject_id);
  info.patient_name = absl::StrCat("PHANTOM^", subject_id);
  info.patient_sex = "O";
  info.study_instance_uid = DeterministicUid(absl::StrCat(key, "/study"));
  info.study_date = "20240101";
  info.study_time = "120000";
  info.study_description = "miseg cardiac phantom";
  info.accession_number = "";
  info.study_id = "1";
  info.body_part_examined = "HEART";
  info.series_instance_uid = DeterministicUid(absl::StrCat(key, "/series/cine-sax"));
  info.frame_of_reference_uid = DeterministicUid(absl::StrCat(key, "/frame-of-reference"));
  info.series_description = "Phantom short-axis cine";
  info.modality = "MR";
  info.series_number = 1;

  PhantomStudy study;
  ASSIGN_OR_RETURN(study.image_files, WriteImageSeries(subject.image, info, &study.series));
  if (with_segmentation) {
    // The SEG goes with the series as the reader orders it.
    const LabelVolume labels =
        ReaderReversesSlices(subject.image.geometry) ? FlipSlices(subject.labels) : subject.labels;
    SegmentationWriteOptions options;
    options.class_names = PhantomClassNames();
    options.model_version = "phantom ground truth";
    options.series_description = "Phantom labels";
    options.series_number = 2;
    options.series_instance_uid = DeterministicUid(absl::StrCat(key, "/series/seg"));
    options.sop_instance_uid = DeterministicUid(absl::StrCat(key, "/seg"));
    ASSIGN_OR_RETURN(std::string bytes, WriteSegmentation(study.series, labels, options));
    study.segmentation =
        DicomBuffer{absl::StrCat(options.sop_instance_uid, ".dcm"), std::move(bytes)};
  }
  return study;
}

absl::Status WriteStudyToFolder(const PhantomStudy& study, const std::string& folder) {
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot create folder ", folder, ": ", ec.message()));
  auto write = [&](const DicomBuffer& buffer) -> absl::Status {
    ASSIGN_OR_RETURN(const std::string uid, SopInstanceUid(buffer));
    return WriteAtomically(std::filesystem::path(folder) / absl::StrCat(uid, ".dcm"), buffer.bytes);
  };
  for (const DicomBuffer& buffer : study.image_files) RETURN_IF_ERROR(write(buffer));
  if (study.segmentation) RETURN_IF_ERROR(write(*study.segmentation));
  return absl::OkStatus();
}

}  // namespace miseg

// The synthetic cardiac phantom as real DICOM: an MR image series (one file per slice) and,
// optionally, its labels as a DICOM SEG. This is the data of the demo (a PACS filled with
// phantom studies) and of the tests of the server and client. UIDs are derived from the
// subject id, so the same subject always becomes the same study.
#ifndef MISEG_CORE_DICOM_PHANTOM_STUDY_H_
#define MISEG_CORE_DICOM_PHANTOM_STUDY_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/phantom/phantom.h"
#include "core/volume/dicom_series.h"

namespace miseg {

struct PhantomStudy {
  std::vector<DicomBuffer> image_files;     // one MR Image Storage instance per slice
  std::optional<DicomBuffer> segmentation;  // BINARY SEG of the labels, when asked for
  // What the series reader makes of image_files (see WriteImageSeries): note that its slice
  // order is the reverse of the subject's (the phantom's slice_direction points against
  // row_direction x col_direction).
  SeriesVolume series;
};

// Patient ID "PHANTOM-<subject_id>", patient name "PHANTOM^<subject_id>", modality MR,
// study / series / frame of reference / instance UIDs (and the SEG's) deterministic from
// subject_id (DeterministicUid under 2.25). The SEG's segments are the phantom classes
// (PhantomClassNames) with model version "phantom ground truth". InvalidArgument for an empty
// subject_id or an inconsistent subject.
absl::StatusOr<PhantomStudy> MakePhantomStudy(const PhantomSubject& subject,
                                              const std::string& subject_id,
                                              bool with_segmentation);

// Writes every file of the study into folder (created if missing), each named by its SOP
// Instance UID + ".dcm", written to a temporary name first and then renamed, so a reader
// watching the folder never sees half a file. Internal on I/O failure.
absl::Status WriteStudyToFolder(const PhantomStudy& study, const std::string& folder);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_PHANTOM_STUDY_H_

// The identity of one Part-10 file, read without decoding pixels: what an upload or a
// storage SCP needs to group files into series, detect duplicates and pair a SEG with the
// series it labels.
#ifndef MISEG_CORE_DICOM_INSTANCE_INFO_H_
#define MISEG_CORE_DICOM_INSTANCE_INFO_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/volume/dicom_series.h"

namespace miseg {

inline constexpr char kSegmentationStorageUid[] = "1.2.840.10008.5.1.4.1.1.66.4";

struct InstanceInfo {
  std::string sop_instance_uid;
  std::string sop_class_uid;
  std::string study_instance_uid;
  std::string series_instance_uid;
  std::string modality;
  bool is_segmentation = false;
  // For a SEG: the series it references (ReferencedSeriesSequence, else the series of its
  // source images).
  std::vector<std::string> referenced_series_instance_uids;
};

// InvalidArgument naming the buffer when it is not DICOM, lacks SOPInstanceUID,
// SeriesInstanceUID or StudyInstanceUID, or when one of those, SOPClassUID,
// FrameOfReferenceUID or a SEG's referenced series UID is not a valid UID (PS3.5 9.1); the
// message names the attribute and quotes the value escaped (SafeText). Every string in the
// result is valid UTF-8.
absl::StatusOr<InstanceInfo> IdentifyInstance(const DicomBuffer& file);

// The same for a file on disk, named `name` in messages; its pixel data is not read (see
// ParseDicomFile), so this costs a header parse. Unavailable when the file cannot be read.
absl::StatusOr<InstanceInfo> IdentifyInstanceFile(const std::string& path,
                                                  const std::string& name);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_INSTANCE_INFO_H_

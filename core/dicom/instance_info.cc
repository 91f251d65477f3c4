#include "core/dicom/instance_info.h"

#include <algorithm>

#include <dcmtk/dcmdata/dctk.h>

#include "absl/strings/str_cat.h"
#include "core/dicom/dicom_text.h"
#include "core/dicom/dicom_util.h"

namespace miseg {
namespace {

void AddUnique(std::vector<std::string>* values, const std::string& value) {
  if (!value.empty() && std::find(values->begin(), values->end(), value) == values->end()) {
    values->push_back(value);
  }
}

// The identity of a parsed file (or the parse's error), named `name` in messages. Every UID
// is checked against PS3.5 9.1 here, where instances enter (upload, Segment, C-STORE), so a
// stored study never carries a UID that is not one; text is made safe (dicom_text.h).
absl::StatusOr<InstanceInfo> Identify(
    absl::StatusOr<std::unique_ptr<DcmFileFormat>> parsed, const std::string& name) {
  if (!parsed.ok()) return parsed.status();
  DcmDataset* ds = (*parsed)->getDataset();
  const auto refuse = [&](const absl::Status& status) {
    return absl::InvalidArgumentError(absl::StrCat(SafeText(name, 256), ": ", status.message()));
  };
  InstanceInfo info;
  absl::StatusOr<std::string> uid = DicomUid(*ds, DCM_SOPInstanceUID, /*required=*/true);
  if (!uid.ok()) return refuse(uid.status());
  info.sop_instance_uid = *uid;
  uid = DicomUid(*ds, DCM_StudyInstanceUID, /*required=*/true);
  if (!uid.ok()) return refuse(uid.status());
  info.study_instance_uid = *uid;
  uid = DicomUid(*ds, DCM_SeriesInstanceUID, /*required=*/true);
  if (!uid.ok()) return refuse(uid.status());
  info.series_instance_uid = *uid;
  uid = DicomUid(*ds, DCM_SOPClassUID, /*required=*/false);
  if (!uid.ok()) return refuse(uid.status());
  info.sop_class_uid = *uid;
  uid = DicomUid(*ds, DCM_FrameOfReferenceUID, /*required=*/false);
  if (!uid.ok()) return refuse(uid.status());
  info.modality = DicomText(*ds, DCM_Modality, /*max_bytes=*/16);
  info.is_segmentation = info.sop_class_uid == kSegmentationStorageUid;
  if (info.is_segmentation) {
    DcmSequenceOfItems* series_seq = nullptr;
    if (ds->findAndGetSequence(DCM_ReferencedSeriesSequence, series_seq).good() && series_seq) {
      for (unsigned long i = 0; i < series_seq->card(); ++i) {
        uid = DicomUid(*series_seq->getItem(i), DCM_SeriesInstanceUID, /*required=*/false);
        if (!uid.ok()) {
          return refuse(absl::InvalidArgumentError(absl::StrCat(
              "ReferencedSeriesSequence item ", i + 1, ": ", uid.status().message())));
        }
        AddUnique(&info.referenced_series_instance_uids, *uid);
      }
    }
  }
  return info;
}

}  // namespace

absl::StatusOr<InstanceInfo> IdentifyInstance(const DicomBuffer& file) {
  return Identify(ParseDicom(file.bytes, file.name), file.name);
}

absl::StatusOr<InstanceInfo> IdentifyInstanceFile(const std::string& path,
                                                  const std::string& name) {
  return Identify(ParseDicomFile(path, name), name);
}

}  // namespace miseg

#include "core/dicom/instance_info.h"

#include <algorithm>

#include <dcmtk/dcmdata/dctk.h>

#include "absl/strings/str_cat.h"
#include "core/dicom/dicom_util.h"

namespace miseg {
namespace {

std::string GetString(DcmItem* item, const DcmTagKey& tag) {
  OFString value;
  if (item->findAndGetOFString(tag, value).good()) return std::string(value.c_str());
  return "";
}

void AddUnique(std::vector<std::string>* values, const std::string& value) {
  if (!value.empty() && std::find(values->begin(), values->end(), value) == values->end()) {
    values->push_back(value);
  }
}

// The identity of a parsed file (or the parse's error), named `name` in messages.
absl::StatusOr<InstanceInfo> Identify(
    absl::StatusOr<std::unique_ptr<DcmFileFormat>> parsed, const std::string& name) {
  if (!parsed.ok()) return parsed.status();
  DcmDataset* ds = (*parsed)->getDataset();
  InstanceInfo info;
  info.sop_instance_uid = GetString(ds, DCM_SOPInstanceUID);
  info.sop_class_uid = GetString(ds, DCM_SOPClassUID);
  info.study_instance_uid = GetString(ds, DCM_StudyInstanceUID);
  info.series_instance_uid = GetString(ds, DCM_SeriesInstanceUID);
  info.modality = GetString(ds, DCM_Modality);
  if (info.sop_instance_uid.empty() || info.series_instance_uid.empty() ||
      info.study_instance_uid.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": lacks SOPInstanceUID, SeriesInstanceUID or StudyInstanceUID"));
  }
  info.is_segmentation = info.sop_class_uid == kSegmentationStorageUid;
  if (info.is_segmentation) {
    DcmSequenceOfItems* series_seq = nullptr;
    if (ds->findAndGetSequence(DCM_ReferencedSeriesSequence, series_seq).good() && series_seq) {
      for (unsigned long i = 0; i < series_seq->card(); ++i) {
        AddUnique(&info.referenced_series_instance_uids,
                  GetString(series_seq->getItem(i), DCM_SeriesInstanceUID));
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

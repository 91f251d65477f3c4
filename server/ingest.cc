#include "server/ingest.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dicom/instance_info.h"
#include "core/dicom/segmentation.h"
#include "server/convert.h"

namespace miseg {
namespace {

const char* RoleWord(StoredRole role) {
  switch (role) {
    case StoredRole::kLabeled: return "labeled";
    case StoredRole::kUnlabeled: return "unlabeled";
    case StoredRole::kValidation: return "validation";
  }
  return "unknown";
}

}  // namespace

absl::StatusOr<IngestResult> IngestFiles(Store& store, FileStore& files,
                                         const DatasetRecord& dataset, StoredRole role,
                                         const std::vector<DicomBuffer>& input,
                                         const SeriesReaderLimits& limits) {
  IngestResult result;
  result.files.resize(input.size());
  std::vector<std::optional<InstanceInfo>> infos(input.size());
  std::vector<std::string> all_uids;
  for (size_t i = 0; i < input.size(); ++i) {
    IngestFileResult& r = result.files[i];
    r.file_name = input[i].name;
    absl::StatusOr<InstanceInfo> info = IdentifyInstance(input[i]);
    if (!info.ok()) {
      r.reason = std::string(info.status().message());
      continue;
    }
    r.sop_instance_uid = info->sop_instance_uid;
    r.series_instance_uid = info->series_instance_uid;
    infos[i] = *std::move(info);
    all_uids.push_back(infos[i]->sop_instance_uid);
  }
  absl::StatusOr<std::vector<std::string>> existing_list =
      store.ExistingInstances(dataset.id, all_uids);
  if (!existing_list.ok()) return existing_list.status();
  const absl::flat_hash_set<std::string> existing(existing_list->begin(), existing_list->end());

  // Group images by series; note SEGs. A SOP Instance UID twice in one upload: the later
  // copies are duplicates of the first.
  std::map<std::string, std::vector<size_t>> series_files;  // ordered: stable output
  std::vector<std::string> series_order;
  std::vector<size_t> segs;
  absl::flat_hash_set<std::string> seen_in_upload;
  for (size_t i = 0; i < input.size(); ++i) {
    if (!infos[i]) continue;
    IngestFileResult& r = result.files[i];
    if (!seen_in_upload.insert(infos[i]->sop_instance_uid).second) {
      r.outcome = IngestOutcome::kDuplicate;
      r.reason = "the same instance appears earlier in this upload";
      continue;
    }
    if (infos[i]->is_segmentation) {
      segs.push_back(i);
      continue;
    }
    auto [it, inserted] = series_files.try_emplace(infos[i]->series_instance_uid);
    if (inserted) series_order.push_back(infos[i]->series_instance_uid);
    it->second.push_back(i);
  }

  std::set<size_t> segs_used;
  auto refuse = [&](const std::vector<size_t>& which, const std::string& reason) {
    for (size_t i : which) {
      result.files[i].outcome = IngestOutcome::kRefused;
      result.files[i].reason = reason;
    }
  };
  const bool needs_seg = role != StoredRole::kUnlabeled;

  for (const std::string& series_uid : series_order) {
    std::vector<size_t> members = series_files[series_uid];
    std::vector<size_t> segs_of_series;
    for (size_t s : segs) {
      for (const std::string& ref : infos[s]->referenced_series_instance_uids) {
        if (ref == series_uid) segs_of_series.push_back(s);
      }
    }
    for (size_t s : segs_of_series) segs_used.insert(s);
    std::vector<size_t> everything = members;
    everything.insert(everything.end(), segs_of_series.begin(), segs_of_series.end());

    size_t already = 0;
    for (size_t i : everything) already += existing.contains(infos[i]->sop_instance_uid);
    if (already == everything.size()) {
      for (size_t i : everything) {
        result.files[i].outcome = IngestOutcome::kDuplicate;
        result.files[i].reason = "already stored in this dataset";
      }
      continue;
    }
    if (already > 0) {
      refuse(everything, absl::StrCat("series ", series_uid,
                                      " is already stored with other instances; delete it "
                                      "first to replace it"));
      continue;
    }
    const auto other_modality = std::find_if(members.begin(), members.end(), [&](size_t i) {
      return infos[i]->modality != dataset.modality;
    });
    if (other_modality != members.end()) {
      refuse(everything, absl::StrCat("series ", series_uid, " has modality '",
                                      infos[*other_modality]->modality, "'; dataset '",
                                      dataset.name, "' accepts ", dataset.modality));
      continue;
    }
    if (needs_seg && segs_of_series.size() != 1) {
      refuse(everything,
             segs_of_series.empty()
                 ? absl::StrCat("a ", RoleWord(role), " study needs its DICOM SEG: none in ",
                                "this upload references series ", series_uid)
                 : absl::StrCat("several DICOM SEGs reference series ", series_uid,
                                "; upload one"));
      continue;
    }
    if (!needs_seg && !segs_of_series.empty()) {
      refuse(everything, "an unlabeled study takes no DICOM SEG; upload it as labeled");
      continue;
    }

    std::vector<DicomBuffer> buffers;
    for (size_t i : members) buffers.push_back(input[i]);
    std::vector<std::string> skipped;
    absl::StatusOr<std::vector<SeriesVolume>> volumes = ReadSeries(buffers, &skipped, limits);
    if (!volumes.ok()) {
      refuse(everything, std::string(volumes.status().message()));
      continue;
    }
    if (!skipped.empty() || volumes->size() != 1) {
      refuse(everything, skipped.empty()
                             ? absl::StrCat("series ", series_uid, " is not one volume")
                             : absl::StrCat("not an image instance: ", skipped.front()));
      continue;
    }
    const SeriesVolume& volume = volumes->front();
    std::string seg_uid;
    if (needs_seg) {
      const size_t s = segs_of_series.front();
      absl::StatusOr<SegmentationLabels> labels =
          ReadSegmentation(input[s], volume, dataset.class_names);
      if (!labels.ok()) {
        refuse(everything, std::string(labels.status().message()));
        continue;
      }
      seg_uid = infos[s]->sop_instance_uid;
    }

    StudyRecord study;
    study.dataset_id = dataset.id;
    study.role = role;
    study.study_instance_uid = volume.study_instance_uid;
    study.series_instance_uid = series_uid;
    study.modality = volume.modality;
    study.slices = static_cast<int32_t>(volume.image.geometry.slices);
    study.rows = static_cast<int32_t>(volume.image.geometry.rows);
    study.columns = static_cast<int32_t>(volume.image.geometry.cols);
    study.segmentation_sop_instance_uid = seg_uid;
    for (size_t i : everything) {
      absl::StatusOr<std::string> hash = files.Put(input[i].bytes);
      if (!hash.ok()) return hash.status();
      study.instances.push_back({infos[i]->sop_instance_uid, *hash,
                                 static_cast<int64_t>(input[i].bytes.size()),
                                 infos[i]->is_segmentation});
    }
    absl::StatusOr<StudyRecord> inserted = store.InsertStudy(study);
    if (absl::IsAlreadyExists(inserted.status())) {
      // A concurrent upload of the same series won the race: ours are duplicates.
      for (size_t i : everything) {
        result.files[i].outcome = IngestOutcome::kDuplicate;
        result.files[i].reason = "already stored in this dataset";
      }
      continue;
    }
    if (!inserted.ok()) return inserted.status();
    for (size_t i : everything) {
      result.files[i].outcome = IngestOutcome::kStored;
      result.files[i].reason.clear();
    }
    result.stored.push_back(*std::move(inserted));
  }

  for (size_t s : segs) {
    if (segs_used.count(s)) continue;
    IngestFileResult& r = result.files[s];
    if (existing.contains(infos[s]->sop_instance_uid)) {
      r.outcome = IngestOutcome::kDuplicate;
      r.reason = "already stored in this dataset";
    } else {
      r.outcome = IngestOutcome::kRefused;
      r.reason = absl::StrCat("this DICOM SEG references no image series of this upload (",
                              absl::StrJoin(infos[s]->referenced_series_instance_uids, ", "),
                              ")");
    }
  }
  return result;
}

absl::StatusOr<LoadedStudy> LoadStoredStudy(const FileStore& files, const StudyRecord& study,
                                            const std::vector<std::string>& class_names) {
  std::vector<DicomBuffer> images;
  std::optional<DicomBuffer> seg;
  for (const InstanceRecord& instance : study.instances) {
    if (instance.is_segmentation && class_names.empty()) continue;  // images only
    absl::StatusOr<std::string> bytes = files.Get(instance.object_hash);
    if (!bytes.ok()) {
      return absl::Status(bytes.status().code(),
                          absl::StrCat("instance ", instance.sop_instance_uid, " of series ",
                                       study.series_instance_uid, ": ",
                                       bytes.status().message()));
    }
    DicomBuffer buffer{instance.sop_instance_uid, *std::move(bytes)};
    if (instance.is_segmentation) {
      seg = std::move(buffer);
    } else {
      images.push_back(std::move(buffer));
    }
  }
  absl::StatusOr<std::vector<SeriesVolume>> volumes = ReadSeries(images);
  if (!volumes.ok()) return volumes.status();
  if (volumes->size() != 1) {
    return absl::DataLossError(
        absl::StrCat("stored series ", study.series_instance_uid, " is not one volume"));
  }
  LoadedStudy loaded{std::move(volumes->front()), std::nullopt};
  if (seg) {
    absl::StatusOr<SegmentationLabels> labels =
        ReadSegmentation(*seg, loaded.series, class_names);
    if (!labels.ok()) return labels.status();
    loaded.labels = std::move(labels->labels);
  }
  return loaded;
}

}  // namespace miseg

#include "server/domain/ingest.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"
#include "core/dicom/dicom_text.h"
#include "core/dicom/instance_info.h"
#include "core/dicom/segmentation.h"

namespace miseg {
namespace {

// The longest reason an InstanceResult carries (bytes, then an ellipsis).
constexpr size_t kMaxReasonBytes = 1024;

constexpr char kAlreadyStored[] = "already stored in this dataset";

const char* RoleWord(StoredRole role) {
  switch (role) {
    case StoredRole::kLabeled: return "labeled";
    case StoredRole::kUnlabeled: return "unlabeled";
    case StoredRole::kValidation: return "validation";
  }
  return "unknown";
}

// The files of one upload, wherever their bytes are: what checking and storing need of
// them. Indices are the upload's.
class UploadFiles {
 public:
  virtual ~UploadFiles() = default;
  // The image files `which`, read or checked as ReadSeries reads them (with or without
  // voxels). InvalidArgument is the input's fault; any other error the server's.
  virtual absl::StatusOr<std::vector<SeriesVolume>> ReadSeriesOf(
      const std::vector<size_t>& which, std::vector<std::string>* skipped,
      const SeriesReaderLimits& limits) const = 0;
  // File i in memory (a SEG).
  virtual absl::StatusOr<DicomBuffer> Load(size_t i) const = 0;
  // Puts file i into the file store (again: a no-op); returns its hash.
  virtual absl::StatusOr<std::string> Store(size_t i) = 0;
  virtual int64_t SizeOf(size_t i) const = 0;
  // The SHA-256 (hex) of file i's bytes, as the file store keys it.
  virtual absl::StatusOr<std::string> HashOf(size_t i) const = 0;
};

// Files held in memory (the DICOM node's series).
class BufferFiles final : public UploadFiles {
 public:
  BufferFiles(FileStore& files, const std::vector<DicomBuffer>& input)
      : files_(files), input_(input) {}

  absl::StatusOr<std::vector<SeriesVolume>> ReadSeriesOf(
      const std::vector<size_t>& which, std::vector<std::string>* skipped,
      const SeriesReaderLimits& limits) const override {
    std::vector<DicomBuffer> buffers;
    for (size_t i : which) buffers.push_back(input_[i]);
    return ReadSeries(buffers, skipped, limits);
  }
  absl::StatusOr<DicomBuffer> Load(size_t i) const override { return input_[i]; }
  absl::StatusOr<std::string> Store(size_t i) override { return files_.Put(input_[i].bytes); }
  int64_t SizeOf(size_t i) const override {
    return static_cast<int64_t>(input_[i].bytes.size());
  }
  absl::StatusOr<std::string> HashOf(size_t i) const override {
    return Sha256Hex(input_[i].bytes);
  }

 private:
  FileStore& files_;
  const std::vector<DicomBuffer>& input_;
};

// Files staged on disk (a streamed upload): checked from there, one file at a time, and
// committed by rename.
class StagedUploadFiles final : public UploadFiles {
 public:
  StagedUploadFiles(FileStore& files, std::vector<std::unique_ptr<StagedFile>>& staged,
                    const std::vector<std::string>& names)
      : files_(files), staged_(staged), names_(names), hashes_(staged.size()) {}

  absl::StatusOr<std::vector<SeriesVolume>> ReadSeriesOf(
      const std::vector<size_t>& which, std::vector<std::string>* skipped,
      const SeriesReaderLimits& limits) const override {
    std::vector<std::string> paths, names;
    for (size_t i : which) {
      paths.push_back(staged_[i]->path());
      names.push_back(names_[i]);
    }
    return CheckSeriesFiles(paths, names, skipped, limits);
  }
  absl::StatusOr<DicomBuffer> Load(size_t i) const override {
    ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(staged_[i]->path()));
    return DicomBuffer{names_[i], std::move(bytes)};
  }
  absl::StatusOr<std::string> Store(size_t i) override {
    // A SEG referencing two series of the upload is stored with each.
    if (hashes_[i].empty()) {
      ASSIGN_OR_RETURN(hashes_[i], files_.Commit(*staged_[i]));
    }
    return hashes_[i];
  }
  int64_t SizeOf(size_t i) const override { return staged_[i]->size(); }
  absl::StatusOr<std::string> HashOf(size_t i) const override {
    return staged_[i]->finished() ? staged_[i]->hash() : Sha256OfFile(staged_[i]->path());
  }

 private:
  FileStore& files_;
  std::vector<std::unique_ptr<StagedFile>>& staged_;
  const std::vector<std::string>& names_;
  std::vector<std::string> hashes_;  // of the files committed so far
};

// Files already in the file store, by hash (an import's): checked from there.
class ObjectFiles final : public UploadFiles {
 public:
  ObjectFiles(FileStore& files, const std::vector<StoredObjectFile>& input)
      : files_(files), input_(input) {}

  absl::StatusOr<std::vector<SeriesVolume>> ReadSeriesOf(
      const std::vector<size_t>& which, std::vector<std::string>* skipped,
      const SeriesReaderLimits& limits) const override {
    std::vector<std::string> paths, names;
    for (size_t i : which) {
      ASSIGN_OR_RETURN(std::string path, files_.ObjectPath(input_[i].hash));
      paths.push_back(std::move(path));
      names.push_back(input_[i].name);
    }
    return CheckSeriesFiles(paths, names, skipped, limits);
  }
  absl::StatusOr<DicomBuffer> Load(size_t i) const override {
    ASSIGN_OR_RETURN(std::string bytes, files_.Get(input_[i].hash));
    return DicomBuffer{input_[i].name, std::move(bytes)};
  }
  absl::StatusOr<std::string> Store(size_t i) override { return input_[i].hash; }
  int64_t SizeOf(size_t i) const override { return input_[i].size_bytes; }
  absl::StatusOr<std::string> HashOf(size_t i) const override { return input_[i].hash; }

 private:
  FileStore& files_;
  const std::vector<StoredObjectFile>& input_;
};

// One ingest: the identified files of an upload grouped into series, each series checked
// and committed on its own.
class Ingest {
 public:
  Ingest(Store& store, const DatasetRecord& dataset, StoredRole role, UploadFiles& files,
         const SeriesReaderLimits& limits)
      : store_(store), dataset_(dataset), role_(role), files_(files), limits_(limits) {}

  absl::StatusOr<IngestResult> Run(const std::vector<std::string>& names,
                                   std::vector<absl::StatusOr<InstanceInfo>> identities);

 private:
  void Group();
  absl::Status IngestSeries(const std::string& series_uid);
  absl::StatusOr<std::optional<size_t>> ChangedFromStored(
      const std::string& series_uid, const std::vector<size_t>& everything) const;
  std::optional<std::string> RefusalBeforeReading(const std::string& series_uid,
                                                  const std::vector<size_t>& members,
                                                  const std::vector<size_t>& segs) const;
  absl::StatusOr<std::optional<StudyRecord>> CheckContent(const std::string& series_uid,
                                                          const std::vector<size_t>& members,
                                                          const std::vector<size_t>& segs,
                                                          const std::vector<size_t>& everything);
  absl::Status Commit(StudyRecord study, const std::vector<size_t>& everything);
  void SettleUnusedSegs();
  void Mark(const std::vector<size_t>& which, IngestOutcome outcome, const std::string& reason);
  bool needs_seg() const { return role_ != StoredRole::kUnlabeled; }

  Store& store_;
  const DatasetRecord& dataset_;
  const StoredRole role_;
  UploadFiles& files_;
  const SeriesReaderLimits& limits_;

  IngestResult result_;
  std::vector<std::optional<InstanceInfo>> infos_;  // per file; empty when not identified
  absl::flat_hash_set<std::string> existing_;       // SOP Instance UIDs stored already
  std::map<std::string, std::vector<size_t>> series_files_;  // images by series
  std::vector<std::string> series_order_;                    // of first appearance
  std::vector<size_t> segs_;
  std::set<size_t> segs_used_;
};

absl::StatusOr<IngestResult> Ingest::Run(const std::vector<std::string>& names,
                                         std::vector<absl::StatusOr<InstanceInfo>> identities) {
  result_.files.resize(names.size());
  infos_.resize(names.size());
  std::vector<std::string> all_uids;
  for (size_t i = 0; i < names.size(); ++i) {
    IngestFileResult& r = result_.files[i];
    r.file_name = names[i];
    if (!identities[i].ok()) {
      r.reason = SafeText(identities[i].status().message(), kMaxReasonBytes);
      continue;
    }
    r.sop_instance_uid = identities[i]->sop_instance_uid;
    r.series_instance_uid = identities[i]->series_instance_uid;
    infos_[i] = *std::move(identities[i]);
    all_uids.push_back(infos_[i]->sop_instance_uid);
  }
  ASSIGN_OR_RETURN(std::vector<std::string> existing,
                   store_.ExistingInstances(dataset_.id, all_uids));
  existing_.insert(existing.begin(), existing.end());
  Group();
  for (const std::string& series_uid : series_order_) {
    RETURN_IF_ERROR(IngestSeries(series_uid));
  }
  SettleUnusedSegs();
  return std::move(result_);
}

// Groups images by series and notes SEGs. A SOP Instance UID twice in one upload: the later
// copies are duplicates of the first.
void Ingest::Group() {
  absl::flat_hash_set<std::string> seen_in_upload;
  for (size_t i = 0; i < infos_.size(); ++i) {
    if (!infos_[i]) continue;
    if (!seen_in_upload.insert(infos_[i]->sop_instance_uid).second) {
      Mark({i}, IngestOutcome::kDuplicate, "the same instance appears earlier in this upload");
      continue;
    }
    if (infos_[i]->is_segmentation) {
      segs_.push_back(i);
      continue;
    }
    auto [it, inserted] = series_files_.try_emplace(infos_[i]->series_instance_uid);
    if (inserted) series_order_.push_back(infos_[i]->series_instance_uid);
    it->second.push_back(i);
  }
}

absl::Status Ingest::IngestSeries(const std::string& series_uid) {
  const std::vector<size_t>& members = series_files_[series_uid];
  std::vector<size_t> segs;
  for (size_t s : segs_) {
    for (const std::string& ref : infos_[s]->referenced_series_instance_uids) {
      if (ref == series_uid) segs.push_back(s);
    }
  }
  segs_used_.insert(segs.begin(), segs.end());
  std::vector<size_t> everything = members;
  everything.insert(everything.end(), segs.begin(), segs.end());

  const bool all_stored = std::all_of(everything.begin(), everything.end(), [&](size_t i) {
    return existing_.contains(infos_[i]->sop_instance_uid);
  });
  if (all_stored) {
    // The same SOP Instance UIDs are a duplicate only with the same bytes: other bytes under
    // a stored UID (another transfer syntax, other pixels) are refused, saying so, rather
    // than taken for the stored copy.
    ASSIGN_OR_RETURN(std::optional<size_t> changed, ChangedFromStored(series_uid, everything));
    if (changed) {
      Mark(everything, IngestOutcome::kRefused,
           absl::StrCat("instance ", infos_[*changed]->sop_instance_uid,
                        " is already stored in this dataset with other content (another "
                        "encoding or other pixels); the stored copy is kept: give the "
                        "instances new UIDs to store them as a new study"));
      return absl::OkStatus();
    }
    Mark(everything, IngestOutcome::kDuplicate, kAlreadyStored);
    return absl::OkStatus();
  }
  if (std::optional<std::string> refusal = RefusalBeforeReading(series_uid, members, segs)) {
    Mark(everything, IngestOutcome::kRefused, *refusal);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::optional<StudyRecord> study,
                   CheckContent(series_uid, members, segs, everything));
  if (!study) return absl::OkStatus();
  return Commit(*std::move(study), everything);
}

// The first of `everything` whose bytes differ from those stored under its SOP Instance
// UID in the stored study of the same series; nullopt when all match (or the instances
// were stored with another series: a duplicate, as before).
absl::StatusOr<std::optional<size_t>> Ingest::ChangedFromStored(
    const std::string& series_uid, const std::vector<size_t>& everything) const {
  absl::StatusOr<StudyRecord> stored = store_.GetStudy(dataset_.id, series_uid);
  if (absl::IsNotFound(stored.status())) return std::nullopt;
  if (!stored.ok()) return stored.status();
  std::map<std::string, std::string> hash_of;
  for (const InstanceRecord& instance : stored->instances) {
    hash_of[instance.sop_instance_uid] = instance.object_hash;
  }
  for (size_t i : everything) {
    auto it = hash_of.find(infos_[i]->sop_instance_uid);
    if (it == hash_of.end()) continue;
    ASSIGN_OR_RETURN(std::string hash, files_.HashOf(i));
    if (hash != it->second) return i;
  }
  return std::nullopt;
}

// What refuses a series from the identities alone: some of it stored already, another
// modality, a SEG missing or too many, a SEG where none belongs.
std::optional<std::string> Ingest::RefusalBeforeReading(const std::string& series_uid,
                                                        const std::vector<size_t>& members,
                                                        const std::vector<size_t>& segs) const {
  const bool some_stored =
      std::any_of(members.begin(), members.end(),
                  [&](size_t i) { return existing_.contains(infos_[i]->sop_instance_uid); }) ||
      std::any_of(segs.begin(), segs.end(),
                  [&](size_t i) { return existing_.contains(infos_[i]->sop_instance_uid); });
  if (some_stored) {
    return absl::StrCat("series ", series_uid,
                        " is already stored with other instances; delete it first to replace it");
  }
  const auto other_modality = std::find_if(members.begin(), members.end(), [&](size_t i) {
    return infos_[i]->modality != dataset_.modality;
  });
  if (other_modality != members.end()) {
    return absl::StrCat("series ", series_uid, " has modality '",
                        infos_[*other_modality]->modality, "'; dataset '", dataset_.name,
                        "' accepts ", dataset_.modality);
  }
  if (needs_seg() && segs.size() != 1) {
    return segs.empty() ? absl::StrCat("a ", RoleWord(role_), " study needs its DICOM SEG: ",
                                       "none in this upload references series ", series_uid)
                        : absl::StrCat("several DICOM SEGs reference series ", series_uid,
                                       "; upload one");
  }
  if (!needs_seg() && !segs.empty()) {
    return "an unlabeled study takes no DICOM SEG; upload it as labeled";
  }
  return std::nullopt;
}

// Reads the series (one consistent volume) and, for a labeled study, its SEG onto it.
// nullopt when refused (the files are marked); errors are the server's.
absl::StatusOr<std::optional<StudyRecord>> Ingest::CheckContent(
    const std::string& series_uid, const std::vector<size_t>& members,
    const std::vector<size_t>& segs, const std::vector<size_t>& everything) {
  std::vector<std::string> skipped;
  absl::StatusOr<std::vector<SeriesVolume>> volumes =
      files_.ReadSeriesOf(members, &skipped, limits_);
  if (!volumes.ok() && !absl::IsInvalidArgument(volumes.status())) return volumes.status();
  if (!volumes.ok()) {
    Mark(everything, IngestOutcome::kRefused, std::string(volumes.status().message()));
    return std::nullopt;
  }
  if (!skipped.empty() || volumes->size() != 1) {
    Mark(everything, IngestOutcome::kRefused,
         skipped.empty() ? absl::StrCat("series ", series_uid, " is not one volume")
                         : absl::StrCat("not an image instance: ", skipped.front()));
    return std::nullopt;
  }
  const SeriesVolume& volume = volumes->front();
  StudyRecord study;
  if (needs_seg()) {
    const size_t s = segs.front();
    ASSIGN_OR_RETURN(DicomBuffer seg, files_.Load(s));
    // The labels come back as one LabelVolume of the series' size: for labeled and
    // validation studies only, the one allocation of an upload that grows with the study
    // (a byte per voxel; the series itself was checked without its voxels).
    absl::StatusOr<SegmentationLabels> labels =
        ReadSegmentation(seg, volume, dataset_.class_names);
    if (!labels.ok()) {
      Mark(everything, IngestOutcome::kRefused, std::string(labels.status().message()));
      return std::nullopt;
    }
    study.segmentation_sop_instance_uid = infos_[s]->sop_instance_uid;
  }
  study.dataset_id = dataset_.id;
  study.role = role_;
  study.study_instance_uid = volume.study_instance_uid;
  study.series_instance_uid = series_uid;
  study.modality = volume.modality;
  study.series_description = volume.series_description;  // decoded to UTF-8 or escaped
  study.lossy_compressed = volume.lossy.lossy;
  study.lossy_compression_method = absl::StrJoin(volume.lossy.methods, "\\");
  study.slices = static_cast<int32_t>(volume.image.geometry.slices);
  study.rows = static_cast<int32_t>(volume.image.geometry.rows);
  study.columns = static_cast<int32_t>(volume.image.geometry.cols);
  return study;
}

// Stores the files by hash, then the study in one transaction.
absl::Status Ingest::Commit(StudyRecord study, const std::vector<size_t>& everything) {
  // From storing the objects to committing the study that references them, no delete may
  // remove one of them (identical bytes another dataset just orphaned).
  absl::ReaderMutexLock no_removals(&ObjectReferenceMutex());
  for (size_t i : everything) {
    ASSIGN_OR_RETURN(std::string hash, files_.Store(i));
    study.instances.push_back({infos_[i]->sop_instance_uid, std::move(hash), files_.SizeOf(i),
                               infos_[i]->is_segmentation});
  }
  absl::StatusOr<StudyRecord> inserted = store_.InsertStudy(study);
  if (absl::IsAlreadyExists(inserted.status())) {
    // A concurrent upload of the same series won the race: ours are duplicates.
    Mark(everything, IngestOutcome::kDuplicate, kAlreadyStored);
    return absl::OkStatus();
  }
  if (!inserted.ok()) return inserted.status();
  Mark(everything, IngestOutcome::kStored, "");
  result_.stored.push_back(*std::move(inserted));
  return absl::OkStatus();
}

// SEGs that label no series of the upload: duplicates when stored already, else refused.
void Ingest::SettleUnusedSegs() {
  for (size_t s : segs_) {
    if (segs_used_.count(s)) continue;
    if (existing_.contains(infos_[s]->sop_instance_uid)) {
      Mark({s}, IngestOutcome::kDuplicate, kAlreadyStored);
      continue;
    }
    Mark({s}, IngestOutcome::kRefused,
         absl::StrCat("this DICOM SEG references no image series of this upload (",
                      absl::StrJoin(infos_[s]->referenced_series_instance_uids, ", "), ")"));
  }
}

void Ingest::Mark(const std::vector<size_t>& which, IngestOutcome outcome,
                  const std::string& reason) {
  for (size_t i : which) {
    result_.files[i].outcome = outcome;
    // Reasons quote DICOM values; they are escaped where read, and once more here, where
    // every reason passes, so none can carry bytes that are not UTF-8 (issue 18).
    result_.files[i].reason = SafeText(reason, kMaxReasonBytes);
  }
}

}  // namespace

absl::StatusOr<IngestResult> IngestFiles(Store& store, FileStore& files,
                                         const DatasetRecord& dataset, StoredRole role,
                                         const std::vector<DicomBuffer>& input,
                                         const SeriesReaderLimits& limits) {
  std::vector<std::string> names;
  std::vector<absl::StatusOr<InstanceInfo>> identities;
  for (const DicomBuffer& file : input) {
    names.push_back(file.name);
    identities.push_back(IdentifyInstance(file));
  }
  BufferFiles upload(files, input);
  return Ingest(store, dataset, role, upload, limits).Run(names, std::move(identities));
}

absl::StatusOr<IngestResult> IngestStoredObjects(Store& store, FileStore& files,
                                                 const DatasetRecord& dataset, StoredRole role,
                                                 const std::vector<StoredObjectFile>& input,
                                                 const SeriesReaderLimits& limits) {
  std::vector<std::string> names;
  std::vector<absl::StatusOr<InstanceInfo>> identities;
  for (const StoredObjectFile& file : input) {
    names.push_back(file.name);
    absl::StatusOr<std::string> path = files.ObjectPath(file.hash);
    if (!path.ok()) return path.status();  // a fetched object gone: the server's failure
    identities.push_back(IdentifyInstanceFile(*path, file.name));
  }
  ObjectFiles objects(files, input);
  return Ingest(store, dataset, role, objects, limits).Run(names, std::move(identities));
}

// ------------------------------------------------------------------------------------------

namespace {

// A client's file name cut to 256 bytes at a character boundary: the name comes back in the
// response, whose strings must stay UTF-8 (a cut inside a character would make the reply
// one that proto3 clients refuse, after the upload was committed).
std::string_view CutName(std::string_view name) {
  constexpr size_t kMax = 256;
  if (name.size() <= kMax) return name;
  size_t n = kMax;
  while (n > 0 && (static_cast<unsigned char>(name[n]) & 0xC0) == 0x80) --n;  // continuation
  return name.substr(0, n);
}

}  // namespace

FileReceiver::FileReceiver(FileStore* files, ChunkLimits limits)
    : store_(files), limits_(limits) {}

absl::Status FileReceiver::Fail(absl::Status status) {
  error_ = status;
  current_.reset();
  staged_.clear();  // removes them
  names_.clear();
  return status;
}

absl::Status FileReceiver::AddChunk(std::string_view file_name, std::string_view data,
                                    bool last_chunk) {
  if (!error_.ok()) return error_;
  if (ended_) return Fail(absl::InvalidArgumentError("a chunk after the end of the stream"));
  bytes_received_ += static_cast<int64_t>(data.size());
  if (bytes_received_ > limits_.max_bytes) {
    return Fail(absl::ResourceExhaustedError(absl::StrCat(
        "request exceeds the server's limit of ", limits_.max_bytes, " bytes")));
  }
  const std::string_view client_name = CutName(file_name);
  if (current_ == nullptr) {
    if (static_cast<int64_t>(staged_.size()) >= limits_.max_files) {
      return Fail(absl::ResourceExhaustedError(
          absl::StrCat("request exceeds the server's limit of ", limits_.max_files, " files")));
    }
    absl::StatusOr<std::unique_ptr<StagedFile>> staged = store_->Stage();
    if (!staged.ok()) return Fail(staged.status());
    current_ = *std::move(staged);
    current_client_name_ = std::string(client_name);
    current_name_ = file_name.empty() ? absl::StrCat("file #", staged_.size() + 1)
                                      : current_client_name_;
  } else if (!file_name.empty() && client_name != current_client_name_) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "a chunk of '", std::string(client_name), "' arrived inside '", current_name_,
        "' (no chunk with last_chunk set ended it)")));
  }
  if (absl::Status appended = current_->Append(data); !appended.ok()) return Fail(appended);
  if (!last_chunk) return absl::OkStatus();
  if (absl::Status finished = current_->Finish(); !finished.ok()) return Fail(finished);
  staged_.push_back(std::move(current_));
  names_.push_back(std::move(current_name_));
  return absl::OkStatus();
}

absl::Status FileReceiver::EndOfStream() {
  if (!error_.ok()) return error_;
  ended_ = true;
  if (current_ != nullptr) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "the stream ended inside '", current_name_, "' (no chunk with last_chunk set)")));
  }
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------------------

IngestSession::IngestSession(Store* store, FileStore* files, DatasetRecord dataset,
                             StoredRole role, ChunkLimits limits,
                             SeriesReaderLimits reader_limits)
    : store_(store),
      files_(files),
      dataset_(std::move(dataset)),
      role_(role),
      reader_limits_(reader_limits),
      receiver_(files, limits) {}

absl::Status IngestSession::AddChunk(std::string_view file_name, std::string_view data,
                                     bool last_chunk) {
  if (finished_) return absl::FailedPreconditionError("the upload is finished");
  RETURN_IF_ERROR(error_);
  const size_t before = receiver_.files().size();
  RETURN_IF_ERROR(receiver_.AddChunk(file_name, data, last_chunk));
  if (receiver_.files().size() == before) return absl::OkStatus();
  // A file is complete: its header says which instance it is (refusals wait for Finish).
  absl::StatusOr<InstanceInfo> info =
      IdentifyInstanceFile(receiver_.files().back()->path(), receiver_.names().back());
  if (!info.ok() && !absl::IsInvalidArgument(info.status())) {
    error_ = info.status();  // the disk failed us: the session is spent
    return error_;
  }
  identities_.push_back(std::move(info));
  return absl::OkStatus();
}

absl::StatusOr<IngestResult> IngestSession::Finish() {
  if (finished_) return absl::FailedPreconditionError("the upload is finished");
  finished_ = true;
  RETURN_IF_ERROR(error_);
  RETURN_IF_ERROR(receiver_.EndOfStream());
  std::vector<std::unique_ptr<StagedFile>>& staged = receiver_.files();
  if (staged.empty()) return absl::InvalidArgumentError("the upload holds no files");
  StagedUploadFiles upload(*files_, staged, receiver_.names());
  absl::StatusOr<IngestResult> result =
      Ingest(*store_, dataset_, role_, upload, reader_limits_)
          .Run(receiver_.names(), std::move(identities_));
  staged.clear();  // removes what was not committed: refused files, duplicates
  return result;
}

// ------------------------------------------------------------------------------------------

absl::StatusOr<LoadedStudy> LoadStoredStudy(const FileStore& files, const StudyRecord& study,
                                            const std::vector<std::string>& class_names) {
  if (!study.damage.empty()) {
    return absl::DataLossError(absl::StrCat("study ", study.series_instance_uid, " is damaged: ",
                                            study.damage, "; delete it and upload it again"));
  }
  std::vector<DicomBuffer> images;
  std::optional<DicomBuffer> seg;
  for (const InstanceRecord& instance : study.instances) {
    if (instance.is_segmentation && class_names.empty()) continue;  // images only
    absl::StatusOr<std::string> bytes = files.Get(instance.object_hash);  // hash checked
    if (!bytes.ok()) {
      // A stored instance whose file is gone is lost data too, not an unknown name.
      const absl::StatusCode code = absl::IsNotFound(bytes.status()) ? absl::StatusCode::kDataLoss
                                                                     : bytes.status().code();
      return absl::Status(code, absl::StrCat("instance ", instance.sop_instance_uid,
                                             " of series ", study.series_instance_uid, ": ",
                                             bytes.status().message()));
    }
    DicomBuffer buffer{instance.sop_instance_uid, *std::move(bytes)};
    if (instance.is_segmentation) {
      seg = std::move(buffer);
    } else {
      images.push_back(std::move(buffer));
    }
  }
  return ReadLabeledSeries(images, seg, class_names, study.series_instance_uid);
}

}  // namespace miseg

// The importer: schedules durable imports on its pool and runs each as list -> fetch SEGs ->
// choose series -> fetch images -> ingest, recording every instance as it arrives.
#include "server/import/importer.h"

#include <algorithm>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"
#include "core/dicom/instance_info.h"
#include "server/import/source_client.h"
#include "server/domain/ingest.h"
#include "server/log.h"
#include "server/store/file_store.h"

namespace miseg {
namespace {

bool NeedsSeg(StoredRole role) { return role != StoredRole::kUnlabeled; }

std::string DescribeCounts(const std::vector<IngestFileResult>& files) {
  int64_t stored = 0, duplicate = 0, refused = 0;
  for (const IngestFileResult& f : files) {
    if (f.outcome == IngestOutcome::kStored) ++stored;
    if (f.outcome == IngestOutcome::kDuplicate) ++duplicate;
    if (f.outcome == IngestOutcome::kRefused) ++refused;
  }
  return absl::StrCat(stored, " instances stored, ", duplicate, " already in the dataset, ",
                      refused, " refused");
}

}  // namespace

// One run of one import. Errors of the source or the import's content become a failed
// import; the store's and the disk's are returned as they are (the import fails with them).
class Importer::Run {
 public:
  Run(Importer& importer, ImportRecord import, DatasetRecord dataset, const ImportSourceSpec& spec)
      : importer_(importer),
        import_(std::move(import)),
        dataset_(std::move(dataset)),
        client_(MakeImportSourceClient(spec)) {}

  Result Execute();

 private:
  absl::Status ListAtSource();
  absl::Status MarkPresent();
  absl::Status FetchPending(bool segmentations);
  absl::Status ChooseSeries();
  Result Ingest();
  absl::Status Reload() {
    ASSIGN_OR_RETURN(instances_, importer_.store_->ListImportInstances(import_.id));
    return absl::OkStatus();
  }
  absl::Status SetState(ImportInstanceRecord& i, ImportInstanceState state) {
    i.state = state;
    return importer_.store_->SetImportInstance(import_.id, i);
  }

  Importer& importer_;
  const ImportRecord import_;
  const DatasetRecord dataset_;
  std::unique_ptr<ImportSourceClient> client_;
  std::vector<ImportInstanceRecord> instances_;
};

Importer::Result Importer::Run::Execute() {
  absl::Status status = [&]() -> absl::Status {
    RETURN_IF_ERROR(Reload());
    if (instances_.empty()) {
      RETURN_IF_ERROR(ListAtSource());
      RETURN_IF_ERROR(Reload());
    }
    RETURN_IF_ERROR(MarkPresent());
    if (NeedsSeg(import_.role)) {
      RETURN_IF_ERROR(FetchPending(/*segmentations=*/true));
      RETURN_IF_ERROR(ChooseSeries());
    }
    return FetchPending(/*segmentations=*/false);
  }();
  // A server stopping interrupts a transfer as a cancellation does: it is not one.
  if (!status.ok() && importer_.StopRequested(import_.id)) return {Outcome::kStopped, "", "", {}};
  if (absl::IsCancelled(status)) return {Outcome::kCancelled, "", "cancelled", {}};
  if (!status.ok()) return {Outcome::kFailed, std::string(status.message()), "", {}};
  return Ingest();
}

// Records what the study holds: its image series of the dataset's modality (the one asked
// for, if any) and, for a labeled import, its DICOM SEGs.
absl::Status Importer::Run::ListAtSource() {
  ASSIGN_OR_RETURN(std::vector<RemoteInstance> listed,
                   client_->ListStudy(import_.study_instance_uid));
  std::vector<ImportInstanceRecord> wanted;
  for (const RemoteInstance& r : listed) {
    const bool seg = r.sop_class_uid == kSegmentationStorageUid;
    const bool image = !seg && r.modality == dataset_.modality &&
                       (import_.series_instance_uid.empty() ||
                        r.series_instance_uid == import_.series_instance_uid);
    if (image || (seg && NeedsSeg(import_.role))) {
      wanted.push_back({r.sop_instance_uid, r.series_instance_uid, seg,
                        ImportInstanceState::kPending, "", 0});
    }
  }
  const bool any_image = std::any_of(wanted.begin(), wanted.end(),
                                     [](const auto& i) { return !i.is_segmentation; });
  if (!any_image) {
    return absl::NotFoundError(absl::StrCat(
        "study ", import_.study_instance_uid, " at source '", import_.source, "' has no ",
        dataset_.modality, " image series",
        import_.series_instance_uid.empty() ? ""
                                            : absl::StrCat(" ", import_.series_instance_uid)));
  }
  return importer_.store_->AddImportInstances(import_.id, wanted);
}

// Instances the dataset holds already are not fetched (importing again fetches nothing).
absl::Status Importer::Run::MarkPresent() {
  std::vector<std::string> pending;
  for (const ImportInstanceRecord& i : instances_) {
    if (i.state == ImportInstanceState::kPending) pending.push_back(i.sop_instance_uid);
  }
  if (pending.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<std::string> present,
                   importer_.store_->ExistingInstances(dataset_.id, pending));
  const std::set<std::string> in_dataset(present.begin(), present.end());
  for (ImportInstanceRecord& i : instances_) {
    if (i.state == ImportInstanceState::kPending && in_dataset.count(i.sop_instance_uid)) {
      RETURN_IF_ERROR(SetState(i, ImportInstanceState::kPresent));
    }
  }
  return absl::OkStatus();
}

absl::Status Importer::Run::FetchPending(bool segmentations) {
  std::vector<RemoteInstance> todo;
  std::map<std::string, ImportInstanceRecord*> by_sop;
  for (ImportInstanceRecord& i : instances_) {
    if (i.state != ImportInstanceState::kPending || i.is_segmentation != segmentations) continue;
    todo.push_back({import_.study_instance_uid, i.series_instance_uid, i.sop_instance_uid,
                    segmentations ? kSegmentationStorageUid : "", ""});
    by_sop[i.sop_instance_uid] = &i;
  }
  if (todo.empty()) return absl::OkStatus();
  if (!segmentations) {
    // C-GET needs each instance's SOP class for its presentation contexts: ask again.
    ASSIGN_OR_RETURN(std::vector<RemoteInstance> listed,
                     client_->ListStudy(import_.study_instance_uid));
    std::map<std::string, std::string> classes;
    for (const RemoteInstance& r : listed) classes[r.sop_instance_uid] = r.sop_class_uid;
    for (RemoteInstance& r : todo) r.sop_class_uid = classes[r.sop_instance_uid];
  }
  const int64_t id = import_.id;
  return client_->Fetch(
      todo,
      [&](const RemoteInstance& r, std::string bytes) -> absl::Status {
        if (importer_.StopRequested(id)) return absl::AbortedError("stopping");
        ImportInstanceRecord& record = *by_sop[r.sop_instance_uid];
        // From storing the object to recording its hash, a dataset delete must not find it
        // unreferenced (the same bytes may belong to the dataset being deleted).
        absl::ReaderMutexLock no_removals(&ObjectReferenceMutex());
        ASSIGN_OR_RETURN(record.object_hash, importer_.files_->Put(bytes));
        record.size_bytes = static_cast<int64_t>(bytes.size());
        RETURN_IF_ERROR(SetState(record, ImportInstanceState::kFetched));
        importer_.CountFetched(id);
        return absl::OkStatus();
      },
      [&] {
        absl::MutexLock lock(&importer_.mutex_);
        return importer_.stopping_ || importer_.cancelled_.count(id) > 0;
      });
}

// A labeled import keeps the image series its SEGs reference (or the one asked for) and the
// SEGs that reference them; the rest is not needed.
absl::Status Importer::Run::ChooseSeries() {
  std::set<std::string> referenced;
  std::map<std::string, std::vector<std::string>> seg_refs;
  // A SEG the dataset holds already (an import again) references the series it labels there.
  ASSIGN_OR_RETURN(std::vector<StudyRecord> studies,
                   importer_.store_->ListStudies(dataset_.id, std::nullopt));
  std::map<std::string, std::string> stored_seg_series;
  for (const StudyRecord& study : studies) {
    if (!study.segmentation_sop_instance_uid.empty()) {
      stored_seg_series[study.segmentation_sop_instance_uid] = study.series_instance_uid;
    }
  }
  for (const ImportInstanceRecord& i : instances_) {
    if (i.is_segmentation && i.state == ImportInstanceState::kPresent &&
        stored_seg_series.count(i.sop_instance_uid)) {
      seg_refs[i.sop_instance_uid] = {stored_seg_series[i.sop_instance_uid]};
      referenced.insert(stored_seg_series[i.sop_instance_uid]);
    }
    if (!i.is_segmentation || i.state != ImportInstanceState::kFetched) continue;
    ASSIGN_OR_RETURN(std::string path, importer_.files_->ObjectPath(i.object_hash));
    absl::StatusOr<InstanceInfo> info = IdentifyInstanceFile(path, i.sop_instance_uid);
    if (!info.ok()) continue;  // not a usable SEG: never paired, so not needed
    seg_refs[i.sop_instance_uid] = info->referenced_series_instance_uids;
    referenced.insert(info->referenced_series_instance_uids.begin(),
                      info->referenced_series_instance_uids.end());
  }
  std::set<std::string> keep;
  for (const ImportInstanceRecord& i : instances_) {
    if (!i.is_segmentation && (import_.series_instance_uid.empty()
                                   ? referenced.count(i.series_instance_uid) > 0
                                   : i.series_instance_uid == import_.series_instance_uid)) {
      keep.insert(i.series_instance_uid);
    }
  }
  if (keep.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "a ", import_.role == StoredRole::kLabeled ? "labeled" : "validation",
        " import needs a DICOM SEG: none in study ", import_.study_instance_uid,
        " references ", import_.series_instance_uid.empty()
                            ? absl::StrCat("a ", dataset_.modality, " series of it")
                            : absl::StrCat("series ", import_.series_instance_uid)));
  }
  for (ImportInstanceRecord& i : instances_) {
    if (i.state == ImportInstanceState::kNotNeeded) continue;
    bool needed = keep.count(i.series_instance_uid) > 0;
    if (i.is_segmentation) {
      needed = false;
      for (const std::string& ref : seg_refs[i.sop_instance_uid]) needed |= keep.count(ref) > 0;
    }
    if (!needed) RETURN_IF_ERROR(SetState(i, ImportInstanceState::kNotNeeded));
  }
  return absl::OkStatus();
}

Importer::Result Importer::Run::Ingest() {
  std::vector<StoredObjectFile> objects;
  int64_t present = 0;
  for (const ImportInstanceRecord& i : instances_) {
    if (i.state == ImportInstanceState::kFetched) {
      objects.push_back({i.sop_instance_uid, i.object_hash, i.size_bytes});
    }
    if (i.state == ImportInstanceState::kPresent) ++present;
  }
  if (objects.empty()) {
    return {Outcome::kSucceeded, "",
            absl::StrCat("already in the dataset (", present, " instances); nothing fetched"),
            {}};
  }
  absl::StatusOr<IngestResult> result =
      IngestStoredObjects(*importer_.store_, *importer_.files_, dataset_, import_.role, objects,
                          importer_.options_.reader_limits);
  if (!result.ok()) return {Outcome::kFailed, std::string(result.status().message()), "", {}};
  Result out;
  for (const StudyRecord& s : result->stored) out.stored_series.push_back(s.series_instance_uid);
  out.message = DescribeCounts(result->files);
  for (const IngestFileResult& f : result->files) {
    if (f.outcome == IngestOutcome::kRefused) {
      out.outcome = Outcome::kFailed;
      out.error = absl::StrCat("refused: ", f.reason);
      break;
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------

Importer::Importer(Store* store, FileStore* files, std::vector<ImportSourceSpec> sources,
                   ImporterOptions options)
    : store_(store),
      files_(files),
      sources_(std::move(sources)),
      options_(options),
      pool_(std::make_unique<WorkPool>(std::max(1, options.threads))) {}

Importer::~Importer() { Shutdown(); }

absl::Status Importer::Start() {
  ASSIGN_OR_RETURN(int requeued, store_->RequeueRunningImports());
  if (requeued > 0) Log(absl::StrCat("resuming ", requeued, " interrupted imports"));
  ASSIGN_OR_RETURN(std::vector<ImportRecord> queued, store_->ListQueuedImports());
  for (const ImportRecord& i : queued) Schedule(i.id);
  return absl::OkStatus();
}

void Importer::Shutdown() {
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  pool_.reset();  // queued runs return at once; running ones stop at their next instance
  (void)store_->RequeueRunningImports();
}

const ImportSourceSpec* Importer::FindSource(const std::string& name) const {
  for (const ImportSourceSpec& s : sources_) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

absl::StatusOr<std::vector<ImportRecord>> Importer::StartImports(const DatasetRecord& dataset,
                                                                 const ImportRequest& request) {
  const ImportSourceSpec* spec = FindSource(request.source);
  if (spec == nullptr) {
    return absl::NotFoundError(
        sources_.empty()
            ? std::string("this server has no import sources (--import_sources)")
            : absl::StrCat("no import source named '", request.source, "' on this server"));
  }
  if (request.study_instance_uid.empty() == request.query.empty()) {
    return absl::InvalidArgumentError("give a study_instance_uid or a query (one of them)");
  }
  if (!request.series_instance_uid.empty() && request.study_instance_uid.empty()) {
    return absl::InvalidArgumentError("series_instance_uid needs its study_instance_uid");
  }
  std::vector<std::string> studies = {request.study_instance_uid};
  if (!request.query.empty()) {
    ASSIGN_OR_RETURN(auto keys, ParseImportQuery(request.query));
    ASSIGN_OR_RETURN(studies, MakeImportSourceClient(*spec)->FindStudies(keys));
  }
  std::vector<ImportRecord> out;
  for (const std::string& study : studies) {
    ImportRecord record;
    record.dataset_id = dataset.id;
    record.source = request.source;
    record.role = request.role;
    record.study_instance_uid = study;
    record.series_instance_uid = request.series_instance_uid;
    bool created = false;
    ASSIGN_OR_RETURN(ImportRecord import, store_->CreateImport(record, &created));
    if (import.state == StoredImportState::kQueued) Schedule(import.id);
    out.push_back(std::move(import));
  }
  return out;
}

absl::StatusOr<ImportRecord> Importer::Cancel(int64_t id) {
  ASSIGN_OR_RETURN(ImportRecord import, store_->RequestImportCancel(id));
  if (import.state == StoredImportState::kRunning) {
    absl::MutexLock lock(&mutex_);
    cancelled_.insert(id);
  }
  return import;
}

void Importer::Schedule(int64_t id) {
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_ || !scheduled_.insert(id).second) return;
  }
  pool_->Schedule([this, id] { RunImport(id); });
}

bool Importer::StopRequested(int64_t id) {
  absl::MutexLock lock(&mutex_);
  return stopping_ && !cancelled_.count(id);
}

void Importer::CountFetched(int64_t id) {
  absl::MutexLock lock(&mutex_);
  ++fetched_here_;
  if (options_.test_pause_after <= 0 || fetched_here_ != options_.test_pause_after) return;
  Log(absl::StrCat("import test hook: paused after ", fetched_here_, " instances"));
  auto released = [this, id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return stopping_ || cancelled_.count(id) > 0;
  };
  mutex_.Await(absl::Condition(&released));
}

void Importer::RunImport(int64_t id) {
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_) return;
  }
  absl::StatusOr<std::optional<ImportRecord>> claimed = store_->ClaimImport(id);
  if (!claimed.ok() || !claimed->has_value()) {
    absl::MutexLock lock(&mutex_);
    scheduled_.erase(id);
    return;
  }
  const ImportRecord import = **claimed;
  Result result;
  const ImportSourceSpec* spec = FindSource(import.source);
  absl::StatusOr<DatasetRecord> dataset = store_->GetDatasetById(import.dataset_id);
  if (spec == nullptr) {
    result = {Outcome::kFailed,
              absl::StrCat("source '", import.source, "' is not configured on this server"),
              "", {}};
  } else if (!dataset.ok()) {
    result = {Outcome::kFailed, std::string(dataset.status().message()), "", {}};
  } else {
    Log(absl::StrCat("import ", id, ": study ", import.study_instance_uid, " from '",
                     import.source, "' (attempt ", import.attempts, ")"));
    result = Run(*this, import, *dataset, *spec).Execute();
  }
  if (result.outcome != Outcome::kStopped) {
    const StoredImportState state = result.outcome == Outcome::kSucceeded ? StoredImportState::kSucceeded
                                    : result.outcome == Outcome::kCancelled
                                        ? StoredImportState::kCancelled
                                        : StoredImportState::kFailed;
    absl::Status finished =
        store_->FinishImport(id, state, result.error, result.message, result.stored_series);
    Log(absl::StrCat("import ", id, ": ",
                     state == StoredImportState::kSucceeded   ? "succeeded: " + result.message
                     : state == StoredImportState::kCancelled ? std::string("cancelled")
                                                              : "failed: " + result.error,
                     finished.ok() ? "" : absl::StrCat(" (not recorded: ", finished.message(), ")")));
  }
  absl::MutexLock lock(&mutex_);
  scheduled_.erase(id);
  cancelled_.erase(id);
}

}  // namespace miseg

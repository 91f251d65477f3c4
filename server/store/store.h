// The server's metadata store: SQLite in WAL mode, one file in the data directory.
// Plain structs in and out (no protobuf, no gRPC), so the store is tested on its own.
// Every mutation is one transaction; what a call returned OK for is durable
// (synchronous=FULL), so an acknowledged upload or event survives a SIGKILL or power loss.
//
// Thread safety: all methods may be called from any thread; one connection guarded by a
// mutex (SQLite's own busy handling covers other processes, which the server never runs).
#ifndef MISEG_SERVER_STORE_STORE_H_
#define MISEG_SERVER_STORE_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

struct sqlite3;

namespace miseg {

// Matches miseg.v1.StudyRole numbers.
enum class StoredRole : int { kLabeled = 1, kUnlabeled = 2, kValidation = 3 };
// Matches miseg.v1.JobState numbers.
enum class StoredJobState : int {
  kQueued = 1,
  kRunning = 2,
  kSucceeded = 3,
  kFailed = 4,
  kCancelled = 5
};

// Matches miseg.v1.ModelFormat numbers: how a model file is read (core/train/inference.h).
enum class StoredModelFormat : int { kMiseg = 1, kTorchScript = 2 };

struct DatasetRecord {
  int64_t id = 0;
  std::string name;
  std::vector<std::string> class_names;
  std::string modality;
  int64_t active_model_id = 0;  // 0: none
  int64_t created_unix_ms = 0;
  // Filled by GetDataset / ListDatasets.
  int64_t labeled_studies = 0;
  int64_t unlabeled_studies = 0;
  int64_t validation_studies = 0;
  int64_t instances = 0;
  int64_t stored_bytes = 0;
};

// One file of a study, stored in the file store under its content hash.
struct InstanceRecord {
  std::string sop_instance_uid;
  std::string object_hash;  // hex SHA-256 of the file's bytes (FileStore key)
  int64_t size_bytes = 0;
  bool is_segmentation = false;
};

struct StudyRecord {
  int64_t id = 0;
  int64_t dataset_id = 0;
  StoredRole role = StoredRole::kUnlabeled;
  std::string study_instance_uid;
  std::string series_instance_uid;
  std::string modality;
  int32_t slices = 0, rows = 0, columns = 0;
  std::string segmentation_sop_instance_uid;  // empty for unlabeled
  int64_t created_unix_ms = 0;
  std::string series_description;  // valid UTF-8 (decoded or escaped), may be empty
  // Filled on reads: empty when whole; else which instance's object `miseg-server verify`
  // quarantined and why (the study cannot be trained on or segmented until it is deleted or
  // the object is stored again).
  std::string damage;
  // The source images were lossy-compressed (SeriesVolume::lossy); the methods as
  // LossyImageCompressionMethod values, backslash-separated, may be empty.
  bool lossy_compressed = false;
  std::string lossy_compression_method;
  std::vector<InstanceRecord> instances;  // images and (if any) the SEG
};

// Active learning: the last score SuggestStudies stored for a study (the proto's
// LabelingPriority; core/train/labeling_priority.h says what each value is).
struct LabelingPriorityRecord {
  std::string series_instance_uid;
  double score = 0;
  double disagreement = 0;
  double mutual_information = 0;
  double entropy = 0;
  int64_t model_id = 0;
  int64_t scored_unix_ms = 0;
};

struct JobRecord {
  int64_t id = 0;
  int64_t dataset_id = 0;
  std::string dataset_name;  // filled on reads
  StoredJobState state = StoredJobState::kQueued;
  std::string hyperparameters;  // opaque (a serialized miseg.v1.Hyperparameters)
  int64_t step = 0;             // last checkpointed step
  int64_t total_steps = 0;
  std::string device;
  std::string error;
  std::string checkpoint_path;  // empty until the first checkpoint
  int64_t model_id = 0;
  bool cancel_requested = false;
  int32_t resumes = 0;
  int32_t labeled_studies = 0, unlabeled_studies = 0, validation_studies = 0;
  int64_t created_unix_ms = 0, started_unix_ms = 0, finished_unix_ms = 0;
};

struct JobEventRecord {
  int64_t job_id = 0;
  int64_t sequence = 0;  // assigned by AppendJobEvents: 1, 2, ... per job
  int64_t step = 0;
  int64_t unix_ms = 0;
  std::string payload;  // opaque (a serialized miseg.v1.JobEvent)
};

struct ModelRecord {
  int64_t id = 0;
  int64_t dataset_id = 0;
  std::string dataset_name;  // filled on reads
  int64_t version = 0;       // assigned: 1 + the dataset's highest
  int64_t job_id = 0;        // 0 for an imported model
  std::string path;          // model file
  std::vector<double> dice_per_class;
  double mean_dice = 0;
  int64_t size_bytes = 0;
  int64_t steps = 0;
  int64_t created_unix_ms = 0;
  bool active = false;  // filled on reads
  StoredModelFormat format = StoredModelFormat::kMiseg;
};

// What DeleteDataset removed from the metadata, and the files the caller removes after the
// commit (a crash before they go leaves them unreferenced: the startup sweep takes them).
struct DeletedDataset {
  int64_t studies = 0, jobs = 0, models = 0;
  std::vector<std::string> orphan_objects;  // hashes no other instance or import references
  std::vector<std::string> model_paths;
  std::vector<int64_t> job_ids;  // their checkpoint files go too
};

// An import from a PACS (server/import/). States match miseg.v1.ImportState numbers.
enum class StoredImportState : int {
  kQueued = 1,
  kRunning = 2,
  kSucceeded = 3,
  kFailed = 4,
  kCancelled = 5
};
// One instance an import fetches. kPending: not yet; kFetched: in the file store as
// object_hash; kPresent: already in the dataset, not fetched; kNotNeeded: listed at the
// source but not part of what is imported (a SEG of another series).
enum class ImportInstanceState : int { kPending = 0, kFetched = 1, kPresent = 2, kNotNeeded = 3 };

struct ImportInstanceRecord {
  std::string sop_instance_uid;
  std::string series_instance_uid;
  bool is_segmentation = false;
  ImportInstanceState state = ImportInstanceState::kPending;
  std::string object_hash;  // set when kFetched
  int64_t size_bytes = 0;
};

struct ImportRecord {
  int64_t id = 0;
  int64_t dataset_id = 0;
  std::string dataset_name;  // filled on reads
  std::string source;
  StoredRole role = StoredRole::kUnlabeled;
  std::string study_instance_uid;
  std::string series_instance_uid;  // empty: every image series of the study
  StoredImportState state = StoredImportState::kQueued;
  std::string error, message;
  int32_t attempts = 0;
  bool cancel_requested = false;
  std::vector<std::string> stored_series;
  int64_t created_unix_ms = 0, started_unix_ms = 0, finished_unix_ms = 0;
  // Filled on reads from its instances: all but kNotNeeded, and those fetched or present.
  int64_t instances_total = 0, instances_fetched = 0;
};

// Thread safety: every method takes mutex_ for its whole run (a transaction included), so
// calls from any threads are serialized on the one SQLite connection. mutex_ guards that
// connection (what db_ points to); db_ itself is constant after construction.
class Store {
 public:
  // Opens or creates the database (schema versioned with PRAGMA user_version).
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Datasets. AlreadyExists for a taken name; NotFound for unknown names and ids.
  absl::StatusOr<DatasetRecord> CreateDataset(const DatasetRecord& dataset);
  absl::StatusOr<DatasetRecord> GetDataset(const std::string& name);
  absl::StatusOr<DatasetRecord> GetDatasetById(int64_t id);
  absl::StatusOr<std::vector<DatasetRecord>> ListDatasets();

  // The subset of sop_instance_uids already stored in the dataset (any study).
  absl::StatusOr<std::vector<std::string>> ExistingInstances(
      int64_t dataset_id, const std::vector<std::string>& sop_instance_uids);
  // Inserts a study and its instances in one transaction. AlreadyExists when the dataset
  // already holds the series or one of the instances (nothing is inserted then).
  absl::StatusOr<StudyRecord> InsertStudy(const StudyRecord& study);
  absl::StatusOr<StudyRecord> GetStudy(int64_t dataset_id, const std::string& series_uid);
  // Studies with their instances; role nullopt = all roles. Ordered by id.
  absl::StatusOr<std::vector<StudyRecord>> ListStudies(int64_t dataset_id,
                                                       std::optional<StoredRole> role);
  // Deletes the study and its instances; returns the object hashes no longer referenced by
  // any instance (the caller removes those files after this commits). NotFound if absent.
  absl::StatusOr<std::vector<std::string>> DeleteStudy(int64_t dataset_id,
                                                       const std::string& series_uid,
                                                       int64_t* deleted_instances);
  // Replaces the dataset's stored labeling priorities with these, in one transaction (the
  // combined score is relative to the set scored together, so older scores go). Studies
  // deleted since they were scored are skipped.
  absl::Status ReplaceLabelingPriorities(int64_t dataset_id,
                                         const std::vector<LabelingPriorityRecord>& priorities);
  // The dataset's stored priorities, ordered by study id.
  absl::StatusOr<std::vector<LabelingPriorityRecord>> ListLabelingPriorities(int64_t dataset_id);
  // Every object hash referenced by an instance (startup garbage collection).
  absl::StatusOr<std::vector<std::string>> ReferencedObjects();

  // Jobs: a durable FIFO queue.
  absl::StatusOr<JobRecord> CreateJob(const JobRecord& job);
  absl::StatusOr<JobRecord> GetJob(int64_t id);
  // dataset_id 0: all. Newest first.
  absl::StatusOr<std::vector<JobRecord>> ListJobs(int64_t dataset_id);
  // Queued jobs, oldest first.
  absl::StatusOr<std::vector<JobRecord>> ListQueuedJobs();
  // Jobs in one state, oldest first.
  absl::StatusOr<std::vector<JobRecord>> ListJobsInState(StoredJobState state);
  // Atomically takes this job if it is still queued (state -> running, device, started
  // time) and drops the events of the steps after its checkpoint, which it will produce
  // again; nullopt when it is not queued any more (cancelled meanwhile).
  absl::StatusOr<std::optional<JobRecord>> ClaimJob(int64_t id, const std::string& device);
  // After a crash: running jobs go back to queued (resumes + 1). Returns how many.
  absl::StatusOr<int> RequeueRunningJobs();
  // SIGTERM: this running job goes back to queued (it resumes on the next start).
  absl::Status RequeueJob(int64_t id);
  // Sets cancel_requested on a queued or running job; a queued one becomes cancelled at
  // once. FailedPrecondition for a finished job. Returns the job after the change.
  absl::StatusOr<JobRecord> RequestCancel(int64_t id);
  // A checkpoint was written (atomically, before this call): its step and path.
  absl::Status RecordCheckpoint(int64_t id, int64_t step, const std::string& checkpoint_path);
  absl::Status SetJobStudyCounts(int64_t id, int32_t labeled, int32_t unlabeled,
                                 int32_t validation);
  // Terminal states. FinishJobWithModel inserts the model and sets the job succeeded in
  // one transaction; activate makes it the dataset's active model. With terminal_event,
  // the same transaction also appends the event it makes of the model (its sequence in
  // *stored_event), so the job's history holds its end whenever a crash comes.
  absl::Status FailJob(int64_t id, const std::string& error);
  absl::Status CancelJob(int64_t id);
  using TerminalEventFor = std::function<JobEventRecord(const ModelRecord& model)>;
  absl::StatusOr<ModelRecord> FinishJobWithModel(int64_t job_id, const ModelRecord& model,
                                                 bool activate,
                                                 const TerminalEventFor& terminal_event = nullptr,
                                                 JobEventRecord* stored_event = nullptr);

  // Job events. AppendJobEvents assigns sequences and inserts in one transaction.
  absl::StatusOr<std::vector<JobEventRecord>> AppendJobEvents(
      int64_t job_id, std::vector<JobEventRecord> events);
  // Events with sequence > after_sequence and step >= from_step, in order, at most limit.
  absl::StatusOr<std::vector<JobEventRecord>> ListJobEvents(int64_t job_id,
                                                            int64_t after_sequence,
                                                            int64_t from_step, int64_t limit);
  // On resume from a checkpoint at `step`: events of later steps are deleted, since they
  // will be produced again (the history stays one consistent run).
  absl::Status TruncateJobEventsAfter(int64_t job_id, int64_t step);
  // The job's last checkpoint proved damaged: an earlier one (path empty and step 0: none,
  // the job starts over) becomes its checkpoint, and the events after its step go, in one
  // transaction.
  absl::Status FallBackToCheckpoint(int64_t job_id, int64_t step,
                                    const std::string& checkpoint_path);

  // Models.
  absl::StatusOr<ModelRecord> GetModel(int64_t id);
  absl::StatusOr<std::vector<ModelRecord>> ListModels(int64_t dataset_id);  // 0: all
  absl::StatusOr<ModelRecord> PromoteModel(int64_t id);
  // An imported model (no job): a new version of model.dataset_id, not active.
  absl::StatusOr<ModelRecord> InsertImportedModel(const ModelRecord& model);
  // Deletes a model version's row; its file is the caller's to remove after this returns.
  // FailedPrecondition for its dataset's active model.
  absl::StatusOr<ModelRecord> DeleteModel(int64_t id);
  // Deletes a dataset with its studies, imports, jobs (and their events) and models in one
  // transaction. FailedPrecondition while one of its jobs is queued or running.
  absl::StatusOr<DeletedDataset> DeleteDataset(int64_t id);
  // Every model file path (the startup sweep keeps these).
  absl::StatusOr<std::vector<std::string>> ModelPaths();
  // A finished job's checkpoint file was removed (retention): its path is cleared.
  absl::Status ForgetCheckpoint(int64_t job_id);

  // PRAGMA integrity_check: its complaints, empty when the database is sound.
  absl::StatusOr<std::vector<std::string>> IntegrityCheck();
  // An object was found damaged and moved to quarantine: every study holding it reports
  // `reason` as its damage until it is deleted or the object is stored again. Returns the
  // studies it affects (without their instances).
  absl::StatusOr<std::vector<StudyRecord>> QuarantineObject(const std::string& hash,
                                                            const std::string& reason);

  // Counts of jobs per state (for metrics).
  absl::StatusOr<std::vector<std::pair<StoredJobState, int64_t>>> CountJobsByState();

  // Imports (server/store/store_imports.cc). CreateImport returns the import of the same
  // dataset, study and series that is not finished (or failed or cancelled: queued again,
  // keeping its fetched instances) instead of creating another; *created says which.
  absl::StatusOr<ImportRecord> CreateImport(const ImportRecord& import, bool* created);
  absl::StatusOr<ImportRecord> GetImport(int64_t id);
  // dataset_id 0: all. Newest first.
  absl::StatusOr<std::vector<ImportRecord>> ListImports(int64_t dataset_id);
  // Queued imports, oldest first.
  absl::StatusOr<std::vector<ImportRecord>> ListQueuedImports();
  // Takes a queued import (running, attempts + 1); nullopt when it is not queued.
  absl::StatusOr<std::optional<ImportRecord>> ClaimImport(int64_t id);
  // After a crash or at shutdown: running imports go back to queued (a cancelled one is
  // cancelled). Returns how many were requeued.
  absl::StatusOr<int> RequeueRunningImports();
  // A queued import is cancelled at once, a running one marked. FailedPrecondition when
  // finished.
  absl::StatusOr<ImportRecord> RequestImportCancel(int64_t id);
  // The instances listed at the source, added to those already recorded (a re-listing after
  // a restart keeps what was fetched).
  absl::Status AddImportInstances(int64_t import_id,
                                  const std::vector<ImportInstanceRecord>& instances);
  absl::StatusOr<std::vector<ImportInstanceRecord>> ListImportInstances(int64_t import_id);
  // One instance's new state (and object when fetched), committed on its own.
  absl::Status SetImportInstance(int64_t import_id, const ImportInstanceRecord& instance);
  // Terminal: kSucceeded, kFailed or kCancelled, with the outcome.
  absl::Status FinishImport(int64_t id, StoredImportState state, const std::string& error,
                            const std::string& message,
                            const std::vector<std::string>& stored_series);

 private:
  explicit Store(sqlite3* db);

  absl::Mutex mutex_;
  // Constant after construction. Clang's analysis sees dereferences only, not a sqlite3_*
  // call that is handed db_: taking mutex_ before any use of db_ is the rule it cannot check.
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mutex_);
};

}  // namespace miseg

#endif  // MISEG_SERVER_STORE_STORE_H_

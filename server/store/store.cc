#include "server/store/store.h"

#include "server/store/sqlite_util.h"

#include <sqlite3.h>

#include <cstdio>
#include <functional>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "core/common/status_macros.h"
#include "core/common/unix_time.h"

namespace miseg {
namespace {

// Ids use AUTOINCREMENT so a deleted study's id is never handed out again (a client may
// still hold it). active_model_id and model_id use 0 for "none" rather than NULL so the
// structs map one to one; they are therefore not foreign keys.
constexpr const char* kSchema = R"sql(
CREATE TABLE datasets (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  class_names TEXT NOT NULL,
  modality TEXT NOT NULL,
  active_model_id INTEGER NOT NULL DEFAULT 0,
  created_unix_ms INTEGER NOT NULL
);
CREATE TABLE studies (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
  role INTEGER NOT NULL,
  study_instance_uid TEXT NOT NULL,
  series_instance_uid TEXT NOT NULL,
  modality TEXT NOT NULL,
  num_slices INTEGER NOT NULL,
  num_rows INTEGER NOT NULL,
  num_columns INTEGER NOT NULL,
  segmentation_sop_instance_uid TEXT NOT NULL,
  created_unix_ms INTEGER NOT NULL,
  series_description TEXT NOT NULL DEFAULT '',
  lossy_compressed INTEGER NOT NULL DEFAULT 0,
  lossy_compression_method TEXT NOT NULL DEFAULT '',
  UNIQUE (dataset_id, series_instance_uid)
);
CREATE TABLE instances (
  dataset_id INTEGER NOT NULL,
  sop_instance_uid TEXT NOT NULL,
  study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
  object_hash TEXT NOT NULL,
  size_bytes INTEGER NOT NULL,
  is_segmentation INTEGER NOT NULL,
  PRIMARY KEY (dataset_id, sop_instance_uid)
);
CREATE INDEX instances_by_study ON instances(study_id);
CREATE INDEX instances_by_hash ON instances(object_hash);
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  dataset_id INTEGER NOT NULL REFERENCES datasets(id),
  state INTEGER NOT NULL,
  hyperparameters BLOB NOT NULL,
  step INTEGER NOT NULL DEFAULT 0,
  total_steps INTEGER NOT NULL DEFAULT 0,
  device TEXT NOT NULL DEFAULT '',
  error TEXT NOT NULL DEFAULT '',
  checkpoint_path TEXT NOT NULL DEFAULT '',
  model_id INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  resumes INTEGER NOT NULL DEFAULT 0,
  labeled_studies INTEGER NOT NULL DEFAULT 0,
  unlabeled_studies INTEGER NOT NULL DEFAULT 0,
  validation_studies INTEGER NOT NULL DEFAULT 0,
  created_unix_ms INTEGER NOT NULL,
  started_unix_ms INTEGER NOT NULL DEFAULT 0,
  finished_unix_ms INTEGER NOT NULL DEFAULT 0,
  -- Event sequences are never reused, even after TruncateJobEventsAfter: a watcher that
  -- saw the truncated events still gets every later one.
  last_event_sequence INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_state ON jobs(state, id);
CREATE INDEX jobs_by_dataset ON jobs(dataset_id, id);
CREATE TABLE job_events (
  job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  sequence INTEGER NOT NULL,
  step INTEGER NOT NULL,
  unix_ms INTEGER NOT NULL,
  payload BLOB NOT NULL,
  PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE models (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  dataset_id INTEGER NOT NULL REFERENCES datasets(id),
  version INTEGER NOT NULL,
  job_id INTEGER REFERENCES jobs(id),  -- NULL for an imported model (no job made it)
  path TEXT NOT NULL,
  dice_per_class TEXT NOT NULL,
  mean_dice REAL NOT NULL,
  size_bytes INTEGER NOT NULL,
  steps INTEGER NOT NULL,
  created_unix_ms INTEGER NOT NULL,
  UNIQUE (dataset_id, version)
);
-- How a model's file is read, when it is not miseg's own archive (no row: format 1).
CREATE TABLE IF NOT EXISTS model_formats (
  model_id INTEGER PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
  format INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantined_objects (
  object_hash TEXT PRIMARY KEY,
  reason TEXT NOT NULL,
  quarantined_unix_ms INTEGER NOT NULL
);
)sql";

// Tables a migration adds, written once: the fresh schema (FreshSchema) and the
// migration use the same text.
constexpr const char* kImportTables = R"sql(
-- Imports from a PACS (server/import/): the job, and each instance it will fetch, with the
-- object it was stored as once fetched (state 0 pending, 1 fetched, 2 already in the
-- dataset, 3 not needed), so a restarted import fetches nothing twice.
CREATE TABLE IF NOT EXISTS imports (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
  source TEXT NOT NULL,
  role INTEGER NOT NULL,
  study_instance_uid TEXT NOT NULL,
  series_instance_uid TEXT NOT NULL,
  state INTEGER NOT NULL,
  error TEXT NOT NULL DEFAULT '',
  message TEXT NOT NULL DEFAULT '',
  attempts INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  stored_series TEXT NOT NULL DEFAULT '',
  created_unix_ms INTEGER NOT NULL,
  started_unix_ms INTEGER NOT NULL DEFAULT 0,
  finished_unix_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS imports_by_state ON imports(state, id);
CREATE TABLE IF NOT EXISTS import_instances (
  import_id INTEGER NOT NULL REFERENCES imports(id) ON DELETE CASCADE,
  sop_instance_uid TEXT NOT NULL,
  series_instance_uid TEXT NOT NULL,
  is_segmentation INTEGER NOT NULL,
  state INTEGER NOT NULL DEFAULT 0,
  object_hash TEXT NOT NULL DEFAULT '',
  size_bytes INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (import_id, sop_instance_uid)
) WITHOUT ROWID;
)sql";

constexpr const char* kLabelingPriorityTable = R"sql(
CREATE TABLE IF NOT EXISTS labeling_priorities (
  study_id INTEGER PRIMARY KEY REFERENCES studies(id) ON DELETE CASCADE,
  score REAL NOT NULL,
  disagreement REAL NOT NULL,
  mutual_information REAL NOT NULL,
  entropy REAL NOT NULL,
  model_id INTEGER NOT NULL,
  scored_unix_ms INTEGER NOT NULL
);
)sql";

// A new database: the base schema and the tables migrations added since.
const std::string& FreshSchema() {
  static const std::string* const schema =
      new std::string(absl::StrCat(kSchema, kImportTables, kLabelingPriorityTable));
  return *schema;
}

using sqlite::Exec;
using sqlite::InTransaction;
using sqlite::SqliteError;
using sqlite::Stmt;

// --- Encodings of list columns. ---

std::string JoinClassNames(const std::vector<std::string>& names) {
  return absl::StrJoin(names, "\n");
}
std::vector<std::string> SplitClassNames(const std::string& text) {
  if (text.empty()) return {};
  return absl::StrSplit(text, '\n');
}
std::string JoinDoubles(const std::vector<double>& values) {
  // %.17g round-trips every double exactly.
  return absl::StrJoin(values, ",", [](std::string* out, double v) {
    absl::StrAppend(out, absl::StrFormat("%.17g", v));
  });
}
absl::StatusOr<std::vector<double>> SplitDoubles(const std::string& text) {
  std::vector<double> values;
  if (text.empty()) return values;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    double v = 0;
    if (!absl::SimpleAtod(part, &v)) {
      return absl::DataLossError(
          absl::StrCat("store: malformed dice_per_class value \"", part, "\""));
    }
    values.push_back(v);
  }
  return values;
}

// --- Row readers. Each SELECT below lists its columns in the order its reader expects. ---

constexpr const char* kDatasetSelect = R"sql(
SELECT d.id, d.name, d.class_names, d.modality, d.active_model_id, d.created_unix_ms,
  (SELECT COUNT(*) FROM studies s WHERE s.dataset_id = d.id AND s.role = 1),
  (SELECT COUNT(*) FROM studies s WHERE s.dataset_id = d.id AND s.role = 2),
  (SELECT COUNT(*) FROM studies s WHERE s.dataset_id = d.id AND s.role = 3),
  (SELECT COUNT(*) FROM instances i WHERE i.dataset_id = d.id),
  (SELECT COALESCE(SUM(i.size_bytes), 0) FROM instances i WHERE i.dataset_id = d.id)
FROM datasets d )sql";

DatasetRecord ReadDataset(const Stmt& s) {
  DatasetRecord d;
  d.id = s.Int(0);
  d.name = s.Text(1);
  d.class_names = SplitClassNames(s.Text(2));
  d.modality = s.Text(3);
  d.active_model_id = s.Int(4);
  d.created_unix_ms = s.Int(5);
  d.labeled_studies = s.Int(6);
  d.unlabeled_studies = s.Int(7);
  d.validation_studies = s.Int(8);
  d.instances = s.Int(9);
  d.stored_bytes = s.Int(10);
  return d;
}

// Column 12: why the study cannot be used (one of its objects is quarantined), or ''.
constexpr const char* kStudySelect = R"sql(
SELECT s.id, s.dataset_id, s.role, s.study_instance_uid, s.series_instance_uid,
  s.modality, s.num_slices, s.num_rows, s.num_columns, s.segmentation_sop_instance_uid,
  s.created_unix_ms, s.series_description,
  COALESCE((SELECT 'instance ' || i.sop_instance_uid || ' (object ' || q.object_hash ||
                   '): ' || q.reason
            FROM instances i JOIN quarantined_objects q ON q.object_hash = i.object_hash
            WHERE i.study_id = s.id LIMIT 1), ''),
  s.lossy_compressed, s.lossy_compression_method
FROM studies s )sql";

StudyRecord ReadStudy(const Stmt& s) {
  StudyRecord r;
  r.id = s.Int(0);
  r.dataset_id = s.Int(1);
  r.role = static_cast<StoredRole>(s.Int(2));
  r.study_instance_uid = s.Text(3);
  r.series_instance_uid = s.Text(4);
  r.modality = s.Text(5);
  r.slices = static_cast<int32_t>(s.Int(6));
  r.rows = static_cast<int32_t>(s.Int(7));
  r.columns = static_cast<int32_t>(s.Int(8));
  r.segmentation_sop_instance_uid = s.Text(9);
  r.created_unix_ms = s.Int(10);
  r.series_description = s.Text(11);
  r.damage = s.Text(12);
  r.lossy_compressed = s.Int(13) != 0;
  r.lossy_compression_method = s.Text(14);
  return r;
}

// Columns 0..3 of an instance row (after which a query may add its own).
InstanceRecord ReadInstance(const Stmt& s, int first) {
  InstanceRecord i;
  i.sop_instance_uid = s.Text(first);
  i.object_hash = s.Text(first + 1);
  i.size_bytes = s.Int(first + 2);
  i.is_segmentation = s.Int(first + 3) != 0;
  return i;
}

constexpr const char* kJobSelect = R"sql(
SELECT j.id, j.dataset_id, d.name, j.state, j.hyperparameters, j.step, j.total_steps,
  j.device, j.error, j.checkpoint_path, j.model_id, j.cancel_requested, j.resumes,
  j.labeled_studies, j.unlabeled_studies, j.validation_studies, j.created_unix_ms,
  j.started_unix_ms, j.finished_unix_ms
FROM jobs j JOIN datasets d ON d.id = j.dataset_id )sql";

JobRecord ReadJob(const Stmt& s) {
  JobRecord j;
  j.id = s.Int(0);
  j.dataset_id = s.Int(1);
  j.dataset_name = s.Text(2);
  j.state = static_cast<StoredJobState>(s.Int(3));
  j.hyperparameters = s.Text(4);
  j.step = s.Int(5);
  j.total_steps = s.Int(6);
  j.device = s.Text(7);
  j.error = s.Text(8);
  j.checkpoint_path = s.Text(9);
  j.model_id = s.Int(10);
  j.cancel_requested = s.Int(11) != 0;
  j.resumes = static_cast<int32_t>(s.Int(12));
  j.labeled_studies = static_cast<int32_t>(s.Int(13));
  j.unlabeled_studies = static_cast<int32_t>(s.Int(14));
  j.validation_studies = static_cast<int32_t>(s.Int(15));
  j.created_unix_ms = s.Int(16);
  j.started_unix_ms = s.Int(17);
  j.finished_unix_ms = s.Int(18);
  return j;
}

constexpr const char* kModelSelect = R"sql(
SELECT m.id, m.dataset_id, d.name, m.version, m.job_id, m.path, m.dice_per_class,
  m.mean_dice, m.size_bytes, m.steps, m.created_unix_ms, d.active_model_id = m.id,
  COALESCE(f.format, 1)
FROM models m JOIN datasets d ON d.id = m.dataset_id
  LEFT JOIN model_formats f ON f.model_id = m.id )sql";

absl::StatusOr<ModelRecord> ReadModel(const Stmt& s) {
  ModelRecord m;
  m.id = s.Int(0);
  m.dataset_id = s.Int(1);
  m.dataset_name = s.Text(2);
  m.version = s.Int(3);
  m.job_id = s.Int(4);
  m.path = s.Text(5);
  ASSIGN_OR_RETURN(m.dice_per_class, SplitDoubles(s.Text(6)));
  m.mean_dice = s.Double(7);
  m.size_bytes = s.Int(8);
  m.steps = s.Int(9);
  m.created_unix_ms = s.Int(10);
  m.active = s.Int(11) != 0;
  m.format = s.Int(12) == static_cast<int64_t>(StoredModelFormat::kTorchScript)
                 ? StoredModelFormat::kTorchScript
                 : StoredModelFormat::kMiseg;
  return m;
}

const char* StateName(StoredJobState state) {
  switch (state) {
    case StoredJobState::kQueued:
      return "queued";
    case StoredJobState::kRunning:
      return "running";
    case StoredJobState::kSucceeded:
      return "succeeded";
    case StoredJobState::kFailed:
      return "failed";
    case StoredJobState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

bool IsTerminal(StoredJobState state) {
  return state == StoredJobState::kSucceeded || state == StoredJobState::kFailed ||
         state == StoredJobState::kCancelled;
}

// --- Queries shared by several methods; callers hold the mutex. ---

absl::StatusOr<DatasetRecord> LoadDatasetById(sqlite3* db, int64_t id) {
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db, absl::StrCat(kDatasetSelect,
                                                          "WHERE d.id = ?1").c_str()));
  s.Bind(1, id);
  ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("dataset ", id, " not found"));
  return ReadDataset(s);
}

absl::Status CheckDatasetExists(sqlite3* db, int64_t id) {
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db, "SELECT 1 FROM datasets WHERE id = ?1"));
  s.Bind(1, id);
  ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("dataset ", id, " not found"));
  return absl::OkStatus();
}

absl::Status LoadInstances(sqlite3* db, StudyRecord* study) {
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                         "SELECT sop_instance_uid, object_hash, size_bytes, "
                                         "is_segmentation FROM instances WHERE study_id = ?1 "
                                         "ORDER BY rowid"));
  s.Bind(1, study->id);
  study->instances.clear();
  while (true) {
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    study->instances.push_back(ReadInstance(s, 0));
  }
  return absl::OkStatus();
}

absl::StatusOr<StudyRecord> LoadStudy(sqlite3* db, int64_t dataset_id,
                                      const std::string& series_uid) {
  ASSIGN_OR_RETURN(
      Stmt s, Stmt::Prepare(db, absl::StrCat(kStudySelect,
                                             "WHERE s.dataset_id = ?1 AND "
                                             "s.series_instance_uid = ?2")
                                    .c_str()));
  s.Bind(1, dataset_id).BindText(2, series_uid);
  ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat("series ", series_uid,
                                            " not found in dataset ", dataset_id));
  }
  StudyRecord study = ReadStudy(s);
  RETURN_IF_ERROR(LoadInstances(db, &study));
  return study;
}

absl::StatusOr<JobRecord> LoadJob(sqlite3* db, int64_t id) {
  ASSIGN_OR_RETURN(Stmt s,
                   Stmt::Prepare(db, absl::StrCat(kJobSelect, "WHERE j.id = ?1").c_str()));
  s.Bind(1, id);
  ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  return ReadJob(s);
}

absl::StatusOr<ModelRecord> LoadModel(sqlite3* db, int64_t id) {
  ASSIGN_OR_RETURN(Stmt s,
                   Stmt::Prepare(db, absl::StrCat(kModelSelect, "WHERE m.id = ?1").c_str()));
  s.Bind(1, id);
  ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("model ", id, " not found"));
  return ReadModel(s);
}

// Moves a job that is not finished into a terminal state.
absl::Status FinishJobLocked(sqlite3* db, int64_t id, StoredJobState state,
                             const std::string& error) {
  ASSIGN_OR_RETURN(JobRecord job, LoadJob(db, id));
  if (IsTerminal(job.state)) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " is already ", StateName(job.state)));
  }
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                         "UPDATE jobs SET state = ?1, error = ?2, "
                                         "finished_unix_ms = ?3 WHERE id = ?4"));
  s.Bind(1, static_cast<int64_t>(state)).BindText(2, error).Bind(3, NowUnixMs()).Bind(4, id);
  return s.Run();
}

// Running -> queued with one more resume; a running job whose cancellation was requested
// is cancelled instead, since resuming it would only train until it is cancelled again
// (and keeps "a queued job never has cancel_requested" true). Returns whether requeued.
absl::StatusOr<bool> RequeueRunningLocked(sqlite3* db, const JobRecord& job) {
  if (job.cancel_requested) {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                           "UPDATE jobs SET state = ?1, finished_unix_ms = ?2 "
                                           "WHERE id = ?3"));
    s.Bind(1, static_cast<int64_t>(StoredJobState::kCancelled))
        .Bind(2, NowUnixMs())
        .Bind(3, job.id);
    RETURN_IF_ERROR(s.Run());
    return false;
  }
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                         "UPDATE jobs SET state = ?1, resumes = resumes + 1 "
                                         "WHERE id = ?2"));
  s.Bind(1, static_cast<int64_t>(StoredJobState::kQueued)).Bind(2, job.id);
  RETURN_IF_ERROR(s.Run());
  return true;
}

// Assigns the events the job's next sequences (never reused) and inserts them.
absl::Status AppendEventsLocked(sqlite3* db, int64_t job_id, std::vector<JobEventRecord>& events) {
  int64_t next = 1;
  {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db, "SELECT last_event_sequence + 1 FROM jobs "
                                               "WHERE id = ?1"));
    s.Bind(1, job_id);
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (row) next = s.Int(0);
  }
  {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db, "UPDATE jobs SET last_event_sequence = ?2 "
                                               "WHERE id = ?1"));
    s.Bind(1, job_id).Bind(2, next + static_cast<int64_t>(events.size()) - 1);
    RETURN_IF_ERROR(s.Run());
  }
  const int64_t now = NowUnixMs();
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                         "INSERT INTO job_events (job_id, sequence, step, "
                                         "unix_ms, payload) VALUES (?1, ?2, ?3, ?4, ?5)"));
  for (JobEventRecord& event : events) {
    event.job_id = job_id;
    event.sequence = next++;
    if (event.unix_ms == 0) event.unix_ms = now;
    s.Reset();
    s.Bind(1, job_id)
        .Bind(2, event.sequence)
        .Bind(3, event.step)
        .Bind(4, event.unix_ms)
        .BindBlob(5, event.payload);
    RETURN_IF_ERROR(s.Run());
  }
  return absl::OkStatus();
}

absl::Status DeleteEventsAfterLocked(sqlite3* db, int64_t job_id, int64_t step) {
  ASSIGN_OR_RETURN(Stmt s,
                   Stmt::Prepare(db, "DELETE FROM job_events WHERE job_id = ?1 AND step > ?2"));
  s.Bind(1, job_id).Bind(2, step);
  return s.Run();
}

}  // namespace

// --- Open / close. ---

// migrations[k] takes a database from schema version k + 1 to k + 2.
const std::vector<const char*>& Migrations() {
  static const auto* const migrations = new std::vector<const char*>{
      // 1 -> 2: the series description (decoded to UTF-8) shown in listings.
      "ALTER TABLE studies ADD COLUMN series_description TEXT NOT NULL DEFAULT ''",
      // 2 -> 3: objects `miseg-server verify` found damaged and moved to quarantine/.
      "CREATE TABLE IF NOT EXISTS quarantined_objects (object_hash TEXT PRIMARY KEY, "
      "reason TEXT NOT NULL, quarantined_unix_ms INTEGER NOT NULL)",
      // 3 -> 4: imports from a PACS (issue 16): the jobs and the instances each fetches.
      kImportTables,
      // 4 -> 5: models in (issue 16): an imported model has no job (models.job_id may be
      // NULL: the table is rebuilt, SQLite cannot drop a NOT NULL), and a format (2 for a
      // TorchScript module; a model without a row is miseg's own archive, 1).
      R"sql(
CREATE TABLE models_new (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  dataset_id INTEGER NOT NULL REFERENCES datasets(id),
  version INTEGER NOT NULL,
  job_id INTEGER REFERENCES jobs(id),
  path TEXT NOT NULL,
  dice_per_class TEXT NOT NULL,
  mean_dice REAL NOT NULL,
  size_bytes INTEGER NOT NULL,
  steps INTEGER NOT NULL,
  created_unix_ms INTEGER NOT NULL,
  UNIQUE (dataset_id, version)
);
INSERT INTO models_new SELECT id, dataset_id, version, job_id, path, dice_per_class, mean_dice,
  size_bytes, steps, created_unix_ms FROM models;
DROP TABLE models;
ALTER TABLE models_new RENAME TO models;
CREATE TABLE IF NOT EXISTS model_formats (
  model_id INTEGER PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
  format INTEGER NOT NULL
);
)sql",
      // Active learning (issue 14): the last SuggestStudies score of each study.
      kLabelingPriorityTable,
      // Lossy-compressed sources (issue 21): a study whose images were lossy-compressed.
      "ALTER TABLE studies ADD COLUMN lossy_compressed INTEGER NOT NULL DEFAULT 0; "
      "ALTER TABLE studies ADD COLUMN lossy_compression_method TEXT NOT NULL DEFAULT ''",
  };
  return *migrations;
}

// The schema version follows from the migrations: a new one is appended, never inserted.
int SchemaVersion() { return static_cast<int>(Migrations().size()) + 1; }

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  ASSIGN_OR_RETURN(sqlite3 * db, sqlite::OpenDatabase(path, FreshSchema().c_str(),
                                                      SchemaVersion(), Migrations()));
  return std::unique_ptr<Store>(new Store(db));
}

Store::Store(sqlite3* db) : db_(db) {}

Store::~Store() {
  // Every statement is finalized by its Stmt, so close_v2 closes at once.
  sqlite3_close_v2(db_);
}

// --- Datasets. ---

absl::StatusOr<DatasetRecord> Store::CreateDataset(const DatasetRecord& dataset) {
  absl::MutexLock lock(&mutex_);
  DatasetRecord created;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt exists, Stmt::Prepare(db_, "SELECT 1 FROM datasets WHERE name = ?1"));
    exists.BindText(1, dataset.name);
    ASSIGN_OR_RETURN(bool row, exists.Step());
    if (row) {
      return absl::AlreadyExistsError(
          absl::StrCat("dataset \"", dataset.name, "\" already exists"));
    }
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "INSERT INTO datasets (name, class_names, "
                                           "modality, created_unix_ms) VALUES (?1, ?2, ?3, "
                                           "?4)"));
    s.BindText(1, dataset.name)
        .BindText(2, JoinClassNames(dataset.class_names))
        .BindText(3, dataset.modality)
        .Bind(4, NowUnixMs());
    RETURN_IF_ERROR(s.Run());
    ASSIGN_OR_RETURN(created, LoadDatasetById(db_, sqlite3_last_insert_rowid(db_)));
    return absl::OkStatus();
  }));
  return created;
}

absl::StatusOr<DatasetRecord> Store::GetDataset(const std::string& name) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, absl::StrCat(kDatasetSelect,
                                                           "WHERE d.name = ?1").c_str()));
  s.BindText(1, name);
  ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("dataset \"", name, "\" not found"));
  return ReadDataset(s);
}

absl::StatusOr<DatasetRecord> Store::GetDatasetById(int64_t id) {
  absl::MutexLock lock(&mutex_);
  return LoadDatasetById(db_, id);
}

absl::StatusOr<std::vector<DatasetRecord>> Store::ListDatasets() {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s,
                   Stmt::Prepare(db_, absl::StrCat(kDatasetSelect, "ORDER BY d.id").c_str()));
  return sqlite::ReadRows(s, [](const Stmt& row) { return ReadDataset(row); });
}

// --- Studies and instances. ---

absl::StatusOr<std::vector<std::string>> Store::ExistingInstances(
    int64_t dataset_id, const std::vector<std::string>& sop_instance_uids) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                         "SELECT 1 FROM instances WHERE dataset_id = ?1 AND "
                                         "sop_instance_uid = ?2"));
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const std::string& uid : sop_instance_uids) {
    if (!seen.insert(uid).second) continue;
    s.Reset();
    s.Bind(1, dataset_id).BindText(2, uid);
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (row) out.push_back(uid);
  }
  return out;
}

namespace {

// AlreadyExists when the dataset holds the series or any of its instances already;
// InvalidArgument when the study names an instance twice.
absl::Status CheckStudyIsNew(sqlite3* db, const StudyRecord& study) {
  {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                           "SELECT 1 FROM studies WHERE dataset_id = ?1 "
                                           "AND series_instance_uid = ?2"));
    s.Bind(1, study.dataset_id).BindText(2, study.series_instance_uid);
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (row) {
      return absl::AlreadyExistsError(absl::StrCat("series ", study.series_instance_uid,
                                                   " already exists in dataset ",
                                                   study.dataset_id));
    }
  }
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                         "SELECT 1 FROM instances WHERE dataset_id = ?1 "
                                         "AND sop_instance_uid = ?2"));
  std::set<std::string> seen;
  for (const InstanceRecord& instance : study.instances) {
    if (!seen.insert(instance.sop_instance_uid).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "instance ", instance.sop_instance_uid, " appears twice in the study"));
    }
    s.Reset();
    s.Bind(1, study.dataset_id).BindText(2, instance.sop_instance_uid);
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (row) {
      return absl::AlreadyExistsError(absl::StrCat("instance ", instance.sop_instance_uid,
                                                   " already exists in dataset ",
                                                   study.dataset_id));
    }
  }
  return absl::OkStatus();
}

// The study's row; returns its id.
absl::StatusOr<int64_t> InsertStudyRow(sqlite3* db, const StudyRecord& study) {
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                         "INSERT INTO studies (dataset_id, role, "
                                         "study_instance_uid, series_instance_uid, modality, "
                                         "num_slices, num_rows, num_columns, "
                                         "segmentation_sop_instance_uid, created_unix_ms, "
                                         "series_description, lossy_compressed, "
                                         "lossy_compression_method) "
                                         "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, "
                                         "?11, ?12, ?13)"));
  s.Bind(1, study.dataset_id)
      .Bind(2, static_cast<int64_t>(study.role))
      .BindText(3, study.study_instance_uid)
      .BindText(4, study.series_instance_uid)
      .BindText(5, study.modality)
      .Bind(6, static_cast<int64_t>(study.slices))
      .Bind(7, static_cast<int64_t>(study.rows))
      .Bind(8, static_cast<int64_t>(study.columns))
      .BindText(9, study.segmentation_sop_instance_uid)
      .Bind(10, NowUnixMs())
      .BindText(11, study.series_description)
      .Bind(12, static_cast<int64_t>(study.lossy_compressed ? 1 : 0))
      .BindText(13, study.lossy_compression_method);
  RETURN_IF_ERROR(s.Run());
  return sqlite3_last_insert_rowid(db);
}

// The study's instances; the ingest stored (and checked) their objects anew, so a
// quarantined hash among them is whole again.
absl::Status InsertInstanceRows(sqlite3* db, const StudyRecord& study, int64_t study_id) {
  ASSIGN_OR_RETURN(Stmt insert, Stmt::Prepare(db,
                                              "INSERT INTO instances (dataset_id, "
                                              "sop_instance_uid, study_id, object_hash, "
                                              "size_bytes, is_segmentation) VALUES (?1, ?2, "
                                              "?3, ?4, ?5, ?6)"));
  for (const InstanceRecord& instance : study.instances) {
    insert.Reset();
    insert.Bind(1, study.dataset_id)
        .BindText(2, instance.sop_instance_uid)
        .Bind(3, study_id)
        .BindText(4, instance.object_hash)
        .Bind(5, instance.size_bytes)
        .Bind(6, static_cast<int64_t>(instance.is_segmentation ? 1 : 0));
    RETURN_IF_ERROR(insert.Run());
  }
  ASSIGN_OR_RETURN(Stmt healed, Stmt::Prepare(db, "DELETE FROM quarantined_objects "
                                                  "WHERE object_hash = ?1"));
  for (const InstanceRecord& instance : study.instances) {
    healed.Reset();
    healed.BindText(1, instance.object_hash);
    RETURN_IF_ERROR(healed.Run());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StudyRecord> Store::InsertStudy(const StudyRecord& study) {
  const int role = static_cast<int>(study.role);
  if (role < 1 || role > 3) {
    return absl::InvalidArgumentError(absl::StrCat("invalid study role ", role));
  }
  absl::MutexLock lock(&mutex_);
  StudyRecord inserted;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckDatasetExists(db_, study.dataset_id));
    RETURN_IF_ERROR(CheckStudyIsNew(db_, study));
    ASSIGN_OR_RETURN(const int64_t study_id, InsertStudyRow(db_, study));
    RETURN_IF_ERROR(InsertInstanceRows(db_, study, study_id));
    ASSIGN_OR_RETURN(inserted, LoadStudy(db_, study.dataset_id, study.series_instance_uid));
    return absl::OkStatus();
  }));
  return inserted;
}

absl::StatusOr<StudyRecord> Store::GetStudy(int64_t dataset_id,
                                            const std::string& series_uid) {
  absl::MutexLock lock(&mutex_);
  return LoadStudy(db_, dataset_id, series_uid);
}

absl::StatusOr<std::vector<StudyRecord>> Store::ListStudies(int64_t dataset_id,
                                                            std::optional<StoredRole> role) {
  absl::MutexLock lock(&mutex_);
  const int64_t role_filter = role.has_value() ? static_cast<int64_t>(*role) : 0;
  std::vector<StudyRecord> out;
  std::map<int64_t, size_t> index_of;
  {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, absl::StrCat(kStudySelect,
                                                             "WHERE s.dataset_id = ?1 AND "
                                                             "(?2 = 0 OR s.role = ?2) "
                                                             "ORDER BY s.id")
                                                    .c_str()));
    s.Bind(1, dataset_id).Bind(2, role_filter);
    while (true) {
      ASSIGN_OR_RETURN(bool row, s.Step());
      if (!row) break;
      index_of[s.Int(0)] = out.size();
      out.push_back(ReadStudy(s));
    }
  }
  // All instances in one query rather than one per study.
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                         "SELECT i.sop_instance_uid, i.object_hash, "
                                         "i.size_bytes, i.is_segmentation, i.study_id "
                                         "FROM instances i JOIN studies s ON s.id = "
                                         "i.study_id WHERE s.dataset_id = ?1 AND (?2 = 0 OR "
                                         "s.role = ?2) ORDER BY i.study_id, i.rowid"));
  s.Bind(1, dataset_id).Bind(2, role_filter);
  while (true) {
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    auto it = index_of.find(s.Int(4));
    if (it != index_of.end()) out[it->second].instances.push_back(ReadInstance(s, 0));
  }
  return out;
}

absl::Status Store::ReplaceLabelingPriorities(
    int64_t dataset_id, const std::vector<LabelingPriorityRecord>& priorities) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt clear, Stmt::Prepare(db_,
                                               "DELETE FROM labeling_priorities WHERE study_id "
                                               "IN (SELECT id FROM studies WHERE dataset_id = ?1)"));
    clear.Bind(1, dataset_id);
    RETURN_IF_ERROR(clear.Run());
    for (const LabelingPriorityRecord& p : priorities) {
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                             "INSERT INTO labeling_priorities SELECT id, ?3, ?4, "
                                             "?5, ?6, ?7, ?8 FROM studies WHERE dataset_id = ?1 "
                                             "AND series_instance_uid = ?2"));
      s.Bind(1, dataset_id).BindText(2, p.series_instance_uid).Bind(3, p.score)
          .Bind(4, p.disagreement).Bind(5, p.mutual_information)
          .Bind(6, p.entropy).Bind(7, p.model_id).Bind(8, p.scored_unix_ms);
      RETURN_IF_ERROR(s.Run());
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<LabelingPriorityRecord>> Store::ListLabelingPriorities(
    int64_t dataset_id) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                         "SELECT s.series_instance_uid, p.score, p.disagreement, "
                                         "p.mutual_information, p.entropy, p.model_id, "
                                         "p.scored_unix_ms FROM labeling_priorities p JOIN "
                                         "studies s ON s.id = p.study_id WHERE s.dataset_id = ?1 "
                                         "ORDER BY s.id"));
  s.Bind(1, dataset_id);
  std::vector<LabelingPriorityRecord> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    out.push_back({s.Text(0), s.Double(1), s.Double(2), s.Double(3), s.Double(4), s.Int(5),
                   s.Int(6)});
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> Store::DeleteStudy(int64_t dataset_id,
                                                            const std::string& series_uid,
                                                            int64_t* deleted_instances) {
  absl::MutexLock lock(&mutex_);
  std::vector<std::string> orphans;
  int64_t deleted = 0;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    orphans.clear();
    ASSIGN_OR_RETURN(StudyRecord study, LoadStudy(db_, dataset_id, series_uid));
    std::set<std::string> hashes;
    for (const InstanceRecord& instance : study.instances) hashes.insert(instance.object_hash);
    {
      // Instances explicitly, not only by cascade, so the count is exact.
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, "DELETE FROM instances WHERE study_id = ?1"));
      s.Bind(1, study.id);
      RETURN_IF_ERROR(s.Run());
      deleted = sqlite3_changes(db_);
    }
    {
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, "DELETE FROM studies WHERE id = ?1"));
      s.Bind(1, study.id);
      RETURN_IF_ERROR(s.Run());
    }
    // Deduplicated storage: a hash may still back an instance of another study/dataset.
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "SELECT 1 FROM instances WHERE object_hash = ?1 "
                                           "LIMIT 1"));
    for (const std::string& hash : hashes) {
      s.Reset();
      s.BindText(1, hash);
      ASSIGN_OR_RETURN(bool row, s.Step());
      if (!row) orphans.push_back(hash);
    }
    ASSIGN_OR_RETURN(Stmt forget, Stmt::Prepare(db_, "DELETE FROM quarantined_objects "
                                                     "WHERE object_hash = ?1"));
    for (const std::string& hash : orphans) {
      forget.Reset();
      forget.BindText(1, hash);
      RETURN_IF_ERROR(forget.Run());
    }
    return absl::OkStatus();
  }));
  if (deleted_instances != nullptr) *deleted_instances = deleted;
  return orphans;
}

absl::StatusOr<std::vector<std::string>> Store::ReferencedObjects() {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                         "SELECT object_hash FROM instances UNION "
                                         // An unfinished import's fetched instances: kept
                                         // for its resume or retry.
                                         "SELECT ii.object_hash FROM import_instances ii "
                                         "JOIN imports i ON i.id = ii.import_id "
                                         "WHERE i.state <> 3 AND ii.object_hash <> '' "
                                         "ORDER BY 1"));
  return sqlite::ReadStrings(s);
}

// --- Jobs. ---

absl::StatusOr<JobRecord> Store::CreateJob(const JobRecord& job) {
  absl::MutexLock lock(&mutex_);
  JobRecord created;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckDatasetExists(db_, job.dataset_id));
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "INSERT INTO jobs (dataset_id, state, "
                                           "hyperparameters, total_steps, labeled_studies, "
                                           "unlabeled_studies, validation_studies, "
                                           "created_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
                                           "?7, ?8)"));
    s.Bind(1, job.dataset_id)
        .Bind(2, static_cast<int64_t>(StoredJobState::kQueued))
        .BindBlob(3, job.hyperparameters)
        .Bind(4, job.total_steps)
        .Bind(5, static_cast<int64_t>(job.labeled_studies))
        .Bind(6, static_cast<int64_t>(job.unlabeled_studies))
        .Bind(7, static_cast<int64_t>(job.validation_studies))
        .Bind(8, NowUnixMs());
    RETURN_IF_ERROR(s.Run());
    ASSIGN_OR_RETURN(created, LoadJob(db_, sqlite3_last_insert_rowid(db_)));
    return absl::OkStatus();
  }));
  return created;
}

absl::StatusOr<JobRecord> Store::GetJob(int64_t id) {
  absl::MutexLock lock(&mutex_);
  return LoadJob(db_, id);
}

absl::StatusOr<std::vector<JobRecord>> Store::ListJobs(int64_t dataset_id) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, absl::StrCat(kJobSelect,
                                                           "WHERE ?1 = 0 OR j.dataset_id = ?1 "
                                                           "ORDER BY j.id DESC")
                                                  .c_str()));
  s.Bind(1, dataset_id);
  return sqlite::ReadRows(s, [](const Stmt& row) { return ReadJob(row); });
}

absl::StatusOr<std::vector<JobRecord>> Store::ListQueuedJobs() {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, absl::StrCat(kJobSelect,
                                                           "WHERE j.state = ?1 ORDER BY j.id")
                                                  .c_str()));
  s.Bind(1, static_cast<int64_t>(StoredJobState::kQueued));
  return sqlite::ReadRows(s, [](const Stmt& row) { return ReadJob(row); });
}

absl::StatusOr<std::optional<JobRecord>> Store::ClaimJob(int64_t id, const std::string& device) {
  absl::MutexLock lock(&mutex_);
  std::optional<JobRecord> claimed;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    claimed.reset();
    {
      ASSIGN_OR_RETURN(JobRecord job, LoadJob(db_, id));
      if (job.state != StoredJobState::kQueued) return absl::OkStatus();
    }
    // A resumed job keeps its first start time, so its run time spans all attempts.
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "UPDATE jobs SET state = ?1, device = ?2, "
                                           "started_unix_ms = CASE WHEN started_unix_ms = 0 "
                                           "THEN ?3 ELSE started_unix_ms END WHERE id = ?4"));
    s.Bind(1, static_cast<int64_t>(StoredJobState::kRunning))
        .BindText(2, device)
        .Bind(3, NowUnixMs())
        .Bind(4, id);
    RETURN_IF_ERROR(s.Run());
    ASSIGN_OR_RETURN(claimed, LoadJob(db_, id));
    // In the same transaction: a claim that commits has always dropped the events it will
    // produce again, even when the disk fills right after it.
    return DeleteEventsAfterLocked(db_, id, claimed->step);
  }));
  return claimed;
}

absl::StatusOr<int> Store::RequeueRunningJobs() {
  absl::MutexLock lock(&mutex_);
  int requeued = 0;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    requeued = 0;
    std::vector<JobRecord> running;
    {
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, absl::StrCat(kJobSelect,
                                                               "WHERE j.state = ?1 "
                                                               "ORDER BY j.id")
                                                      .c_str()));
      s.Bind(1, static_cast<int64_t>(StoredJobState::kRunning));
      while (true) {
        ASSIGN_OR_RETURN(bool row, s.Step());
        if (!row) break;
        running.push_back(ReadJob(s));
      }
    }
    for (const JobRecord& job : running) {
      ASSIGN_OR_RETURN(bool was_requeued, RequeueRunningLocked(db_, job));
      if (was_requeued) ++requeued;
    }
    return absl::OkStatus();
  }));
  return requeued;
}

absl::Status Store::RequeueJob(int64_t id) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(JobRecord job, LoadJob(db_, id));
    if (job.state != StoredJobState::kRunning) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", id, " is ", StateName(job.state), ", not running"));
    }
    return RequeueRunningLocked(db_, job).status();
  });
}

absl::StatusOr<JobRecord> Store::RequestCancel(int64_t id) {
  absl::MutexLock lock(&mutex_);
  JobRecord result;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(JobRecord job, LoadJob(db_, id));
    if (IsTerminal(job.state)) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", id, " is already ", StateName(job.state)));
    }
    if (job.state == StoredJobState::kQueued) {
      // Nothing runs it yet, so nothing has to acknowledge the cancellation.
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                             "UPDATE jobs SET state = ?1, cancel_requested = "
                                             "1, finished_unix_ms = ?2 WHERE id = ?3"));
      s.Bind(1, static_cast<int64_t>(StoredJobState::kCancelled)).Bind(2, NowUnixMs()).Bind(3, id);
      RETURN_IF_ERROR(s.Run());
    } else {
      // The runner sees the flag and calls CancelJob when it has stopped.
      ASSIGN_OR_RETURN(Stmt s,
                       Stmt::Prepare(db_, "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1"));
      s.Bind(1, id);
      RETURN_IF_ERROR(s.Run());
    }
    ASSIGN_OR_RETURN(result, LoadJob(db_, id));
    return absl::OkStatus();
  }));
  return result;
}

absl::Status Store::RecordCheckpoint(int64_t id, int64_t step,
                                     const std::string& checkpoint_path) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "UPDATE jobs SET step = ?1, checkpoint_path = ?2 "
                                           "WHERE id = ?3"));
    s.Bind(1, step).BindText(2, checkpoint_path).Bind(3, id);
    RETURN_IF_ERROR(s.Run());
    if (sqlite3_changes(db_) == 0) {
      return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
    }
    return absl::OkStatus();
  });
}

absl::Status Store::SetJobStudyCounts(int64_t id, int32_t labeled, int32_t unlabeled,
                                      int32_t validation) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "UPDATE jobs SET labeled_studies = ?1, "
                                           "unlabeled_studies = ?2, validation_studies = ?3 "
                                           "WHERE id = ?4"));
    s.Bind(1, static_cast<int64_t>(labeled))
        .Bind(2, static_cast<int64_t>(unlabeled))
        .Bind(3, static_cast<int64_t>(validation))
        .Bind(4, id);
    RETURN_IF_ERROR(s.Run());
    if (sqlite3_changes(db_) == 0) {
      return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
    }
    return absl::OkStatus();
  });
}

absl::Status Store::FailJob(int64_t id, const std::string& error) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(
      db_, [&]() { return FinishJobLocked(db_, id, StoredJobState::kFailed, error); });
}

absl::Status Store::CancelJob(int64_t id) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(
      db_, [&]() { return FinishJobLocked(db_, id, StoredJobState::kCancelled, ""); });
}

absl::StatusOr<ModelRecord> Store::FinishJobWithModel(int64_t job_id, const ModelRecord& model,
                                                      bool activate,
                                                      const TerminalEventFor& terminal_event,
                                                      JobEventRecord* stored_event) {
  absl::MutexLock lock(&mutex_);
  ModelRecord inserted;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(JobRecord job, LoadJob(db_, job_id));
    if (IsTerminal(job.state)) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", job_id, " is already ", StateName(job.state)));
    }
    int64_t version = 0;
    {
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                             "SELECT COALESCE(MAX(version), 0) + 1 FROM "
                                             "models WHERE dataset_id = ?1"));
      s.Bind(1, job.dataset_id);
      ASSIGN_OR_RETURN(bool row, s.Step());
      version = row ? s.Int(0) : 1;
    }
    const int64_t now = NowUnixMs();
    int64_t model_id = 0;
    {
      // The model belongs to the job's dataset whatever the record says.
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                             "INSERT INTO models (dataset_id, version, job_id, "
                                             "path, dice_per_class, mean_dice, size_bytes, "
                                             "steps, created_unix_ms) VALUES (?1, ?2, ?3, ?4, "
                                             "?5, ?6, ?7, ?8, ?9)"));
      s.Bind(1, job.dataset_id)
          .Bind(2, version)
          .Bind(3, job_id)
          .BindText(4, model.path)
          .BindText(5, JoinDoubles(model.dice_per_class))
          .Bind(6, model.mean_dice)
          .Bind(7, model.size_bytes)
          .Bind(8, model.steps)
          .Bind(9, now);
      RETURN_IF_ERROR(s.Run());
      model_id = sqlite3_last_insert_rowid(db_);
    }
    {
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                             "UPDATE jobs SET state = ?1, model_id = ?2, "
                                             "step = ?3, finished_unix_ms = ?4 WHERE id = ?5"));
      s.Bind(1, static_cast<int64_t>(StoredJobState::kSucceeded))
          .Bind(2, model_id)
          .Bind(3, model.steps)
          .Bind(4, now)
          .Bind(5, job_id);
      RETURN_IF_ERROR(s.Run());
    }
    if (activate) {
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                             "UPDATE datasets SET active_model_id = ?1 "
                                             "WHERE id = ?2"));
      s.Bind(1, model_id).Bind(2, job.dataset_id);
      RETURN_IF_ERROR(s.Run());
    }
    ASSIGN_OR_RETURN(inserted, LoadModel(db_, model_id));
    if (!terminal_event) return absl::OkStatus();
    std::vector<JobEventRecord> events = {terminal_event(inserted)};
    RETURN_IF_ERROR(AppendEventsLocked(db_, job_id, events));
    if (stored_event != nullptr) *stored_event = events.front();
    return absl::OkStatus();
  }));
  return inserted;
}

// --- Job events. ---

absl::StatusOr<std::vector<JobEventRecord>> Store::AppendJobEvents(
    int64_t job_id, std::vector<JobEventRecord> events) {
  absl::MutexLock lock(&mutex_);
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt exists, Stmt::Prepare(db_, "SELECT 1 FROM jobs WHERE id = ?1"));
    exists.Bind(1, job_id);
    ASSIGN_OR_RETURN(bool found, exists.Step());
    if (!found) return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
    return AppendEventsLocked(db_, job_id, events);
  }));
  return events;
}

absl::StatusOr<std::vector<JobEventRecord>> Store::ListJobEvents(int64_t job_id,
                                                                 int64_t after_sequence,
                                                                 int64_t from_step,
                                                                 int64_t limit) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                         "SELECT job_id, sequence, step, unix_ms, payload "
                                         "FROM job_events WHERE job_id = ?1 AND sequence > ?2 "
                                         "AND step >= ?3 ORDER BY sequence LIMIT ?4"));
  // SQLite reads a negative LIMIT as "no limit"; treat limit <= 0 the same way.
  s.Bind(1, job_id).Bind(2, after_sequence).Bind(3, from_step).Bind(4, limit > 0 ? limit : -1);
  std::vector<JobEventRecord> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    JobEventRecord e;
    e.job_id = s.Int(0);
    e.sequence = s.Int(1);
    e.step = s.Int(2);
    e.unix_ms = s.Int(3);
    e.payload = s.Text(4);
    out.push_back(std::move(e));
  }
  return out;
}

absl::Status Store::TruncateJobEventsAfter(int64_t job_id, int64_t step) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt exists, Stmt::Prepare(db_, "SELECT 1 FROM jobs WHERE id = ?1"));
    exists.Bind(1, job_id);
    ASSIGN_OR_RETURN(bool found, exists.Step());
    if (!found) return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
    return DeleteEventsAfterLocked(db_, job_id, step);
  });
}

absl::Status Store::FallBackToCheckpoint(int64_t job_id, int64_t step,
                                         const std::string& checkpoint_path) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "UPDATE jobs SET step = ?1, checkpoint_path = ?2 "
                                           "WHERE id = ?3"));
    s.Bind(1, step).BindText(2, checkpoint_path).Bind(3, job_id);
    RETURN_IF_ERROR(s.Run());
    if (sqlite3_changes(db_) == 0) {
      return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
    }
    return DeleteEventsAfterLocked(db_, job_id, step);
  });
}

absl::StatusOr<std::vector<JobRecord>> Store::ListJobsInState(StoredJobState state) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, absl::StrCat(kJobSelect,
                                                           "WHERE j.state = ?1 ORDER BY j.id")
                                                  .c_str()));
  s.Bind(1, static_cast<int64_t>(state));
  return sqlite::ReadRows(s, [](const Stmt& row) { return ReadJob(row); });
}

// --- Integrity (miseg-server verify). ---

absl::StatusOr<std::vector<std::string>> Store::IntegrityCheck() {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, "PRAGMA integrity_check"));
  ASSIGN_OR_RETURN(std::vector<std::string> rows, sqlite::ReadStrings(s));
  if (rows.size() == 1 && rows.front() == "ok") rows.clear();
  return rows;
}

absl::StatusOr<std::vector<StudyRecord>> Store::QuarantineObject(const std::string& hash,
                                                                 const std::string& reason) {
  absl::MutexLock lock(&mutex_);
  std::vector<StudyRecord> affected;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "INSERT INTO quarantined_objects (object_hash, "
                                           "reason, quarantined_unix_ms) VALUES (?1, ?2, ?3) "
                                           "ON CONFLICT (object_hash) DO UPDATE SET reason = "
                                           "?2, quarantined_unix_ms = ?3"));
    s.BindText(1, hash).BindText(2, reason).Bind(3, NowUnixMs());
    RETURN_IF_ERROR(s.Run());
    ASSIGN_OR_RETURN(Stmt studies,
                     Stmt::Prepare(db_, absl::StrCat(kStudySelect,
                                                     "WHERE s.id IN (SELECT study_id FROM "
                                                     "instances WHERE object_hash = ?1) "
                                                     "ORDER BY s.id")
                                            .c_str()));
    studies.BindText(1, hash);
    ASSIGN_OR_RETURN(affected, sqlite::ReadRows(studies, [](const Stmt& row) {
                       return ReadStudy(row);
                     }));
    return absl::OkStatus();
  }));
  return affected;
}

// --- Models. ---

absl::StatusOr<ModelRecord> Store::GetModel(int64_t id) {
  absl::MutexLock lock(&mutex_);
  return LoadModel(db_, id);
}

absl::StatusOr<std::vector<ModelRecord>> Store::ListModels(int64_t dataset_id) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, absl::StrCat(kModelSelect,
                                                           "WHERE ?1 = 0 OR m.dataset_id = ?1 "
                                                           "ORDER BY m.id")
                                                  .c_str()));
  s.Bind(1, dataset_id);
  return sqlite::ReadRows(s, [](const Stmt& row) { return ReadModel(row); });
}

absl::StatusOr<ModelRecord> Store::PromoteModel(int64_t id) {
  absl::MutexLock lock(&mutex_);
  ModelRecord promoted;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(ModelRecord model, LoadModel(db_, id));
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "UPDATE datasets SET active_model_id = ?1 WHERE "
                                           "id = ?2"));
    s.Bind(1, id).Bind(2, model.dataset_id);
    RETURN_IF_ERROR(s.Run());
    ASSIGN_OR_RETURN(promoted, LoadModel(db_, id));
    return absl::OkStatus();
  }));
  return promoted;
}

// --- Models in, and deletes (issue 16). ---

namespace {

absl::StatusOr<int64_t> NextModelVersion(sqlite3* db, int64_t dataset_id) {
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db, "SELECT COALESCE(MAX(version), 0) + 1 FROM "
                                             "models WHERE dataset_id = ?1"));
  s.Bind(1, dataset_id);
  ASSIGN_OR_RETURN(bool row, s.Step());
  return row ? s.Int(0) : 1;
}

absl::StatusOr<std::vector<int64_t>> ReadIds(sqlite3* db, const char* sql, int64_t key) {
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db, sql));
  s.Bind(1, key);
  return sqlite::ReadRows(s, [](const Stmt& row) { return row.Int(0); });
}

absl::StatusOr<int64_t> RunCounted(sqlite3* db, const char* sql, int64_t key) {
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db, sql));
  s.Bind(1, key);
  RETURN_IF_ERROR(s.Run());
  return static_cast<int64_t>(sqlite3_changes(db));
}

// The objects a dataset's instances and imports hold (candidates to free when it goes).
absl::StatusOr<std::vector<std::string>> ObjectsOfDataset(sqlite3* db, int64_t dataset_id) {
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                         "SELECT object_hash FROM instances WHERE dataset_id = ?1 "
                                         "UNION SELECT ii.object_hash FROM import_instances ii "
                                         "JOIN imports i ON i.id = ii.import_id WHERE "
                                         "i.dataset_id = ?1 AND ii.object_hash <> ''"));
  s.Bind(1, dataset_id);
  return sqlite::ReadRows(s, [](const Stmt& row) { return row.Text(0); });
}

// Of `hashes`, those nothing references any more: no instance of any dataset, no import.
absl::StatusOr<std::vector<std::string>> Unreferenced(sqlite3* db,
                                                      const std::vector<std::string>& hashes) {
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                         "SELECT 1 FROM instances WHERE object_hash = ?1 UNION "
                                         "ALL SELECT 1 FROM import_instances WHERE "
                                         "object_hash = ?1 LIMIT 1"));
  std::vector<std::string> orphans;
  for (const std::string& hash : hashes) {
    s.Reset();
    s.BindText(1, hash);
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) orphans.push_back(hash);
  }
  return orphans;
}

}  // namespace

absl::StatusOr<ModelRecord> Store::InsertImportedModel(const ModelRecord& model) {
  absl::MutexLock lock(&mutex_);
  ModelRecord inserted;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    RETURN_IF_ERROR(LoadDatasetById(db_, model.dataset_id).status());
    ASSIGN_OR_RETURN(int64_t version, NextModelVersion(db_, model.dataset_id));
    // No job made it: job_id is NULL in the table (a foreign key), 0 in the record.
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "INSERT INTO models (dataset_id, version, job_id, "
                                           "path, dice_per_class, mean_dice, size_bytes, steps, "
                                           "created_unix_ms) VALUES (?1, ?2, NULL, ?3, ?4, ?5, "
                                           "?6, ?7, ?8)"));
    s.Bind(1, model.dataset_id)
        .Bind(2, version)
        .BindText(3, model.path)
        .BindText(4, JoinDoubles(model.dice_per_class))
        .Bind(5, model.mean_dice)
        .Bind(6, model.size_bytes)
        .Bind(7, model.steps)
        .Bind(8, NowUnixMs());
    RETURN_IF_ERROR(s.Run());
    const int64_t id = sqlite3_last_insert_rowid(db_);
    ASSIGN_OR_RETURN(Stmt f, Stmt::Prepare(db_, "INSERT INTO model_formats (model_id, format) "
                                                "VALUES (?1, ?2)"));
    f.Bind(1, id).Bind(2, static_cast<int64_t>(model.format));
    RETURN_IF_ERROR(f.Run());
    ASSIGN_OR_RETURN(inserted, LoadModel(db_, id));
    return absl::OkStatus();
  }));
  return inserted;
}

absl::StatusOr<ModelRecord> Store::DeleteModel(int64_t id) {
  absl::MutexLock lock(&mutex_);
  ModelRecord deleted;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(deleted, LoadModel(db_, id));
    if (deleted.active) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model ", id, " is the active model of dataset '", deleted.dataset_name,
          "': promote another version first"));
    }
    return RunCounted(db_, "DELETE FROM models WHERE id = ?1", id).status();
  }));
  return deleted;
}

absl::StatusOr<DeletedDataset> Store::DeleteDataset(int64_t id) {
  absl::MutexLock lock(&mutex_);
  DeletedDataset out;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    out = DeletedDataset();
    ASSIGN_OR_RETURN(DatasetRecord dataset, LoadDatasetById(db_, id));
    ASSIGN_OR_RETURN(std::vector<int64_t> busy,
                     ReadIds(db_, "SELECT id FROM jobs WHERE dataset_id = ?1 AND state IN (1, 2)",
                             id));
    if (!busy.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "dataset '", dataset.name, "' has ", busy.size(), " queued or running job(s) (job ",
          busy.front(), "): cancel them first, or delete with force"));
    }
    ASSIGN_OR_RETURN(std::vector<std::string> objects, ObjectsOfDataset(db_, id));
    ASSIGN_OR_RETURN(Stmt paths, Stmt::Prepare(db_, "SELECT path FROM models WHERE dataset_id = ?1"));
    paths.Bind(1, id);
    ASSIGN_OR_RETURN(out.model_paths, sqlite::ReadRows(paths, [](const Stmt& row) {
                       return row.Text(0);
                     }));
    ASSIGN_OR_RETURN(out.job_ids, ReadIds(db_, "SELECT id FROM jobs WHERE dataset_id = ?1", id));
    // Children first: models reference jobs, jobs and studies the dataset (job_events,
    // instances, imports and their instances go by cascade).
    ASSIGN_OR_RETURN(out.models, RunCounted(db_, "DELETE FROM models WHERE dataset_id = ?1", id));
    ASSIGN_OR_RETURN(out.jobs, RunCounted(db_, "DELETE FROM jobs WHERE dataset_id = ?1", id));
    RETURN_IF_ERROR(RunCounted(db_, "DELETE FROM instances WHERE dataset_id = ?1", id).status());
    ASSIGN_OR_RETURN(out.studies, RunCounted(db_, "DELETE FROM studies WHERE dataset_id = ?1", id));
    RETURN_IF_ERROR(RunCounted(db_, "DELETE FROM datasets WHERE id = ?1", id).status());
    ASSIGN_OR_RETURN(out.orphan_objects, Unreferenced(db_, objects));
    ASSIGN_OR_RETURN(Stmt forget, Stmt::Prepare(db_, "DELETE FROM quarantined_objects "
                                                     "WHERE object_hash = ?1"));
    for (const std::string& hash : out.orphan_objects) {
      forget.Reset();
      forget.BindText(1, hash);
      RETURN_IF_ERROR(forget.Run());
    }
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<std::vector<std::string>> Store::ModelPaths() {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, "SELECT path FROM models"));
  return sqlite::ReadRows(s, [](const Stmt& row) { return row.Text(0); });
}

absl::Status Store::ForgetCheckpoint(int64_t job_id) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(db_, [&]() -> absl::Status {
    return RunCounted(db_,
                      "UPDATE jobs SET checkpoint_path = '' WHERE id = ?1 AND state IN (3, 4, 5)",
                      job_id)
        .status();
  });
}

absl::StatusOr<std::vector<std::pair<StoredJobState, int64_t>>> Store::CountJobsByState() {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s,
                   Stmt::Prepare(db_, "SELECT state, COUNT(*) FROM jobs GROUP BY state"));
  std::map<int64_t, int64_t> counts;
  while (true) {
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    counts[s.Int(0)] = s.Int(1);
  }
  std::vector<std::pair<StoredJobState, int64_t>> out;
  for (StoredJobState state :
       {StoredJobState::kQueued, StoredJobState::kRunning, StoredJobState::kSucceeded,
        StoredJobState::kFailed, StoredJobState::kCancelled}) {
    out.emplace_back(state, counts[static_cast<int64_t>(state)]);
  }
  return out;
}

}  // namespace miseg

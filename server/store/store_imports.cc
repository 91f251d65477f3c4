// The store's imports (issue 16): the import jobs and the instances each one fetches. Kept
// apart from store.cc so that the tables of one feature read together; same connection,
// same mutex, same one-transaction-per-mutation rule.
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/common/status_macros.h"
#include "core/common/unix_time.h"
#include "server/store/sqlite_util.h"
#include "server/store/store.h"

namespace miseg {
namespace {

using sqlite::InTransaction;
using sqlite::Stmt;

bool IsFinished(StoredImportState state) {
  return state == StoredImportState::kSucceeded || state == StoredImportState::kFailed ||
         state == StoredImportState::kCancelled;
}

// Columns 16 and 17 count the import's instances: listed (less those not needed), and those
// fetched or found in the dataset already.
constexpr const char* kImportSelect = R"sql(
SELECT i.id, i.dataset_id, d.name, i.source, i.role, i.study_instance_uid,
  i.series_instance_uid, i.state, i.error, i.message, i.attempts, i.cancel_requested,
  i.stored_series, i.created_unix_ms, i.started_unix_ms, i.finished_unix_ms,
  (SELECT COUNT(*) FROM import_instances x WHERE x.import_id = i.id AND x.state <> 3),
  (SELECT COUNT(*) FROM import_instances x WHERE x.import_id = i.id AND x.state IN (1, 2))
FROM imports i JOIN datasets d ON d.id = i.dataset_id )sql";

ImportRecord ReadImport(const Stmt& s) {
  ImportRecord r;
  r.id = s.Int(0);
  r.dataset_id = s.Int(1);
  r.dataset_name = s.Text(2);
  r.source = s.Text(3);
  r.role = static_cast<StoredRole>(s.Int(4));
  r.study_instance_uid = s.Text(5);
  r.series_instance_uid = s.Text(6);
  r.state = static_cast<StoredImportState>(s.Int(7));
  r.error = s.Text(8);
  r.message = s.Text(9);
  r.attempts = static_cast<int32_t>(s.Int(10));
  r.cancel_requested = s.Int(11) != 0;
  const std::string stored = s.Text(12);
  if (!stored.empty()) r.stored_series = absl::StrSplit(stored, '\n');
  r.created_unix_ms = s.Int(13);
  r.started_unix_ms = s.Int(14);
  r.finished_unix_ms = s.Int(15);
  r.instances_total = s.Int(16);
  r.instances_fetched = s.Int(17);
  return r;
}

absl::StatusOr<ImportRecord> LoadImport(sqlite3* db, int64_t id) {
  ASSIGN_OR_RETURN(Stmt s,
                   Stmt::Prepare(db, absl::StrCat(kImportSelect, "WHERE i.id = ?1").c_str()));
  s.Bind(1, id);
  ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("import ", id, " not found"));
  return ReadImport(s);
}

// The import of the same dataset, study and series that has not succeeded, if any.
absl::StatusOr<std::optional<int64_t>> FindOpenImport(sqlite3* db, const ImportRecord& import) {
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                         "SELECT id FROM imports WHERE dataset_id = ?1 AND "
                                         "study_instance_uid = ?2 AND series_instance_uid = ?3 "
                                         "AND state <> 3 ORDER BY id DESC LIMIT 1"));
  s.Bind(1, import.dataset_id)
      .BindText(2, import.study_instance_uid)
      .BindText(3, import.series_instance_uid);
  ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::nullopt;
  return s.Int(0);
}

// A failed or cancelled import asked for again: queued, its outcome cleared, its source and
// role those of the new request.
absl::Status Requeue(sqlite3* db, int64_t id, const ImportRecord& import) {
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db,
                                         "UPDATE imports SET state = 1, error = '', message = "
                                         "'', cancel_requested = 0, finished_unix_ms = 0, "
                                         "source = ?2, role = ?3 WHERE id = ?1"));
  s.Bind(1, id).BindText(2, import.source).Bind(3, static_cast<int64_t>(import.role));
  return s.Run();
}

}  // namespace

absl::StatusOr<ImportRecord> Store::CreateImport(const ImportRecord& import, bool* created) {
  absl::MutexLock lock(&mutex_);
  int64_t id = 0;
  *created = false;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::optional<int64_t> open, FindOpenImport(db_, import));
    if (open) {
      id = *open;
      ASSIGN_OR_RETURN(ImportRecord existing, LoadImport(db_, id));
      if (existing.state == StoredImportState::kFailed ||
          existing.state == StoredImportState::kCancelled) {
        return Requeue(db_, id, import);
      }
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "INSERT INTO imports (dataset_id, source, role, "
                                           "study_instance_uid, series_instance_uid, state, "
                                           "created_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)"));
    s.Bind(1, import.dataset_id)
        .BindText(2, import.source)
        .Bind(3, static_cast<int64_t>(import.role))
        .BindText(4, import.study_instance_uid)
        .BindText(5, import.series_instance_uid)
        .Bind(6, NowUnixMs());
    RETURN_IF_ERROR(s.Run());
    id = sqlite3_last_insert_rowid(db_);
    *created = true;
    return absl::OkStatus();
  }));
  return LoadImport(db_, id);
}

absl::StatusOr<ImportRecord> Store::GetImport(int64_t id) {
  absl::MutexLock lock(&mutex_);
  return LoadImport(db_, id);
}

absl::StatusOr<std::vector<ImportRecord>> Store::ListImports(int64_t dataset_id) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, absl::StrCat(kImportSelect,
                                                           "WHERE ?1 = 0 OR i.dataset_id = ?1 "
                                                           "ORDER BY i.id DESC")
                                                  .c_str()));
  s.Bind(1, dataset_id);
  return sqlite::ReadRows(s, ReadImport);
}

absl::StatusOr<std::vector<ImportRecord>> Store::ListQueuedImports() {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, absl::StrCat(kImportSelect,
                                                           "WHERE i.state = 1 ORDER BY i.id")
                                                  .c_str()));
  return sqlite::ReadRows(s, ReadImport);
}

absl::StatusOr<std::optional<ImportRecord>> Store::ClaimImport(int64_t id) {
  absl::MutexLock lock(&mutex_);
  bool claimed = false;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "UPDATE imports SET state = 2, attempts = attempts "
                                           "+ 1, started_unix_ms = ?2 WHERE id = ?1 AND "
                                           "state = 1"));
    s.Bind(1, id).Bind(2, NowUnixMs());
    RETURN_IF_ERROR(s.Run());
    claimed = sqlite3_changes(db_) == 1;
    return absl::OkStatus();
  }));
  if (!claimed) return std::nullopt;
  return LoadImport(db_, id);
}

absl::StatusOr<int> Store::RequeueRunningImports() {
  absl::MutexLock lock(&mutex_);
  int requeued = 0;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt cancel, Stmt::Prepare(db_,
                                                "UPDATE imports SET state = 5, "
                                                "finished_unix_ms = ?1 WHERE state = 2 AND "
                                                "cancel_requested = 1"));
    cancel.Bind(1, NowUnixMs());
    RETURN_IF_ERROR(cancel.Run());
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, "UPDATE imports SET state = 1 WHERE state = 2"));
    RETURN_IF_ERROR(s.Run());
    requeued = sqlite3_changes(db_);
    return absl::OkStatus();
  }));
  return requeued;
}

absl::StatusOr<ImportRecord> Store::RequestImportCancel(int64_t id) {
  absl::MutexLock lock(&mutex_);
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(ImportRecord import, LoadImport(db_, id));
    if (IsFinished(import.state)) {
      return absl::FailedPreconditionError(
          absl::StrCat("import ", id, " is already finished; nothing to cancel"));
    }
    if (import.state == StoredImportState::kQueued) {
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                             "UPDATE imports SET state = 5, message = "
                                             "'cancelled before it started', "
                                             "finished_unix_ms = ?2 WHERE id = ?1"));
      s.Bind(1, id).Bind(2, NowUnixMs());
      return s.Run();
    }
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, "UPDATE imports SET cancel_requested = 1 "
                                                "WHERE id = ?1"));
    s.Bind(1, id);
    return s.Run();
  }));
  return LoadImport(db_, id);
}

absl::Status Store::AddImportInstances(int64_t import_id,
                                       const std::vector<ImportInstanceRecord>& instances) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                           "INSERT OR IGNORE INTO import_instances (import_id, "
                                           "sop_instance_uid, series_instance_uid, "
                                           "is_segmentation, state) VALUES (?1, ?2, ?3, ?4, ?5)"));
    for (const ImportInstanceRecord& i : instances) {
      s.Reset();
      s.Bind(1, import_id)
          .BindText(2, i.sop_instance_uid)
          .BindText(3, i.series_instance_uid)
          .Bind(4, int64_t{i.is_segmentation ? 1 : 0})
          .Bind(5, static_cast<int64_t>(i.state));
      RETURN_IF_ERROR(s.Run());
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<ImportInstanceRecord>> Store::ListImportInstances(int64_t import_id) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                         "SELECT sop_instance_uid, series_instance_uid, "
                                         "is_segmentation, state, object_hash, size_bytes FROM "
                                         "import_instances WHERE import_id = ?1 ORDER BY "
                                         "series_instance_uid, sop_instance_uid"));
  s.Bind(1, import_id);
  return sqlite::ReadRows(s, [](const Stmt& row) {
    ImportInstanceRecord r;
    r.sop_instance_uid = row.Text(0);
    r.series_instance_uid = row.Text(1);
    r.is_segmentation = row.Int(2) != 0;
    r.state = static_cast<ImportInstanceState>(row.Int(3));
    r.object_hash = row.Text(4);
    r.size_bytes = row.Int(5);
    return r;
  });
}

absl::Status Store::SetImportInstance(int64_t import_id, const ImportInstanceRecord& instance) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                         "UPDATE import_instances SET state = ?3, object_hash "
                                         "= ?4, size_bytes = ?5 WHERE import_id = ?1 AND "
                                         "sop_instance_uid = ?2"));
  s.Bind(1, import_id)
      .BindText(2, instance.sop_instance_uid)
      .Bind(3, static_cast<int64_t>(instance.state))
      .BindText(4, instance.object_hash)
      .Bind(5, instance.size_bytes);
  return s.Run();
}

absl::Status Store::FinishImport(int64_t id, StoredImportState state, const std::string& error,
                                 const std::string& message,
                                 const std::vector<std::string>& stored_series) {
  absl::MutexLock lock(&mutex_);
  RETURN_IF_ERROR(LoadImport(db_, id).status());
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
                                         "UPDATE imports SET state = ?2, error = ?3, message = "
                                         "?4, stored_series = ?5, finished_unix_ms = ?6 "
                                         "WHERE id = ?1"));
  s.Bind(1, id)
      .Bind(2, static_cast<int64_t>(state))
      .BindText(3, error)
      .BindText(4, message)
      .BindText(5, absl::StrJoin(stored_series, "\n"))
      .Bind(6, NowUnixMs());
  return s.Run();
}

}  // namespace miseg

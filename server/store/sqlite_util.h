// Small helpers over SQLite's C API shared by the server's stores: prepared statements with
// bound values only, and transactions that roll back on any error.
#ifndef MISEG_SERVER_STORE_SQLITE_UTIL_H_
#define MISEG_SERVER_STORE_SQLITE_UTIL_H_

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/common/status_macros.h"

namespace miseg::sqlite {

// The status code of a failed SQLite call: a full disk is ResourceExhausted (the caller
// may retry once space is freed: an upload is refused, a job step retried later), a
// damaged file DataLoss, anything else Internal.
inline absl::StatusCode SqliteCode(int rc) {
  switch (rc & 0xff) {
    case SQLITE_FULL: return absl::StatusCode::kResourceExhausted;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: return absl::StatusCode::kDataLoss;
    default: return absl::StatusCode::kInternal;
  }
}

inline absl::Status SqliteError(sqlite3* db, int rc, absl::string_view what) {
  // A uniqueness violation that slipped past the explicit checks is still a conflict.
  if ((rc & 0xff) == SQLITE_CONSTRAINT &&
      (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)) {
    return absl::AlreadyExistsError(
        absl::StrCat("store: ", what, ": ", sqlite3_errmsg(db)));
  }
  return absl::Status(SqliteCode(rc), absl::StrCat("store: SQLite error in ", what, ": ",
                                                   sqlite3_errmsg(db), " (",
                                                   sqlite3_errstr(rc), ")"));
}

inline absl::Status Exec(sqlite3* db, const char* sql) {
  char* message = nullptr;
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, &message);
  if (rc == SQLITE_OK) return absl::OkStatus();
  std::string text = message != nullptr ? message : sqlite3_errstr(rc);
  sqlite3_free(message);
  return absl::Status(SqliteCode(rc),
                      absl::StrCat("store: SQLite error in \"",
                                   absl::string_view(sql).substr(0, 40), "\": ", text));
}

// A prepared statement. Values are only ever bound, never spliced into SQL. Bind errors
// (which only a programming mistake produces) are remembered and reported by Step.
class Stmt {
 public:
  static absl::StatusOr<Stmt> Prepare(sqlite3* db, const char* sql) {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(stmt);
      return SqliteError(db, rc, absl::StrCat("preparing \"", sql, "\""));
    }
    return Stmt(db, stmt);
  }
  Stmt(Stmt&& other) noexcept
      : db_(other.db_), stmt_(std::exchange(other.stmt_, nullptr)), bind_rc_(other.bind_rc_) {}
  Stmt& operator=(Stmt&&) = delete;
  ~Stmt() { sqlite3_finalize(stmt_); }

  Stmt& Bind(int index, int64_t value) {
    Check(sqlite3_bind_int64(stmt_, index, value));
    return *this;
  }
  Stmt& Bind(int index, double value) {
    Check(sqlite3_bind_double(stmt_, index, value));
    return *this;
  }
  Stmt& BindText(int index, absl::string_view value) {
    Check(sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT,
                              SQLITE_UTF8));
    return *this;
  }
  // Opaque bytes (serialized protos may hold NULs and invalid UTF-8).
  Stmt& BindBlob(int index, absl::string_view value) {
    // A zero-length blob with a null pointer would bind NULL; "" keeps it a blob.
    Check(sqlite3_bind_blob64(stmt_, index, value.empty() ? "" : value.data(), value.size(),
                              SQLITE_TRANSIENT));
    return *this;
  }

  // True when a row is available, false when the statement is done.
  absl::StatusOr<bool> Step() {
    if (bind_rc_ != SQLITE_OK) return SqliteError(db_, bind_rc_, Context());
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqliteError(db_, rc, Context());
  }
  // Runs a statement that returns no rows.
  absl::Status Run() {
    ASSIGN_OR_RETURN(bool row, Step());
    (void)row;
    return absl::OkStatus();
  }
  // Makes the statement runnable again with new bindings.
  void Reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
    bind_rc_ = SQLITE_OK;
  }

  int64_t Int(int column) const { return sqlite3_column_int64(stmt_, column); }
  double Double(int column) const { return sqlite3_column_double(stmt_, column); }
  std::string Text(int column) const {
    const void* data = sqlite3_column_blob(stmt_, column);
    int size = sqlite3_column_bytes(stmt_, column);
    if (data == nullptr || size <= 0) return std::string();
    return std::string(static_cast<const char*>(data), static_cast<size_t>(size));
  }

 private:
  Stmt(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  void Check(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }
  std::string Context() const {
    absl::string_view sql = sqlite3_sql(stmt_);
    return absl::StrCat("\"", sql.substr(0, 80), sql.size() > 80 ? "...\"" : "\"");
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
  int bind_rc_ = SQLITE_OK;
};

// Runs body inside BEGIN IMMEDIATE ... COMMIT; rolls back when body or COMMIT fails, so a
// failed call leaves the database as it was. IMMEDIATE takes the write lock up front, so a
// transaction never fails half way for a lock it could not upgrade.
template <typename Body>
absl::Status InTransaction(sqlite3* db, Body&& body) {
  RETURN_IF_ERROR(Exec(db, "BEGIN IMMEDIATE"));
  absl::Status status = body();
  if (status.ok()) status = Exec(db, "COMMIT");
  if (!status.ok() && !sqlite3_get_autocommit(db)) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  return status;
}

template <typename T>
struct RowValue {
  using type = T;
  static absl::StatusOr<T> Get(T&& value) { return std::move(value); }
};
template <typename T>
struct RowValue<absl::StatusOr<T>> {
  using type = T;
  static absl::StatusOr<T> Get(absl::StatusOr<T>&& value) { return std::move(value); }
};

// Every remaining row, each made by read(s): a value, or a StatusOr whose error stops.
template <typename Read>
auto ReadRows(Stmt& s, Read&& read)
    -> absl::StatusOr<std::vector<typename RowValue<decltype(read(s))>::type>> {
  using Made = decltype(read(s));
  std::vector<typename RowValue<Made>::type> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(auto value, RowValue<Made>::Get(read(s)));
    out.push_back(std::move(value));
  }
  return out;
}

// Column 0 of every row, as text.
inline absl::StatusOr<std::vector<std::string>> ReadStrings(Stmt& s) {
  return ReadRows(s, [](const Stmt& row) { return row.Text(0); });
}

// Opens (or creates) a database in WAL mode with synchronous=FULL (a committed
// transaction survives power loss), foreign keys on and a busy timeout. user_version holds
// the schema version: 0 (a new file) gets `schema` as it is at `version`; an older version v
// is upgraded by migrations[v - 1], migrations[v], ... (migrations[k] takes version k + 1 to
// k + 2), in the same transaction, so a server upgraded in place keeps its data and a
// failed upgrade leaves the file as it was. FailedPrecondition for a newer version, or an
// older one no migration reaches. The caller owns the handle (sqlite3_close_v2).
inline absl::StatusOr<sqlite3*> OpenDatabase(const std::string& path, const char* schema,
                                             int64_t version,
                                             const std::vector<const char*>& migrations = {}) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                                 nullptr);
  if (rc != SQLITE_OK) {
    const std::string message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    return absl::InternalError(absl::StrCat("store: cannot open database ", path, ": ", message));
  }
  absl::Status status = [&]() -> absl::Status {
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, 5000);
    {
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db, "PRAGMA journal_mode=WAL"));
      ASSIGN_OR_RETURN(bool row, s.Step());
      const std::string mode = row ? s.Text(0) : "";
      // An in-memory database (tests) reports "memory" and cannot use WAL.
      if (mode != "wal" && mode != "memory") {
        return absl::InternalError(absl::StrCat("store: cannot enable WAL on ", path,
                                                " (journal mode is \"", mode, "\")"));
      }
    }
    RETURN_IF_ERROR(Exec(db, "PRAGMA synchronous=FULL"));
    RETURN_IF_ERROR(Exec(db, "PRAGMA foreign_keys=ON"));
    // Reading and setting user_version inside the write transaction keeps two processes
    // opening a new file from both creating the schema.
    return InTransaction(db, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db, "PRAGMA user_version"));
      ASSIGN_OR_RETURN(bool row, s.Step());
      const int64_t found = row ? s.Int(0) : 0;
      s.Reset();  // a statement left pending makes a migration's DROP TABLE fail (locked)
      if (found == version) return absl::OkStatus();
      if (found > version || (found > 0 && found - 1 + static_cast<int64_t>(migrations.size()) <
                                               version - 1)) {
        return absl::FailedPreconditionError(
            absl::StrCat("store: database ", path, " has schema version ", found,
                         ", this build supports ", version,
                         found > version ? " (it was written by a newer miseg)" : ""));
      }
      if (found == 0) {
        RETURN_IF_ERROR(Exec(db, schema));
      } else {
        // An older database: upgraded step by step in this transaction, all or nothing.
        for (int64_t v = found; v < version; ++v) {
          RETURN_IF_ERROR(Exec(db, migrations[static_cast<size_t>(v - 1)]));
        }
      }
      return Exec(db, absl::StrCat("PRAGMA user_version = ", version).c_str());
    });
  }();
  if (!status.ok()) {
    sqlite3_close_v2(db);
    return status;
  }
  return db;
}

}  // namespace miseg::sqlite

#endif  // MISEG_SERVER_STORE_SQLITE_UTIL_H_

// Small helpers over SQLite's C API shared by the server's stores: prepared statements with
// bound values only, and transactions that roll back on any error.
#ifndef MISEG_SERVER_STORE_SQLITE_UTIL_H_
#define MISEG_SERVER_STORE_SQLITE_UTIL_H_

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/common/status_macros.h"

namespace miseg::sqlite {

inline absl::Status SqliteError(sqlite3* db, int rc, absl::string_view what) {
  // A uniqueness violation that slipped past the explicit checks is still a conflict.
  if ((rc & 0xff) == SQLITE_CONSTRAINT &&
      (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)) {
    return absl::AlreadyExistsError(
        absl::StrCat("store: ", what, ": ", sqlite3_errmsg(db)));
  }
  return absl::InternalError(absl::StrCat("store: SQLite error in ", what, ": ",
                                          sqlite3_errmsg(db), " (", sqlite3_errstr(rc),
                                          ")"));
}

inline absl::Status Exec(sqlite3* db, const char* sql) {
  char* message = nullptr;
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, &message);
  if (rc == SQLITE_OK) return absl::OkStatus();
  std::string text = message != nullptr ? message : sqlite3_errstr(rc);
  sqlite3_free(message);
  return absl::InternalError(
      absl::StrCat("store: SQLite error in \"", absl::string_view(sql).substr(0, 40),
                   "\": ", text));
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

}  // namespace miseg::sqlite

#endif  // MISEG_SERVER_STORE_SQLITE_UTIL_H_

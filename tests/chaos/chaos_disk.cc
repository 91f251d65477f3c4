#include "tests/chaos/chaos_disk.h"

#include <sqlite3.h>

#include <filesystem>
#include <functional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "miseg/v1/miseg.pb.h"
#include "server/store/file_store.h"

namespace miseg::chaos {
namespace {

namespace fs = std::filesystem;

// Runs a query on a database opened read-only; row(stmt) per row.
absl::Status Query(const std::string& path, const std::string& sql,
                   const std::function<void(sqlite3_stmt*)>& row) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    const std::string message = db ? sqlite3_errmsg(db) : "cannot open";
    sqlite3_close_v2(db);
    return absl::InternalError(absl::StrCat(path, ": ", message));
  }
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr);
  while (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    row(stmt);
    rc = SQLITE_OK;
  }
  const std::string message = sqlite3_errmsg(db);
  sqlite3_finalize(stmt);
  sqlite3_close_v2(db);
  if (rc != SQLITE_DONE) return absl::InternalError(absl::StrCat(path, ": ", sql, ": ", message));
  return absl::OkStatus();
}

std::string Text(sqlite3_stmt* stmt, int column) {
  const unsigned char* text = sqlite3_column_text(stmt, column);
  return text ? reinterpret_cast<const char*>(text) : "";
}

absl::Status ReadStore(const std::string& db, DiskState* state) {
  absl::Status status = Query(db, "SELECT DISTINCT object_hash FROM instances",
                              [&](sqlite3_stmt* s) { state->referenced.insert(Text(s, 0)); });
  if (!status.ok()) return status;
  status = Query(db,
                 "SELECT d.name, s.series_instance_uid, i.sop_instance_uid, i.is_segmentation "
                 "FROM instances i JOIN studies s ON s.id = i.study_id "
                 "JOIN datasets d ON d.id = s.dataset_id",
                 [&](sqlite3_stmt* s) {
                   const std::string dataset = Text(s, 0);
                   int& count = state->studies[dataset][Text(s, 1)];
                   if (sqlite3_column_int(s, 3) == 0) ++count;
                   state->instances[dataset].insert(Text(s, 2));
                 });
  if (!status.ok()) return status;
  return Query(db, "SELECT job_id, payload FROM job_events ORDER BY job_id, sequence",
               [&](sqlite3_stmt* s) {
                 v1::JobEvent event;
                 const void* blob = sqlite3_column_blob(s, 1);
                 const int size = sqlite3_column_bytes(s, 1);
                 if (blob && event.ParseFromArray(blob, size) && event.has_step()) {
                   state->step_events[sqlite3_column_int64(s, 0)].push_back(event.step().step());
                 }
               });
}

absl::Status ReadNode(const std::string& db, DiskState* state) {
  if (!fs::exists(db)) return absl::OkStatus();
  absl::Status status = Query(db,
                              "SELECT object_hash FROM inbox UNION SELECT segmentation_hash "
                              "FROM deliveries WHERE segmentation_hash != ''",
                              [&](sqlite3_stmt* s) { state->referenced.insert(Text(s, 0)); });
  if (!status.ok()) return status;
  return Query(db, "SELECT sop_instance_uid FROM inbox",
               [&](sqlite3_stmt* s) { state->inbox.insert(Text(s, 0)); });
}

}  // namespace

absl::StatusOr<DiskState> ReadDiskState(const std::string& data_dir) {
  DiskState state;
  if (absl::Status s = ReadStore(data_dir + "/miseg.db", &state); !s.ok()) return s;
  if (absl::Status s = ReadNode(data_dir + "/node.db", &state); !s.ok()) return s;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(data_dir + "/objects", ec), end; !ec && it != end;
       it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const std::string name = it->path().filename().string();
    if (IsObjectHash(name)) {
      state.objects.insert(name);
    } else {
      state.temporaries.insert(it->path().string());
    }
  }
  for (fs::directory_iterator it(data_dir + "/staging", ec), end; !ec && it != end;
       it.increment(ec)) {
    ++state.staged_files;
  }
  return state;
}

std::vector<std::string> DamagedObjects(const std::string& data_dir,
                                        const std::set<std::string>& objects,
                                        std::set<std::string>* checked) {
  std::vector<std::string> damaged;
  for (const std::string& name : objects) {
    if (checked->count(name)) continue;
    const std::string path = absl::StrCat(data_dir, "/objects/", name.substr(0, 2), "/", name);
    absl::StatusOr<std::string> actual = Sha256OfFile(path);
    if (!IsObjectHash(name) || !actual.ok() || *actual != name) {
      damaged.push_back(name);
    } else {
      checked->insert(name);
    }
  }
  return damaged;
}

std::map<int64_t, std::string> ModelHashes(const std::string& data_dir) {
  std::map<int64_t, std::string> hashes;
  std::error_code ec;
  for (fs::directory_iterator it(data_dir + "/models", ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();  // job-<id>-<sha256>.model
    if (!absl::StartsWith(name, "job-") || !absl::EndsWith(name, ".model")) continue;
    const size_t dash = name.find('-', 4);
    int64_t job = 0;
    if (dash == std::string::npos || !absl::SimpleAtoi(name.substr(4, dash - 4), &job)) continue;
    hashes[job] = name.substr(dash + 1, name.size() - dash - 1 - 6);
  }
  return hashes;
}

}  // namespace miseg::chaos

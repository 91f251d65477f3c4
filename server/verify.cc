#include "server/verify.h"

#include <sqlite3.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/common/status_macros.h"
#include "server/dicom_node/node_store.h"
#include "server/store/dir_lock.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;

// PRAGMA integrity_check on a database file, opened read-only: its complaints (empty when
// sound), or the error that kept it from running (a file that is not a database at all).
std::vector<std::string> IntegrityCheck(const std::string& path) {
  sqlite3* db = nullptr;
  std::vector<std::string> complaints;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    complaints.push_back(db != nullptr ? sqlite3_errmsg(db) : "cannot open");
    sqlite3_close_v2(db);
    return complaints;
  }
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &stmt, nullptr);
  while (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    const unsigned char* text = sqlite3_column_text(stmt, 0);
    const std::string row = text != nullptr ? reinterpret_cast<const char*>(text) : "";
    if (row != "ok") complaints.push_back(row);
    rc = SQLITE_OK;
  }
  if (rc != SQLITE_OK && rc != SQLITE_DONE) complaints.push_back(sqlite3_errmsg(db));
  sqlite3_finalize(stmt);
  sqlite3_close_v2(db);
  return complaints;
}

std::string Today() {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::Now(), absl::UTCTimeZone());
}

// One verification: the report, and the state the steps share.
class Verification {
 public:
  explicit Verification(std::string data_dir) : dir_(std::move(data_dir)) {}

  absl::StatusOr<VerifyReport> Run();

 private:
  bool CheckDatabase(const char* name);
  void CheckDatabases();
  absl::Status CheckObjects(FileStore& files);
  void MarkStudies(const std::string& hash, const std::string& reason);
  void CheckNamedFiles(const std::string& sub, const std::string& kind, int64_t* count);
  void Problem(std::string line) { report_.problems.push_back(std::move(line)); }

  const std::string dir_;
  VerifyReport report_;
  std::unique_ptr<Store> store_;      // null when miseg.db is damaged
  std::set<std::string> referenced_;  // by instances and the DICOM node
  bool references_known_ = false;
};

absl::StatusOr<VerifyReport> Verification::Run() {
  CheckDatabases();
  ASSIGN_OR_RETURN(FileStore files, FileStore::Open(dir_));
  RETURN_IF_ERROR(CheckObjects(files));
  CheckNamedFiles("checkpoints", "checkpoint", &report_.checkpoints);
  CheckNamedFiles("models", "model", &report_.models);
  return std::move(report_);
}

// True when the database is absent or sound.
bool Verification::CheckDatabase(const char* name) {
  const std::string path = absl::StrCat(dir_, "/", name);
  if (!fs::exists(path)) {
    report_.notes.push_back(absl::StrCat("database ", name, ": absent"));
    return true;
  }
  const std::vector<std::string> complaints = IntegrityCheck(path);
  if (complaints.empty()) {
    report_.notes.push_back(absl::StrCat("database ", name, ": ok (integrity_check)"));
    return true;
  }
  const size_t shown = std::min<size_t>(5, complaints.size());
  Problem(absl::StrCat("database ", name, " is damaged (integrity_check): ",
                       absl::StrJoin(complaints.begin(), complaints.begin() + shown, "; ")));
  return false;
}

// The databases, then (when sound) what they reference: objects no instance or node row
// names are only counted when every reference is known.
void Verification::CheckDatabases() {
  const bool store_ok = CheckDatabase("miseg.db");
  const bool node_ok = CheckDatabase("node.db");
  if (!store_ok || !fs::exists(dir_ + "/miseg.db")) return;
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(dir_ + "/miseg.db");
  if (!store.ok()) {
    Problem(absl::StrCat("database miseg.db cannot be opened: ", store.status().message()));
    return;
  }
  store_ = *std::move(store);
  absl::StatusOr<std::vector<std::string>> referenced = store_->ReferencedObjects();
  if (!referenced.ok()) return;
  referenced_.insert(referenced->begin(), referenced->end());
  references_known_ = node_ok;
  if (!node_ok || !fs::exists(dir_ + "/node.db")) return;
  absl::StatusOr<std::unique_ptr<NodeStore>> node = NodeStore::Open(dir_ + "/node.db");
  absl::StatusOr<std::vector<std::string>> more =
      node.ok() ? (*node)->ReferencedObjects()
                : absl::StatusOr<std::vector<std::string>>(node.status());
  if (more.ok()) {
    referenced_.insert(more->begin(), more->end());
  } else {
    references_known_ = false;
  }
}

absl::Status Verification::CheckObjects(FileStore& files) {
  ASSIGN_OR_RETURN(std::vector<std::string> stored, files.List());
  std::set<std::string> bad;
  for (const std::string& hash : stored) {
    ++report_.objects;
    absl::Status intact = files.Verify(hash);
    if (intact.ok()) {
      if (references_known_ && !referenced_.count(hash)) ++report_.unreferenced_objects;
      continue;
    }
    if (!absl::IsDataLoss(intact)) return intact;  // the disk failed us: stop, change nothing
    ++report_.damaged_objects;
    ASSIGN_OR_RETURN(std::string moved, files.Quarantine(hash));
    report_.quarantined.push_back(moved);
    bad.insert(hash);
    const std::string reason = absl::StrCat("its bytes no longer match their SHA-256 (verify, ",
                                            Today(), "; kept in ", moved, ")");
    Problem(absl::StrCat("object ", hash, " is damaged: moved to ", moved));
    MarkStudies(hash, reason);
  }
  for (const std::string& hash : referenced_) {
    if (bad.count(hash) || files.Contains(hash)) continue;
    ++report_.missing_objects;
    Problem(absl::StrCat("object ", hash, " is referenced but missing"));
    MarkStudies(hash, absl::StrCat("its file is missing (verify, ", Today(), ")"));
  }
  report_.notes.push_back(absl::StrCat(
      "objects: ", report_.objects, " checked, ", report_.damaged_objects, " damaged, ",
      report_.missing_objects, " missing, ", report_.unreferenced_objects,
      " unreferenced (removed at the next server start)"));
  return absl::OkStatus();
}

void Verification::MarkStudies(const std::string& hash, const std::string& reason) {
  if (store_ == nullptr) return;
  absl::StatusOr<std::vector<StudyRecord>> affected = store_->QuarantineObject(hash, reason);
  if (!affected.ok()) {
    Problem(absl::StrCat("cannot mark the studies of object ", hash, ": ",
                         affected.status().message()));
    return;
  }
  for (const StudyRecord& study : *affected) {
    absl::StatusOr<DatasetRecord> dataset = store_->GetDatasetById(study.dataset_id);
    Problem(absl::StrCat("study ", study.series_instance_uid, " of dataset '",
                         dataset.ok() ? dataset->name : absl::StrCat(study.dataset_id),
                         "' is marked damaged (object ", hash, ")"));
  }
}

// Files under sub/ named ...-<sha256>.<ext>: checked against their name; damaged ones go
// to quarantine/ (a job then resumes from its previous checkpoint).
void Verification::CheckNamedFiles(const std::string& sub, const std::string& kind,
                                   int64_t* count) {
  const fs::path folder = fs::path(dir_) / sub;
  std::error_code ec;
  int64_t damaged = 0;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const size_t dot = name.rfind('.');
    const size_t dash = name.rfind('-', dot);
    if (dot == std::string::npos || dash == std::string::npos) continue;
    const std::string sha256 = name.substr(dash + 1, dot - dash - 1);
    if (!IsObjectHash(sha256)) continue;  // older files, named without their hash
    ++*count;
    absl::StatusOr<std::string> actual = Sha256OfFile(it->path().string());
    if (actual.ok() && *actual == sha256) continue;
    ++damaged;
    const fs::path target = fs::path(dir_) / "quarantine" / name;
    std::error_code move_error;
    fs::create_directories(target.parent_path(), move_error);
    fs::rename(it->path(), target, move_error);
    report_.quarantined.push_back(target.string());
    Problem(
        absl::StrCat(kind, " ", it->path().string(), " is damaged: moved to ", target.string()));
  }
  report_.notes.push_back(absl::StrCat(sub, ": ", *count, " checked, ", damaged, " damaged"));
}

}  // namespace

absl::StatusOr<VerifyReport> VerifyDataDir(const std::string& data_dir) {
  if (!fs::is_directory(data_dir)) {
    return absl::NotFoundError(absl::StrCat(data_dir, " is not a directory"));
  }
  // Exclusive: verify moves files and marks studies, which no server may do beside it.
  ASSIGN_OR_RETURN(DirLock lock, DirLock::Acquire(data_dir, DirLock::Mode::kExclusive));
  return Verification(data_dir).Run();
}

int VerifyCommand(int argc, char** argv) {
  std::string data_dir;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (absl::StartsWith(arg, "--data_dir=")) {
      data_dir = arg.substr(11);
    } else {
      std::cerr << "miseg-server verify: unknown argument " << arg << "\n";
      return 2;
    }
  }
  if (data_dir.empty()) {
    std::cerr << "usage: miseg-server verify --data_dir=DIR\n";
    return 2;
  }
  absl::StatusOr<VerifyReport> report = VerifyDataDir(data_dir);
  if (!report.ok()) {
    std::cerr << "miseg-server verify: " << report.status().message() << "\n";
    return absl::IsFailedPrecondition(report.status()) ? 2 : 1;
  }
  for (const std::string& note : report->notes) std::cout << note << "\n";
  for (const std::string& problem : report->problems) std::cout << "PROBLEM: " << problem << "\n";
  std::cout << (report->problems.empty()
                    ? std::string("verify: sound")
                    : absl::StrCat("verify: ", report->problems.size(), " problem(s); ",
                                   report->quarantined.size(), " file(s) moved to ", data_dir,
                                   "/quarantine"))
            << "\n";
  return report->problems.empty() ? 0 : 1;
}

}  // namespace miseg

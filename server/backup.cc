#include "server/backup.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <sqlite3.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/store/dir_lock.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;

constexpr char kManifest[] = "BACKUP.json";
constexpr int kAttempts = 3;

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

absl::Status FsyncPath(const std::string& path, bool directory) {
  const int fd = open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open", path);
  const int rc = fsync(fd);
  close(fd);
  return rc == 0 ? absl::OkStatus() : Errno("cannot fsync", path);
}

// Copies src to dst (created, fsynced); with want_sha256, NotFound when src is missing and
// DataLoss when its bytes do not hash to want_sha256.
absl::Status CopyFile(const std::string& src, const std::string& dst,
                      const std::string& want_sha256, int64_t* bytes) {
  const int in = open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(src, " is missing"));
    return Errno("cannot open", src);
  }
  std::error_code ec;
  fs::create_directories(fs::path(dst).parent_path(), ec);
  const int out = open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (out < 0) {
    close(in);
    return Errno("cannot create", dst);
  }
  EVP_MD_CTX* hash = EVP_MD_CTX_new();
  EVP_DigestInit_ex(hash, EVP_sha256(), nullptr);
  absl::Status status;
  std::vector<char> buffer(1 << 20);
  for (;;) {
    const ssize_t n = read(in, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = Errno("cannot read", src);
      break;
    }
    if (n == 0) break;
    EVP_DigestUpdate(hash, buffer.data(), static_cast<size_t>(n));
    for (ssize_t done = 0; done < n;) {
      const ssize_t w = write(out, buffer.data() + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        status = Errno("cannot write", dst);
        break;
      }
      done += w;
    }
    if (!status.ok()) break;
    if (bytes != nullptr) *bytes += n;
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(hash, digest, &length);
  EVP_MD_CTX_free(hash);
  close(in);
  if (status.ok() && fsync(out) != 0) status = Errno("cannot fsync", dst);
  close(out);
  if (status.ok() && !want_sha256.empty()) {
    static const char kHex[] = "0123456789abcdef";
    std::string hex;
    for (unsigned int i = 0; i < length; ++i) {
      hex += kHex[digest[i] >> 4];
      hex += kHex[digest[i] & 15];
    }
    if (hex != want_sha256) {
      status = absl::DataLossError(
          absl::StrCat(src, " does not match its SHA-256 (", hex, "): the file is damaged"));
    }
  }
  return status;
}

// A consistent snapshot of the database at src (which a live server may be writing) into
// dst, with SQLite's online backup API in a single step.
absl::Status SnapshotDatabase(const std::string& src, const std::string& dst) {
  sqlite3* from = nullptr;
  sqlite3* to = nullptr;
  absl::Status status;
  if (sqlite3_open_v2(src.c_str(), &from, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    status = absl::InternalError(absl::StrCat("cannot open ", src, ": ", sqlite3_errmsg(from)));
  } else if (sqlite3_open_v2(dst.c_str(), &to, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                             nullptr) != SQLITE_OK) {
    status = absl::InternalError(absl::StrCat("cannot create ", dst, ": ", sqlite3_errmsg(to)));
  } else {
    sqlite3_busy_timeout(from, 10000);
    sqlite3_backup* backup = sqlite3_backup_init(to, "main", from, "main");
    if (backup == nullptr) {
      status = absl::InternalError(absl::StrCat("cannot back up ", src, ": ", sqlite3_errmsg(to)));
    } else {
      int rc = SQLITE_OK;
      // -1: every page in one step, so the copy is one snapshot. BUSY/LOCKED (a checkpoint
      // or a writer holding a lock the reader needs) are retried.
      for (int tries = 0; tries < 100; ++tries) {
        rc = sqlite3_backup_step(backup, -1);
        if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED) break;
        sqlite3_sleep(100);
      }
      sqlite3_backup_finish(backup);
      if (rc != SQLITE_DONE) {
        status = absl::InternalError(
            absl::StrCat("backup of ", src, " failed: ", sqlite3_errstr(rc)));
      }
    }
  }
  sqlite3_close_v2(from);
  sqlite3_close_v2(to);
  if (status.ok()) status = FsyncPath(dst, false);
  return status;
}

absl::StatusOr<std::vector<std::string>> QueryStrings(const std::string& db_path,
                                                      const char* sql) {
  sqlite3* db = nullptr;
  std::vector<std::string> out;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    const std::string message = sqlite3_errmsg(db);
    sqlite3_close_v2(db);
    return absl::InternalError(absl::StrCat("cannot open ", db_path, ": ", message));
  }
  sqlite3_stmt* stmt = nullptr;
  absl::Status status;
  if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) != SQLITE_OK) {
    status = absl::InternalError(absl::StrCat(db_path, ": ", sqlite3_errmsg(db)));
  } else {
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      const unsigned char* text = sqlite3_column_text(stmt, 0);
      if (text != nullptr && *text != '\0') out.emplace_back(reinterpret_cast<const char*>(text));
    }
    if (rc != SQLITE_DONE) status = absl::InternalError(absl::StrCat(db_path, ": ", sqlite3_errmsg(db)));
  }
  sqlite3_finalize(stmt);
  sqlite3_close_v2(db);
  if (!status.ok()) return status;
  return out;
}

absl::Status Exec(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  absl::Status status;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    status = absl::InternalError(absl::StrCat("cannot open ", db_path, ": ", sqlite3_errmsg(db)));
  } else {
    char* error = nullptr;
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
      status = absl::InternalError(absl::StrCat(db_path, ": ", error ? error : "?"));
    }
    sqlite3_free(error);
  }
  sqlite3_close_v2(db);
  return status;
}

std::string SqlQuote(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

bool IsHash(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string ObjectRelPath(const std::string& hash) {
  return absl::StrCat("objects/", hash.substr(0, 2), "/", hash);
}

struct References {
  std::set<std::string> objects;
  std::set<std::string> models;       // file names under models/
  std::set<std::string> checkpoints;  // file names under checkpoints/
};

// What a data directory's databases (at dir) reference. Table and column names are the
// stores' (server/store/store.cc, server/dicom_node/node_store.cc).
absl::StatusOr<References> ReadReferences(const std::string& dir) {
  References refs;
  absl::StatusOr<std::vector<std::string>> objects =
      QueryStrings(dir + "/miseg.db", "SELECT DISTINCT object_hash FROM instances");
  if (!objects.ok()) return objects.status();
  refs.objects.insert(objects->begin(), objects->end());
  absl::StatusOr<std::vector<std::string>> models =
      QueryStrings(dir + "/miseg.db", "SELECT path FROM models");
  if (!models.ok()) return models.status();
  for (const std::string& p : *models) refs.models.insert(fs::path(p).filename().string());
  absl::StatusOr<std::vector<std::string>> checkpoints =
      QueryStrings(dir + "/miseg.db", "SELECT checkpoint_path FROM jobs");
  if (!checkpoints.ok()) return checkpoints.status();
  for (const std::string& p : *checkpoints) {
    refs.checkpoints.insert(fs::path(p).filename().string());
  }
  if (fs::exists(dir + "/node.db")) {
    absl::StatusOr<std::vector<std::string>> node = QueryStrings(
        dir + "/node.db",
        "SELECT object_hash FROM inbox UNION SELECT segmentation_hash FROM deliveries");
    if (!node.ok()) return node.status();
    refs.objects.insert(node->begin(), node->end());
  }
  for (const std::string& hash : refs.objects) {
    if (!IsHash(hash)) return absl::DataLossError(absl::StrCat("not an object hash: ", hash));
  }
  return refs;
}

bool EmptyOrAbsent(const std::string& dir, bool lock_allowed) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return true;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (lock_allowed && entry.path().filename() == DirLock::kFileName) continue;
    return false;
  }
  return !ec;
}

void RemoveContents(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) fs::remove_all(entry.path(), ec);
}

// Copies the files refs name from `from` to `to`, then fsyncs the folders. NotFound for a
// missing object or model; a missing checkpoint is skipped (its job finished meanwhile).
absl::Status CopyReferenced(const References& refs, const std::string& from,
                            const std::string& to, BackupSummary* summary) {
  for (const std::string& hash : refs.objects) {
    const std::string rel = ObjectRelPath(hash);
    absl::Status copied = CopyFile(from + "/" + rel, to + "/" + rel, hash, &summary->object_bytes);
    if (!copied.ok()) return copied;
    ++summary->objects;
  }
  for (const std::string& name : refs.models) {
    absl::Status copied =
        CopyFile(from + "/models/" + name, to + "/models/" + name, "", nullptr);
    if (!copied.ok()) return copied;
    ++summary->models;
  }
  for (const std::string& name : refs.checkpoints) {
    absl::Status copied =
        CopyFile(from + "/checkpoints/" + name, to + "/checkpoints/" + name, "", nullptr);
    if (absl::IsNotFound(copied)) continue;  // the job finished: its model replaced it
    if (!copied.ok()) return copied;
    ++summary->checkpoints;
  }
  for (const char* sub : {"", "/objects", "/models", "/checkpoints"}) {
    const std::string d = to + sub;
    if (fs::exists(d)) {
      for (const auto& entry : fs::directory_iterator(d)) {
        if (entry.is_directory()) {
          absl::Status synced = FsyncPath(entry.path().string(), true);
          if (!synced.ok()) return synced;
        }
      }
      absl::Status synced = FsyncPath(d, true);
      if (!synced.ok()) return synced;
    }
  }
  return absl::OkStatus();
}

std::string NowUtc() {
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::tm utc;
  gmtime_r(&now, &utc);
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return stamp;
}

std::string JsonQuote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

absl::Status WriteManifest(const std::string& to, const std::string& data_dir,
                           const std::string& version, const BackupSummary& s) {
  const std::string body = absl::StrCat(
      "{\"format\": 1, \"miseg_version\": ", JsonQuote(version),
      ", \"created\": ", JsonQuote(NowUtc()), ", \"data_dir\": ", JsonQuote(data_dir),
      ", \"objects\": ", s.objects, ", \"object_bytes\": ", s.object_bytes,
      ", \"models\": ", s.models, ", \"checkpoints\": ", s.checkpoints, "}\n");
  const std::string tmp = to + "/" + kManifest + ".tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return Errno("cannot create", tmp);
  const bool ok = write(fd, body.data(), body.size()) == static_cast<ssize_t>(body.size()) &&
                  fsync(fd) == 0;
  close(fd);
  if (!ok) return Errno("cannot write", tmp);
  if (rename(tmp.c_str(), (to + "/" + kManifest).c_str()) != 0) return Errno("cannot rename", tmp);
  return FsyncPath(to, true);
}

}  // namespace

absl::StatusOr<BackupSummary> BackupDataDir(const std::string& data_dir, const std::string& to,
                                            const std::string& version) {
  std::error_code ec;
  const std::string source = fs::absolute(data_dir, ec).lexically_normal().string();
  if (!fs::exists(source + "/miseg.db")) {
    return absl::FailedPreconditionError(
        absl::StrCat(data_dir, " is not a miseg data directory (no miseg.db)"));
  }
  struct stat st;
  if (geteuid() == 0 && stat((source + "/miseg.db").c_str(), &st) == 0 && st.st_uid != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "run the backup as the data directory's owner (uid ", st.st_uid,
        "), not root: e.g. sudo -u miseg miseg-server backup ... (SQLite may create files "
        "beside the database that the server could then not open)"));
  }
  if (!EmptyOrAbsent(to, false)) {
    return absl::FailedPreconditionError(absl::StrCat(to, " exists and is not empty"));
  }
  fs::create_directories(to, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", to, ": ", ec.message()));

  absl::Status last;
  for (int attempt = 1; attempt <= kAttempts; ++attempt) {
    RemoveContents(to);
    BackupSummary summary;
    summary.attempts = attempt;
    last = SnapshotDatabase(source + "/miseg.db", to + "/miseg.db");
    if (last.ok() && fs::exists(source + "/node.db")) {
      last = SnapshotDatabase(source + "/node.db", to + "/node.db");
    }
    if (!last.ok()) break;
    absl::StatusOr<References> refs = ReadReferences(to);
    if (!refs.ok()) {
      last = refs.status();
      break;
    }
    last = CopyReferenced(*refs, source, to, &summary);
    // A file the snapshot names went away after it was taken (a study deleted meanwhile):
    // a new snapshot will not name it.
    if (absl::IsNotFound(last)) continue;
    if (!last.ok()) break;
    last = WriteManifest(to, source, version, summary);
    if (!last.ok()) break;
    return summary;
  }
  RemoveContents(to);
  return last;
}

absl::StatusOr<BackupSummary> RestoreDataDir(const std::string& from, const std::string& data_dir) {
  if (!fs::exists(from + "/" + kManifest)) {
    return absl::FailedPreconditionError(absl::StrCat(
        from, " is not a complete miseg backup (no ", kManifest, ")"));
  }
  std::error_code ec;
  const std::string target = fs::absolute(data_dir, ec).lexically_normal().string();
  fs::create_directories(target, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", target, ": ", ec.message()));
  // No server may start on the directory while it is being filled.
  absl::StatusOr<DirLock> lock = DirLock::Acquire(target, DirLock::Mode::kExclusive);
  if (!lock.ok()) return lock.status();
  if (!EmptyOrAbsent(target, true)) {
    return absl::FailedPreconditionError(absl::StrCat(
        target, " is not empty: restore into an empty data directory (move the old one aside)"));
  }
  BackupSummary summary;
  summary.attempts = 1;
  absl::Status status = CopyFile(from + "/miseg.db", target + "/miseg.db", "", nullptr);
  if (status.ok() && fs::exists(from + "/node.db")) {
    status = CopyFile(from + "/node.db", target + "/node.db", "", nullptr);
  }
  absl::StatusOr<References> refs = status.ok() ? ReadReferences(target) : status;
  if (!refs.ok()) status = refs.status();
  if (status.ok()) status = CopyReferenced(*refs, from, target, &summary);
  if (status.ok()) {
    // Model and checkpoint rows name absolute paths under the backed-up directory.
    status = Exec(target + "/miseg.db",
                  absl::StrCat("UPDATE models SET path = ", SqlQuote(target + "/models/"),
                               " || replace(path, rtrim(path, replace(path, '/', '')), '');"
                               "UPDATE jobs SET checkpoint_path = ",
                               SqlQuote(target + "/checkpoints/"),
                               " || replace(checkpoint_path, rtrim(checkpoint_path, "
                               "replace(checkpoint_path, '/', '')), '') "
                               "WHERE checkpoint_path != '';"));
  }
  if (status.ok()) status = FsyncPath(target + "/miseg.db", false);
  if (!status.ok()) {
    for (const auto& entry : fs::directory_iterator(target, ec)) {
      if (entry.path().filename() != DirLock::kFileName) fs::remove_all(entry.path(), ec);
    }
    return status;
  }
  return summary;
}

int BackupCommand(int argc, char** argv, const std::string& version) {
  const std::string command = argv[1];
  std::string data_dir, to, from;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (absl::StartsWith(arg, "--data_dir=")) {
      data_dir = arg.substr(11);
    } else if (absl::StartsWith(arg, "--to=")) {
      to = arg.substr(5);
    } else if (absl::StartsWith(arg, "--from=")) {
      from = arg.substr(7);
    } else {
      std::cerr << "miseg-server " << command << ": unknown argument " << arg << "\n";
      return 2;
    }
  }
  const bool backup = command == "backup";
  if (data_dir.empty() || (backup ? to.empty() : from.empty())) {
    std::cerr << (backup ? "usage: miseg-server backup --data_dir=DIR --to=BACKUP_DIR\n"
                         : "usage: miseg-server restore --from=BACKUP_DIR --data_dir=DIR\n");
    return 2;
  }
  absl::StatusOr<BackupSummary> done =
      backup ? BackupDataDir(data_dir, to, version) : RestoreDataDir(from, data_dir);
  if (!done.ok()) {
    std::cerr << "miseg-server " << command << ": " << done.status().message() << "\n";
    return absl::IsFailedPrecondition(done.status()) ? 2 : 1;
  }
  std::cout << (backup ? "backed up " : "restored ") << done->objects << " objects ("
            << done->object_bytes << " bytes, SHA-256 checked), " << done->models << " models, "
            << done->checkpoints << " checkpoints " << (backup ? "to " : "into ")
            << (backup ? to : data_dir) << "\n";
  return 0;
}

}  // namespace miseg

// Backup and restore of a data directory: `miseg-server backup` runs beside a live server,
// `miseg-server restore` into an empty directory no server uses.
//
// Backup takes no DirLock: the server holds the directory's lock exclusively for its whole
// life, and a backup must not wait for it. It is safe beside the server because of how the
// directory is written:
//   - miseg.db and node.db are copied with SQLite's online backup API, in one step under
//     one read transaction: a consistent snapshot of each, taken while the server goes on
//     writing (WAL: readers and the writer do not block each other).
//   - objects/ is content-addressed and write-once (a file is renamed into place, fsynced,
//     before any row names it): every object the snapshot references is complete on disk.
//     Each is copied and its SHA-256 checked on the way. One deleted after the snapshot (a
//     study deleted during the backup) makes the backup start again, at most 3 times.
//   - models/ files are renamed into place before their row commits and never change.
//   - checkpoints/ are copied as they are at copy time (the newest, or none if the job
//     finished meanwhile: a restored job then resumes from there, or starts again).
// The backup is complete once BACKUP.json is written (last, atomically); restore refuses a
// folder without it. Run it as the data directory's owner (root is refused when the
// database belongs to another user: SQLite could leave root-owned -wal/-shm files behind).
#ifndef MISEG_SERVER_BACKUP_H_
#define MISEG_SERVER_BACKUP_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace miseg {

struct BackupSummary {
  int64_t objects = 0;
  int64_t object_bytes = 0;
  int64_t models = 0;
  int64_t checkpoints = 0;
  int attempts = 0;
};

// Copies data_dir into `to` (absent, or an empty directory).
absl::StatusOr<BackupSummary> BackupDataDir(const std::string& data_dir, const std::string& to,
                                            const std::string& version);

// Copies a complete backup into data_dir (created if missing; holding nothing but LOCK),
// under data_dir's exclusive DirLock, checking every object's hash; model and checkpoint
// paths are rewritten to data_dir's. FailedPrecondition while a server uses data_dir.
absl::StatusOr<BackupSummary> RestoreDataDir(const std::string& from, const std::string& data_dir);

// `miseg-server backup --data_dir=DIR --to=BACKUP_DIR` and
// `miseg-server restore --from=BACKUP_DIR --data_dir=DIR`; argv[1] is the command. Exit
// status: 0 done, 1 failed, 2 usage or a directory in use / not empty.
int BackupCommand(int argc, char** argv, const std::string& version);

}  // namespace miseg

#endif  // MISEG_SERVER_BACKUP_H_

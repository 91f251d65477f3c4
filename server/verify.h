// `miseg-server verify --data_dir=DIR`: checks a data directory at rest and quarantines
// what is damaged. Runs only while no server uses the directory (it takes the directory's
// DirLock exclusively: it moves files and writes the database).
//
//   - miseg.db and node.db: PRAGMA integrity_check.
//   - objects/: every file's bytes against the SHA-256 it is named by. A damaged file is
//     moved to quarantine/<hash>; a file an instance references but that is gone counts
//     too. Every study holding such an object is marked damaged (Store::QuarantineObject):
//     listings show why, and jobs and segmentations refuse it with DATA_LOSS until it is
//     deleted and uploaded again.
//   - checkpoints/ and models/: files named with their SHA-256 are checked the same way; a
//     damaged checkpoint goes to quarantine/ (the job resumes from the one before), a
//     damaged model too (segmenting with it fails with DATA_LOSS).
// Unreferenced objects (a crash between storing a file and committing its row) are
// counted, not problems: the next server start removes them.
#ifndef MISEG_SERVER_VERIFY_H_
#define MISEG_SERVER_VERIFY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace miseg {

struct VerifyReport {
  std::vector<std::string> problems;  // one line each; empty: the directory is sound
  std::vector<std::string> notes;     // what was checked, what was fine
  int64_t objects = 0, damaged_objects = 0, missing_objects = 0, unreferenced_objects = 0;
  int64_t checkpoints = 0, models = 0;
  std::vector<std::string> quarantined;  // paths under quarantine/
};

// FailedPrecondition while a server (or another tool) holds the directory.
absl::StatusOr<VerifyReport> VerifyDataDir(const std::string& data_dir);

// argv[1] is "verify". Exit status: 0 sound, 1 problems found (and quarantined), 2 usage
// or the directory in use.
int VerifyCommand(int argc, char** argv);

}  // namespace miseg

#endif  // MISEG_SERVER_VERIFY_H_

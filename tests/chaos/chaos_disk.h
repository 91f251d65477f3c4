// What a stopped server left on disk, read directly (SQLite read-only, the file store's
// folders): the chaos run's checks between a SIGKILL and the next start.
#ifndef MISEG_TESTS_CHAOS_CHAOS_DISK_H_
#define MISEG_TESTS_CHAOS_CHAOS_DISK_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace miseg::chaos {

struct DiskState {
  // Object hashes any row references: instances (miseg.db), the DICOM node's inbox and
  // delivered SEGs (node.db).
  std::set<std::string> referenced;
  // Files under objects/ named as objects (their names); other files there (the
  // temporaries of writes a kill cut short: never visible as objects, removed at the next
  // start, as paths), and the number under staging/.
  std::set<std::string> objects;
  std::set<std::string> temporaries;
  int64_t staged_files = 0;
  // Per dataset name: series -> image instances (SEGs not counted), and SOP UIDs.
  std::map<std::string, std::map<std::string, int>> studies;
  std::map<std::string, std::set<std::string>> instances;
  // SOP Instance UIDs waiting in the node's inbox.
  std::set<std::string> inbox;
  // Per job: the steps of its stored step events, in sequence order.
  std::map<int64_t, std::vector<int64_t>> step_events;
};

absl::StatusOr<DiskState> ReadDiskState(const std::string& data_dir);

// Objects whose bytes no longer hash to their name; `checked` remembers the ones already
// verified (objects are write-once), so each is read once per run.
std::vector<std::string> DamagedObjects(const std::string& data_dir,
                                        const std::set<std::string>& objects,
                                        std::set<std::string>* checked);

// The SHA-256 in a model file's name (models/job-<id>-<sha256>.model), by job id.
std::map<int64_t, std::string> ModelHashes(const std::string& data_dir);

}  // namespace miseg::chaos

#endif  // MISEG_TESTS_CHAOS_CHAOS_DISK_H_

// Shared state of a chaos run (tests/chaos/README.md): which server is up (ServerLink),
// the verdict (violations and counted checks), and what the clients were told succeeded,
// which the invariants hold the server to.
#ifndef MISEG_TESTS_CHAOS_CHAOS_STATE_H_
#define MISEG_TESTS_CHAOS_CHAOS_STATE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "miseg/v1/miseg.pb.h"

namespace miseg::chaos {

// The server the clients talk to: its address and generation (one per start), and whether
// it is up. The harness marks it down before it kills the server, so that every failure a
// kill causes is seen after `down` (and is expected); a failure while the same generation
// is still up is the server's fault.
class ServerLink {
 public:
  struct Current {
    std::string address;
    int generation = 0;
  };
  // Blocks until a server is up whose generation is above `after` (0: any), or the run
  // ends (nullopt).
  std::optional<Current> Await(int after) ABSL_LOCKS_EXCLUDED(mutex_);
  // The generation is still up: a failure seen now is not explained by a kill.
  bool StillUp(int generation) ABSL_LOCKS_EXCLUDED(mutex_);
  void Down() ABSL_LOCKS_EXCLUDED(mutex_);
  void Up(const std::string& address) ABSL_LOCKS_EXCLUDED(mutex_);
  void Finish() ABSL_LOCKS_EXCLUDED(mutex_);
  bool finished() ABSL_LOCKS_EXCLUDED(mutex_);
  // Sleeps up to d, returning early (true) once the run is finishing.
  bool SleepUnlessFinished(absl::Duration d) ABSL_LOCKS_EXCLUDED(mutex_);

 private:
  absl::Mutex mutex_;
  std::string address_ ABSL_GUARDED_BY(mutex_);
  int generation_ ABSL_GUARDED_BY(mutex_) = 0;
  bool up_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
};

// Violations of the invariants, and how many checks passed.
class Verdict {
 public:
  void Check(bool ok, const std::string& what) ABSL_LOCKS_EXCLUDED(mutex_);
  void Violation(const std::string& what) ABSL_LOCKS_EXCLUDED(mutex_);
  int64_t checks() ABSL_LOCKS_EXCLUDED(mutex_);
  std::vector<std::string> violations() ABSL_LOCKS_EXCLUDED(mutex_);

 private:
  absl::Mutex mutex_;
  int64_t checks_ ABSL_GUARDED_BY(mutex_) = 0;
  std::vector<std::string> violations_ ABSL_GUARDED_BY(mutex_);
};

// What the server acknowledged, as the clients record it.
class Ledger {
 public:
  // An Upload that ended OK: the series and its number of instances.
  void AckUpload(const std::string& series, int instances) ABSL_LOCKS_EXCLUDED(mutex_);
  // A C-STORE answered with success: the instance, of this series of this many instances.
  void AckCStore(const std::string& sop_instance, const std::string& series, int series_size)
      ABSL_LOCKS_EXCLUDED(mutex_);
  std::map<std::string, int> uploads() ABSL_LOCKS_EXCLUDED(mutex_);
  std::map<std::string, std::string> cstores() ABSL_LOCKS_EXCLUDED(mutex_);  // sop -> series
  std::map<std::string, int> cstore_series() ABSL_LOCKS_EXCLUDED(mutex_);    // series -> size
  // Every series an uploader tried (acknowledged or not), with its size: a stored study
  // must have exactly this many instances.
  void Tried(const std::string& series, int instances) ABSL_LOCKS_EXCLUDED(mutex_);
  std::map<std::string, int> tried() ABSL_LOCKS_EXCLUDED(mutex_);

  struct Counts {
    int64_t uploads_acknowledged = 0, upload_attempts = 0, cstores_acknowledged = 0;
    int64_t segmentations = 0, watch_reconnects = 0, series_sent = 0;
  };
  void Count(int64_t Counts::*field, int64_t n = 1) ABSL_LOCKS_EXCLUDED(mutex_);
  Counts counts() ABSL_LOCKS_EXCLUDED(mutex_);

 private:
  absl::Mutex mutex_;
  std::map<std::string, int> uploads_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, int> tried_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, std::string> cstores_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, int> cstore_series_ ABSL_GUARDED_BY(mutex_);
  Counts counts_ ABSL_GUARDED_BY(mutex_);
};

// The training jobs of the run and what each watcher saw of them.
class JobBook {
 public:
  void Add(int64_t job_id) ABSL_LOCKS_EXCLUDED(mutex_);
  std::vector<int64_t> jobs() ABSL_LOCKS_EXCLUDED(mutex_);
  // Blocks until a job above `after` is known (its id), or the run's jobs are over.
  std::optional<int64_t> NextAfter(int64_t after) ABSL_LOCKS_EXCLUDED(mutex_);
  void NoMoreJobs() ABSL_LOCKS_EXCLUDED(mutex_);
  // A watcher's events of one job, in the order received, across reconnections.
  void Saw(int watcher, int64_t job_id, std::vector<v1::JobEvent> events)
      ABSL_LOCKS_EXCLUDED(mutex_);
  std::map<std::pair<int, int64_t>, std::vector<v1::JobEvent>> seen() ABSL_LOCKS_EXCLUDED(mutex_);

 private:
  absl::Mutex mutex_;
  std::set<int64_t> jobs_ ABSL_GUARDED_BY(mutex_);
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
  std::map<std::pair<int, int64_t>, std::vector<v1::JobEvent>> seen_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace miseg::chaos

#endif  // MISEG_TESTS_CHAOS_CHAOS_STATE_H_

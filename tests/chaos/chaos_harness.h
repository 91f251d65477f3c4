// A chaos run (tests/chaos/README.md): miseg-server with its DICOM node under a mixed load,
// SIGKILLed at seeded random moments and restarted each time, with the invariants checked
// after every kill, after every restart and at the end.
#ifndef MISEG_TESTS_CHAOS_CHAOS_HARNESS_H_
#define MISEG_TESTS_CHAOS_CHAOS_HARNESS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "tests/chaos/chaos_clients.h"
#include "tests/chaos/chaos_disk.h"
#include "tests/chaos/chaos_state.h"
#include "tests/server/child_process.h"
#include "tests/server/orthanc_process.h"
#include "tests/server/server_process.h"

namespace miseg::chaos {

// Exit status of a run that could not start here (no Orthanc): ctest's SKIP_RETURN_CODE.
inline constexpr int kSkipped = 77;

struct ChaosOptions {
  int kills = 20;
  uint64_t seed = 0;  // 0: from the clock (printed either way)
  // Each kill comes this long (uniform) after the server last became ready.
  int min_delay_ms = 700;
  int max_delay_ms = 3500;
  int uploaders = 2;
  int segmenters = 1;
  int watchers = 2;
  int job_steps = 120;   // each training job's; checkpoint every 2 steps
  std::string keep_dir;  // non-empty: run there and keep it (for post-mortems)
};

class Harness {
 public:
  explicit Harness(ChaosOptions options);
  ~Harness();
  // 0 when every invariant held; 1 otherwise (each violation printed).
  int Run();

 private:
  absl::Status SetUp();
  absl::Status StartServer();
  absl::Status FillDatasets();
  void StartClients();
  void KillAndRestart(int kill);
  void CheckDisk(const DiskState& state, const std::string& when);
  void CheckStopped(int kill);
  void CheckRestarted(int kill);
  void StopClients();
  void CheckJobs();
  void CheckWatchers();
  void CheckDeliveries();
  void CheckStoredStudies(const std::string& when);
  void CompareWithUninterruptedRuns();
  void CheckFinalDisk();
  int Report();

  const ChaosOptions options_;
  std::mt19937_64 rng_;
  std::unique_ptr<testing::TempDir> temp_;
  std::string root_, data_, node_config_;
  int node_port_ = 0;
  std::unique_ptr<testing::OrthancProcess> orthanc_;
  std::unique_ptr<testing::ServerProcess> server_;

  ServerLink link_;
  Verdict verdict_;
  Ledger ledger_;
  JobBook jobs_;
  std::atomic<bool> stop_load_{false};
  Clients clients_;
  std::vector<std::thread> load_threads_, watcher_threads_;

  std::set<std::string> verified_objects_;  // objects already hashed (write-once)
  std::set<std::string> leftovers_;         // unreferenced at the last kill
  std::set<std::string> temporaries_;       // cut-short writes at the last kill (paths)
  int kills_ = 0, restarts_ = 0, references_compared_ = 0;
  int64_t start_ms_ = 0;
};

}  // namespace miseg::chaos

#endif  // MISEG_TESTS_CHAOS_CHAOS_HARNESS_H_

// The load of a chaos run: each client is a thread that talks to whichever server is up
// (ServerLink), records what the server acknowledged (Ledger, JobBook) and reports as a
// violation any failure that a kill does not explain.
#ifndef MISEG_TESTS_CHAOS_CHAOS_CLIENTS_H_
#define MISEG_TESTS_CHAOS_CHAOS_CLIENTS_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "miseg/v1/miseg.pb.h"
#include "tests/chaos/chaos_state.h"

namespace miseg::chaos {

// Dataset names of the run.
inline constexpr char kUploadsDataset[] = "uploads";  // uploaders' studies
inline constexpr char kTrainDataset[] = "train";      // the jobs' fixed data
inline constexpr char kSegDataset[] = "seg";          // the model segmentations use
inline constexpr char kPacsDataset[] = "pacs";        // what the DICOM node stores

struct Clients {
  ServerLink* link = nullptr;
  Verdict* verdict = nullptr;
  Ledger* ledger = nullptr;
  JobBook* jobs = nullptr;
  std::atomic<bool>* stop_load = nullptr;  // uploads, segmentations, new series, new jobs
  uint64_t seed = 0;
  int node_port = 0;
  v1::Hyperparameters job_hyperparameters;  // each job's, with its own seed
};

// Uploads new unlabeled studies (then, after max_new, earlier ones again) in small chunks.
void RunUploader(const Clients& c, int index, int max_new);
// Segments sent phantom series with the "seg" dataset's model.
void RunSegmenter(const Clients& c, int index);
// Follows every job of the run, reconnecting after each kill from its last sequence.
void RunWatcher(const Clients& c, int index);
// Sends series over C-STORE to the DICOM node, one association each; after a kill,
// resends every series not yet segmented (the node's inbox keeps what it acknowledged);
// at the end waits until each series' SEG is delivered.
void RunSender(const Clients& c);
// Keeps one training job running on "train" until stop_load; then lets the last finish.
void RunJobDriver(const Clients& c);

}  // namespace miseg::chaos

#endif  // MISEG_TESTS_CHAOS_CHAOS_CLIENTS_H_

// Runs one rank of a job: fetches the spec and the studies through a RankIo, joins the
// job's c10d process group (rank 0 hosts the rendezvous store), trains from the last
// checkpoint, and (rank 0) reports steps, checkpoints and the model. The same code runs
// ranks on the server's own devices and in miseg-worker processes on other machines.
#ifndef MISEG_SERVER_RANK_RANK_RUNNER_H_
#define MISEG_SERVER_RANK_RANK_RUNNER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/time/time.h"
#include "miseg/v1/miseg.pb.h"
#include "server/rank/rank_io.h"

namespace miseg {

struct RankRunnerOptions {
  // Where this rank's rendezvous store listens when it is rank 0, and the address Gloo
  // binds: an address the job's other ranks can reach.
  std::string rendezvous_host = "127.0.0.1";
  int training_threads = 0;  // intra-op CPU threads; 0: LibTorch's default
  bool cuda_graphs = false;  // CUDA devices: TrainerConfig::cuda_graphs
  std::string scratch_dir;   // checkpoints and models are written here before commit
  // Test hook (rank 0, after the events of a step are stored); see JobRunnerOptions.
  std::function<void(int64_t job_id, int64_t step)> after_step_event;
  // Test hook, every rank: called after each logged step (all ranks log every log_every).
  std::function<void(const v1::RankAssignment& rank, int64_t step)> after_step;
};

struct RankResult {
  v1::RankOutcome outcome = v1::RANK_OUTCOME_UNSPECIFIED;
  std::string message;  // why it failed or was interrupted
  int64_t step = 0;     // the last step it completed
};

// Blocks until the rank ends. *stop (set by the worker when the coordinator says so, or by
// a shutdown) makes every rank of the job stop at the same step boundary: rank 0 commits a
// checkpoint first.
RankResult RunRank(const v1::RankAssignment& rank, RankIo& io, const RankRunnerOptions& options,
                   std::atomic<bool>* stop);

}  // namespace miseg

#endif  // MISEG_SERVER_RANK_RANK_RUNNER_H_

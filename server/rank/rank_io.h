// What one rank of a data-parallel job needs from the coordinator, and gives back to it.
// The server's own devices use an implementation over its store (server/local_rank_io.h);
// a miseg-worker on another machine one over gRPC (server/worker/remote_rank_io.h). Every
// call names the rank's assignment; the coordinator refuses calls of an attempt that is no
// longer current (Aborted), so a rank cut off from it can never write.
#ifndef MISEG_SERVER_RANK_RANK_IO_H_
#define MISEG_SERVER_RANK_RANK_IO_H_

#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "miseg/v1/miseg.pb.h"

namespace miseg {

struct RendezvousAddress {
  std::string host;
  int port = 0;
};

// Implementations are called from the rank's thread only (one object per rank).
class RankIo {
 public:
  virtual ~RankIo() = default;

  virtual absl::StatusOr<v1::RankSpec> GetSpec(const v1::RankAssignment& rank) = 0;
  // The bytes of one of the job's study files, verified against its SHA-256: DataLoss when
  // they do not match (never handed to the trainer).
  virtual absl::StatusOr<std::string> ReadObject(const v1::RankAssignment& rank,
                                                 const v1::RankFile& file) = 0;
  // Writes the job's last checkpoint to path (only when spec.checkpoint_step > 0).
  virtual absl::Status FetchCheckpoint(const v1::RankAssignment& rank,
                                       const std::string& path) = 0;

  // Rank 0 publishes where its rendezvous store listens; the others wait for it, up to
  // timeout (DeadlineExceeded) or until *stop is set (Cancelled).
  virtual absl::Status PublishRendezvous(const v1::RankAssignment& rank,
                                         const RendezvousAddress& address) = 0;
  virtual absl::StatusOr<RendezvousAddress> AwaitRendezvous(const v1::RankAssignment& rank,
                                                            absl::Duration timeout,
                                                            const std::atomic<bool>* stop) = 0;

  // Rank 0 only. Stores the events of a step (step and validation events); true when the
  // job must stop (cancelled, or the server is stopping).
  virtual absl::StatusOr<bool> AppendEvents(const v1::RankAssignment& rank,
                                            std::vector<v1::JobEvent> events) = 0;
  // Rank 0 only. The checkpoint file at path (which the call may consume) becomes the
  // job's last checkpoint, at step.
  virtual absl::Status CommitCheckpoint(const v1::RankAssignment& rank, int64_t step,
                                        const std::string& path) = 0;
  // Rank 0 only. The model file at path becomes the job's model; the job succeeds.
  // Returns the model's id.
  virtual absl::StatusOr<int64_t> CommitModel(const v1::RankAssignment& rank, int64_t step,
                                              const std::string& path,
                                              const v1::ValidationEvent& validation) = 0;
};

}  // namespace miseg

#endif  // MISEG_SERVER_RANK_RANK_IO_H_

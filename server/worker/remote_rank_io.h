// RankIo over gRPC: what a rank in a miseg-worker process needs from the coordinator
// (miseg-server's WorkerService), with the worker's bearer token on every call. Study files
// are cached on the worker's disk by their SHA-256 (<cache_dir>/objects/ab/abcdef...,
// the server's own file store layout), so a job's second attempt, or a later job on the same
// studies, does not fetch them again. Nothing the coordinator sends reaches the trainer or
// the cache unless it matches the SHA-256 the rank's spec names.
//
// Thread safety: one RemoteRankIo per rank, used from that rank's thread (RankIo's
// contract). The stub and the cache may be shared by all the ranks of a worker: gRPC stubs
// are thread safe, and the file store stages each download under its own name.
#ifndef MISEG_SERVER_WORKER_REMOTE_RANK_IO_H_
#define MISEG_SERVER_WORKER_REMOTE_RANK_IO_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "server/rank/rank_io.h"
#include "server/store/file_store.h"

namespace miseg {

struct RemoteRankIoOptions {
  std::string token;  // sent as "authorization: Bearer <token>"; empty: none
  // Deadlines: unary calls, and streams (objects, checkpoints and models in chunks).
  absl::Duration unary_timeout = absl::Seconds(60);
  absl::Duration stream_timeout = absl::Minutes(30);
  // How often AwaitRendezvous asks whether rank 0 has published its address.
  absl::Duration rendezvous_poll = absl::Milliseconds(200);
  // An object may exceed the size its spec names by this much before the download is
  // refused (a coordinator that streams without end would otherwise fill the memory).
  int64_t object_slack_bytes = 64 << 10;
};

class RemoteRankIo : public RankIo {
 public:
  // stub and cache (a FileStore opened once per cache directory) must outlive this object.
  RemoteRankIo(v1::WorkerService::StubInterface* stub, FileStore* cache,
               RemoteRankIoOptions options);

  absl::StatusOr<v1::RankSpec> GetSpec(const v1::RankAssignment& rank) override;
  // The cached copy when it still matches its SHA-256 (a corrupt one is removed and fetched
  // again); otherwise FetchObject, hashed while it arrives and cached only when it matches.
  absl::StatusOr<std::string> ReadObject(const v1::RankAssignment& rank,
                                         const v1::RankFile& file) override;
  absl::Status FetchCheckpoint(const v1::RankAssignment& rank, const std::string& path) override;
  absl::Status PublishRendezvous(const v1::RankAssignment& rank,
                                 const RendezvousAddress& address) override;
  absl::StatusOr<RendezvousAddress> AwaitRendezvous(const v1::RankAssignment& rank,
                                                    absl::Duration timeout,
                                                    const std::atomic<bool>* stop) override;
  absl::StatusOr<bool> AppendEvents(const v1::RankAssignment& rank,
                                    std::vector<v1::JobEvent> events) override;
  absl::Status CommitCheckpoint(const v1::RankAssignment& rank, int64_t step,
                                const std::string& path) override;
  absl::StatusOr<int64_t> CommitModel(const v1::RankAssignment& rank, int64_t step,
                                      const std::string& path,
                                      const v1::ValidationEvent& validation) override;

 private:
  // A context with the token and a deadline timeout from now.
  void Prepare(grpc::ClientContext* context, absl::Duration timeout) const;
  absl::StatusOr<std::string> Fetch(const v1::RankAssignment& rank, const v1::RankFile& file);
  absl::StatusOr<int64_t> Upload(const v1::ArtifactHeader& header, const std::string& path);

  v1::WorkerService::StubInterface* const stub_;
  FileStore* const cache_;
  const RemoteRankIoOptions options_;
};

// gRPC's status as absl's: the same code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// True for a lowercase hex SHA-256 (the only names the cache accepts: the spec comes from
// the network, and its names become paths).
bool IsSha256Hex(const std::string& text);

}  // namespace miseg

#endif  // MISEG_SERVER_WORKER_REMOTE_RANK_IO_H_

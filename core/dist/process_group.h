// Process groups for data-parallel training: a rendezvous store (c10d's TCPStore) hosted by
// rank 0, and the collectives of one group of ranks joined through it (c10d's Gloo backend,
// or NCCL for CUDA devices in builds with MISEG_WITH_NCCL). The trainer sees only the
// Collectives interface (core/train/collectives.h); this library is the one place that knows
// c10d, so the rest of the project links neither it nor Gloo.
//
// One attempt of one job: rank 0 calls RendezvousHost::Listen, hands its port to the other
// ranks (out of band: the server's job assignment), then every rank calls JoinProcessGroup
// with the same prefix. A prefix must not be reused within one store: the rendezvous keys of
// an earlier attempt would be read as this one's. A group whose collective failed is broken
// for good: rebuild it under a new prefix (e.g. "job-7/attempt-3/").
//
// Torch-free header. Thread safety: a RendezvousHost may be shared by the groups of several
// jobs joining at once (each group connects to it on its own); keep it while its groups are
// in use (a backend may use the store after the rendezvous). One Collectives is driven by
// one thread at a time.
#ifndef MISEG_CORE_DIST_PROCESS_GROUP_H_
#define MISEG_CORE_DIST_PROCESS_GROUP_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace miseg {

class Collectives;  // core/train/collectives.h

struct ProcessGroupOptions {
  int rank = 0;
  int world_size = 1;
  std::string store_host;   // rank 0's host (ignored by rank 0, which uses its RendezvousHost)
  int store_port = 0;       // rank 0's RendezvousHost::port()
  std::string prefix;       // the keys of one attempt of one job, e.g. "job-7/attempt-2/"
  // "cpu": Gloo. "cuda:N": NCCL when built with MISEG_WITH_NCCL (USE_C10D_NCCL), else Gloo.
  std::string device = "cpu";
  std::string bind_host = "127.0.0.1";  // the address Gloo binds for its connections
  absl::Duration timeout = absl::Seconds(60);  // the rendezvous, and every collective
};

// Rank 0 hosts the rendezvous store before any other rank joins.
class RendezvousHost {
 public:
  // Starts the store's server on `port` (0: any free port) on every interface; `host` is the
  // address this process itself connects to (e.g. "127.0.0.1"). Unavailable when the port
  // cannot be bound.
  static absl::StatusOr<std::unique_ptr<RendezvousHost>> Listen(const std::string& host,
                                                                int port);
  ~RendezvousHost();
  RendezvousHost(const RendezvousHost&) = delete;
  RendezvousHost& operator=(const RendezvousHost&) = delete;

  // The port the other ranks connect to (the chosen one when Listen was given 0).
  int port() const;
  const std::string& host() const;

 private:
  struct Impl;  // holds the c10d::TCPStore
  explicit RendezvousHost(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Joins the group: rank 0 passes its RendezvousHost, every other rank nullptr. Returns once
// every rank has joined (Gloo connects all pairs here; NCCL at its first collective).
// InvalidArgument for bad options; Unavailable when the store is unreachable or the other
// ranks do not all join within the timeout.
absl::StatusOr<std::shared_ptr<Collectives>> JoinProcessGroup(const ProcessGroupOptions& options,
                                                              RendezvousHost* host);

}  // namespace miseg

#endif  // MISEG_CORE_DIST_PROCESS_GROUP_H_

// RankIo for ranks on the server's own devices: straight calls into the JobHost, no
// network, files read from the server's store (verified against their hash there).
#ifndef MISEG_SERVER_CLUSTER_LOCAL_RANK_IO_H_
#define MISEG_SERVER_CLUSTER_LOCAL_RANK_IO_H_

#include "server/cluster/job_host.h"
#include "server/rank/rank_io.h"

namespace miseg {

class LocalRankIo : public RankIo {
 public:
  explicit LocalRankIo(JobHost* host) : host_(host) {}

  absl::StatusOr<v1::RankSpec> GetSpec(const v1::RankAssignment& rank) override;
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
  JobHost* const host_;
};

}  // namespace miseg

#endif  // MISEG_SERVER_CLUSTER_LOCAL_RANK_IO_H_

#include "server/cluster/local_rank_io.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/common/status_macros.h"

namespace miseg {

absl::StatusOr<v1::RankSpec> LocalRankIo::GetSpec(const v1::RankAssignment& rank) {
  return host_->Spec(rank);
}

absl::StatusOr<std::string> LocalRankIo::ReadObject(const v1::RankAssignment& rank,
                                                    const v1::RankFile& file) {
  return host_->ObjectBytes(rank, file.sha256());
}

absl::Status LocalRankIo::FetchCheckpoint(const v1::RankAssignment& rank, const std::string& path) {
  ASSIGN_OR_RETURN(std::string checkpoint, host_->CheckpointPath(rank));
  std::error_code ec;
  std::filesystem::copy_file(checkpoint, path, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) return absl::DataLossError(absl::StrCat("cannot read checkpoint: ", ec.message()));
  return absl::OkStatus();
}

absl::Status LocalRankIo::PublishRendezvous(const v1::RankAssignment& rank,
                                            const RendezvousAddress& address) {
  return host_->scheduler().PublishRendezvous(rank, address);
}

absl::StatusOr<RendezvousAddress> LocalRankIo::AwaitRendezvous(const v1::RankAssignment& rank,
                                                               absl::Duration timeout,
                                                               const std::atomic<bool>* stop) {
  const absl::Time deadline = absl::Now() + timeout;
  // Rank 0 publishes once; waiting in short slices keeps *stop honoured.
  absl::Notification never;
  while (true) {
    ASSIGN_OR_RETURN(std::optional<RendezvousAddress> address,
                     host_->scheduler().Rendezvous(rank));
    if (address) return *address;
    if (stop->load()) return absl::CancelledError("stopped while waiting for rank 0");
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError("rank 0 did not publish its rendezvous in time");
    }
    never.WaitForNotificationWithTimeout(absl::Milliseconds(50));
  }
}

absl::StatusOr<bool> LocalRankIo::AppendEvents(const v1::RankAssignment& rank,
                                               std::vector<v1::JobEvent> events) {
  return host_->AppendEvents(rank, std::move(events));
}

absl::Status LocalRankIo::CommitCheckpoint(const v1::RankAssignment& rank, int64_t step,
                                           const std::string& path) {
  return host_->CommitCheckpoint(rank, step, path);
}

absl::StatusOr<int64_t> LocalRankIo::CommitModel(const v1::RankAssignment& rank, int64_t step,
                                                 const std::string& path,
                                                 const v1::ValidationEvent& validation) {
  return host_->CommitModel(rank, step, path, validation);
}

}  // namespace miseg

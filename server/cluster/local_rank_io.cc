#include "server/cluster/local_rank_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/common/status_macros.h"

namespace miseg {
namespace {

absl::Status CopyFile(const std::string& from, const std::string& to) {
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", from));
  const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0) {
    const int error = errno;
    ::close(in);
    return absl::ErrnoToStatus(error, absl::StrCat("cannot create ", to));
  }
  absl::Status status;
  std::string buffer(size_t{1} << 20, '\0');
  while (status.ok()) {
    const ssize_t n = ::read(in, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n < 0) status = absl::ErrnoToStatus(errno, absl::StrCat("cannot read ", from));
      break;
    }
    for (ssize_t done = 0; done < n && status.ok();) {
      const ssize_t w = ::write(out, buffer.data() + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) status = absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", to));
      done += std::max<ssize_t>(w, 0);
    }
  }
  ::close(in);
  if (::close(out) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", to));
  }
  return status;
}

}  // namespace

absl::StatusOr<v1::RankSpec> LocalRankIo::GetSpec(const v1::RankAssignment& rank) {
  return host_->Spec(rank);
}

absl::StatusOr<std::string> LocalRankIo::ReadObject(const v1::RankAssignment& rank,
                                                    const v1::RankFile& file) {
  return host_->ObjectBytes(rank, file.sha256());
}

absl::Status LocalRankIo::FetchCheckpoint(const v1::RankAssignment& rank, const std::string& path) {
  ASSIGN_OR_RETURN(std::string checkpoint, host_->CheckpointPath(rank));
  // A hard link: the same bytes, no copy and no space (checkpoints are never written in
  // place). Elsewhere (another filesystem) a copy whose errors keep their errno: a full
  // disk is ResourceExhausted and the job retries later.
  std::error_code ignored;
  std::filesystem::remove(path, ignored);
  if (::link(checkpoint.c_str(), path.c_str()) == 0) return absl::OkStatus();
  if (errno != EXDEV) return absl::ErrnoToStatus(errno, absl::StrCat("cannot link ", checkpoint));
  return CopyFile(checkpoint, path);
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

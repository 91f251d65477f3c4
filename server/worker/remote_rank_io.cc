#include "server/worker/remote_rank_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"

namespace miseg {
namespace {

constexpr size_t kUploadChunkBytes = 1 << 20;

absl::Status ErrnoError(int error, absl::string_view what, const std::string& path) {
  return absl::ErrnoToStatus(error, absl::StrCat(what, " ", path));
}

// A descriptor closed on every path out.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int Close() {
    const int result = ::close(fd_);
    fd_ = -1;
    return result;
  }

 private:
  int fd_;
};

bool WriteAll(int fd, const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// The chunks of a server stream, written to path through a temporary in the same directory
// (fsync, rename): a rank never resumes from half a checkpoint.
absl::Status StreamToFile(grpc::ClientReaderInterface<v1::FileChunk>* reader,
                          const std::string& path) {
  const std::string temp = absl::StrCat(path, ".", ::getpid(), ".partial");
  Fd file(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (file.get() < 0) return ErrnoError(errno, "cannot create", temp);
  v1::FileChunk chunk;
  absl::Status written = absl::OkStatus();
  while (reader->Read(&chunk)) {
    // Reading on after a failed write drains the stream, so Finish returns promptly.
    if (written.ok() && !WriteAll(file.get(), chunk.data())) {
      written = ErrnoError(errno, "cannot write", temp);
    }
  }
  absl::Status received = FromGrpcStatus(reader->Finish());
  if (written.ok() && received.ok()) {
    if (::fsync(file.get()) != 0) written = ErrnoError(errno, "cannot fsync", temp);
  }
  if (written.ok() && received.ok() && file.Close() != 0) {
    written = ErrnoError(errno, "cannot close", temp);
  }
  if (written.ok() && received.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    written = ErrnoError(errno, "cannot rename into", path);
  }
  if (!received.ok() || !written.ok()) {
    ::unlink(temp.c_str());
    return received.ok() ? written : received;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

bool IsSha256Hex(const std::string& text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

RemoteRankIo::RemoteRankIo(v1::WorkerService::StubInterface* stub, FileStore* cache,
                           RemoteRankIoOptions options)
    : stub_(stub), cache_(cache), options_(std::move(options)) {}

void RemoteRankIo::Prepare(grpc::ClientContext* context, absl::Duration timeout) const {
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

absl::StatusOr<v1::RankSpec> RemoteRankIo::GetSpec(const v1::RankAssignment& rank) {
  grpc::ClientContext context;
  Prepare(&context, options_.unary_timeout);
  v1::GetRankSpecRequest request;
  *request.mutable_rank() = rank;
  v1::RankSpec spec;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->GetRankSpec(&context, request, &spec)));
  return spec;
}

absl::StatusOr<std::string> RemoteRankIo::ReadObject(const v1::RankAssignment& rank,
                                                     const v1::RankFile& file) {
  if (!IsSha256Hex(file.sha256())) {
    return absl::InvalidArgumentError(
        absl::StrCat("the rank's spec names an object by '", file.sha256().substr(0, 80),
                     "', which is not a lowercase hex SHA-256"));
  }
  absl::StatusOr<std::string> cached = cache_->Get(file.sha256());
  if (cached.ok()) return cached;
  if (absl::IsDataLoss(cached.status())) {
    // The disk changed the bytes since they were verified: drop the copy, fetch it again.
    RETURN_IF_ERROR(cache_->Remove(file.sha256()));
  } else if (!absl::IsNotFound(cached.status())) {
    return cached.status();
  }
  return Fetch(rank, file);
}

// One FetchObject stream: the bytes are hashed (by the staged file) as they arrive and
// become a cache entry only when they match; otherwise the staged file is dropped.
absl::StatusOr<std::string> RemoteRankIo::Fetch(const v1::RankAssignment& rank,
                                                const v1::RankFile& file) {
  const int64_t limit = std::max<int64_t>(0, file.size_bytes()) + options_.object_slack_bytes;
  ASSIGN_OR_RETURN(std::unique_ptr<StagedFile> staged, cache_->Stage());
  grpc::ClientContext context;
  Prepare(&context, options_.stream_timeout);
  v1::FetchObjectRequest request;
  *request.mutable_rank() = rank;
  request.set_sha256(file.sha256());
  std::unique_ptr<grpc::ClientReaderInterface<v1::FileChunk>> reader =
      stub_->FetchObject(&context, request);
  std::string bytes;
  absl::Status local = absl::OkStatus();
  v1::FileChunk chunk;
  while (local.ok() && reader->Read(&chunk)) {
    if (static_cast<int64_t>(bytes.size() + chunk.data().size()) > limit) {
      local = absl::DataLossError(absl::StrCat("object ", file.sha256(),
                                               " from the coordinator is larger than the ",
                                               file.size_bytes(), " bytes its spec names"));
      break;
    }
    bytes += chunk.data();
    local = staged->Append(chunk.data());
  }
  if (!local.ok()) {
    context.TryCancel();  // the rest of the stream is not wanted
    reader->Finish();
    return local;
  }
  RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  RETURN_IF_ERROR(staged->Finish());
  if (staged->hash() != file.sha256()) {
    return absl::DataLossError(absl::StrCat("object ", file.sha256(),
                                            " from the coordinator does not match its SHA-256"));
  }
  // The bytes are verified; a cache that cannot take them (a full disk) only costs a fetch
  // next time, so the rank trains on.
  cache_->Commit(*staged).IgnoreError();
  return bytes;
}

absl::Status RemoteRankIo::FetchCheckpoint(const v1::RankAssignment& rank,
                                           const std::string& path) {
  grpc::ClientContext context;
  Prepare(&context, options_.stream_timeout);
  v1::FetchCheckpointRequest request;
  *request.mutable_rank() = rank;
  std::unique_ptr<grpc::ClientReaderInterface<v1::FileChunk>> reader =
      stub_->FetchCheckpoint(&context, request);
  return StreamToFile(reader.get(), path);
}

absl::Status RemoteRankIo::PublishRendezvous(const v1::RankAssignment& rank,
                                             const RendezvousAddress& address) {
  grpc::ClientContext context;
  Prepare(&context, options_.unary_timeout);
  v1::PublishRendezvousRequest request;
  *request.mutable_rank() = rank;
  request.set_host(address.host);
  request.set_port(address.port);
  v1::PublishRendezvousResponse response;
  return FromGrpcStatus(stub_->PublishRendezvous(&context, request, &response));
}

absl::StatusOr<RendezvousAddress> RemoteRankIo::AwaitRendezvous(const v1::RankAssignment& rank,
                                                                absl::Duration timeout,
                                                                const std::atomic<bool>* stop) {
  const absl::Time deadline = absl::Now() + timeout;
  auto stopped = [stop] { return stop != nullptr && stop->load(); };
  while (true) {
    if (stopped()) return absl::CancelledError("stopped while waiting for rank 0's address");
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat(
          "rank 0 of job ", rank.job_id(), " did not publish its address within ",
          absl::FormatDuration(timeout)));
    }
    grpc::ClientContext context;
    Prepare(&context, std::min(left, options_.unary_timeout));
    v1::GetRendezvousRequest request;
    *request.mutable_rank() = rank;
    v1::GetRendezvousResponse response;
    const grpc::Status status = stub_->GetRendezvous(&context, request, &response);
    // A coordinator briefly out of reach is asked again until the timeout; anything else
    // (the attempt is over, the token is refused) ends the wait.
    if (!status.ok() && status.error_code() != grpc::StatusCode::UNAVAILABLE &&
        status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      return FromGrpcStatus(status);
    }
    if (status.ok() && response.ready()) return RendezvousAddress{response.host(), response.port()};
    // Waits in short slices so that a stop is seen within a few milliseconds.
    const absl::Time next = absl::Now() + options_.rendezvous_poll;
    while (!stopped() && absl::Now() < std::min(next, deadline)) {
      absl::SleepFor(std::min(absl::Milliseconds(10), options_.rendezvous_poll));
    }
  }
}

absl::StatusOr<bool> RemoteRankIo::AppendEvents(const v1::RankAssignment& rank,
                                                std::vector<v1::JobEvent> events) {
  grpc::ClientContext context;
  Prepare(&context, options_.unary_timeout);
  v1::AppendRankEventsRequest request;
  *request.mutable_rank() = rank;
  for (v1::JobEvent& event : events) *request.add_events() = std::move(event);
  v1::AppendRankEventsResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->AppendRankEvents(&context, request, &response)));
  return response.stop();
}

absl::Status RemoteRankIo::CommitCheckpoint(const v1::RankAssignment& rank, int64_t step,
                                            const std::string& path) {
  v1::ArtifactHeader header;
  *header.mutable_rank() = rank;
  header.set_step(step);
  header.set_is_model(false);
  return Upload(header, path).status();
}

absl::StatusOr<int64_t> RemoteRankIo::CommitModel(const v1::RankAssignment& rank, int64_t step,
                                                  const std::string& path,
                                                  const v1::ValidationEvent& validation) {
  v1::ArtifactHeader header;
  *header.mutable_rank() = rank;
  header.set_step(step);
  header.set_is_model(true);
  *header.mutable_validation() = validation;
  return Upload(header, path);
}

// One UploadArtifact stream: the header (with the file's size), then the file in 1 MiB
// chunks read one at a time, so a model of any size costs one chunk of memory.
absl::StatusOr<int64_t> RemoteRankIo::Upload(const v1::ArtifactHeader& header_in,
                                             const std::string& path) {
  Fd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (file.get() < 0) return ErrnoError(errno, "cannot open", path);
  struct stat st;
  if (::fstat(file.get(), &st) != 0) return ErrnoError(errno, "cannot stat", path);
  v1::ArtifactHeader header = header_in;
  header.set_size_bytes(static_cast<int64_t>(st.st_size));

  grpc::ClientContext context;
  Prepare(&context, options_.stream_timeout);
  v1::UploadArtifactResponse response;
  std::unique_ptr<grpc::ClientWriterInterface<v1::UploadArtifactRequest>> writer =
      stub_->UploadArtifact(&context, &response);
  v1::UploadArtifactRequest request;
  *request.mutable_header() = std::move(header);
  bool open = writer->Write(request);
  absl::Status local = absl::OkStatus();
  std::string buffer(kUploadChunkBytes, '\0');
  while (open) {
    const ssize_t n = ::read(file.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) local = ErrnoError(errno, "cannot read", path);
    if (n <= 0) break;
    request.Clear();
    request.mutable_chunk()->set_data(buffer.data(), static_cast<size_t>(n));
    open = writer->Write(request);
  }
  // A local failure must not look like a whole file: the call is cancelled, never finished.
  if (!local.ok()) context.TryCancel();
  writer->WritesDone();
  const grpc::Status status = writer->Finish();
  RETURN_IF_ERROR(local);
  RETURN_IF_ERROR(FromGrpcStatus(status));
  return response.model_id();
}

}  // namespace miseg

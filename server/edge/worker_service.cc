// miseg.v1.WorkerService: workers register and heartbeat, and their ranks read the job's
// spec and files and write its events, checkpoints and model, all through the scheduler
// and the job host of the JobRunner. Files go out and artifacts come in 1 MiB chunks, one
// in flight per stream, so a stream's memory is bounded whatever the file's size.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "server/edge/edge_reactor.h"
#include "server/edge/services.h"
#include "server/edge/unary_handler.h"

namespace miseg {
namespace {

constexpr size_t kChunkBytes = size_t{1} << 20;
constexpr int64_t kMaxArtifactBytes = int64_t{16} << 30;

// Streams one file to the client in chunks; the last chunk carries last_chunk.
class FileDownloadReactor final : public EdgeReactor<grpc::ServerWriteReactor<v1::FileChunk>> {
 public:
  FileDownloadReactor(const ServiceDeps& deps, grpc::CallbackServerContext* context,
                      const char* method, const std::function<absl::StatusOr<std::string>()>& path)
      : EdgeReactor(deps, context, {method, Permission::kWork, /*needs_slot=*/false}) {
    if (!start_status().ok()) {
      End(start_status());
      return;
    }
    absl::StatusOr<std::string> file = path();
    if (!file.ok()) {
      End(file.status());
      return;
    }
    in_.open(*file, std::ios::binary);
    if (!in_) {
      End(absl::NotFoundError("the file is gone"));
      return;
    }
    WriteNext();
  }

  void OnWriteDone(bool ok) override {
    WaitingOnClient(false);
    if (!ok || ended()) return;
    Rearm();
    if (sent_last_) {
      End(absl::OkStatus());
      return;
    }
    WriteNext();
  }

 private:
  void WriteNext() {
    std::string& data = *chunk_.mutable_data();
    data.resize(kChunkBytes);
    in_.read(data.data(), static_cast<std::streamsize>(data.size()));
    data.resize(static_cast<size_t>(in_.gcount()));
    if (in_.bad()) {
      End(absl::DataLossError("cannot read the file"));
      return;
    }
    sent_last_ = in_.eof() || in_.peek() == EOF;
    chunk_.set_last_chunk(sent_last_);
    WaitingOnClient(true);
    StartWrite(&chunk_);
  }

  std::ifstream in_;
  v1::FileChunk chunk_;
  bool sent_last_ = false;
};

// Receives a checkpoint or model from rank 0 into incoming/, then commits it.
class ArtifactUploadReactor final
    : public ChunkedInputReactor<grpc::ServerReadReactor<v1::UploadArtifactRequest>,
                                 v1::UploadArtifactRequest> {
 public:
  ArtifactUploadReactor(const ServiceDeps& deps, grpc::CallbackServerContext* context,
                        v1::UploadArtifactResponse* response)
      : ChunkedInputReactor(deps, context, {"UploadArtifact", Permission::kWork, false}),
        response_(response) {
    Begin();
  }
  ~ArtifactUploadReactor() override {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) std::remove(path_.c_str());
  }

 private:
  absl::Status TakeHeader(const v1::UploadArtifactRequest& first) override {
    if (!first.has_header()) return absl::InvalidArgumentError("the first message is the header");
    header_ = first.header();
    if (header_.rank().rank() != 0) {
      return absl::PermissionDeniedError("only rank 0 uploads a job's results");
    }
    if (header_.size_bytes() < 0 || header_.size_bytes() > kMaxArtifactBytes) {
      return absl::InvalidArgumentError("artifact size out of range");
    }
    JobHost& host = deps_.runner->host();
    RETURN_IF_ERROR(host.scheduler().WithCurrentAttempt(header_.rank(), [] {
      return absl::OkStatus();
    }));
    path_ = absl::StrCat(host.IncomingDir(), "/job-", header_.rank().job_id(), "-",
                         std::random_device()(), ".part");
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd_ < 0) return absl::InternalError("cannot create a file in incoming/");
    return absl::OkStatus();
  }

  absl::Status TakeChunk(const v1::FileChunk& chunk) override {
    received_ += static_cast<int64_t>(chunk.data().size());
    if (received_ > header_.size_bytes()) {
      return absl::InvalidArgumentError("more bytes than the header announced");
    }
    const char* p = chunk.data().data();
    size_t left = chunk.data().size();
    while (left > 0) {
      const ssize_t n = ::write(fd_, p, left);
      if (n < 0) return absl::ResourceExhaustedError("cannot write the artifact (disk full?)");
      p += n;
      left -= static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  void EndOfStream() override { End(Commit()); }

  absl::Status Commit() {
    if (fd_ < 0) return absl::InvalidArgumentError("no header");
    if (received_ != header_.size_bytes()) {
      return absl::InvalidArgumentError(
          absl::StrCat("received ", received_, " of ", header_.size_bytes(), " bytes"));
    }
    if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
      fd_ = -1;
      return absl::InternalError("cannot flush the artifact to disk");
    }
    fd_ = -1;
    JobHost& host = deps_.runner->host();
    if (header_.is_model()) {
      ASSIGN_OR_RETURN(int64_t model, host.CommitModel(header_.rank(), header_.step(), path_,
                                                       header_.validation()));
      response_->set_model_id(model);
    } else {
      RETURN_IF_ERROR(host.CommitCheckpoint(header_.rank(), header_.step(), path_));
    }
    path_.clear();  // moved into place
    return absl::OkStatus();
  }

  v1::UploadArtifactResponse* const response_;
  v1::ArtifactHeader header_;
  std::string path_;
  int fd_ = -1;
  int64_t received_ = 0;
};

std::vector<std::string> DevicesOf(const v1::RegisterWorkerRequest& request) {
  return {request.devices().begin(), request.devices().end()};
}

class WorkerServiceImpl final : public v1::WorkerService::CallbackService {
 public:
  explicit WorkerServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* context,
                                        const v1::ListWorkersRequest* request,
                                        v1::ListWorkersResponse* response) override {
    return HandleUnary(deps_, context, response, "ListWorkers", Permission::kRead, [&] {
      for (v1::Worker& w : scheduler().ListWorkers()) *response->add_workers() = std::move(w);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext* context,
                                           const v1::RegisterWorkerRequest* request,
                                           v1::RegisterWorkerResponse* response) override {
    return HandleUnary(deps_, context, response, "RegisterWorker", Permission::kWork,
                       [&]() -> absl::Status {
      ASSIGN_OR_RETURN(std::string id,
                       scheduler().RegisterWorker(request->name(), DevicesOf(*request),
                                                  request->address(), /*local=*/false));
      response->set_worker_id(id);
      response->set_lease_ms(absl::ToInt64Milliseconds(scheduler().options().lease));
      response->set_heartbeat_interval_ms(
          absl::ToInt64Milliseconds(scheduler().options().heartbeat_interval));
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override {
    return HandleUnary(deps_, context, response, "Heartbeat", Permission::kWork,
                       [&]() -> absl::Status {
      ASSIGN_OR_RETURN(*response, scheduler().Heartbeat(request->worker_id(), request->leaving()));
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* EndRank(grpc::CallbackServerContext* context,
                                    const v1::EndRankRequest* request,
                                    v1::EndRankResponse* response) override {
    return HandleUnary(deps_, context, response, "EndRank", Permission::kWork, [&] {
      return scheduler().EndRank(request->worker_id(), request->rank(), request->outcome(),
                                 request->message());
    });
  }

  grpc::ServerUnaryReactor* GetRankSpec(grpc::CallbackServerContext* context,
                                        const v1::GetRankSpecRequest* request,
                                        v1::RankSpec* response) override {
    return HandleUnary(deps_, context, response, "GetRankSpec", Permission::kWork,
                       [&]() -> absl::Status {
      ASSIGN_OR_RETURN(*response, deps_.runner->host().Spec(request->rank()));
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* PublishRendezvous(grpc::CallbackServerContext* context,
                                              const v1::PublishRendezvousRequest* request,
                                              v1::PublishRendezvousResponse* response) override {
    return HandleUnary(deps_, context, response, "PublishRendezvous", Permission::kWork, [&] {
      if (request->host().empty() || request->port() <= 0 || request->port() > 65535) {
        return absl::InvalidArgumentError("rendezvous needs a host and a port");
      }
      return scheduler().PublishRendezvous(request->rank(), {request->host(), request->port()});
    });
  }

  grpc::ServerUnaryReactor* GetRendezvous(grpc::CallbackServerContext* context,
                                          const v1::GetRendezvousRequest* request,
                                          v1::GetRendezvousResponse* response) override {
    return HandleUnary(deps_, context, response, "GetRendezvous", Permission::kWork,
                       [&]() -> absl::Status {
      ASSIGN_OR_RETURN(std::optional<RendezvousAddress> address,
                       scheduler().Rendezvous(request->rank()));
      response->set_ready(address.has_value());
      if (address) {
        response->set_host(address->host);
        response->set_port(address->port);
      }
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* AppendRankEvents(grpc::CallbackServerContext* context,
                                             const v1::AppendRankEventsRequest* request,
                                             v1::AppendRankEventsResponse* response) override {
    return HandleUnary(deps_, context, response, "AppendRankEvents", Permission::kWork,
                       [&]() -> absl::Status {
      std::vector<v1::JobEvent> events(request->events().begin(), request->events().end());
      ASSIGN_OR_RETURN(bool stop, deps_.runner->host().AppendEvents(request->rank(), events));
      response->set_stop(stop);
      return absl::OkStatus();
    });
  }

  grpc::ServerWriteReactor<v1::FileChunk>* FetchObject(
      grpc::CallbackServerContext* context, const v1::FetchObjectRequest* request) override {
    return new FileDownloadReactor(deps_, context, "FetchObject", [this, request] {
      return deps_.runner->host().ObjectPath(request->rank(), request->sha256());
    });
  }

  grpc::ServerWriteReactor<v1::FileChunk>* FetchCheckpoint(
      grpc::CallbackServerContext* context, const v1::FetchCheckpointRequest* request) override {
    return new FileDownloadReactor(deps_, context, "FetchCheckpoint", [this, request] {
      return deps_.runner->host().CheckpointPath(request->rank());
    });
  }

  grpc::ServerReadReactor<v1::UploadArtifactRequest>* UploadArtifact(
      grpc::CallbackServerContext* context, v1::UploadArtifactResponse* response) override {
    return new ArtifactUploadReactor(deps_, context, response);
  }

 private:
  Scheduler& scheduler() { return deps_.runner->scheduler(); }
  ServiceDeps deps_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeWorkerService(const ServiceDeps& deps) {
  return std::make_unique<WorkerServiceImpl>(deps);
}

}  // namespace miseg

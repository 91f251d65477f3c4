#include "tests/server/worker/fake_coordinator.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace miseg::testing {

FakeCoordinator::FakeCoordinator() {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(this);
  server_ = builder.BuildAndStart();
  address_ = absl::StrCat("127.0.0.1:", port);
}

FakeCoordinator::~FakeCoordinator() {
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

std::shared_ptr<grpc::Channel> FakeCoordinator::Channel() const {
  return grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
}

void FakeCoordinator::ServeObject(const std::string& sha256, std::string bytes) {
  absl::MutexLock lock(&mu);
  objects_[sha256] = std::move(bytes);
}

void FakeCoordinator::set_checkpoint(std::string bytes) {
  absl::MutexLock lock(&mu);
  checkpoint_ = std::move(bytes);
}

void FakeCoordinator::set_rendezvous(int not_ready, std::string host, int port) {
  absl::MutexLock lock(&mu);
  rendezvous_not_ready_ = not_ready;
  rendezvous_host_ = std::move(host);
  rendezvous_port_ = port;
}

void FakeCoordinator::FailMethod(const std::string& method, grpc::Status status, int times) {
  absl::MutexLock lock(&mu);
  if (status.ok() || times == 0) {
    failures_.erase(method);
  } else {
    failures_[method] = Failure{std::move(status), times};
  }
}

void FakeCoordinator::QueueStart(const v1::RankAssignment& rank) {
  absl::MutexLock lock(&mu);
  starts_.push_back(rank);
}

void FakeCoordinator::QueueStop(const v1::RankAssignment& rank) {
  absl::MutexLock lock(&mu);
  stops_.push_back(rank);
}

bool FakeCoordinator::Await(const std::function<bool()>& condition, absl::Duration timeout) {
  absl::MutexLock lock(&mu);
  return mu.AwaitWithTimeout(absl::Condition(&condition), timeout);
}

grpc::Status FakeCoordinator::Enter(grpc::ServerContext* context, const std::string& method) {
  std::string token;
  auto it = context->client_metadata().find("authorization");
  if (it != context->client_metadata().end()) token.assign(it->second.data(), it->second.size());
  absl::MutexLock lock(&mu);
  ++calls[method];
  authorization.push_back(token);
  auto failure = failures_.find(method);
  if (failure == failures_.end()) return grpc::Status::OK;
  const grpc::Status status = failure->second.status;
  if (failure->second.times > 0 && --failure->second.times == 0) failures_.erase(failure);
  return status;
}

grpc::Status FakeCoordinator::WriteChunks(const std::string& bytes,
                                          grpc::ServerWriter<v1::FileChunk>* writer) {
  constexpr size_t kChunk = 16 << 10;
  size_t offset = 0;
  do {
    v1::FileChunk chunk;
    const size_t n = std::min(kChunk, bytes.size() - offset);
    chunk.set_data(bytes.data() + offset, n);
    offset += n;
    chunk.set_last_chunk(offset >= bytes.size());
    if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  } while (offset < bytes.size());
  return grpc::Status::OK;
}

grpc::Status FakeCoordinator::RegisterWorker(grpc::ServerContext* context,
                                             const v1::RegisterWorkerRequest* request,
                                             v1::RegisterWorkerResponse* response) {
  if (grpc::Status s = Enter(context, "RegisterWorker"); !s.ok()) return s;
  absl::MutexLock lock(&mu);
  registrations.push_back(*request);
  response->set_worker_id(absl::StrCat("w", next_worker_++));
  response->set_lease_ms(10000);
  response->set_heartbeat_interval_ms(10);
  return grpc::Status::OK;
}

grpc::Status FakeCoordinator::Heartbeat(grpc::ServerContext* context,
                                        const v1::HeartbeatRequest* request,
                                        v1::HeartbeatResponse* response) {
  if (grpc::Status s = Enter(context, "Heartbeat"); !s.ok()) return s;
  absl::MutexLock lock(&mu);
  for (const v1::RankAssignment& rank : starts_) *response->add_start() = rank;
  for (const v1::RankAssignment& rank : stops_) *response->add_stop() = rank;
  starts_.clear();
  stops_.clear();
  return grpc::Status::OK;
}

grpc::Status FakeCoordinator::EndRank(grpc::ServerContext* context,
                                      const v1::EndRankRequest* request,
                                      v1::EndRankResponse* response) {
  if (grpc::Status s = Enter(context, "EndRank"); !s.ok()) return s;
  absl::MutexLock lock(&mu);
  ends.push_back(*request);
  return grpc::Status::OK;
}

grpc::Status FakeCoordinator::FetchObject(grpc::ServerContext* context,
                                          const v1::FetchObjectRequest* request,
                                          grpc::ServerWriter<v1::FileChunk>* writer) {
  if (grpc::Status s = Enter(context, "FetchObject"); !s.ok()) return s;
  std::string bytes;
  {
    absl::MutexLock lock(&mu);
    auto it = objects_.find(request->sha256());
    if (it == objects_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such object");
    bytes = it->second;
  }
  return WriteChunks(bytes, writer);
}

grpc::Status FakeCoordinator::FetchCheckpoint(grpc::ServerContext* context,
                                              const v1::FetchCheckpointRequest* request,
                                              grpc::ServerWriter<v1::FileChunk>* writer) {
  if (grpc::Status s = Enter(context, "FetchCheckpoint"); !s.ok()) return s;
  std::string bytes;
  {
    absl::MutexLock lock(&mu);
    bytes = checkpoint_;
  }
  return WriteChunks(bytes, writer);
}

grpc::Status FakeCoordinator::GetRendezvous(grpc::ServerContext* context,
                                            const v1::GetRendezvousRequest* request,
                                            v1::GetRendezvousResponse* response) {
  if (grpc::Status s = Enter(context, "GetRendezvous"); !s.ok()) return s;
  absl::MutexLock lock(&mu);
  if (rendezvous_not_ready_ > 0) {
    --rendezvous_not_ready_;
    return grpc::Status::OK;
  }
  response->set_ready(true);
  response->set_host(rendezvous_host_);
  response->set_port(rendezvous_port_);
  return grpc::Status::OK;
}

grpc::Status FakeCoordinator::UploadArtifact(grpc::ServerContext* context,
                                             grpc::ServerReader<v1::UploadArtifactRequest>* reader,
                                             v1::UploadArtifactResponse* response) {
  if (grpc::Status s = Enter(context, "UploadArtifact"); !s.ok()) return s;
  Upload upload;
  v1::UploadArtifactRequest request;
  bool first = true;
  while (reader->Read(&request)) {
    if (first != request.has_header()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the header comes first, once");
    }
    if (first) {
      upload.header = request.header();
    } else {
      upload.bytes += request.chunk().data();
      ++upload.chunks;
    }
    first = false;
  }
  absl::MutexLock lock(&mu);
  uploads.push_back(upload);
  response->set_model_id(upload.header.is_model() ? model_id : 0);
  return grpc::Status::OK;
}

}  // namespace miseg::testing

// A scripted WorkerService for the worker's tests: a real gRPC server on 127.0.0.1:0 whose
// answers the test sets (objects to serve, bytes that do or do not match, heartbeat
// answers) and which records what the worker sent (registrations, ends, uploads, tokens).
// Tests wait on its state (Await), never on sleeps.
#ifndef MISEG_TESTS_SERVER_WORKER_FAKE_COORDINATOR_H_
#define MISEG_TESTS_SERVER_WORKER_FAKE_COORDINATOR_H_

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "miseg/v1/miseg.grpc.pb.h"

namespace miseg::testing {

struct Upload {
  v1::ArtifactHeader header;
  std::string bytes;
  int chunks = 0;
};

class FakeCoordinator final : public v1::WorkerService::Service {
 public:
  FakeCoordinator();
  ~FakeCoordinator() override;

  std::string address() const { return address_; }
  std::shared_ptr<grpc::Channel> Channel() const;

  // --- what it serves ---
  void ServeObject(const std::string& sha256, std::string bytes) ABSL_LOCKS_EXCLUDED(mu);
  void set_checkpoint(std::string bytes) ABSL_LOCKS_EXCLUDED(mu);
  // The first `not_ready` GetRendezvous calls answer ready = false.
  void set_rendezvous(int not_ready, std::string host, int port) ABSL_LOCKS_EXCLUDED(mu);
  // The next `times` calls of `method` (every one while times < 0) fail with this status;
  // an OK status clears the failure.
  void FailMethod(const std::string& method, grpc::Status status, int times = -1)
      ABSL_LOCKS_EXCLUDED(mu);
  // Handed out by the next heartbeat.
  void QueueStart(const v1::RankAssignment& rank) ABSL_LOCKS_EXCLUDED(mu);
  void QueueStop(const v1::RankAssignment& rank) ABSL_LOCKS_EXCLUDED(mu);

  // Blocks until condition holds (true) or timeout passes (false). The condition runs under
  // the lock, so it may read the recorded fields below.
  bool Await(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(30));

  // --- what it recorded ---
  mutable absl::Mutex mu;
  std::map<std::string, int> calls ABSL_GUARDED_BY(mu);  // by method name
  std::vector<std::string> authorization ABSL_GUARDED_BY(mu);  // each call's header
  std::vector<v1::RegisterWorkerRequest> registrations ABSL_GUARDED_BY(mu);
  std::vector<v1::EndRankRequest> ends ABSL_GUARDED_BY(mu);
  std::vector<Upload> uploads ABSL_GUARDED_BY(mu);
  int64_t model_id = 42;

  // --- the service ---
  grpc::Status RegisterWorker(grpc::ServerContext* context, const v1::RegisterWorkerRequest* request,
                              v1::RegisterWorkerResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status EndRank(grpc::ServerContext* context, const v1::EndRankRequest* request,
                       v1::EndRankResponse* response) override;
  grpc::Status FetchObject(grpc::ServerContext* context, const v1::FetchObjectRequest* request,
                           grpc::ServerWriter<v1::FileChunk>* writer) override;
  grpc::Status FetchCheckpoint(grpc::ServerContext* context,
                               const v1::FetchCheckpointRequest* request,
                               grpc::ServerWriter<v1::FileChunk>* writer) override;
  grpc::Status GetRendezvous(grpc::ServerContext* context, const v1::GetRendezvousRequest* request,
                             v1::GetRendezvousResponse* response) override;
  grpc::Status UploadArtifact(grpc::ServerContext* context,
                              grpc::ServerReader<v1::UploadArtifactRequest>* reader,
                              v1::UploadArtifactResponse* response) override;

 private:
  // Counts the call and records its token; a scripted failure of the method, else OK.
  grpc::Status Enter(grpc::ServerContext* context, const std::string& method)
      ABSL_LOCKS_EXCLUDED(mu);
  static grpc::Status WriteChunks(const std::string& bytes, grpc::ServerWriter<v1::FileChunk>* writer);

  std::map<std::string, std::string> objects_ ABSL_GUARDED_BY(mu);
  std::string checkpoint_ ABSL_GUARDED_BY(mu);
  int rendezvous_not_ready_ ABSL_GUARDED_BY(mu) = 0;
  std::string rendezvous_host_ ABSL_GUARDED_BY(mu);
  int rendezvous_port_ ABSL_GUARDED_BY(mu) = 0;
  struct Failure {
    grpc::Status status;
    int times = -1;
  };
  std::map<std::string, Failure> failures_ ABSL_GUARDED_BY(mu);
  std::deque<v1::RankAssignment> starts_ ABSL_GUARDED_BY(mu);
  std::deque<v1::RankAssignment> stops_ ABSL_GUARDED_BY(mu);
  int next_worker_ ABSL_GUARDED_BY(mu) = 1;

  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

}  // namespace miseg::testing

#endif  // MISEG_TESTS_SERVER_WORKER_FAKE_COORDINATOR_H_

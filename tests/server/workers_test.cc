// Data-parallel jobs across processes: a real miseg-server (the coordinator, with one
// device of its own) and real miseg-worker processes on loopback, each worker with its own
// empty cache directory. Ranks run with one intra-op thread each.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "server/store/file_store.h"
#include "tests/server/api_client.h"
#include "tests/server/child_process.h"
#include "tests/server/server_fixture.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr std::chrono::seconds kPatience(120);

int CountFiles(const std::string& dir) {
  int count = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file() && it->path().parent_path().parent_path().filename() == "objects") {
      ++count;
    }
  }
  return count;
}

class WorkersTest : public ServerTest {
 protected:
  void StartServer(std::vector<std::string> flags) {
    flags.push_back("--training_threads=1");
    ASSERT_NO_FATAL_FAILURE(Start(flags));
    workers_ = v1::WorkerService::NewStub(client_->channel);
  }

  // A miseg-worker with one CPU device and its own cache; returns once it has registered.
  std::unique_ptr<ChildProcess> StartWorker(const std::string& name) {
    const std::string cache = absl::StrCat(dir_.path(), "/cache-", name);
    auto worker = ChildProcess::Spawn({MISEG_WORKER_BINARY, "--coordinator=" + server_->address(),
                                       "--devices=cpu", "--cache_dir=" + cache, "--name=" + name,
                                       "--training_threads=1"});
    EXPECT_TRUE(worker.ok()) << worker.status();
    if (!worker.ok()) return nullptr;
    EXPECT_TRUE((*worker)->WaitForLog("registered as worker", kPatience)) << (*worker)->log();
    return *std::move(worker);
  }

  void FillDataset(int labeled, int unlabeled) {
    ASSERT_TRUE(client_->CreateDataset("d").ok());
    for (int i = 0; i < labeled + unlabeled; ++i) {
      absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(31, i, i < labeled);
      ASSERT_TRUE(study.ok());
      v1::UploadResponse response;
      const bool is_labeled = i < labeled;
      ASSERT_TRUE(client_->Upload("d", is_labeled ? v1::STUDY_ROLE_LABELED : v1::STUDY_ROLE_UNLABELED,
                                  is_labeled ? LabeledFiles(*study) : study->image_files, &response)
                      .ok());
      ASSERT_EQ(response.refused_instances(), 0);
      stored_files_ += static_cast<int>(response.stored_instances());
    }
  }

  std::vector<v1::Worker> ListWorkers() {
    v1::ListWorkersResponse response;
    auto context = client_->Context();
    EXPECT_TRUE(workers_->ListWorkers(context.get(), {}, &response).ok());
    return {response.workers().begin(), response.workers().end()};
  }

  // The stored history once the job has ended: followed to its end, then read again (a
  // live watcher also saw the events of steps a resumed job ran again, before they were
  // replaced).
  std::vector<v1::JobEvent> History(int64_t id) {
    std::vector<v1::JobEvent> live, stored;
    EXPECT_TRUE(client_->Watch(id, &live, 0, /*deadline_seconds=*/600).ok());
    EXPECT_TRUE(client_->Watch(id, &stored, 0, 60, 0, /*no_follow=*/true).ok());
    return stored;
  }

  static std::vector<std::string> StateMessages(const std::vector<v1::JobEvent>& events) {
    std::vector<std::string> messages;
    for (const v1::JobEvent& e : events) {
      if (e.has_state()) {
        messages.push_back(absl::StrCat(v1::JobState_Name(e.state().state()), ": ",
                                        e.state().message()));
      }
    }
    return messages;
  }

  std::unique_ptr<v1::WorkerService::Stub> workers_;
  int stored_files_ = 0;
};

// Rank 0 on the server's own device, rank 1 in a miseg-worker process with an empty
// cache: the worker fetches every file of the job by its hash, the ranks verify after each
// step that their parameters are identical (--verify_replicas fails the job otherwise),
// and every step is stored once.
TEST_F(WorkersTest, TwoRankJobAcrossTheServerAndAWorkerProcess) {
  StartServer({"--devices=cpu", "--verify_replicas"});
  auto worker = StartWorker("node-b");
  ASSERT_NE(worker, nullptr);
  FillDataset(3, 1);
  v1::Hyperparameters h = TinyHyperparameters(8, 4);
  h.set_ranks(2);
  const int64_t id = StartJob(h);
  const std::vector<v1::JobEvent> events = History(id);
  const v1::Job job = GetJob(id);
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error() << "\n" << server_->log()
                                                  << worker->log();
  EXPECT_EQ(job.device(), "local/cpu,node-b/cpu");
  EXPECT_THAT(StepsOf(events), ElementsAreArray(OneTo(8)));
  for (const v1::JobEvent& e : events) {
    if (e.has_step()) EXPECT_EQ(e.step().ranks(), 2);
  }
  EXPECT_EQ(CountFiles(dir_.path() + "/cache-node-b"), stored_files_);

  const std::vector<v1::Worker> workers = ListWorkers();
  ASSERT_EQ(workers.size(), 2u);
  EXPECT_TRUE(workers[0].local());
  EXPECT_EQ(workers[1].name(), "node-b");
  EXPECT_NE(workers[1].state(), v1::WORKER_STATE_LOST);
  const std::string metrics = ScrapeMetrics(server_->metrics_port());
  EXPECT_EQ(MetricValue(metrics, "miseg_workers{state=\"lost\"}"), 0);
  EXPECT_GT(MetricValue(metrics, "miseg_training_rank_compute_seconds{rank=\"1\"}"), 0);
  EXPECT_GT(MetricValue(metrics, "miseg_training_allreduce_seconds_count"), 0);
  EXPECT_EQ(MetricValue(metrics, "miseg_workers{state=\"idle\"}") +
                MetricValue(metrics, "miseg_workers{state=\"busy\"}"),
            2);
  EXPECT_EQ(worker->Terminate(std::chrono::seconds(60)), 0) << worker->log();
}

// The worker holding rank 1 is SIGKILLed mid-job. Rank 0 leaves its collective, the dead
// worker's lease runs out, the job goes back to the queue with an event naming the rank,
// the worker and the reason, resumes from its last checkpoint on the server's device and a
// new worker, and finishes; every step's event is stored exactly once.
TEST_F(WorkersTest, ARankKilledMidJobResumesFromItsCheckpointAndEveryStepIsStoredOnce) {
  StartServer({"--devices=cpu", "--worker_lease_seconds=2", "--collective_timeout_seconds=20"});
  auto doomed = StartWorker("node-doomed");
  ASSERT_NE(doomed, nullptr);
  FillDataset(3, 1);
  v1::Hyperparameters h = TinyHyperparameters(120, 5);
  h.set_ranks(2);
  const int64_t id = StartJob(h);
  // Step 12 is stored only after the checkpoint of step 10 is committed.
  ASSERT_TRUE(WaitForStep(*client_, id, 12)) << server_->log();
  doomed->Kill();
  auto replacement = StartWorker("node-new");
  ASSERT_NE(replacement, nullptr);

  const std::vector<v1::JobEvent> events = History(id);
  const v1::Job job = GetJob(id);
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error() << "\n" << server_->log();
  EXPECT_THAT(StepsOf(events), ElementsAreArray(OneTo(120)));
  EXPECT_THAT(StateMessages(events),
              ElementsAre(HasSubstr("QUEUED: queued"),
                          HasSubstr("RUNNING: started on local/cpu,node-doomed/cpu"),
                          AllOf(HasSubstr("QUEUED: rank 1 on worker node-doomed"),
                                HasSubstr("lost: its worker stopped heartbeating"),
                                HasSubstr("resumes from step")),
                          AllOf(HasSubstr("RUNNING: resumed from step"),
                                HasSubstr("local/cpu,node-new/cpu")),
                          HasSubstr("SUCCEEDED")));
  bool listed_lost = false;
  for (const v1::Worker& w : ListWorkers()) {
    if (w.name() == "node-doomed") listed_lost = w.state() == v1::WORKER_STATE_LOST;
  }
  EXPECT_TRUE(listed_lost);
}


// A worker that registers, takes a rank and then falls silent loses its lease: it is
// listed as lost, its rank's job goes back to the queue with the reason, and a worker that
// registers next gets the job as a new attempt; the silent worker's late calls are refused.
TEST_F(WorkersTest, AWorkerThatStopsHeartbeatingLosesItsLease) {
  StartServer({"--devices=", "--worker_lease_seconds=1"});
  FillDataset(2, 0);
  const auto register_worker = [&](const std::string& name) {
    v1::RegisterWorkerRequest request;
    request.set_name(name);
    request.add_devices("cpu");
    v1::RegisterWorkerResponse response;
    auto context = client_->Context();
    EXPECT_TRUE(workers_->RegisterWorker(context.get(), request, &response).ok());
    return response.worker_id();
  };
  const auto heartbeat = [&](const std::string& id, v1::HeartbeatResponse* response) {
    auto context = client_->Context();
    return workers_->Heartbeat(context.get(), [&] {
      v1::HeartbeatRequest r;
      r.set_worker_id(id);
      return r;
    }(), response);
  };
  const std::string silent = register_worker("silent");
  const int64_t id = StartJob(TinyHyperparameters(4, 2));
  v1::HeartbeatResponse beat;
  ASSERT_TRUE(heartbeat(silent, &beat).ok());
  ASSERT_EQ(beat.start_size(), 1);  // placed at StartJob, on the only device
  const v1::RankAssignment first = beat.start(0);
  EXPECT_EQ(first.job_id(), id);

  // Silent from here on: the lease thread notices within a lease and a heartbeat period.
  ASSERT_TRUE(server_->WaitForLog("(silent) lost: no heartbeat", kPatience)) << server_->log();
  bool listed_lost = false;
  for (const v1::Worker& w : ListWorkers()) {
    if (w.id() == silent) listed_lost = w.state() == v1::WORKER_STATE_LOST;
  }
  EXPECT_TRUE(listed_lost);
  EXPECT_EQ(heartbeat(silent, &beat).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::Job job = GetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);

  const std::string next = register_worker("next");
  ASSERT_TRUE(heartbeat(next, &beat).ok());
  ASSERT_EQ(beat.start_size(), 1);
  EXPECT_EQ(beat.start(0).job_id(), id);
  EXPECT_NE(beat.start(0).attempt(), first.attempt());
  // The silent worker's rank, back from the dead, may not write.
  v1::AppendRankEventsRequest late;
  *late.mutable_rank() = first;
  late.add_events()->mutable_step()->set_step(1);
  v1::AppendRankEventsResponse ignored;
  auto context = client_->Context();
  EXPECT_EQ(workers_->AppendRankEvents(context.get(), late, &ignored).error_code(),
            grpc::StatusCode::ABORTED);

  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(client_->Watch(id, &events, 0, 60, 0, /*no_follow=*/true).ok());
  EXPECT_THAT(StateMessages(events),
              ElementsAre(HasSubstr("QUEUED: queued"), HasSubstr("RUNNING: started on silent/cpu"),
                          AllOf(HasSubstr("QUEUED: rank 0 on worker silent"),
                                HasSubstr("lost: its worker stopped heartbeating")),
                          HasSubstr("RUNNING: started on next/cpu")));
  EXPECT_TRUE(StepsOf(events).empty());
}

// Only a token of role worker may register as a worker; a worker's token does nothing a
// user does.
TEST_F(WorkersTest, WorkerCallsNeedATokenOfRoleWorker) {
  const std::string tokens = dir_.path() + "/tokens";
  {
    std::ofstream out(tokens);
    out << Sha256Hex("worker-token-5d1f") << " worker node-c\n"
        << Sha256Hex("reader-token-77aa") << " reader alice\n";
  }
  StartServer({"--token_file=" + tokens});
  v1::RegisterWorkerRequest request;
  request.set_name("node-c");
  request.add_devices("cpu");
  const auto register_as = [&](const std::string& token) {
    client_->token = token;
    v1::RegisterWorkerResponse response;
    auto context = client_->Context();
    return workers_->RegisterWorker(context.get(), request, &response);
  };
  EXPECT_EQ(register_as("").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(register_as("not-a-token").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(register_as("reader-token-77aa").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(register_as("worker-token-5d1f").ok());
  client_->token = "worker-token-5d1f";
  v1::Dataset ignored;
  EXPECT_EQ(client_->CreateDataset("x", &ignored).error_code(), grpc::StatusCode::PERMISSION_DENIED);

  // A miseg-worker with a user's token stops at once, saying why.
  const std::string token_file = dir_.path() + "/reader-token";
  std::ofstream(token_file) << "reader-token-77aa\n";
  auto worker = ChildProcess::Spawn({MISEG_WORKER_BINARY, "--coordinator=" + server_->address(),
                                     "--cache_dir=" + dir_.path() + "/cache-wrong",
                                     "--token_file=" + token_file});
  ASSERT_TRUE(worker.ok());
  EXPECT_NE((*worker)->WaitExit(kPatience), 0);
  EXPECT_THAT((*worker)->log(), AllOf(HasSubstr("refused to register this worker"),
                                      HasSubstr("role 'reader'")));
}


// One worker per cache directory: a second miseg-worker on a cache another one holds is
// refused at start (exit 2), naming the directory and the holder, and the first works on.
TEST_F(WorkersTest, ASecondWorkerOnTheSameCacheDirectoryIsRefused) {
  StartServer({"--devices="});
  auto first = StartWorker("node-a");
  ASSERT_NE(first, nullptr);
  const std::string cache = dir_.path() + "/cache-node-a";
  auto second = ChildProcess::Spawn({MISEG_WORKER_BINARY, "--coordinator=" + server_->address(),
                                     "--devices=cpu", "--cache_dir=" + cache, "--name=node-b"});
  ASSERT_TRUE(second.ok());
  EXPECT_EQ((*second)->WaitExit(kPatience), 2) << (*second)->log();
  EXPECT_THAT((*second)->log(), AllOf(HasSubstr(cache), HasSubstr(std::to_string(first->pid()))));
  const std::vector<v1::Worker> workers = ListWorkers();
  ASSERT_EQ(workers.size(), 1u);
  EXPECT_EQ(workers[0].name(), "node-a");
  EXPECT_EQ(first->Terminate(std::chrono::seconds(60)), 0) << first->log();
}

}  // namespace
}  // namespace miseg::testing

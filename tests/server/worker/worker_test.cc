// The worker's loop against a fake coordinator, with a rank function of the test's own
// (no LibTorch): one worker per cache directory; ranks started and stopped by heartbeats
// and reported; a lost lease stops the ranks and registers again; an unreachable
// coordinator leaves the ranks running; Stop ends every rank, reports it and returns.
// Every wait is on the fake's recorded state or the rank function's, never a sleep.
#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/worker/worker.h"
#include "tests/server/child_process.h"
#include "tests/server/worker/fake_coordinator.h"

namespace miseg {
namespace {

using ::testing::HasSubstr;

v1::RankAssignment Assignment(int64_t job, int64_t attempt, int32_t rank,
                              const std::string& device = "cpu") {
  v1::RankAssignment a;
  a.set_job_id(job);
  a.set_attempt(attempt);
  a.set_rank(rank);
  a.set_world_size(2);
  a.set_device(device);
  return a;
}

// Ranks that run until told to stop, recording what they were given.
class FakeRanks {
 public:
  RankFunction Function() {
    return [this](const v1::RankAssignment& rank, RankIo&, const RankRunnerOptions& options,
                  std::atomic<bool>* stop) {
      {
        absl::MutexLock lock(&mu_);
        started_.push_back(rank);
        scratch_.push_back(options.scratch_dir);
        stops_.push_back(stop);
      }
      // The rank runner polls its flag between steps just so.
      while (!stop->load()) absl::SleepFor(absl::Milliseconds(1));
      RankResult result;
      result.outcome = v1::RANK_OUTCOME_STOPPED;
      result.step = 5;
      return result;
    };
  }
  bool AwaitStarted(size_t count) {
    absl::MutexLock lock(&mu_);
    auto enough = [&] { return started_.size() >= count; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(30));
  }
  size_t started() {
    absl::MutexLock lock(&mu_);
    return started_.size();
  }
  std::string scratch(size_t i) {
    absl::MutexLock lock(&mu_);
    return scratch_.at(i);
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::RankAssignment> started_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> scratch_ ABSL_GUARDED_BY(mu_);
  std::vector<std::atomic<bool>*> stops_ ABSL_GUARDED_BY(mu_);
};

class WorkerTest : public ::testing::Test {
 protected:
  WorkerOptions Options() {
    WorkerOptions options;
    options.name = "test-worker";
    options.devices = {"cpu", "cpu"};
    options.advertise_host = "127.0.0.1";
    options.cache_dir = dir_.path() + "/cache";
    options.token = "worker-token";
    options.run_rank = ranks_.Function();
    options.min_backoff = absl::Milliseconds(5);
    options.max_backoff = absl::Milliseconds(20);
    options.rpc_timeout = absl::Seconds(10);
    options.log = [this](const std::string& line) {
      absl::MutexLock lock(&log_mu_);
      log_.push_back(line);
    };
    return options;
  }
  // Creates the worker and runs it on a thread.
  void Start() {
    absl::StatusOr<std::unique_ptr<Worker>> worker = Worker::Create(fake_.Channel(), Options());
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
    runner_ = std::thread([this] { run_status_ = worker_->Run(); });
  }
  absl::Status StopAndJoin() {
    worker_->Stop();
    runner_.join();
    return run_status_;
  }
  void TearDown() override {
    if (runner_.joinable()) StopAndJoin().IgnoreError();
  }
  size_t Ends() {
    absl::MutexLock lock(&fake_.mu);
    return fake_.ends.size();
  }
  v1::EndRankRequest End(size_t i) {
    absl::MutexLock lock(&fake_.mu);
    return fake_.ends.at(i);
  }
  bool AwaitEnds(size_t count) {
    return fake_.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return fake_.ends.size() >= count; });
  }

  testing::TempDir dir_;
  testing::FakeCoordinator fake_;
  FakeRanks ranks_;
  std::unique_ptr<Worker> worker_;
  std::thread runner_;
  absl::Status run_status_;
  absl::Mutex log_mu_;
  std::vector<std::string> log_ ABSL_GUARDED_BY(log_mu_);
};

TEST_F(WorkerTest, ASecondWorkerOnTheSameCacheDirIsRefused) {
  absl::StatusOr<std::unique_ptr<Worker>> first = Worker::Create(fake_.Channel(), Options());
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<Worker>> second = Worker::Create(fake_.Channel(), Options());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr(dir_.path() + "/cache"));
  // Once the first has gone, the directory is free.
  first->reset();
  EXPECT_TRUE(Worker::Create(fake_.Channel(), Options()).ok());
}

TEST_F(WorkerTest, RegistersWithItsDevicesAndToken) {
  Start();
  ASSERT_TRUE(fake_.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return fake_.calls["Heartbeat"] >= 2; }));
  {
    absl::MutexLock lock(&fake_.mu);
    ASSERT_EQ(fake_.registrations.size(), 1u);
    EXPECT_EQ(fake_.registrations[0].name(), "test-worker");
    EXPECT_THAT(fake_.registrations[0].devices(), ::testing::ElementsAre("cpu", "cpu"));
    EXPECT_EQ(fake_.registrations[0].address(), "127.0.0.1");
    EXPECT_THAT(fake_.authorization, ::testing::Each(std::string("Bearer worker-token")));
  }
  EXPECT_EQ(worker_->worker_id(), "w1");
  EXPECT_TRUE(StopAndJoin().ok());
}

TEST_F(WorkerTest, RanksStartAndStopByHeartbeatAndTheirEndIsReported) {
  Start();
  fake_.QueueStart(Assignment(7, 1, 0));
  fake_.QueueStart(Assignment(7, 1, 1));
  ASSERT_TRUE(ranks_.AwaitStarted(2));
  EXPECT_THAT(ranks_.scratch(0), HasSubstr(dir_.path() + "/cache/scratch/job-7-attempt-1-rank-"));
  // A repeated start of a running rank is not a second rank.
  fake_.QueueStart(Assignment(7, 1, 0));
  ASSERT_TRUE(fake_.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return fake_.calls["Heartbeat"] >= 5; }));
  EXPECT_EQ(ranks_.started(), 2u);
  EXPECT_EQ(Ends(), 0u);

  fake_.QueueStop(Assignment(7, 1, 1));
  ASSERT_TRUE(AwaitEnds(1));
  EXPECT_EQ(End(0).worker_id(), "w1");
  EXPECT_EQ(End(0).rank().rank(), 1);
  EXPECT_EQ(End(0).outcome(), v1::RANK_OUTCOME_STOPPED);

  // Stop: the other rank stops too, is reported, and Run returns.
  EXPECT_TRUE(StopAndJoin().ok());
  ASSERT_EQ(Ends(), 2u);
  EXPECT_EQ(End(1).rank().rank(), 0);
  EXPECT_EQ(End(1).outcome(), v1::RANK_OUTCOME_STOPPED);
}

TEST_F(WorkerTest, ARankOnADeviceThatIsNotTheWorkersIsRefusedUnrun) {
  Start();
  fake_.QueueStart(Assignment(8, 1, 0, "cuda:3"));
  ASSERT_TRUE(AwaitEnds(1));
  EXPECT_EQ(End(0).outcome(), v1::RANK_OUTCOME_FAILED);
  EXPECT_THAT(End(0).message(), HasSubstr("cuda:3"));
  EXPECT_EQ(ranks_.started(), 0u);
}

TEST_F(WorkerTest, ALostLeaseStopsTheRanksAndRegistersAgain) {
  Start();
  fake_.QueueStart(Assignment(9, 2, 0));
  ASSERT_TRUE(ranks_.AwaitStarted(1));
  fake_.FailMethod("Heartbeat", grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown worker w1"),
                   /*times=*/1);
  ASSERT_TRUE(AwaitEnds(1));
  EXPECT_EQ(End(0).worker_id(), "w1");
  EXPECT_EQ(End(0).outcome(), v1::RANK_OUTCOME_STOPPED);
  ASSERT_TRUE(fake_.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return fake_.registrations.size() == 2; }));
  ASSERT_TRUE(fake_.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return !worker_->worker_id().empty(); }));
  EXPECT_EQ(worker_->worker_id(), "w2");
  // Ranks run again under the new registration.
  fake_.QueueStart(Assignment(9, 3, 0));
  ASSERT_TRUE(ranks_.AwaitStarted(2));
  EXPECT_TRUE(StopAndJoin().ok());
  ASSERT_EQ(Ends(), 2u);
  EXPECT_EQ(End(1).worker_id(), "w2");
  absl::MutexLock lock(&log_mu_);
  EXPECT_THAT(log_, ::testing::Contains(HasSubstr("lease lost")));
}

TEST_F(WorkerTest, AnUnreachableCoordinatorLeavesTheRanksRunning) {
  Start();
  fake_.QueueStart(Assignment(10, 1, 0));
  ASSERT_TRUE(ranks_.AwaitStarted(1));
  fake_.FailMethod("Heartbeat", grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection refused"));
  int failed_before;
  {
    absl::MutexLock lock(&fake_.mu);
    failed_before = fake_.calls["Heartbeat"];
  }
  ASSERT_TRUE(fake_.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return fake_.calls["Heartbeat"] >= failed_before + 5;
  }));
  EXPECT_EQ(Ends(), 0u);  // still running
  EXPECT_EQ(worker_->worker_id(), "w1");
  fake_.FailMethod("Heartbeat", grpc::Status::OK);
  fake_.QueueStop(Assignment(10, 1, 0));
  ASSERT_TRUE(AwaitEnds(1));
  EXPECT_EQ(End(0).outcome(), v1::RANK_OUTCOME_STOPPED);
  EXPECT_TRUE(StopAndJoin().ok());
  absl::MutexLock lock(&log_mu_);
  EXPECT_THAT(log_, ::testing::Contains(HasSubstr("coordinator unreachable")));
  EXPECT_THAT(log_, ::testing::Contains(HasSubstr("coordinator reachable again")));
}

TEST_F(WorkerTest, ARefusedTokenEndsRun) {
  fake_.FailMethod("RegisterWorker",
                   grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown bearer token"));
  Start();
  runner_.join();
  EXPECT_EQ(run_status_.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(run_status_.message(), HasSubstr("unknown bearer token"));
}

}  // namespace
}  // namespace miseg

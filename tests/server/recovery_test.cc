// A server killed (SIGKILL) mid-job or mid-upload, or stopped (SIGTERM) mid-job, restarts
// on the same data directory with the job resumed from its last checkpoint and every
// acknowledged instance intact.
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_split.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "tests/server/api_client.h"
#include "tests/server/server_fixture.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

using ::testing::HasSubstr;

class RecoveryTest : public ServerTest {
 protected:
  void FillDataset(int labeled, int unlabeled) {
    ASSERT_TRUE(client_->CreateDataset("d").ok());
    for (int i = 0; i < labeled + unlabeled; ++i) {
      absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(21, i, i < labeled);
      ASSERT_TRUE(study.ok());
      v1::UploadResponse response;
      ASSERT_TRUE(client_->Upload("d", i < labeled ? v1::STUDY_ROLE_LABELED : v1::STUDY_ROLE_UNLABELED,
                                  LabeledFiles(*study), &response).ok());
      ASSERT_EQ(response.refused_instances(), 0);
    }
  }
};

TEST_F(RecoveryTest, JobKilledMidRunResumesFromItsLastCheckpoint) {
  Start();
  FillDataset(3, 1);
  const v1::Hyperparameters h = TinyHyperparameters(80, 5);
  const int64_t job_id = StartJob(h);
  // Step 12 runs only after the checkpoint of step 10 is committed.
  ASSERT_TRUE(WaitForStep(*client_, job_id, 12)) << server_->log();
  server_->Kill();

  Start();
  std::vector<v1::JobEvent> live;
  ASSERT_TRUE(client_->Watch(job_id, &live).ok());
  ASSERT_FALSE(live.empty());
  EXPECT_EQ(live.back().state().state(), v1::JOB_STATE_SUCCEEDED) << server_->log();
  // A watcher that follows across the resume may see the lost steps twice, the second time
  // after "resumed"; the stored history, replayed, has each step once.
  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(client_->Watch(job_id, &events).ok());
  // One consistent history: the steps re-run after the checkpoint replace the lost ones.
  EXPECT_EQ(StepsOf(events), OneTo(80));
  int64_t resumed_from = -1;
  for (const v1::JobEvent& e : events) {
    if (e.has_state() && e.state().state() == v1::JOB_STATE_RUNNING &&
        e.state().message().find("resumed from step") != std::string::npos) {
      resumed_from = e.state().step();
    }
  }
  EXPECT_GE(resumed_from, 10);
  EXPECT_EQ(resumed_from % 5, 0);
  const v1::Job job = GetJob(job_id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.resumes(), 1);
  EXPECT_GT(job.model_id(), 0);

  // The resumed run continued exactly: an uninterrupted job with the same seed and data
  // computes the same losses at every step.
  const int64_t reference_id = StartJob(h);
  std::vector<v1::JobEvent> reference;
  ASSERT_TRUE(client_->Watch(reference_id, &reference).ok());
  std::map<int64_t, double> reference_loss;
  for (const v1::JobEvent& e : reference) {
    if (e.has_step()) reference_loss[e.step().step()] = e.step().loss();
  }
  for (const v1::JobEvent& e : events) {
    if (!e.has_step()) continue;
    EXPECT_NEAR(e.step().loss(), reference_loss[e.step().step()],
                1e-4 * std::max(1.0, std::abs(e.step().loss())))
        << "step " << e.step().step();
  }
}

TEST_F(RecoveryTest, SigtermCheckpointsTheRunningJobAndItResumesOnRestart) {
  Start();
  FillDataset(2, 0);
  // No periodic checkpoint before the end: only the shutdown writes one.
  const int64_t job_id = StartJob(TinyHyperparameters(100, 1000));
  ASSERT_TRUE(WaitForStep(*client_, job_id, 3)) << server_->log();
  EXPECT_EQ(server_->Terminate(), 0) << server_->log();
  EXPECT_THAT(server_->log(), HasSubstr("stopped"));

  Start();
  std::vector<v1::JobEvent> live;
  ASSERT_TRUE(client_->Watch(job_id, &live).ok());
  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(client_->Watch(job_id, &events).ok());
  EXPECT_EQ(events.back().state().state(), v1::JOB_STATE_SUCCEEDED) << server_->log();
  EXPECT_EQ(StepsOf(events), OneTo(100));
  bool requeued = false, resumed = false;
  for (const v1::JobEvent& e : events) {
    if (!e.has_state()) continue;
    requeued |= e.state().state() == v1::JOB_STATE_QUEUED &&
                e.state().message().find("shutting down") != std::string::npos;
    if (e.state().message().find("resumed from step") != std::string::npos) {
      resumed = true;
      EXPECT_GE(e.state().step(), 3);
    }
  }
  EXPECT_TRUE(requeued);
  EXPECT_TRUE(resumed);
  EXPECT_EQ(GetJob(job_id).resumes(), 1);
}

TEST_F(RecoveryTest, UploadsKilledMidStreamKeepEveryAcknowledgedInstance) {
  Start();
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  constexpr int kThreads = 4, kStudiesPerThread = 8;
  std::vector<std::vector<PhantomStudy>> studies(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kStudiesPerThread; ++i) {
      absl::StatusOr<PhantomStudy> s = SmallPhantomStudy(31, t * kStudiesPerThread + i, false);
      ASSERT_TRUE(s.ok());
      studies[t].push_back(*std::move(s));
    }
  }
  std::mutex mutex;
  std::condition_variable acknowledged_cv;
  std::map<std::string, int> acknowledged;  // series UID -> instances
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (const PhantomStudy& study : studies[t]) {
        v1::UploadResponse response;
        // Small chunks: each upload is a stream of many messages the kill can cut.
        if (!client_->Upload("d", v1::STUDY_ROLE_UNLABELED, study.image_files, &response, 2048)
                 .ok()) {
          return;  // the server is gone
        }
        std::lock_guard<std::mutex> lock(mutex);
        acknowledged[study.series.series_instance_uid] = static_cast<int>(response.stored_instances());
        acknowledged_cv.notify_all();
      }
    });
  }
  {
    std::unique_lock<std::mutex> lock(mutex);
    acknowledged_cv.wait(lock, [&] { return acknowledged.size() >= 6; });
  }
  server_->Kill();
  for (std::thread& t : threads) t.join();
  ASSERT_LT(acknowledged.size(), static_cast<size_t>(kThreads * kStudiesPerThread))
      << "the kill came after every upload finished";

  Start();
  v1::ListStudiesRequest list;
  list.set_dataset("d");
  v1::ListStudiesResponse stored;
  auto context = client_->Context();
  ASSERT_TRUE(client_->datasets->ListStudies(context.get(), list, &stored).ok());
  std::map<std::string, int> found;
  for (const v1::Study& s : stored.studies()) found[s.series_instance_uid()] = s.instances();
  for (const auto& [series, instances] : acknowledged) {
    ASSERT_TRUE(found.count(series)) << series << " was acknowledged but is gone";
    EXPECT_EQ(found[series], instances);
  }
  // Studies are whole or absent: every stored one has all its slices.
  std::map<std::string, int> expected;
  for (const auto& per_thread : studies) {
    for (const PhantomStudy& s : per_thread) {
      expected[s.series.series_instance_uid] = static_cast<int>(s.image_files.size());
    }
  }
  int64_t instances = 0;
  for (const auto& [series, count] : found) {
    EXPECT_EQ(count, expected[series]);
    instances += count;
  }
  // The file store holds exactly the committed instances, each matching its hash.
  auto [rc, sums] = RunCommand("find " + data_ + "/objects -type f -exec sha256sum {} +");
  ASSERT_EQ(rc, 0) << sums;
  int64_t files = 0;
  for (absl::string_view line : absl::StrSplit(sums, '\n', absl::SkipEmpty())) {
    std::vector<std::string> fields = absl::StrSplit(line, "  ");
    ASSERT_EQ(fields.size(), 2u) << line;
    EXPECT_EQ(std::filesystem::path(fields[1]).filename().string(), fields[0]);
    ++files;
  }
  EXPECT_EQ(files, instances);

  // Every study can be uploaded again: acknowledged ones are duplicates, the rest store.
  for (const auto& per_thread : studies) {
    for (const PhantomStudy& s : per_thread) {
      v1::UploadResponse response;
      ASSERT_TRUE(client_->Upload("d", v1::STUDY_ROLE_UNLABELED, s.image_files, &response).ok());
      EXPECT_EQ(response.refused_instances(), 0);
      if (found.count(s.series.series_instance_uid)) {
        EXPECT_EQ(response.duplicate_instances(), static_cast<int64_t>(s.image_files.size()));
      } else {
        EXPECT_EQ(response.stored_instances(), static_cast<int64_t>(s.image_files.size()));
      }
    }
  }
}

}  // namespace
}  // namespace miseg::testing

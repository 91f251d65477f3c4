// The server's edge under load, against the real process: the limit on concurrent upload and
// segment streams, the cut of a client that stalls while others upload, and many watchers
// of one job, each pushed every event in order, with the server's threads not growing per
// watcher.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "tests/server/api_client.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

using ::testing::HasSubstr;

class StreamLimitsTest : public ::testing::Test {
 protected:
  void StartServer(const std::vector<std::string>& flags) {
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start(dir_.path() + "/data", flags);
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
    client_ = std::make_unique<ApiClient>(server_->address());
  }

  double Metric(const std::string& sample) {
    return MetricValue(ScrapeMetrics(server_->metrics_port()), sample);
  }

  // Polls /metrics until the sample has the value (the server's own view of its streams).
  bool AwaitMetric(const std::string& sample, double value) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < give_up) {
      if (Metric(sample) == value) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  std::vector<DicomBuffer> UnlabeledFiles(int index) {
    absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(/*seed=*/21, index, false);
    EXPECT_TRUE(study.ok()) << study.status();
    return study.ok() ? study->image_files : std::vector<DicomBuffer>{};
  }

  static v1::UploadRequest Header(const std::string& dataset) {
    v1::UploadRequest header;
    header.mutable_header()->set_dataset(dataset);
    header.mutable_header()->set_role(v1::STUDY_ROLE_UNLABELED);
    return header;
  }

  int64_t UnlabeledStudies(const std::string& dataset) {
    v1::GetDatasetRequest request;
    request.set_name(dataset);
    v1::Dataset out;
    auto context = client_->Context();
    EXPECT_TRUE(client_->datasets->GetDataset(context.get(), request, &out).ok());
    return out.unlabeled_studies();
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<ApiClient> client_;
};

TEST_F(StreamLimitsTest, StreamsBeyondTheLimitAreResourceExhaustedUntilOneEnds) {
  StartServer({"--max_streams=1"});
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  const std::string upload_streams = "miseg_grpc_active_streams{method=\"Upload\"}";

  auto held_context = client_->Context();
  v1::UploadResponse held_response;
  auto held = client_->datasets->Upload(held_context.get(), &held_response);
  ASSERT_TRUE(held->Write(Header("d")));
  ASSERT_TRUE(AwaitMetric(upload_streams, 1)) << server_->log();

  v1::UploadResponse refused;
  grpc::Status status = client_->Upload("d", v1::STUDY_ROLE_UNLABELED, UnlabeledFiles(0), &refused);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_streams"));
  std::string seg;
  v1::SegmentSummary summary;
  v1::SegmentHeader segment_header;
  segment_header.set_dataset("d");
  EXPECT_EQ(client_->Segment(segment_header, UnlabeledFiles(0), &seg, &summary).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);

  held->WritesDone();
  EXPECT_EQ(held->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);  // no files
  ASSERT_TRUE(AwaitMetric(upload_streams, 0)) << server_->log();
  v1::UploadResponse stored;
  status = client_->Upload("d", v1::STUDY_ROLE_UNLABELED, UnlabeledFiles(0), &stored);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_GT(stored.stored_instances(), 0);
}

TEST_F(StreamLimitsTest, AClientThatStallsIsCutAtTheIdleTimeoutWhileOthersUpload) {
  StartServer({"--stream_idle_timeout_seconds=2", "--stream_min_progress_kib=64"});
  ASSERT_TRUE(client_->CreateDataset("d").ok());

  grpc::Status slow_status;
  int slow_chunks_sent = 0;
  std::thread slow([&] {
    auto context = client_->Context();
    v1::UploadResponse response;
    auto writer = client_->datasets->Upload(context.get(), &response);
    if (!writer->Write(Header("d"))) return;
    v1::UploadRequest chunk;
    chunk.mutable_chunk()->set_file_name("slow.dcm");
    chunk.mutable_chunk()->set_data(std::string(1024, 'x'));
    // One KiB a second: under 64 KiB in any 2 s window, however fast the machine. The
    // pause paces the client; the verdict does not depend on it.
    for (; slow_chunks_sent < 120 && writer->Write(chunk); ++slow_chunks_sent) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    slow_status = writer->Finish();
  });

  // Meanwhile three clients upload whole studies on their own channels.
  std::vector<grpc::Status> fast(3);
  std::vector<std::thread> uploaders;
  for (int i = 0; i < 3; ++i) {
    uploaders.emplace_back([&, i] {
      ApiClient own(server_->address());
      v1::UploadResponse response;
      fast[i] = own.Upload("d", v1::STUDY_ROLE_UNLABELED, UnlabeledFiles(i), &response,
                           /*chunk_bytes=*/64 << 10);
    });
  }
  for (std::thread& t : uploaders) t.join();
  slow.join();

  for (const grpc::Status& s : fast) EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(slow_status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << slow_status.error_message();
  EXPECT_THAT(slow_status.error_message(), HasSubstr("no progress"));
  EXPECT_LT(slow_chunks_sent, 120);
  EXPECT_EQ(UnlabeledStudies("d"), 3);  // nothing of the slow stream was kept
  EXPECT_TRUE(AwaitMetric("miseg_grpc_active_streams{method=\"Upload\"}", 0));
}

TEST_F(StreamLimitsTest, ManyWatchersEachGetEveryEventInOrderWithoutAThreadEach) {
  StartServer({});
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<PhantomStudy> labeled = SmallPhantomStudy(/*seed=*/21, i, true);
    ASSERT_TRUE(labeled.ok());
    v1::UploadResponse uploaded;
    ASSERT_TRUE(
        client_->Upload("d", v1::STUDY_ROLE_LABELED, LabeledFiles(*labeled), &uploaded).ok());
  }
  const double idle_threads = Metric("process_threads");
  ASSERT_GT(idle_threads, 0);

  // Job `busy` holds the only worker, so `watched` waits in the queue while every watcher
  // connects; cancelling `busy` then lets `watched` run with all of them following live.
  auto start_job = [&](int64_t steps) {
    v1::StartJobRequest start;
    start.set_dataset("d");
    *start.mutable_hyperparameters() = TinyHyperparameters(steps, /*checkpoint_every=*/steps);
    v1::Job job;
    auto context = client_->Context();
    EXPECT_TRUE(client_->training->StartJob(context.get(), start, &job).ok());
    return job.id();
  };
  const int64_t busy = start_job(100000);
  const int64_t watched = start_job(30);

  constexpr int kWatchers = 200;
  std::vector<std::unique_ptr<ApiClient>> channels;
  for (int c = 0; c < 4; ++c) channels.push_back(std::make_unique<ApiClient>(server_->address()));
  std::vector<std::vector<v1::JobEvent>> seen(kWatchers);
  std::vector<grpc::Status> statuses(kWatchers);
  std::vector<std::thread> watchers;
  for (int w = 0; w < kWatchers; ++w) {
    watchers.emplace_back([&, w] { statuses[w] = channels[w % 4]->Watch(watched, &seen[w]); });
  }
  ASSERT_TRUE(AwaitMetric("miseg_grpc_active_streams{method=\"WatchJob\"}", kWatchers));
  const double threads_with_watchers = Metric("process_threads");

  v1::CancelJobRequest cancel;
  cancel.set_id(busy);
  v1::Job cancelled;
  auto cancel_context = client_->Context();
  ASSERT_TRUE(client_->training->CancelJob(cancel_context.get(), cancel, &cancelled).ok());
  for (std::thread& t : watchers) t.join();

  std::vector<v1::JobEvent> stored;
  ASSERT_TRUE(client_->Watch(watched, &stored, 0, 60, 0, /*no_follow=*/true).ok());
  ASSERT_FALSE(stored.empty());
  ASSERT_EQ(stored.back().state().state(), v1::JOB_STATE_SUCCEEDED);
  for (int w = 0; w < kWatchers; ++w) {
    ASSERT_TRUE(statuses[w].ok()) << w << ": " << statuses[w].error_message();
    ASSERT_EQ(seen[w].size(), stored.size()) << "watcher " << w;
    for (size_t i = 0; i < stored.size(); ++i) {
      ASSERT_EQ(seen[w][i].sequence(), stored[i].sequence()) << "watcher " << w << " event " << i;
    }
  }
  // Far fewer threads than watchers: none is pinned per stream.
  EXPECT_LT(threads_with_watchers - idle_threads, 32) << "idle " << idle_threads;
}

}  // namespace
}  // namespace miseg::testing

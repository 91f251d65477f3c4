// Uploads from several clients at once and a segmentation, all while a job trains: nothing
// is lost, nothing waits for the job, and the job's history stays whole.
#include <map>
#include <thread>

#include <gtest/gtest.h>

#include "miseg/v1/miseg.grpc.pb.h"
#include "tests/server/api_client.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

TEST(ConcurrencyTest, ConcurrentUploadsAndASegmentationWhileAJobTrainsLoseNothing) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<ServerProcess>> started = ServerProcess::Start(dir.path() + "/data");
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<ServerProcess> server = *std::move(started);
  ApiClient client(server->address());
  ASSERT_TRUE(client.CreateDataset("d").ok());
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(41, i, true);
    ASSERT_TRUE(study.ok());
    v1::UploadResponse response;
    ASSERT_TRUE(client.Upload("d", v1::STUDY_ROLE_LABELED, LabeledFiles(*study), &response).ok());
  }
  // A first model, for the segmentation.
  v1::StartJobRequest request;
  request.set_dataset("d");
  *request.mutable_hyperparameters() = TinyHyperparameters(2, 2);
  v1::Job job;
  auto context = client.Context();
  ASSERT_TRUE(client.training->StartJob(context.get(), request, &job).ok());
  std::vector<v1::JobEvent> first_events;
  ASSERT_TRUE(client.Watch(job.id(), &first_events).ok());
  ASSERT_EQ(first_events.back().state().state(), v1::JOB_STATE_SUCCEEDED);

  // A long job, followed until it trains.
  *request.mutable_hyperparameters() = TinyHyperparameters(1000000, 50);
  context = client.Context();
  ASSERT_TRUE(client.training->StartJob(context.get(), request, &job).ok());
  {
    auto watch_context = client.Context();
    v1::WatchJobRequest watch;
    watch.set_id(job.id());
    auto reader = client.training->WatchJob(watch_context.get(), watch);
    v1::JobEvent event;
    bool stepped = false;
    while (!stepped && reader->Read(&event)) stepped = event.has_step();
    ASSERT_TRUE(stepped);
    watch_context->TryCancel();
    reader->Finish();
  }

  constexpr int kClients = 6, kStudiesPerClient = 3;
  std::vector<std::vector<PhantomStudy>> studies(kClients);
  for (int c = 0; c < kClients; ++c) {
    for (int i = 0; i < kStudiesPerClient; ++i) {
      absl::StatusOr<PhantomStudy> s = SmallPhantomStudy(43, c * kStudiesPerClient + i, c % 2 == 0);
      ASSERT_TRUE(s.ok());
      studies[c].push_back(*std::move(s));
    }
  }
  std::vector<grpc::Status> upload_status(kClients * kStudiesPerClient);
  std::vector<int64_t> stored(kClients * kStudiesPerClient, 0);
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      // Each client its own channel, as separate machines would.
      ApiClient own(server->address());
      for (int i = 0; i < kStudiesPerClient; ++i) {
        const PhantomStudy& s = studies[c][i];
        v1::UploadResponse response;
        const bool labeled = c % 2 == 0;
        upload_status[c * kStudiesPerClient + i] =
            own.Upload("d", labeled ? v1::STUDY_ROLE_LABELED : v1::STUDY_ROLE_UNLABELED,
                       labeled ? LabeledFiles(s) : s.image_files, &response, 8192);
        stored[c * kStudiesPerClient + i] = response.stored_instances();
      }
    });
  }
  grpc::Status segment_status;
  std::string seg;
  v1::SegmentSummary summary;
  absl::StatusOr<PhantomStudy> target = SmallPhantomStudy(45, 0, false);
  ASSERT_TRUE(target.ok());
  threads.emplace_back([&] {
    v1::SegmentHeader header;
    header.set_dataset("d");
    segment_status = client.Segment(header, target->image_files, &seg, &summary);
  });
  for (std::thread& t : threads) t.join();

  // Nothing lost: every upload acknowledged and stored whole.
  int64_t expected_instances = 0;
  for (int c = 0; c < kClients; ++c) {
    for (int i = 0; i < kStudiesPerClient; ++i) {
      const int k = c * kStudiesPerClient + i;
      ASSERT_TRUE(upload_status[k].ok()) << upload_status[k].error_message();
      const int64_t files = static_cast<int64_t>(studies[c][i].image_files.size()) + (c % 2 == 0);
      EXPECT_EQ(stored[k], files);
      expected_instances += files;
    }
  }
  ASSERT_TRUE(segment_status.ok()) << segment_status.error_message();
  EXPECT_EQ(summary.source_series_instance_uid(), target->series.series_instance_uid);
  EXPECT_FALSE(seg.empty());

  // The job trained all along: still running, its events whole and in order.
  v1::GetJobRequest get;
  get.set_id(job.id());
  context = client.Context();
  ASSERT_TRUE(client.training->GetJob(context.get(), get, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_RUNNING);
  v1::CancelJobRequest cancel;
  cancel.set_id(job.id());
  context = client.Context();
  ASSERT_TRUE(client.training->CancelJob(context.get(), cancel, &job).ok());
  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(client.Watch(job.id(), &events).ok());
  EXPECT_EQ(events.back().state().state(), v1::JOB_STATE_CANCELLED);
  int64_t expected_step = 1;
  for (const v1::JobEvent& e : events) {
    if (e.has_step()) {
      EXPECT_EQ(e.step().step(), expected_step++);
    }
  }
  EXPECT_GT(expected_step, 1);

  v1::GetDatasetRequest get_dataset;
  get_dataset.set_name("d");
  v1::Dataset dataset;
  context = client.Context();
  ASSERT_TRUE(client.datasets->GetDataset(context.get(), get_dataset, &dataset).ok());
  int64_t first_instances = 0;
  for (int i = 0; i < 2; ++i) {
    first_instances += static_cast<int64_t>(LabeledFiles(*SmallPhantomStudy(41, i, true)).size());
  }
  EXPECT_EQ(dataset.instances(), first_instances + expected_instances);
  EXPECT_EQ(dataset.labeled_studies(), 2 + (kClients / 2) * kStudiesPerClient);
  EXPECT_EQ(dataset.unlabeled_studies(), (kClients / 2) * kStudiesPerClient);
  EXPECT_EQ(server->Terminate(), 0) << server->log();
}

}  // namespace
}  // namespace miseg::testing

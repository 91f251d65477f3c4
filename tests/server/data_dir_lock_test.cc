// One server per data directory, against the real process: a second miseg-server started
// on a live directory exits 2 at once, naming the directory and the first server's pid,
// and the first server's running job, its in-flight upload (files staged, not yet
// committed) and its events are untouched; after a SIGKILL the LOCK file left behind does
// not block a new server, which recovers the job as it always has.
#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

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
#include "tests/server/api_client.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

// Blocks until dir has an entry (inotify, no polling loop); false after the timeout.
bool WaitForAnEntry(const std::string& dir, std::chrono::seconds timeout) {
  const int fd = inotify_init1(IN_CLOEXEC);
  if (fd < 0) return false;
  bool found = inotify_add_watch(fd, dir.c_str(), IN_CREATE | IN_MOVED_TO) >= 0;
  // Listed after the watch is in place: an entry made before it is seen here, one made
  // after it wakes the poll.
  std::error_code ec;
  found = found && (!fs::is_empty(dir, ec) || [&] {
            pollfd ready{fd, POLLIN, 0};
            return poll(&ready, 1, static_cast<int>(timeout.count() * 1000)) == 1;
          }());
  close(fd);
  return found;
}

std::string FileText(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class DataDirLockTest : public ::testing::Test {
 protected:
  std::unique_ptr<ServerProcess> StartServer() {
    // A long idle cut: the test holds an upload stream open while the second server runs.
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start(data_, {"--stream_idle_timeout_seconds=600"});
    EXPECT_TRUE(started.ok()) << started.status();
    return started.ok() ? *std::move(started) : nullptr;
  }

  // Two labeled studies and one unlabeled in dataset "d".
  void FillDataset(const ApiClient& client) {
    ASSERT_TRUE(client.CreateDataset("d").ok());
    for (int i = 0; i < 3; ++i) {
      absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(22, i, i < 2);
      ASSERT_TRUE(study.ok()) << study.status();
      v1::UploadResponse response;
      ASSERT_TRUE(client.Upload("d", i < 2 ? v1::STUDY_ROLE_LABELED : v1::STUDY_ROLE_UNLABELED,
                                LabeledFiles(*study), &response).ok());
      ASSERT_EQ(response.refused_instances(), 0);
    }
  }

  static int64_t StartJob(const ApiClient& client, const v1::Hyperparameters& h) {
    v1::StartJobRequest request;
    request.set_dataset("d");
    *request.mutable_hyperparameters() = h;
    v1::Job job;
    auto context = client.Context();
    EXPECT_TRUE(client.training->StartJob(context.get(), request, &job).ok());
    return job.id();
  }

  static v1::Job GetJob(const ApiClient& client, int64_t id) {
    v1::GetJobRequest request;
    request.set_id(id);
    v1::Job job;
    auto context = client.Context();
    EXPECT_TRUE(client.training->GetJob(context.get(), request, &job).ok());
    return job;
  }

  // The job's stored history once it has ended: follows it to the end, then replays it.
  static std::vector<v1::JobEvent> HistoryAfterEnd(const ApiClient& client, int64_t id) {
    std::vector<v1::JobEvent> live, stored;
    EXPECT_TRUE(client.Watch(id, &live).ok());
    EXPECT_TRUE(client.Watch(id, &stored, 0, 300, 0, /*no_follow=*/true).ok());
    return stored;
  }

  TempDir dir_;
  const std::string data_ = dir_.path() + "/data";
};

TEST_F(DataDirLockTest, SecondServerOnALiveDirectoryExitsTwoAndTheFirstIsUntouched) {
  std::unique_ptr<ServerProcess> first = StartServer();
  ASSERT_NE(first, nullptr);
  ApiClient client(first->address());
  FillDataset(client);
  // `running` cannot end on its own while the test looks (it is cancelled below), so the
  // second server starts against a job in flight on any machine; `queued` waits behind it
  // and must then run once, to the end, on the first server.
  const int64_t running = StartJob(client, TinyHyperparameters(1000000, 50));
  constexpr int64_t kSteps = 30;
  const int64_t job_id = StartJob(client, TinyHyperparameters(kSteps, 10));
  ASSERT_TRUE(WaitForStep(client, running, 2)) << first->log();

  // An upload in flight: its first file complete, its second begun, all of it staged and
  // nothing committed. A second server's start-up would empty staging/ under it.
  absl::StatusOr<PhantomStudy> late = SmallPhantomStudy(22, 10, false);
  ASSERT_TRUE(late.ok()) << late.status();
  const std::vector<DicomBuffer>& files = late->image_files;
  ASSERT_GE(files.size(), 2u);
  auto upload_context = client.Context(600);
  v1::UploadResponse upload_response;
  auto upload = client.datasets->Upload(upload_context.get(), &upload_response);
  v1::UploadRequest request;
  request.mutable_header()->set_dataset("d");
  request.mutable_header()->set_role(v1::STUDY_ROLE_UNLABELED);
  ASSERT_TRUE(upload->Write(request));
  auto send = [&](size_t f, size_t begin, size_t end, bool last) {
    v1::UploadRequest chunk;
    if (begin == 0) chunk.mutable_chunk()->set_file_name(files[f].name);
    chunk.mutable_chunk()->set_data(files[f].bytes.substr(begin, end - begin));
    chunk.mutable_chunk()->set_last_chunk(last);
    return upload->Write(chunk);
  };
  const size_t half = files[1].bytes.size() / 2;
  ASSERT_TRUE(send(0, 0, files[0].bytes.size(), true));
  ASSERT_TRUE(send(1, 0, half, false));
  ASSERT_TRUE(WaitForAnEntry(data_ + "/staging", std::chrono::seconds(60))) << first->log();

  auto [status, log] = ServerProcess::RunToExit(
      {"--data_dir=" + data_, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0"});
  EXPECT_EQ(status, 2) << log;
  EXPECT_THAT(log, HasSubstr("data directory " + data_ + " is in use by process " +
                             std::to_string(first->pid())));
  EXPECT_THAT(log, Not(HasSubstr("serving")));
  EXPECT_EQ(FileText(data_ + "/LOCK"), absl::StrCat(first->pid(), "\n"));
  EXPECT_EQ(GetJob(client, running).state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(GetJob(client, job_id).state(), v1::JOB_STATE_QUEUED);

  // The upload finishes as if nothing had happened.
  ASSERT_TRUE(send(1, half, files[1].bytes.size(), true));
  for (size_t f = 2; f < files.size(); ++f) ASSERT_TRUE(send(f, 0, files[f].bytes.size(), true));
  upload->WritesDone();
  const grpc::Status uploaded = upload->Finish();
  ASSERT_TRUE(uploaded.ok()) << uploaded.error_message() << "\n" << first->log();
  EXPECT_EQ(upload_response.stored_instances(), static_cast<int64_t>(files.size()));
  EXPECT_EQ(upload_response.refused_instances(), 0);

  // The running job stops where it is cancelled, each of its steps stored once.
  v1::CancelJobRequest cancel;
  cancel.set_id(running);
  v1::Job cancelled;
  auto cancel_context = client.Context();
  ASSERT_TRUE(client.training->CancelJob(cancel_context.get(), cancel, &cancelled).ok());
  const std::vector<v1::JobEvent> stopped = HistoryAfterEnd(client, running);
  ASSERT_FALSE(stopped.empty());
  EXPECT_EQ(stopped.back().state().state(), v1::JOB_STATE_CANCELLED);
  const std::vector<int64_t> stopped_steps = StepsOf(stopped);
  EXPECT_EQ(stopped_steps, OneTo(static_cast<int64_t>(stopped_steps.size())));
  EXPECT_EQ(GetJob(client, running).resumes(), 0);

  // The queued job runs as it would have: every step exactly once, never claimed again.
  const std::vector<v1::JobEvent> events = HistoryAfterEnd(client, job_id);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().state().state(), v1::JOB_STATE_SUCCEEDED) << first->log();
  EXPECT_EQ(StepsOf(events), OneTo(kSteps));
  for (const v1::JobEvent& e : events) {
    if (e.has_state()) {
      EXPECT_THAT(e.state().message(), Not(HasSubstr("resumed")));
    }
  }
  const v1::Job job = GetJob(client, job_id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.resumes(), 0);

  // Every study is whole, and the first server still takes uploads.
  absl::StatusOr<PhantomStudy> after = SmallPhantomStudy(22, 11, false);
  ASSERT_TRUE(after.ok()) << after.status();
  v1::UploadResponse after_response;
  ASSERT_TRUE(
      client.Upload("d", v1::STUDY_ROLE_UNLABELED, after->image_files, &after_response).ok());
  EXPECT_EQ(after_response.stored_instances(), static_cast<int64_t>(after->image_files.size()));
  v1::ListStudiesRequest list;
  list.set_dataset("d");
  v1::ListStudiesResponse studies;
  auto context = client.Context();
  ASSERT_TRUE(client.datasets->ListStudies(context.get(), list, &studies).ok());
  EXPECT_EQ(studies.studies_size(), 5);
  for (const v1::Study& s : studies.studies()) {
    if (s.series_instance_uid() == late->series.series_instance_uid) {
      EXPECT_EQ(s.instances(), static_cast<int64_t>(files.size()));
    }
  }
  EXPECT_EQ(first->Terminate(), 0) << first->log();
}

TEST_F(DataDirLockTest, AfterSigkillANewServerStartsAtOnceAndRecoversTheJob) {
  std::unique_ptr<ServerProcess> first = StartServer();
  ASSERT_NE(first, nullptr);
  const pid_t first_pid = first->pid();
  int64_t job_id = 0;
  {
    ApiClient client(first->address());
    FillDataset(client);
    job_id = StartJob(client, TinyHyperparameters(60, 5));
    // Step 7 runs only after the checkpoint of step 5 is committed.
    ASSERT_TRUE(WaitForStep(client, job_id, 7)) << first->log();
  }
  first->Kill();  // SIGKILL, reaped: the LOCK file stays, with a dead pid in it
  EXPECT_EQ(FileText(data_ + "/LOCK"), absl::StrCat(first_pid, "\n"));

  std::unique_ptr<ServerProcess> second = StartServer();
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(FileText(data_ + "/LOCK"), absl::StrCat(second->pid(), "\n"));
  ApiClient client(second->address());
  const std::vector<v1::JobEvent> events = HistoryAfterEnd(client, job_id);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().state().state(), v1::JOB_STATE_SUCCEEDED) << second->log();
  EXPECT_EQ(StepsOf(events), OneTo(60));
  EXPECT_EQ(GetJob(client, job_id).resumes(), 1);

  // A server that stops normally leaves no pid behind.
  EXPECT_EQ(second->Terminate(), 0) << second->log();
  EXPECT_EQ(FileText(data_ + "/LOCK"), "");
}

}  // namespace
}  // namespace miseg::testing

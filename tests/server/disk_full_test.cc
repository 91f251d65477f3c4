// The data directory's disk fills up (issue 13): miseg-server on a small tmpfs that the test
// fills to the last page. Uploads and C-STOREs are refused (RESOURCE_EXHAUSTED, DIMSE
// 0xA700 "Out of Resources") with nothing half-written; a checkpoint that cannot be written
// ends its attempt cleanly and the job retries later, never failing for it; reads go on;
// and everything works again once space is freed. The low-disk gauge shows it.
//
// Mounting needs root (CAP_SYS_ADMIN), as the CI and dev VMs run; elsewhere the tests skip.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/dicom/net/cstore_sender.h"
#include "tests/server/api_client.h"
#include "tests/server/child_process.h"
#include "tests/server/server_fixture.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class DiskFullTest : public ServerTest {
 protected:
  DiskFullTest() : ServerTest("small/data") {}

  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
    fs::create_directories(mount_);
    if (mount("tmpfs", mount_.c_str(), "tmpfs", 0, "size=48m,mode=0700") != 0) {
      GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
    }
    mounted_ = true;
  }
  void TearDown() override {
    server_.reset();
    if (mounted_) umount2(mount_.c_str(), MNT_DETACH);
  }

  // Fills the filesystem to its last page (megabytes, then pages, until ENOSPC), then gives
  // back `leave` bytes.
  void FillDisk(off_t leave = 0) {
    const int fd = ::open((mount_ + "/filler").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ASSERT_GE(fd, 0);
    for (size_t chunk : {size_t{1} << 20, size_t{4096}, size_t{512}}) {
      const std::string bytes(chunk, 'x');
      while (::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size())) {
      }
    }
    const off_t size = ::lseek(fd, 0, SEEK_END);
    if (leave > 0) ASSERT_EQ(::ftruncate(fd, std::max<off_t>(0, size - leave)), 0);
    ::fsync(fd);
    ::close(fd);
  }
  void FreeDisk() { fs::remove(mount_ + "/filler"); }

  void Upload(const std::string& dataset, const PhantomStudy& study, bool labeled,
              grpc::Status* status, v1::UploadResponse* response) {
    *status = client_->Upload(dataset, labeled ? v1::STUDY_ROLE_LABELED : v1::STUDY_ROLE_UNLABELED,
                              LabeledFiles(study), response, 8192);
  }

  // The two labeled studies the job tests train on.
  void UploadTrainingStudies() {
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(73, i, true);
      ASSERT_TRUE(study.ok());
      grpc::Status status;
      v1::UploadResponse response;
      Upload("d", *study, true, &status, &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
    }
  }

  const std::string mount_ = dir_.path() + "/small";
  bool mounted_ = false;
};

TEST_F(DiskFullTest, UploadsAreRefusedWholeWhileFullAndStoredOnceSpaceIsFreed) {
  Start();
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  absl::StatusOr<PhantomStudy> before = SmallPhantomStudy(71, 0, true);
  absl::StatusOr<PhantomStudy> during = SmallPhantomStudy(71, 1, true);
  ASSERT_TRUE(before.ok() && during.ok());
  grpc::Status status;
  v1::UploadResponse response;
  Upload("d", *before, true, &status, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const std::vector<std::string> objects = FilesUnder(data_ + "/objects");
  const double free_before =
      MetricValue(ScrapeMetrics(server_->metrics_port()), "miseg_data_dir_free_bytes");
  EXPECT_GT(free_before, 8 << 20);
  EXPECT_EQ(MetricValue(ScrapeMetrics(server_->metrics_port()), "miseg_data_dir_size_bytes"),
            48 << 20);

  FillDisk();
  response.Clear();
  Upload("d", *during, true, &status, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("No space left on device"));
  // Nothing half-written: no study, no new object, nothing staged.
  EXPECT_EQ(Studies("d").size(), 1u);
  EXPECT_EQ(FilesUnder(data_ + "/objects"), objects);
  EXPECT_THAT(FilesUnder(data_ + "/staging"), ::testing::IsEmpty());
  // Reads go on, and the gauge shows the full disk.
  v1::ListDatasetsResponse datasets;
  auto context = client_->Context();
  EXPECT_TRUE(client_->datasets->ListDatasets(context.get(), {}, &datasets).ok());
  EXPECT_LT(MetricValue(ScrapeMetrics(server_->metrics_port()), "miseg_data_dir_free_bytes"),
            64 << 10);

  FreeDisk();
  response.Clear();
  Upload("d", *during, true, &status, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.stored_instances(), static_cast<int64_t>(LabeledFiles(*during).size()));
  EXPECT_EQ(Studies("d").size(), 2u);
}

TEST_F(DiskFullTest, CStoresAreRefusedWithOutOfResourcesAndAcceptedOnceSpaceIsFreed) {
  const int port = FreeLoopbackPort();
  const std::string config = dir_.path() + "/node.json";
  std::ofstream(config) << absl::StrCat(R"({"aeTitle": "MISEG", "bindAddress": "127.0.0.1",
    "port": )",
                                        port,
                                        R"(, "peers": [{"aeTitle": "SENDER", "host": "127.0.0.1"}],
    "routes": [{"callingAeTitle": "SENDER", "storeDataset": "pacs"}]})");
  Start({"--dicom_node_config=" + config});
  ASSERT_TRUE(
      server_->WaitForLog(absl::StrCat("listening on port ", port), std::chrono::seconds(10)))
      << server_->log();
  ASSERT_TRUE(client_->CreateDataset("pacs").ok());
  absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(72, 0, false);
  ASSERT_TRUE(study.ok());
  std::vector<std::string> files;
  for (const DicomBuffer& f : study->image_files) files.push_back(f.bytes);
  const DicomPeer node{"MISEG", "127.0.0.1", port};

  FillDisk();
  absl::Status refused = SendByCStore(node, "SENDER", files, std::chrono::seconds(30));
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(refused.message(), HasSubstr("0xA700"));                // Refused: Out of Resources
  EXPECT_THAT(FilesUnder(data_ + "/objects"), ::testing::IsEmpty());  // no object, no temporary
  EXPECT_EQ(MetricValue(ScrapeMetrics(server_->metrics_port()),
                        "miseg_dicom_received_instances_total{outcome=\"stored\"}"),
            0);

  FreeDisk();
  ASSERT_TRUE(SendByCStore(node, "SENDER", files, std::chrono::seconds(30)).ok());
  // The association ended: the series is stored into "pacs" whole.
  for (int i = 0; i < 300 && Studies("pacs").empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const std::vector<v1::Study> stored = Studies("pacs");
  ASSERT_EQ(stored.size(), 1u) << server_->log();
  EXPECT_EQ(stored[0].instances(), static_cast<int32_t>(files.size()));
}

// Room for the job's events but not for its next checkpoint (a wider model's, over a MiB):
// the checkpoint cannot be written, the attempt ends cleanly (RETRY_LATER, ENOSPC)
// and the job waits in the queue, retried after pauses, instead of failing; once space is
// freed it resumes from its last checkpoint and ends with an uninterrupted run's model.
TEST_F(DiskFullTest, ACheckpointThatCannotBeWrittenRetriesTheJobLater) {
  Start();
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  UploadTrainingStudies();
  v1::Hyperparameters h = TinyHyperparameters(/*total_steps=*/40, /*checkpoint_every=*/5);
  h.clear_widths();
  h.add_widths(48);
  h.add_widths(96);
  const int64_t job_id = StartJob(h);
  ASSERT_TRUE(WaitForStep(*client_, job_id, 7)) << server_->log();  // checkpoint 5 is in
  FillDisk(/*leave=*/512 << 10);
  ASSERT_TRUE(server_->WaitForLog("ran out of a resource: RESOURCE_EXHAUSTED: cannot write",
                                  std::chrono::seconds(120)))
      << server_->log();
  EXPECT_NE(GetJob(job_id).state(), v1::JOB_STATE_FAILED);
  // Still no room: the retries (after 1 s, 2 s, ...) end the same way, never failing it.
  const auto retried = [&] {
    const std::string log = server_->log();
    size_t count = 0;
    for (size_t at = log.find("ran out of a resource"); at != std::string::npos;
         at = log.find("ran out of a resource", at + 1)) {
      ++count;
    }
    return count >= 3;
  };
  for (int i = 0; i < 600 && !retried(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(retried()) << server_->log();
  EXPECT_NE(GetJob(job_id).state(), v1::JOB_STATE_FAILED);

  FreeDisk();
  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(client_->Watch(job_id, &events, 0, 600).ok());
  const v1::Job job = GetJob(job_id);
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error() << "\n" << server_->log();
  std::vector<v1::JobEvent> history;
  ASSERT_TRUE(client_->Watch(job_id, &history, 0, 60, 0, /*no_follow=*/true).ok());
  EXPECT_EQ(StepsOf(history), OneTo(40));
  bool told = false;
  for (const v1::JobEvent& e : history) {
    told |= e.has_state() && e.state().state() == v1::JOB_STATE_QUEUED &&
            absl::StrContains(e.state().message(), "No space left on device");
  }
  EXPECT_TRUE(told) << "no QUEUED event says why";
  const int64_t reference = StartJob(job.hyperparameters());
  std::vector<v1::JobEvent> reference_events;
  ASSERT_TRUE(client_->Watch(reference, &reference_events, 0, 600).ok());
  EXPECT_EQ(ModelFileOf(data_, job_id), ModelFileOf(data_, reference));
}

// The disk fills to its last page while a job trains: neither its checkpoint nor its
// events can be written, nor even the requeue. The attempt ends cleanly, the job stays
// unfailed (requeued once the store can write again), and once space is freed it resumes
// from its last good checkpoint, each step's event stored once, and ends with the model an
// uninterrupted run makes.
TEST_F(DiskFullTest, AJobOnAFullDiskWaitsAndFinishesOnceSpaceIsFreed) {
  Start();
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  UploadTrainingStudies();
  const v1::Hyperparameters h = TinyHyperparameters(/*total_steps=*/600, /*checkpoint_every=*/5);
  const int64_t job_id = StartJob(h);
  ASSERT_TRUE(WaitForStep(*client_, job_id, 6)) << server_->log();
  FillDisk();
  ASSERT_TRUE(server_->WaitForLog("ran out of a resource", std::chrono::seconds(120)))
      << server_->log();
  // Full: the job is not failed, and reads go on.
  EXPECT_NE(GetJob(job_id).state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(Studies("d").size(), 2u);
  std::vector<v1::JobEvent> so_far;
  EXPECT_TRUE(client_->Watch(job_id, &so_far, 0, 60, 0, /*no_follow=*/true).ok());

  FreeDisk();
  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(client_->Watch(job_id, &events, 0, 600).ok());
  const v1::Job job = GetJob(job_id);
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error() << "\n" << server_->log();
  std::vector<v1::JobEvent> history;
  ASSERT_TRUE(client_->Watch(job_id, &history, 0, 60, 0, /*no_follow=*/true).ok());
  EXPECT_EQ(StepsOf(history), OneTo(600));

  EXPECT_GE(job.resumes(), 1);
  EXPECT_THAT(FilesUnder(data_ + "/checkpoints"), ::testing::IsEmpty());
  EXPECT_THAT(FilesUnder(data_ + "/scratch"), ::testing::IsEmpty());

  const int64_t reference = StartJob(job.hyperparameters());
  std::vector<v1::JobEvent> reference_events;
  ASSERT_TRUE(client_->Watch(reference, &reference_events, 0, 600).ok());
  EXPECT_EQ(ModelFileOf(data_, job_id), ModelFileOf(data_, reference));
  EXPECT_NE(ModelFileOf(data_, job_id), "");
}

}  // namespace
}  // namespace miseg::testing

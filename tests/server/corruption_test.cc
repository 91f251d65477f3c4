// Damaged data (issue 13): stored files whose bytes no longer match their SHA-256, a lost
// file, a damaged database page, a damaged checkpoint. Every read of a stored object checks
// its hash, so a damaged one fails the job or segmentation that needs it with DATA_LOSS
// naming it (on the server's own devices and when a miseg-worker fetches it), never a
// crash; `miseg-server verify` finds, reports and quarantines what is damaged, beside no
// live server; a damaged checkpoint makes a resume fall back to the one before.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "tests/server/api_client.h"
#include "tests/server/child_process.h"
#include "tests/server/server_fixture.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string ObjectPath(const std::string& data, const std::string& hash) {
  return absl::StrCat(data, "/objects/", hash.substr(0, 2), "/", hash);
}

// Flips one byte in the middle of a file (its size unchanged: only its hash tells).
void FlipByte(const std::string& path) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(file) << path;
  file.seekg(0, std::ios::end);
  const std::streamoff middle = file.tellg() / 2;
  file.seekg(middle);
  char c = 0;
  file.read(&c, 1);
  file.seekp(middle);
  c = static_cast<char>(c ^ 0x5a);
  file.write(&c, 1);
}

// One text column of one row of a stopped server's database.
std::string QueryText(const std::string& db_path, const std::string& sql, bool read_only = true) {
  sqlite3* db = nullptr;
  std::string value;
  const int flags = read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE;
  if (sqlite3_open_v2(db_path.c_str(), &db, flags, nullptr) == SQLITE_OK) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW && sqlite3_column_text(stmt, 0) != nullptr) {
      value = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close_v2(db);
  return value;
}

class CorruptionTest : public ServerTest {
 protected:
  void Start(std::vector<std::string> flags = {}) {
    flags.push_back("--training_threads=1");
    ServerTest::Start(flags);
  }
  void Stop() { ASSERT_EQ(server_->Terminate(), 0) << server_->log(); }

  // Uploads a phantom study; returns its series UID.
  std::string Upload(uint64_t population, int index, bool labeled) {
    absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(population, index, labeled);
    EXPECT_TRUE(study.ok());
    v1::UploadResponse response;
    EXPECT_TRUE(client_
                    ->Upload("d", labeled ? v1::STUDY_ROLE_LABELED : v1::STUDY_ROLE_UNLABELED,
                             labeled ? LabeledFiles(*study) : study->image_files, &response)
                    .ok());
    EXPECT_EQ(response.refused_instances(), 0);
    return study->series.series_instance_uid;
  }

  // The object hashes of a stored study's image instances, from the stopped server's
  // database.
  std::vector<std::string> ImageObjects(const std::string& series) {
    std::vector<std::string> hashes;
    for (int i = 0;; ++i) {
      const std::string hash = QueryText(
          data_ + "/miseg.db",
          absl::StrCat("SELECT i.object_hash FROM instances i JOIN studies s ON s.id = "
                       "i.study_id WHERE s.series_instance_uid = '",
                       series, "' AND i.is_segmentation = 0 ORDER BY i.rowid LIMIT 1 OFFSET ", i));
      if (hash.empty()) break;
      hashes.push_back(hash);
    }
    return hashes;
  }

  // Follows a job to its end; the job as it ended.
  v1::Job Finish(int64_t id) {
    std::vector<v1::JobEvent> events;
    EXPECT_TRUE(client_->Watch(id, &events, 0, 600).ok());
    return GetJob(id);
  }

  grpc::Status SegmentStored(const std::string& series, std::string* seg) {
    v1::SegmentHeader header;
    header.set_dataset("d");
    header.set_stored_series_instance_uid(series);
    v1::SegmentSummary summary;
    return client_->Segment(header, {}, seg, &summary);
  }

  // The server is alive and answers.
  void ExpectServing() {
    v1::ListDatasetsResponse datasets;
    auto context = client_->Context();
    EXPECT_TRUE(client_->datasets->ListDatasets(context.get(), {}, &datasets).ok())
        << server_->log();
  }

  std::pair<int, std::string> Verify() {
    return ServerProcess::RunToExit({"verify", "--data_dir=" + data_});
  }
};

// A damaged object of a stored study: segmenting the study and a job training on it fail
// with DATA_LOSS naming the object; the server goes on serving.
TEST_F(CorruptionTest, ADamagedObjectFailsTheSegmentationAndTheJobWithDataLoss) {
  Start();
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  Upload(81, 0, true);
  Upload(81, 1, true);
  ASSERT_EQ(Finish(StartJob(TinyHyperparameters(2, 2))).state(), v1::JOB_STATE_SUCCEEDED);
  const std::string unlabeled = Upload(81, 2, false);
  Stop();
  const std::string damaged = ImageObjects(unlabeled).at(1);
  FlipByte(ObjectPath(data_, damaged));
  Start();

  std::string seg;
  const grpc::Status segmented = SegmentStored(unlabeled, &seg);
  EXPECT_EQ(segmented.error_code(), grpc::StatusCode::DATA_LOSS) << segmented.error_message();
  EXPECT_THAT(segmented.error_message(), HasSubstr(damaged));
  ExpectServing();

  const v1::Job job = Finish(StartJob(TinyHyperparameters(4, 2)));
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(job.error(), HasSubstr("DATA_LOSS"));
  EXPECT_THAT(job.error(), HasSubstr(damaged));
  ExpectServing();
}

// `verify` beside a live server is refused (exit 2), touching nothing.
TEST_F(CorruptionTest, VerifyRefusesToRunBesideALiveServer) {
  Start();
  auto [status, output] = Verify();
  EXPECT_EQ(status, 2) << output;
  EXPECT_THAT(output, HasSubstr("in use by process"));
  ExpectServing();
}

// verify: a sound directory passes (exit 0); then a flipped byte, a truncated file and a
// lost file are found (exit 1), the damaged files moved to quarantine/ and the studies
// holding them marked, which listings show and which jobs and segmentations refuse with
// DATA_LOSS; deleting and uploading them again heals the directory.
TEST_F(CorruptionTest, VerifyQuarantinesDamagedObjectsAndMarksTheirStudies) {
  Start();
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  const std::string labeled = Upload(82, 0, true);
  Upload(82, 1, true);
  const std::string unlabeled = Upload(82, 2, false);
  const std::string lost_one = Upload(82, 3, false);
  ASSERT_EQ(Finish(StartJob(TinyHyperparameters(2, 2))).state(), v1::JOB_STATE_SUCCEEDED);
  Stop();
  {
    auto [status, output] = Verify();
    EXPECT_EQ(status, 0) << output;
    EXPECT_THAT(output, HasSubstr("verify: sound"));
  }
  const std::string flipped = ImageObjects(unlabeled).at(0);
  const std::string truncated = ImageObjects(labeled).at(2);
  const std::string lost = ImageObjects(lost_one).at(1);
  FlipByte(ObjectPath(data_, flipped));
  fs::resize_file(ObjectPath(data_, truncated), 100);
  fs::remove(ObjectPath(data_, lost));

  auto [status, output] = Verify();
  EXPECT_EQ(status, 1) << output;
  EXPECT_THAT(output, HasSubstr(absl::StrCat("object ", flipped, " is damaged")));
  EXPECT_THAT(output, HasSubstr(absl::StrCat("object ", truncated, " is damaged")));
  EXPECT_THAT(output, HasSubstr(absl::StrCat("object ", lost, " is referenced but missing")));
  EXPECT_THAT(output,
              HasSubstr(absl::StrCat("study ", labeled, " of dataset 'd' is marked damaged")));
  EXPECT_TRUE(fs::exists(data_ + "/quarantine/" + flipped));
  EXPECT_TRUE(fs::exists(data_ + "/quarantine/" + truncated));
  EXPECT_FALSE(fs::exists(ObjectPath(data_, flipped)));

  Start();
  int damaged = 0;
  for (const v1::Study& s : Studies()) {
    if (s.damage().empty()) continue;
    ++damaged;
    EXPECT_THAT(s.damage(), HasSubstr("object "));
  }
  EXPECT_EQ(damaged, 3);
  std::string seg;
  const grpc::Status segmented = SegmentStored(unlabeled, &seg);
  EXPECT_EQ(segmented.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(segmented.error_message(), HasSubstr(flipped));
  const v1::Job job = Finish(StartJob(TinyHyperparameters(2, 2)));
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(job.error(), HasSubstr("DATA_LOSS"));
  EXPECT_THAT(job.error(), HasSubstr("is damaged"));

  // Healed: the damaged studies deleted and uploaded again.
  for (const v1::Study& s : Studies()) {
    if (s.damage().empty()) continue;
    v1::DeleteStudyRequest request;
    request.set_dataset("d");
    request.set_series_instance_uid(s.series_instance_uid());
    v1::DeleteStudyResponse response;
    auto context = client_->Context();
    ASSERT_TRUE(client_->datasets->DeleteStudy(context.get(), request, &response).ok());
  }
  Upload(82, 0, true);
  Upload(82, 2, false);
  Upload(82, 3, false);
  for (const v1::Study& s : Studies()) EXPECT_EQ(s.damage(), "") << s.series_instance_uid();
  EXPECT_EQ(Finish(StartJob(TinyHyperparameters(2, 2))).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_TRUE(SegmentStored(unlabeled, &seg).ok());
  Stop();
  auto [healed_status, healed] = Verify();
  EXPECT_EQ(healed_status, 0) << healed;
}

// A damaged page of miseg.db: PRAGMA integrity_check's complaint, exit 1.
TEST_F(CorruptionTest, VerifyReportsADamagedDatabase) {
  Start();
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  for (int i = 0; i < 6; ++i) Upload(83, i, false);
  Stop();
  // Everything into the main file, then the instances table's root page made unreadable.
  QueryText(data_ + "/miseg.db", "PRAGMA wal_checkpoint(TRUNCATE)", /*read_only=*/false);
  const int64_t page_size = std::stoll(QueryText(data_ + "/miseg.db", "PRAGMA page_size"));
  const int64_t root = std::stoll(QueryText(
      data_ + "/miseg.db", "SELECT rootpage FROM sqlite_master WHERE name = 'instances'"));
  ASSERT_GT(root, 1);
  {
    std::fstream db(data_ + "/miseg.db", std::ios::in | std::ios::out | std::ios::binary);
    db.seekp((root - 1) * page_size);
    const std::string garbage(64, '\xff');  // not a b-tree page type, nonsense cell counts
    db.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
  }
  auto [status, output] = Verify();
  EXPECT_EQ(status, 1) << output;
  EXPECT_THAT(output, HasSubstr("database miseg.db is damaged"));
}

// The job's last checkpoint is damaged while the server is down: the resume checks it,
// moves it to quarantine/ and resumes from the checkpoint before, which was kept; the
// history tells, each step is stored once, and the model equals an uninterrupted run's.
TEST_F(CorruptionTest, ADamagedCheckpointMakesTheResumeFallBackToThePreviousOne) {
  Start();
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  Upload(84, 0, true);
  Upload(84, 1, true);
  const v1::Hyperparameters h = TinyHyperparameters(60, 5);
  const int64_t job_id = StartJob(h);
  // Step 17 runs after the checkpoints of steps 10 and 15 are committed.
  ASSERT_TRUE(WaitForStep(*client_, job_id, 17)) << server_->log();
  server_->Kill();
  const std::string last = QueryText(
      data_ + "/miseg.db", absl::StrCat("SELECT checkpoint_path FROM jobs WHERE id = ", job_id));
  const std::string step =
      QueryText(data_ + "/miseg.db", absl::StrCat("SELECT step FROM jobs WHERE id = ", job_id));
  ASSERT_FALSE(last.empty());
  EXPECT_EQ(FilesUnder(data_ + "/checkpoints").size(), 2u);  // the last and the one before
  FlipByte(last);

  Start();
  const v1::Job job = Finish(job_id);
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error() << server_->log();
  std::vector<v1::JobEvent> history;
  ASSERT_TRUE(client_->Watch(job_id, &history, 0, 60, 0, /*no_follow=*/true).ok());
  EXPECT_EQ(StepsOf(history), OneTo(60));
  const int64_t previous = std::stoll(step) - 5;
  bool fell_back = false;
  for (const v1::JobEvent& e : history) {
    if (!e.has_state()) continue;
    if (absl::StrContains(e.state().message(),
                          absl::StrCat("the checkpoint of step ", step, " is damaged"))) {
      fell_back = true;
      EXPECT_THAT(e.state().message(), HasSubstr(absl::StrCat("resumed from step ", previous)));
      EXPECT_THAT(e.state().message(), HasSubstr("DATA_LOSS"));
    }
  }
  EXPECT_TRUE(fell_back) << server_->log();
  EXPECT_TRUE(fs::exists(data_ + "/quarantine/" + fs::path(last).filename().string()));

  const int64_t reference = StartJob(h);
  ASSERT_EQ(Finish(reference).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(ModelFileOf(data_, job_id), ModelFileOf(data_, reference));
  EXPECT_NE(ModelFileOf(data_, job_id), "");
}

// A miseg-worker fetching a damaged object (FetchObject, streamed): the coordinator
// answers DATA_LOSS before the first byte, and the job fails naming the object.
TEST_F(CorruptionTest, AWorkerFetchingADamagedObjectFailsTheJobWithDataLoss) {
  Start({"--devices="});  // every rank runs on the worker
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  const std::string labeled = Upload(85, 0, true);
  Upload(85, 1, true);
  Stop();
  const std::string damaged = ImageObjects(labeled).at(1);
  FlipByte(ObjectPath(data_, damaged));
  Start({"--devices="});
  absl::StatusOr<std::unique_ptr<ChildProcess>> worker = ChildProcess::Spawn(
      {MISEG_WORKER_BINARY, "--coordinator=" + server_->address(), "--devices=cpu",
       "--cache_dir=" + dir_.path() + "/cache", "--name=w", "--training_threads=1"});
  ASSERT_TRUE(worker.ok()) << worker.status();
  ASSERT_TRUE((*worker)->WaitForLog("registered as worker", std::chrono::seconds(120)))
      << (*worker)->log();

  const v1::Job job = Finish(StartJob(TinyHyperparameters(4, 2)));
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED) << (*worker)->log();
  EXPECT_THAT(job.error(), HasSubstr("DATA_LOSS"));
  EXPECT_THAT(job.error(), HasSubstr(damaged));
  ExpectServing();
  (*worker)->Terminate(std::chrono::seconds(30));
}

}  // namespace
}  // namespace miseg::testing

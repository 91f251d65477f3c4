// Imports from a PACS (issue 16), end to end: a real Orthanc (Debian's, with its DICOMweb
// plugin) holds phantom studies; a real miseg-server with --import_sources pulls them by
// DICOMweb (QIDO-RS, WADO-RS) and by DICOM (C-FIND, C-GET). Orthanc logs every HTTP request
// it receives through a Lua IncomingHttpRequestFilter, which is how the tests count what was
// fetched. Synchronisation is on the server's own log lines ("import N: succeeded", and the
// test hook's "paused after N instances"), never on sleeps.
#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/dicom/instance_info.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "tests/server/api_client.h"
#include "tests/server/child_process.h"
#include "tests/server/orthanc_process.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

using ::testing::HasSubstr;
constexpr auto kWait = std::chrono::seconds(120);

class ImportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    requests_log_ = dir_.path() + "/orthanc-requests.log";
    const std::string lua = dir_.path() + "/count-requests.lua";
    std::ofstream(lua) << "function IncomingHttpRequestFilter(method, uri, ip, username, headers)\n"
                          "  local f = io.open('" << requests_log_ << "', 'a')\n"
                          "  f:write(method .. ' ' .. uri .. '\\n')\n"
                          "  f:close()\n"
                          "  return true\n"
                          "end\n";
    OrthancOptions options;
    options.dicom_aet = "ORTHANC";
    // C-GET is answered only to a known modality: miseg's calling AE title from 127.0.0.1.
    options.modalities["miseg"] = OrthancModality{"MISEG", "127.0.0.1", FreeLoopbackPort()};
    options.lua_scripts = {lua};
    absl::StatusOr<std::unique_ptr<OrthancProcess>> orthanc =
        OrthancProcess::Start(dir_.path() + "/orthanc", options);
    ASSERT_TRUE(orthanc.ok()) << orthanc.status();
    orthanc_ = *std::move(orthanc);
    sources_path_ = dir_.path() + "/sources.json";
    std::ofstream(sources_path_) << absl::StrCat(R"({"sources": [
  {"name": "orthanc", "dicomweb": {"url": ")", orthanc_->base_url(), R"(/dicom-web"}},
  {"name": "pacs", "dicom": {"aeTitle": "ORTHANC", "host": "127.0.0.1", "port": )",
                                                 orthanc_->dicom_port(), R"(}}
]})");
  }

  void StartMiseg(std::vector<std::string> extra = {}) {
    miseg_.reset();
    extra.push_back("--import_sources=" + sources_path_);
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start(dir_.path() + "/miseg", extra);
    ASSERT_TRUE(started.ok()) << started.status();
    miseg_ = *std::move(started);
    client_ = std::make_unique<ApiClient>(miseg_->address());
    imports_ = v1::ImportService::NewStub(client_->channel);
  }

  // The study's images (and SEG) into Orthanc.
  void PutIntoOrthanc(const PhantomStudy& study) {
    for (const DicomBuffer& f : study.image_files) {
      ASSERT_TRUE(orthanc_->UploadInstance(f.bytes).ok());
    }
    if (study.segmentation) ASSERT_TRUE(orthanc_->UploadInstance(study.segmentation->bytes).ok());
  }

  grpc::Status StartImport(const std::string& source, v1::StudyRole role,
                           const std::string& study_uid, std::vector<v1::Import>* out,
                           const std::string& query = "") {
    v1::StartImportRequest request;
    request.set_dataset("cardiac");
    request.set_source(source);
    request.set_role(role);
    request.set_study_instance_uid(study_uid);
    request.set_query(query);
    v1::StartImportResponse response;
    auto context = client_->Context();
    grpc::Status status = imports_->StartImport(context.get(), request, &response);
    out->assign(response.imports().begin(), response.imports().end());
    return status;
  }

  v1::Import GetImport(int64_t id) {
    v1::GetImportRequest request;
    request.set_id(id);
    v1::Import out;
    auto context = client_->Context();
    EXPECT_TRUE(imports_->GetImport(context.get(), request, &out).ok());
    return out;
  }

  // Waits for the server's log line of the import's end; returns the import.
  v1::Import WaitForEnd(int64_t id, const std::string& outcome = "succeeded") {
    EXPECT_TRUE(miseg_->WaitForLog(absl::StrCat("import ", id, ": ", outcome), kWait))
        << miseg_->log();
    return GetImport(id);
  }

  std::vector<v1::Study> Studies() {
    v1::ListStudiesRequest request;
    request.set_dataset("cardiac");
    v1::ListStudiesResponse response;
    auto context = client_->Context();
    EXPECT_TRUE(client_->datasets->ListStudies(context.get(), request, &response).ok());
    return {response.studies().begin(), response.studies().end()};
  }

  // WADO-RS instance requests Orthanc received, by SOP Instance UID.
  std::map<std::string, int> InstanceFetches() {
    std::map<std::string, int> counts;
    std::ifstream in(requests_log_);
    std::string line;
    while (std::getline(in, line)) {
      if (!absl::StartsWith(line, "GET /dicom-web/studies/")) continue;
      std::vector<std::string> parts = absl::StrSplit(line, '/');
      // GET , dicom-web, studies, S, series, SE, instances, I
      if (parts.size() == 8 && parts[6] == "instances") ++counts[parts[7]];
    }
    return counts;
  }

  TempDir dir_;
  std::string requests_log_, sources_path_;
  std::unique_ptr<OrthancProcess> orthanc_;
  std::unique_ptr<ServerProcess> miseg_;
  std::unique_ptr<ApiClient> client_;
  std::unique_ptr<v1::ImportService::Stub> imports_;
};

TEST_F(ImportTest, LabeledAndUnlabeledStudiesByDicomWebAndAgainStoresNothing) {
  absl::StatusOr<PhantomStudy> labeled = SmallPhantomStudy(71, 0, true);
  absl::StatusOr<PhantomStudy> unlabeled = SmallPhantomStudy(71, 1, false);
  ASSERT_TRUE(labeled.ok() && unlabeled.ok());
  PutIntoOrthanc(*labeled);
  PutIntoOrthanc(*unlabeled);
  StartMiseg();
  ASSERT_TRUE(client_->CreateDataset("cardiac").ok());

  std::vector<v1::Import> started;
  ASSERT_TRUE(StartImport("orthanc", v1::STUDY_ROLE_LABELED,
                          labeled->series.study_instance_uid, &started).ok());
  ASSERT_EQ(started.size(), 1u);
  v1::Import done = WaitForEnd(started[0].id());
  const int64_t labeled_instances = static_cast<int64_t>(labeled->image_files.size()) + 1;
  EXPECT_EQ(done.state(), v1::IMPORT_STATE_SUCCEEDED) << done.error();
  EXPECT_EQ(done.instances_total(), labeled_instances);
  EXPECT_EQ(done.instances_fetched(), labeled_instances);
  EXPECT_THAT(done.stored_series_instance_uids(),
              ::testing::ElementsAre(labeled->series.series_instance_uid));

  ASSERT_TRUE(StartImport("orthanc", v1::STUDY_ROLE_UNLABELED,
                          unlabeled->series.study_instance_uid, &started).ok());
  done = WaitForEnd(started[0].id());
  EXPECT_EQ(done.state(), v1::IMPORT_STATE_SUCCEEDED) << done.error();

  std::vector<v1::Study> studies = Studies();
  ASSERT_EQ(studies.size(), 2u);
  EXPECT_EQ(studies[0].role(), v1::STUDY_ROLE_LABELED);
  EXPECT_EQ(studies[0].segmentation_sop_instance_uid(),
            labeled->segmentation ? IdentifyInstance(*labeled->segmentation)->sop_instance_uid
                                  : "");
  EXPECT_EQ(studies[0].slices(), labeled->series.image.geometry.slices);
  EXPECT_EQ(studies[1].role(), v1::STUDY_ROLE_UNLABELED);
  EXPECT_TRUE(studies[1].segmentation_sop_instance_uid().empty());

  // Each instance was fetched once; importing the labeled study again fetches nothing.
  std::map<std::string, int> fetches = InstanceFetches();
  EXPECT_EQ(fetches.size(),
            static_cast<size_t>(labeled_instances) + unlabeled->image_files.size());
  for (const auto& [sop, count] : fetches) EXPECT_EQ(count, 1) << sop;
  ASSERT_TRUE(StartImport("orthanc", v1::STUDY_ROLE_LABELED,
                          labeled->series.study_instance_uid, &started).ok());
  done = WaitForEnd(started[0].id());
  EXPECT_EQ(done.state(), v1::IMPORT_STATE_SUCCEEDED);
  EXPECT_THAT(done.message(), HasSubstr("already in the dataset"));
  EXPECT_EQ(InstanceFetches(), fetches);
  EXPECT_EQ(Studies().size(), 2u);
}

TEST_F(ImportTest, AQueryImportsEveryMatchingStudy) {
  absl::StatusOr<PhantomStudy> a = SmallPhantomStudy(72, 0, false);
  absl::StatusOr<PhantomStudy> b = SmallPhantomStudy(72, 1, false);
  ASSERT_TRUE(a.ok() && b.ok());
  PutIntoOrthanc(*a);
  PutIntoOrthanc(*b);
  StartMiseg();
  ASSERT_TRUE(client_->CreateDataset("cardiac").ok());
  std::vector<v1::Import> started;
  ASSERT_TRUE(StartImport("orthanc", v1::STUDY_ROLE_UNLABELED, "", &started, "Modality=MR").ok());
  ASSERT_EQ(started.size(), 2u);
  for (const v1::Import& i : started) {
    EXPECT_EQ(WaitForEnd(i.id()).state(), v1::IMPORT_STATE_SUCCEEDED);
  }
  EXPECT_EQ(Studies().size(), 2u);
  // A query key the API does not take is refused before anything starts.
  grpc::Status bad = StartImport("orthanc", v1::STUDY_ROLE_UNLABELED, "", &started, "Foo=1");
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad.error_message(), HasSubstr("Foo"));
}

TEST_F(ImportTest, LabeledStudyByCGet) {
  absl::StatusOr<PhantomStudy> labeled = SmallPhantomStudy(73, 0, true);
  ASSERT_TRUE(labeled.ok());
  PutIntoOrthanc(*labeled);
  StartMiseg();
  ASSERT_TRUE(client_->CreateDataset("cardiac").ok());
  std::vector<v1::Import> started;
  ASSERT_TRUE(StartImport("pacs", v1::STUDY_ROLE_LABELED, labeled->series.study_instance_uid,
                          &started).ok());
  v1::Import done = WaitForEnd(started[0].id());
  EXPECT_EQ(done.state(), v1::IMPORT_STATE_SUCCEEDED) << done.error();
  EXPECT_EQ(done.instances_fetched(), static_cast<int64_t>(labeled->image_files.size()) + 1);
  std::vector<v1::Study> studies = Studies();
  ASSERT_EQ(studies.size(), 1u);
  EXPECT_EQ(studies[0].role(), v1::STUDY_ROLE_LABELED);
  EXPECT_FALSE(studies[0].segmentation_sop_instance_uid().empty());
  EXPECT_TRUE(InstanceFetches().empty());  // DICOM, not DICOMweb
  // A query by C-FIND (study level, Modality as ModalitiesInStudy) finds the same study,
  // whose import then finds everything in the dataset already.
  ASSERT_TRUE(StartImport("pacs", v1::STUDY_ROLE_LABELED, "", &started, "Modality=MR").ok());
  ASSERT_EQ(started.size(), 1u);
  EXPECT_EQ(started[0].study_instance_uid(), labeled->series.study_instance_uid);
  done = WaitForEnd(started[0].id());
  EXPECT_EQ(done.state(), v1::IMPORT_STATE_SUCCEEDED) << done.error();
  EXPECT_THAT(done.message(), HasSubstr("already in the dataset"));
  EXPECT_EQ(Studies().size(), 1u);
}

TEST_F(ImportTest, SurvivesASigkillHalfWayWithoutFetchingTwice) {
  absl::StatusOr<PhantomStudy> labeled = SmallPhantomStudy(74, 0, true);
  ASSERT_TRUE(labeled.ok());
  ASSERT_GE(labeled->image_files.size(), 4u);
  PutIntoOrthanc(*labeled);
  // The hook stops the importer after 3 instances (the SEG and two images) are recorded.
  StartMiseg({"--import_test_pause_after=3"});
  ASSERT_TRUE(client_->CreateDataset("cardiac").ok());
  std::vector<v1::Import> started;
  ASSERT_TRUE(StartImport("orthanc", v1::STUDY_ROLE_LABELED,
                          labeled->series.study_instance_uid, &started).ok());
  ASSERT_TRUE(miseg_->WaitForLog("import test hook: paused after 3 instances", kWait))
      << miseg_->log();
  v1::Import half = GetImport(started[0].id());
  EXPECT_EQ(half.state(), v1::IMPORT_STATE_RUNNING);
  EXPECT_EQ(half.instances_fetched(), 3);
  EXPECT_EQ(InstanceFetches().size(), 3u);
  miseg_->Kill();

  StartMiseg();
  v1::Import done = WaitForEnd(started[0].id());
  EXPECT_EQ(done.state(), v1::IMPORT_STATE_SUCCEEDED) << done.error();
  EXPECT_EQ(done.attempts(), 2);
  const size_t total = labeled->image_files.size() + 1;
  EXPECT_EQ(done.instances_fetched(), static_cast<int64_t>(total));
  std::map<std::string, int> fetches = InstanceFetches();
  EXPECT_EQ(fetches.size(), total);
  for (const auto& [sop, count] : fetches) EXPECT_EQ(count, 1) << sop << " fetched twice";
  ASSERT_EQ(Studies().size(), 1u);
  EXPECT_EQ(Studies()[0].instances(), static_cast<int>(labeled->image_files.size()));
}

TEST_F(ImportTest, AGracefulStopRequeuesARunningImport) {
  absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(77, 0, false);
  ASSERT_TRUE(study.ok());
  PutIntoOrthanc(*study);
  StartMiseg({"--import_test_pause_after=2"});
  ASSERT_TRUE(client_->CreateDataset("cardiac").ok());
  std::vector<v1::Import> started;
  ASSERT_TRUE(StartImport("orthanc", v1::STUDY_ROLE_UNLABELED,
                          study->series.study_instance_uid, &started).ok());
  ASSERT_TRUE(miseg_->WaitForLog("import test hook: paused after 2 instances", kWait))
      << miseg_->log();
  ASSERT_EQ(miseg_->Terminate(), 0) << miseg_->log();

  StartMiseg();
  v1::Import done = WaitForEnd(started[0].id());
  EXPECT_EQ(done.state(), v1::IMPORT_STATE_SUCCEEDED) << done.error();
  EXPECT_EQ(done.attempts(), 2);
  std::map<std::string, int> fetches = InstanceFetches();
  EXPECT_EQ(fetches.size(), study->image_files.size());
  for (const auto& [sop, count] : fetches) EXPECT_EQ(count, 1) << sop << " fetched twice";
}

// The CLI end to end: an import cancelled mid-way (held by the test hook after 2 instances)
// keeps what it fetched; running `miseg import` again retries it without fetching those again.
TEST_F(ImportTest, TheCliCancelsAnImportMidWayAndRetriesIt) {
  absl::StatusOr<PhantomStudy> labeled = SmallPhantomStudy(76, 0, true);
  ASSERT_TRUE(labeled.ok());
  PutIntoOrthanc(*labeled);
  StartMiseg({"--import_test_pause_after=2"});
  ASSERT_TRUE(client_->CreateDataset("cardiac").ok());
  const std::string cli = absl::StrCat(MISEG_CLI_BINARY, " --address ", miseg_->address(), " ");
  const std::string import_command =
      absl::StrCat(cli, "import cardiac --from orthanc --study ",
                   labeled->series.study_instance_uid, " --role labeled 2>&1");
  auto [rc, output] = RunCommand(import_command);
  ASSERT_EQ(rc, 0) << output;
  EXPECT_THAT(output, HasSubstr("import 1 "));
  ASSERT_TRUE(miseg_->WaitForLog("import test hook: paused after 2 instances", kWait))
      << miseg_->log();

  std::tie(rc, output) = RunCommand(cli + "imports cancel 1 2>&1");
  ASSERT_EQ(rc, 0) << output;
  v1::Import cancelled = WaitForEnd(1, "cancelled");
  EXPECT_EQ(cancelled.state(), v1::IMPORT_STATE_CANCELLED);
  EXPECT_EQ(cancelled.instances_fetched(), 2);
  EXPECT_EQ(InstanceFetches().size(), 2u);
  std::tie(rc, output) = RunCommand(cli + "imports list 2>&1");
  ASSERT_EQ(rc, 0) << output;
  EXPECT_THAT(output, HasSubstr("cancelled"));
  EXPECT_THAT(output, HasSubstr(absl::StrCat("2/", labeled->image_files.size() + 1)));
  std::tie(rc, output) = RunCommand(cli + "imports cancel 1 2>&1");
  EXPECT_NE(rc, 0);
  EXPECT_THAT(output, HasSubstr("already finished"));

  std::tie(rc, output) = RunCommand(import_command);
  ASSERT_EQ(rc, 0) << output;
  EXPECT_THAT(output, HasSubstr("import 1 queued"));
  v1::Import done = WaitForEnd(1);
  EXPECT_EQ(done.state(), v1::IMPORT_STATE_SUCCEEDED) << done.error();
  std::map<std::string, int> fetches = InstanceFetches();
  EXPECT_EQ(fetches.size(), labeled->image_files.size() + 1);
  for (const auto& [sop, count] : fetches) EXPECT_EQ(count, 1) << sop << " fetched twice";
  std::tie(rc, output) = RunCommand(cli + "imports show 1 2>&1");
  ASSERT_EQ(rc, 0) << output;
  EXPECT_THAT(output, HasSubstr("succeeded"));
  EXPECT_THAT(output, HasSubstr("stored series " + labeled->series.series_instance_uid));
  std::tie(rc, output) = RunCommand(cli + "imports sources 2>&1");
  EXPECT_THAT(output, HasSubstr("ORTHANC@127.0.0.1"));
}

TEST_F(ImportTest, ASourceThatIsDownFailsClearlyAndIsRetriedOnceUp) {
  absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(75, 0, false);
  ASSERT_TRUE(study.ok());
  PutIntoOrthanc(*study);
  StartMiseg();
  ASSERT_TRUE(client_->CreateDataset("cardiac").ok());
  ASSERT_TRUE(orthanc_->Stop().ok());
  std::vector<v1::Import> started;
  ASSERT_TRUE(StartImport("orthanc", v1::STUDY_ROLE_UNLABELED,
                          study->series.study_instance_uid, &started).ok());
  v1::Import failed = WaitForEnd(started[0].id(), "failed");
  EXPECT_EQ(failed.state(), v1::IMPORT_STATE_FAILED);
  EXPECT_THAT(failed.error(), HasSubstr("source 'orthanc'"));
  EXPECT_THAT(failed.error(), HasSubstr(orthanc_->base_url()));
  EXPECT_THAT(failed.error(), HasSubstr("connect"));

  ASSERT_TRUE(orthanc_->Restart().ok());
  std::vector<v1::Import> retried;
  ASSERT_TRUE(StartImport("orthanc", v1::STUDY_ROLE_UNLABELED,
                          study->series.study_instance_uid, &retried).ok());
  ASSERT_EQ(retried.size(), 1u);
  EXPECT_EQ(retried[0].id(), started[0].id());  // the same import, queued again
  ASSERT_TRUE(miseg_->WaitForLog(absl::StrCat("import ", started[0].id(), ": succeeded"), kWait))
      << miseg_->log();
  EXPECT_EQ(GetImport(started[0].id()).attempts(), 2);
  EXPECT_EQ(Studies().size(), 1u);
}

TEST_F(ImportTest, UnknownSourcesAndBadFilesAreRefused) {
  StartMiseg();
  ASSERT_TRUE(client_->CreateDataset("cardiac").ok());
  std::vector<v1::Import> started;
  grpc::Status unknown = StartImport("nowhere", v1::STUDY_ROLE_UNLABELED, "1.2.3", &started);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(unknown.error_message(), HasSubstr("nowhere"));
  // A study the source does not hold fails with the reason.
  ASSERT_TRUE(StartImport("orthanc", v1::STUDY_ROLE_UNLABELED, "1.2.3.4", &started).ok());
  v1::Import failed = WaitForEnd(started[0].id(), "failed");
  EXPECT_THAT(failed.error(), HasSubstr("1.2.3.4"));

  const std::string bad = dir_.path() + "/bad.json";
  std::ofstream(bad) << R"({"sources": [{"name": "x", "dicomweb": {"url": "ftp://x",
                          "bearerTokenFile": "/nonexistent"}}]})";
  auto [status, output] = ServerProcess::RunToExit(
      {"--data_dir=" + dir_.path() + "/other", "--import_sources=" + bad});
  EXPECT_EQ(status, 2);
  EXPECT_THAT(output, HasSubstr("source 'x' needs an http(s) url"));
}

}  // namespace
}  // namespace miseg::testing

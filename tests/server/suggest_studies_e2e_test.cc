// Active learning end to end (issue 14), against a real miseg-server: without an active
// model SuggestStudies is refused; after a tiny job it scores every unlabeled study, answers
// the best ones ranked, stores every score with the model it came from, and ListStudies and
// the CLI (`miseg studies suggest`, `miseg studies list`) show them.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "tests/server/api_client.h"
#include "tests/server/child_process.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kUnlabeled = 4;

class SuggestStudiesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start(dir_.path() + "/data", {});
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
    api_ = std::make_unique<ApiClient>(server_->address());
    client::ConnectionOptions options;
    options.address = server_->address();
    client_ = *client::Client::Connect(options);
    ASSERT_TRUE(client_->CreateDataset("d", CardiacClasses(), "MR").ok());
    for (int i = 0; i < 2 + kUnlabeled; ++i) {
      const bool labeled = i < 2;
      absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(11, i, labeled);
      ASSERT_TRUE(study.ok()) << study.status();
      v1::UploadResponse response;
      ASSERT_TRUE(api_->Upload("d", labeled ? v1::STUDY_ROLE_LABELED : v1::STUDY_ROLE_UNLABELED,
                               labeled ? LabeledFiles(*study) : study->image_files, &response)
                      .ok());
      ASSERT_EQ(response.refused_instances(), 0) << response.DebugString();
    }
  }

  grpc::Status Suggest(const std::string& dataset, int count, v1::SuggestStudiesResponse* out) {
    v1::SuggestStudiesRequest request;
    request.set_dataset(dataset);
    request.set_count(count);
    return api_->datasets->SuggestStudies(api_->Context().get(), request, out);
  }

  // `miseg ARGS` against this server: {exit status, output}. The build's CLI, or
  // MISEG_TEST_CLI_BINARY (a copy a rebuild in a shared build folder cannot replace).
  std::pair<int, std::string> Cli(const std::string& args) {
    const char* cli = std::getenv("MISEG_TEST_CLI_BINARY");
    return RunCommand(absl::StrCat("MISEG_ADDRESS=", server_->address(), " ",
                                   cli != nullptr && *cli != '\0' ? cli : MISEG_CLI_BINARY, " ",
                                   args, " 2>&1"));
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<ApiClient> api_;
  std::unique_ptr<client::Client> client_;
};

TEST_F(SuggestStudiesTest, RefusesBadRequestsWithClearCodes) {
  v1::SuggestStudiesResponse response;
  grpc::Status status = Suggest("d", 3, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("no active model"));
  EXPECT_EQ(Suggest("missing", 3, &response).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Suggest("d", 0, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Suggest("d", 10001, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Suggest("", 3, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const auto [code, output] = Cli("studies suggest d --count 0");
  EXPECT_NE(code, 0);
  EXPECT_THAT(output, HasSubstr("1..10000"));
}

TEST_F(SuggestStudiesTest, RanksStoresAndShowsTheUnlabeledStudies) {
  absl::StatusOr<v1::Job> job = client_->StartJob("d", TinyHyperparameters(6, 3));
  ASSERT_TRUE(job.ok()) << job.status();
  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(api_->Watch(job->id(), &events).ok());
  absl::StatusOr<v1::Dataset> dataset = client_->GetDataset("d");
  ASSERT_TRUE(dataset.ok());
  ASSERT_NE(dataset->active_model_id(), 0) << server_->log();

  v1::SuggestStudiesResponse response;
  grpc::Status status = Suggest("d", 3, &response);
  ASSERT_TRUE(status.ok()) << status.error_message() << server_->log();
  EXPECT_EQ(response.model_id(), dataset->active_model_id());
  EXPECT_EQ(response.scored_studies(), kUnlabeled);
  ASSERT_EQ(response.studies_size(), 3);
  for (int i = 0; i < response.studies_size(); ++i) {
    const v1::Study& s = response.studies(i);
    EXPECT_EQ(s.role(), v1::STUDY_ROLE_UNLABELED);
    EXPECT_EQ(s.priority().model_id(), dataset->active_model_id());
    EXPECT_GT(s.priority().scored_unix_ms(), 0);
    EXPECT_GT(s.priority().disagreement(), 0.0);
    EXPECT_GE(s.priority().score(), 0.0);
    EXPECT_LE(s.priority().score(), 2.0);
    if (i > 0) EXPECT_GE(response.studies(i - 1).priority().score(), s.priority().score());
  }

  // Stored: every unlabeled study has its score, the labeled ones none; the answered three
  // are the three best of the four.
  absl::StatusOr<std::vector<v1::Study>> listed = client_->ListStudies("d", v1::STUDY_ROLE_UNSPECIFIED);
  ASSERT_TRUE(listed.ok());
  std::map<std::string, double> stored;
  for (const v1::Study& s : *listed) {
    EXPECT_EQ(s.has_priority(), s.role() == v1::STUDY_ROLE_UNLABELED) << s.DebugString();
    if (s.has_priority()) stored[s.series_instance_uid()] = s.priority().score();
  }
  ASSERT_EQ(stored.size(), static_cast<size_t>(kUnlabeled));
  double lowest_answered = 2.0;
  for (const v1::Study& s : response.studies()) {
    EXPECT_EQ(stored[s.series_instance_uid()], s.priority().score());
    lowest_answered = std::min(lowest_answered, s.priority().score());
  }
  for (const auto& [uid, score] : stored) {
    const bool answered = std::any_of(response.studies().begin(), response.studies().end(),
                                      [&](const v1::Study& s) { return s.series_instance_uid() == uid; });
    if (!answered) EXPECT_LE(score, lowest_answered);
  }

  // The CLI: suggest prints the ranking best first; list shows the stored score.
  const auto [code, suggested] = Cli("studies suggest d --count 2 -o wide");
  ASSERT_EQ(code, 0) << suggested;
  EXPECT_THAT(suggested, HasSubstr("RANK"));
  EXPECT_THAT(suggested, HasSubstr(absl::StrCat(kUnlabeled, " unlabeled studies scored by model ",
                                                dataset->active_model_id())));
  const size_t first = suggested.find(response.studies(0).series_instance_uid());
  const size_t second = suggested.find(response.studies(1).series_instance_uid());
  ASSERT_NE(first, std::string::npos) << suggested;
  ASSERT_NE(second, std::string::npos) << suggested;
  EXPECT_LT(first, second) << suggested;
  const auto [list_code, list] = Cli("studies list d -o wide");
  ASSERT_EQ(list_code, 0) << list;
  EXPECT_THAT(list, HasSubstr("PRIORITY"));
  for (const std::string& line : std::vector<std::string>(absl::StrSplit(list, '\n'))) {
    for (const auto& [uid, score] : stored) {
      if (line.find(uid) != std::string::npos) {
        EXPECT_THAT(line, HasSubstr(absl::StrFormat("%.3f", score))) << list;
      }
    }
  }
}

}  // namespace
}  // namespace miseg::testing

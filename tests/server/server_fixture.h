// The fixture of the tests that run a real miseg-server on a data directory of their own
// (recovery, disk full, damaged data, workers): starting and restarting the server, jobs on
// dataset "d", listings; and what they read of a stopped server's data directory. Header
// only: it needs gtest, which the test support library (also linked by miseg-chaos) does not.
#ifndef MISEG_TESTS_SERVER_SERVER_FIXTURE_H_
#define MISEG_TESTS_SERVER_SERVER_FIXTURE_H_

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "tests/server/api_client.h"
#include "tests/server/child_process.h"
#include "tests/server/server_process.h"

namespace miseg::testing {

// The regular files under dir (recursively), sorted by path; none where dir does not exist.
inline std::vector<std::string> FilesUnder(const std::string& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  for (std::filesystem::recursive_directory_iterator it(dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    if (it->is_regular_file(ec)) found.push_back(it->path().string());
  }
  std::sort(found.begin(), found.end());
  return found;
}

// The model file of a job in a data directory (models/job-<id>-<sha256>.model): its name
// after the job's part, "<sha256>.model"; empty where the job has none.
inline std::string ModelFileOf(const std::string& data, int64_t job_id) {
  for (const std::string& path : FilesUnder(data + "/models")) {
    const std::string name = std::filesystem::path(path).filename().string();
    if (absl::StartsWith(name, absl::StrCat("job-", job_id, "-"))) {
      return name.substr(name.find('-', 4) + 1);
    }
  }
  return "";
}

class ServerTest : public ::testing::Test {
 protected:
  // data_below: the server's data directory, below the test's temporary directory.
  explicit ServerTest(const std::string& data_below = "data")
      : data_(absl::StrCat(dir_.path(), "/", data_below)) {}

  // Starts the server on data_ with these flags (stopping the one running, if any) and
  // connects client_ to it.
  void Start(const std::vector<std::string>& flags = {}) {
    server_.reset();
    absl::StatusOr<std::unique_ptr<ServerProcess>> started = ServerProcess::Start(data_, flags);
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
    client_ = std::make_unique<ApiClient>(server_->address());
  }

  // Starts a job on dataset "d"; its id.
  int64_t StartJob(const v1::Hyperparameters& h) {
    v1::StartJobRequest request;
    request.set_dataset("d");
    *request.mutable_hyperparameters() = h;
    v1::Job job;
    auto context = client_->Context();
    const grpc::Status status = client_->training->StartJob(context.get(), request, &job);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return job.id();
  }

  v1::Job GetJob(int64_t id) {
    v1::GetJobRequest request;
    request.set_id(id);
    v1::Job job;
    auto context = client_->Context();
    EXPECT_TRUE(client_->training->GetJob(context.get(), request, &job).ok());
    return job;
  }

  std::vector<v1::Study> Studies(const std::string& dataset = "d") {
    v1::ListStudiesRequest request;
    request.set_dataset(dataset);
    v1::ListStudiesResponse response;
    auto context = client_->Context();
    EXPECT_TRUE(client_->datasets->ListStudies(context.get(), request, &response).ok());
    return {response.studies().begin(), response.studies().end()};
  }

  TempDir dir_;
  const std::string data_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<ApiClient> client_;
};

}  // namespace miseg::testing

#endif  // MISEG_TESTS_SERVER_SERVER_FIXTURE_H_

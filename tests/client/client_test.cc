// The C++ client library (client/client.h) against a real miseg-server: the streamed upload
// entry point (UploadFrom), which sends files as its source produces them.
#include "client/client.h"

#include <gtest/gtest.h>

#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start(dir_.path() + "/data");
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
    client::ConnectionOptions options;
    options.address = server_->address();
    absl::StatusOr<std::unique_ptr<client::Client>> connected = client::Client::Connect(options);
    ASSERT_TRUE(connected.ok()) << connected.status();
    client_ = *std::move(connected);
    ASSERT_TRUE(client_->CreateDataset("d", PhantomClassNames(), "MR").ok());
    absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(7, 0, false);
    ASSERT_TRUE(study.ok()) << study.status();
    files_ = std::move(study->image_files);
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<client::Client> client_;
  std::vector<DicomBuffer> files_;
};

TEST_F(ClientTest, UploadFromSendsEachFileAsTheSourceProducesIt) {
  size_t next = 0;
  DicomBuffer current;  // the only file the source holds
  absl::StatusOr<v1::UploadResponse> response = client_->UploadFrom(
      "d", v1::STUDY_ROLE_UNLABELED, [&]() -> absl::StatusOr<const DicomBuffer*> {
        if (next == files_.size()) return nullptr;
        current = files_[next++];
        return &current;
      });
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(next, files_.size());
  EXPECT_EQ(response->stored_instances(), static_cast<int64_t>(files_.size()));
  ASSERT_EQ(response->stored_size(), 1);
  EXPECT_EQ(response->stored(0).instances(), static_cast<int>(files_.size()));
  ASSERT_EQ(response->results_size(), static_cast<int>(files_.size()));
  for (size_t i = 0; i < files_.size(); ++i) {
    EXPECT_EQ(response->results(static_cast<int>(i)).file_name(), files_[i].name);
  }
}

TEST_F(ClientTest, UploadFromSourceErrorCancelsTheStreamAndNothingIsStored) {
  size_t next = 0;
  absl::StatusOr<v1::UploadResponse> response = client_->UploadFrom(
      "d", v1::STUDY_ROLE_UNLABELED, [&]() -> absl::StatusOr<const DicomBuffer*> {
        if (next == 2) return absl::DataLossError("the disk went away");
        return &files_[next++];
      });
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDataLoss) << response.status();
  EXPECT_EQ(response.status().message(), "the disk went away");
  absl::StatusOr<std::vector<v1::Study>> studies =
      client_->ListStudies("d", v1::STUDY_ROLE_UNSPECIFIED);
  ASSERT_TRUE(studies.ok()) << studies.status();
  EXPECT_TRUE(studies->empty());
  // The same files sent whole afterwards are stored: the cancelled stream left nothing.
  absl::StatusOr<v1::UploadResponse> again = client_->Upload("d", v1::STUDY_ROLE_UNLABELED, files_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->stored_instances(), static_cast<int64_t>(files_.size()));
}

}  // namespace
}  // namespace miseg::testing

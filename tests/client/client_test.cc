// The C++ client library (client/client.h) against a real miseg-server: the streamed upload
// entry point (UploadFrom), which sends files as its source produces them.
#include "client/client.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "miseg/v1/miseg.grpc.pb.h"

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

// Issue 18: a reply that does not parse (a string field holding bytes that are not UTF-8, as
// a server before the fix sent) is a status, not an abort. gRPC's synchronous ClientWriter
// asserted in Finish (cq_.Pluck(&finish_ops_)) when its response failed to parse.
class NonUtf8Datasets final : public v1::DatasetService::Service {
 public:
  grpc::Status Upload(grpc::ServerContext* context, grpc::ServerReader<v1::UploadRequest>* reader,
                      v1::UploadResponse* response) override {
    v1::UploadRequest request;
    while (reader->Read(&request)) {
    }
    response->add_stored()->set_study_instance_uid("1.2.\xFF\xFE");  // serialises; won't parse
    response->set_stored_instances(1);
    return grpc::Status::OK;
  }
};

TEST(ClientBadReply, UploadReplyThatDoesNotParseIsAStatus) {
  NonUtf8Datasets service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  client::ConnectionOptions options;
  options.address = absl::StrCat("127.0.0.1:", port);
  absl::StatusOr<std::unique_ptr<client::Client>> connected = client::Client::Connect(options);
  ASSERT_TRUE(connected.ok()) << connected.status();
  absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(3, 0, false);
  ASSERT_TRUE(study.ok()) << study.status();
  std::vector<DicomBuffer> files = std::move(study->image_files);
  size_t next = 0;
  absl::StatusOr<v1::UploadResponse> uploaded = (*connected)->UploadFrom(
      "d", v1::STUDY_ROLE_UNLABELED,
      [&]() -> absl::StatusOr<const DicomBuffer*> {
        return next < files.size() ? &files[next++] : nullptr;
      },
      /*total_bytes=*/0, nullptr);
  ASSERT_FALSE(uploaded.ok());
  EXPECT_EQ(uploaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(uploaded.status().message()).find("could not be parsed"),
            std::string::npos);
  server->Shutdown();
}

}  // namespace
}  // namespace miseg::testing

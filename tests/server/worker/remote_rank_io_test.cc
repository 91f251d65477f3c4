// RemoteRankIo against a fake coordinator (a real gRPC server in the test): study files are
// verified against their SHA-256 before the trainer or the cache sees them, served from the
// cache the second time, fetched again when the cached copy rots; checkpoints land whole;
// artifacts go up as a header and 1 MiB chunks; the rendezvous wait ends on ready, stop or
// timeout; every call carries the bearer token; gRPC errors keep their code and message.
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/file_store.h"
#include "server/worker/remote_rank_io.h"
#include "tests/server/child_process.h"
#include "tests/server/worker/fake_coordinator.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;
using ::testing::Each;
using ::testing::HasSubstr;

int CountFiles(const fs::path& dir) {
  int count = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file()) ++count;
  }
  return count;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class RemoteRankIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<FileStore> cache = FileStore::Open(dir_.path() + "/cache");
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = std::make_unique<FileStore>(*std::move(cache));
    channel_ = fake_.Channel();
    stub_ = v1::WorkerService::NewStub(channel_);
    RemoteRankIoOptions options;
    options.token = "worker-token";
    options.rendezvous_poll = absl::Milliseconds(5);
    io_ = std::make_unique<RemoteRankIo>(stub_.get(), cache_.get(), options);
    rank_.set_job_id(7);
    rank_.set_attempt(3);
    rank_.set_rank(1);
    rank_.set_world_size(2);
    rank_.set_device("cpu");
  }

  v1::RankFile File(const std::string& bytes) const {
    v1::RankFile file;
    file.set_sha256(Sha256Hex(bytes));
    file.set_size_bytes(static_cast<int64_t>(bytes.size()));
    return file;
  }
  fs::path CachePath(const std::string& sha) const {
    return fs::path(dir_.path()) / "cache" / "objects" / sha.substr(0, 2) / sha;
  }
  int Calls(const std::string& method) {
    absl::MutexLock lock(&fake_.mu);
    return fake_.calls[method];
  }

  testing::TempDir dir_;
  testing::FakeCoordinator fake_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::unique_ptr<FileStore> cache_;
  std::unique_ptr<RemoteRankIo> io_;
  v1::RankAssignment rank_;
};

TEST_F(RemoteRankIoTest, BytesThatDoNotMatchTheirHashAreDataLossAndNeverCached) {
  const std::string good(100000, 'g');
  const v1::RankFile file = File(good);
  std::string bad = good;
  bad[5000] = 'b';  // same size, one byte off
  fake_.ServeObject(file.sha256(), bad);

  absl::StatusOr<std::string> read = io_->ReadObject(rank_, file);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << read.status();
  EXPECT_EQ(read.status().message(),
            "object " + file.sha256() + " from the coordinator does not match its SHA-256");
  EXPECT_FALSE(fs::exists(CachePath(file.sha256())));
  EXPECT_EQ(CountFiles(fs::path(dir_.path()) / "cache"), 0);  // nor a staged leftover

  // The coordinator sends the right bytes next time: fetched again, not served from cache.
  fake_.ServeObject(file.sha256(), good);
  read = io_->ReadObject(rank_, file);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, good);
  EXPECT_EQ(Calls("FetchObject"), 2);
}

TEST_F(RemoteRankIoTest, MatchingBytesAreCachedAndTheSecondReadComesFromTheCache) {
  const std::string bytes(300000, 'x');  // several chunks
  const v1::RankFile file = File(bytes);
  fake_.ServeObject(file.sha256(), bytes);

  absl::StatusOr<std::string> first = io_->ReadObject(rank_, file);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, bytes);
  EXPECT_EQ(ReadFile(CachePath(file.sha256())), bytes);

  absl::StatusOr<std::string> second = io_->ReadObject(rank_, file);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*second, bytes);
  EXPECT_EQ(Calls("FetchObject"), 1);
}

TEST_F(RemoteRankIoTest, ACorruptCachedCopyIsDetectedAndFetchedAgain) {
  const std::string bytes(50000, 'c');
  const v1::RankFile file = File(bytes);
  fake_.ServeObject(file.sha256(), bytes);
  ASSERT_TRUE(io_->ReadObject(rank_, file).ok());
  ASSERT_EQ(Calls("FetchObject"), 1);

  // The disk flips a byte in the cached copy (same size).
  std::string rotten = bytes;
  rotten[10] = 'r';
  { std::ofstream(CachePath(file.sha256()), std::ios::binary | std::ios::trunc) << rotten; }

  absl::StatusOr<std::string> read = io_->ReadObject(rank_, file);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, bytes);
  EXPECT_EQ(Calls("FetchObject"), 2);
  EXPECT_EQ(ReadFile(CachePath(file.sha256())), bytes);  // the cache is healed
}

TEST_F(RemoteRankIoTest, AnObjectLargerThanItsSpecSaysIsRefused) {
  const std::string bytes(1 << 20, 'L');
  v1::RankFile file = File(bytes);
  file.set_size_bytes(1000);  // the spec says 1000 bytes; the stream goes on for a MiB
  fake_.ServeObject(file.sha256(), bytes);
  absl::StatusOr<std::string> read = io_->ReadObject(rank_, file);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << read.status();
  EXPECT_THAT(read.status().message(), HasSubstr("larger than the 1000 bytes its spec names"));
  EXPECT_EQ(CountFiles(fs::path(dir_.path()) / "cache"), 0);
}

TEST_F(RemoteRankIoTest, ANameThatIsNotAHashNeverBecomesAPath) {
  v1::RankFile file;
  file.set_sha256("../../etc/passwd");
  absl::StatusOr<std::string> read = io_->ReadObject(rank_, file);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << read.status();
  EXPECT_EQ(Calls("FetchObject"), 0);
}

TEST_F(RemoteRankIoTest, TheCoordinatorsErrorKeepsItsCodeAndMessage) {
  const v1::RankFile file = File("abc");
  fake_.FailMethod("FetchObject",
                   grpc::Status(grpc::StatusCode::ABORTED, "attempt 3 of job 7 is over"));
  absl::StatusOr<std::string> read = io_->ReadObject(rank_, file);
  EXPECT_EQ(read.status(), absl::AbortedError("attempt 3 of job 7 is over"));
  EXPECT_EQ(CountFiles(fs::path(dir_.path()) / "cache"), 0);
}

TEST_F(RemoteRankIoTest, EveryCallCarriesTheBearerToken) {
  const std::string bytes = "token check";
  fake_.ServeObject(Sha256Hex(bytes), bytes);
  ASSERT_TRUE(io_->ReadObject(rank_, File(bytes)).ok());
  ASSERT_TRUE(io_->AwaitRendezvous(rank_, absl::Seconds(10), nullptr).ok());
  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.authorization.size(), 2u);
  EXPECT_THAT(fake_.authorization, Each(std::string("Bearer worker-token")));
}

TEST_F(RemoteRankIoTest, TheCheckpointIsWrittenWhole) {
  const std::string bytes(700000, 'k');
  fake_.set_checkpoint(bytes);
  const std::string path = dir_.path() + "/checkpoint.pt";
  ASSERT_TRUE(io_->FetchCheckpoint(rank_, path).ok());
  EXPECT_EQ(ReadFile(path), bytes);
  EXPECT_EQ(CountFiles(dir_.path() + std::string("/cache")), 0);
  // Only the checkpoint (and the empty cache) in the directory: no temporary left.
  int entries = 0;
  for (const auto& entry : fs::directory_iterator(dir_.path())) entries += entry.is_regular_file();
  EXPECT_EQ(entries, 1);

  // A failed fetch leaves the earlier file as it was.
  fake_.FailMethod("FetchCheckpoint", grpc::Status(grpc::StatusCode::NOT_FOUND, "no checkpoint"));
  EXPECT_EQ(io_->FetchCheckpoint(rank_, path), absl::NotFoundError("no checkpoint"));
  EXPECT_EQ(ReadFile(path), bytes);
}

TEST_F(RemoteRankIoTest, TheModelGoesUpAsAHeaderAndMebibyteChunks) {
  const std::string bytes((5 << 20) / 2, 'm');  // 2.5 MiB: three chunks
  const std::string path = dir_.path() + "/model.pt";
  { std::ofstream(path, std::ios::binary) << bytes; }
  v1::ValidationEvent validation;
  validation.set_step(40);
  validation.set_mean_dice(0.75);
  absl::StatusOr<int64_t> model = io_->CommitModel(rank_, 40, path, validation);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(*model, 42);
  ASSERT_TRUE(io_->CommitCheckpoint(rank_, 20, path).ok());

  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.uploads.size(), 2u);
  const testing::Upload& up = fake_.uploads[0];
  EXPECT_TRUE(up.header.is_model());
  EXPECT_EQ(up.header.step(), 40);
  EXPECT_EQ(up.header.size_bytes(), static_cast<int64_t>(bytes.size()));
  EXPECT_EQ(up.header.rank().job_id(), 7);
  EXPECT_EQ(up.header.rank().attempt(), 3);
  EXPECT_EQ(up.header.validation().mean_dice(), 0.75);
  EXPECT_EQ(up.chunks, 3);
  EXPECT_EQ(up.bytes, bytes);
  EXPECT_FALSE(fake_.uploads[1].header.is_model());
  EXPECT_EQ(fake_.uploads[1].header.step(), 20);
}

TEST_F(RemoteRankIoTest, TheRendezvousWaitEndsOnReadyStopOrTimeout) {
  fake_.set_rendezvous(/*not_ready=*/3, "10.0.0.5", 29500);
  absl::StatusOr<RendezvousAddress> address =
      io_->AwaitRendezvous(rank_, absl::Seconds(30), nullptr);
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(address->host, "10.0.0.5");
  EXPECT_EQ(address->port, 29500);
  EXPECT_EQ(Calls("GetRendezvous"), 4);

  fake_.set_rendezvous(/*not_ready=*/1000000, "", 0);
  std::atomic<bool> stop{true};
  EXPECT_EQ(io_->AwaitRendezvous(rank_, absl::Seconds(30), &stop).status().code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(io_->AwaitRendezvous(rank_, absl::Milliseconds(50), nullptr).status().code(),
            absl::StatusCode::kDeadlineExceeded);

  // A refusal (the attempt is over) ends the wait at once.
  fake_.FailMethod("GetRendezvous", grpc::Status(grpc::StatusCode::ABORTED, "attempt is over"));
  EXPECT_EQ(io_->AwaitRendezvous(rank_, absl::Seconds(30), nullptr).status(),
            absl::AbortedError("attempt is over"));
}

}  // namespace
}  // namespace miseg

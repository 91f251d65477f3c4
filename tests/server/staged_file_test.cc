// Tests of the file store's staging (StagedFile, FileStore::Stage and Commit in
// server/store/file_store): a file received in pieces is hashed as it is written, lands in
// objects/ by rename when committed, and leaves nothing behind when it is not.
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "server/store/file_store.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;

class StagedFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "miseg_staged.XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr) << pattern;
    dir_ = pattern;
    Reopen();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void Reopen() {
    auto files = FileStore::Open((fs::path(dir_) / "files").string());
    ASSERT_TRUE(files.ok()) << files.status();
    files_ = std::make_unique<FileStore>(*std::move(files));
  }
  std::string Staging() const { return (fs::path(dir_) / "files" / "staging").string(); }
  int StagedCount() const {
    int n = 0;
    for (const auto& entry : fs::directory_iterator(Staging())) {
      (void)entry;
      ++n;
    }
    return n;
  }
  std::unique_ptr<StagedFile> Stage(const std::vector<std::string>& pieces) {
    auto staged = files_->Stage();
    EXPECT_TRUE(staged.ok()) << staged.status();
    for (const std::string& piece : pieces) EXPECT_TRUE((*staged)->Append(piece).ok());
    return *std::move(staged);
  }

  std::string dir_;
  std::unique_ptr<FileStore> files_;
};

TEST_F(StagedFileTest, HashIsTheBytesHashAndCommitPlacesTheObject) {
  const std::string a("DICM\0\x01 first piece", 19), b(70000, 'x'), c("last");
  std::unique_ptr<StagedFile> file = Stage({a, b, c});
  EXPECT_EQ(file->size(), static_cast<int64_t>(a.size() + b.size() + c.size()));
  EXPECT_TRUE(file->hash().empty());
  EXPECT_EQ(file->path().rfind(Staging(), 0), 0u) << file->path();
  ASSERT_TRUE(file->Finish().ok());
  EXPECT_EQ(file->hash(), Sha256Hex(a + b + c));
  auto on_disk = ReadFileToString(file->path());
  ASSERT_TRUE(on_disk.ok());
  EXPECT_EQ(*on_disk, a + b + c);

  auto hash = files_->Commit(*file);
  ASSERT_TRUE(hash.ok()) << hash.status();
  EXPECT_EQ(*hash, Sha256Hex(a + b + c));
  EXPECT_TRUE(files_->Contains(*hash));
  EXPECT_EQ(file->path(),
            (fs::path(dir_) / "files" / "objects" / hash->substr(0, 2) / *hash).string());
  auto got = files_->Get(*hash);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, a + b + c);
  EXPECT_EQ(StagedCount(), 0);
  file.reset();  // a committed file stays
  EXPECT_TRUE(files_->Contains(*hash));
}

TEST_F(StagedFileTest, EmptyFile) {
  std::unique_ptr<StagedFile> file = Stage({});
  ASSERT_TRUE(file->Finish().ok());
  EXPECT_EQ(file->hash(), Sha256Hex(""));
  auto hash = files_->Commit(*file);
  ASSERT_TRUE(hash.ok());
  EXPECT_TRUE(files_->Get(*hash).ok());
}

TEST_F(StagedFileTest, DestroyingWithoutCommitLeavesNothing) {
  std::unique_ptr<StagedFile> unfinished = Stage({"half a file"});
  std::unique_ptr<StagedFile> finished = Stage({"a whole file"});
  ASSERT_TRUE(finished->Finish().ok());
  EXPECT_EQ(StagedCount(), 2);
  unfinished.reset();
  finished.reset();
  EXPECT_EQ(StagedCount(), 0);
  auto list = files_->List();
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
}

TEST_F(StagedFileTest, CommittingPresentBytesDropsTheTemporary) {
  auto put = files_->Put("same bytes");
  ASSERT_TRUE(put.ok());
  std::unique_ptr<StagedFile> file = Stage({"same ", "bytes"});
  ASSERT_TRUE(file->Finish().ok());
  auto hash = files_->Commit(*file);
  ASSERT_TRUE(hash.ok()) << hash.status();
  EXPECT_EQ(*hash, *put);
  EXPECT_EQ(StagedCount(), 0);
  auto list = files_->List();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 1u);
}

TEST_F(StagedFileTest, CommitReplacesATruncatedObject) {
  const std::string bytes = "the whole object";
  const std::string object =
      (fs::path(dir_) / "files" / "objects" / Sha256Hex(bytes).substr(0, 2) / Sha256Hex(bytes))
          .string();
  ASSERT_TRUE(WriteFileAtomically(object, "the wh").ok());
  std::unique_ptr<StagedFile> file = Stage({bytes});
  ASSERT_TRUE(file->Finish().ok());
  ASSERT_TRUE(files_->Commit(*file).ok());
  auto got = files_->Get(Sha256Hex(bytes));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, bytes);
}

TEST_F(StagedFileTest, MisuseIsFailedPrecondition) {
  std::unique_ptr<StagedFile> file = Stage({"x"});
  EXPECT_EQ(files_->Commit(*file).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(file->Finish().ok());
  EXPECT_EQ(file->Finish().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(file->Append("more").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(files_->Commit(*file).ok());
  EXPECT_EQ(files_->Commit(*file).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(StagedFileTest, OpenRemovesWhatACrashLeftStaged) {
  std::unique_ptr<StagedFile> file = Stage({"kept"});
  ASSERT_TRUE(file->Finish().ok());
  auto hash = files_->Commit(*file);
  ASSERT_TRUE(hash.ok());
  std::ofstream(fs::path(Staging()) / "0123.part") << "a crashed upload";
  fs::create_directories(fs::path(Staging()) / "odd-directory");
  EXPECT_EQ(StagedCount(), 2);
  Reopen();
  EXPECT_EQ(StagedCount(), 0);
  EXPECT_TRUE(files_->Contains(*hash));
}

TEST_F(StagedFileTest, StagedFilesAreDistinct) {
  std::unique_ptr<StagedFile> a = Stage({"a"});
  std::unique_ptr<StagedFile> b = Stage({"a"});
  EXPECT_NE(a->path(), b->path());
  ASSERT_TRUE(a->Finish().ok());
  ASSERT_TRUE(b->Finish().ok());
  EXPECT_EQ(a->hash(), b->hash());
  ASSERT_TRUE(files_->Commit(*a).ok());
  ASSERT_TRUE(files_->Commit(*b).ok());
  EXPECT_EQ(StagedCount(), 0);
}

}  // namespace
}  // namespace miseg

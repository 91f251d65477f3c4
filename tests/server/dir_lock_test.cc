// Tests of the data directory's lock (server/store/dir_lock): exclusive against exclusive
// and shared, shared beside shared, release on destruction, a LOCK file left by a killed
// process, and a descriptor no child inherits. Two DirLocks of one process conflict as two
// processes do (flock belongs to the open file), so most cases run in this process; the
// killed holder is a forked child.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/dir_lock.h"

extern char** environ;

namespace miseg {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using Mode = DirLock::Mode;

class DirLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "miseg_dir_lock.XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr) << pattern;
    dir_ = pattern;
    other_dir_ = dir_ + "/other";
    fs::create_directory(other_dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string LockFile() const { return (fs::path(dir_) / "LOCK").string(); }
  std::string LockFileText() const {
    std::ifstream in(LockFile());
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

  std::string dir_;
  std::string other_dir_;  // a second directory, with a lock of its own
};

// Kills and reaps a child on every way out of a test, so no orphan outlives it.
class ChildGuard {
 public:
  explicit ChildGuard(pid_t pid) : pid_(pid) {}
  ~ChildGuard() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Waits for the child's exit; its wait status.
  int Reap() {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_;
};

TEST_F(DirLockTest, ExclusiveRefusesASecondExclusiveNamingTheDirectoryAndHolderPid) {
  absl::StatusOr<DirLock> first = DirLock::Acquire(dir_, Mode::kExclusive);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->path(), LockFile());
  EXPECT_EQ(LockFileText(), absl::StrCat(getpid(), "\n"));

  absl::StatusOr<DirLock> second = DirLock::Acquire(dir_, Mode::kExclusive);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("data directory " + dir_ + " is in use"));
  EXPECT_THAT(second.status().message(), HasSubstr(absl::StrCat("process ", getpid(), " ")));
  // The refused attempt leaves the holder's pid in place.
  EXPECT_EQ(LockFileText(), absl::StrCat(getpid(), "\n"));
}

TEST_F(DirLockTest, SharedLocksCoexist) {
  absl::StatusOr<DirLock> a = DirLock::Acquire(dir_, Mode::kShared);
  absl::StatusOr<DirLock> b = DirLock::Acquire(dir_, Mode::kShared);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->mode(), Mode::kShared);
}

TEST_F(DirLockTest, SharedAndExclusiveExcludeEachOther) {
  {
    absl::StatusOr<DirLock> reader = DirLock::Acquire(dir_, Mode::kShared);
    ASSERT_TRUE(reader.ok()) << reader.status();
    absl::StatusOr<DirLock> writer = DirLock::Acquire(dir_, Mode::kExclusive);
    ASSERT_FALSE(writer.ok());
    EXPECT_EQ(writer.status().code(), absl::StatusCode::kFailedPrecondition);
    // A shared holder records no pid; the message says how to find it instead.
    EXPECT_THAT(writer.status().message(),
                HasSubstr("no live pid in " + LockFile() + ": a read-only user"));
    EXPECT_THAT(writer.status().message(), HasSubstr("fuser -v " + LockFile()));
  }
  absl::StatusOr<DirLock> writer = DirLock::Acquire(dir_, Mode::kExclusive);
  ASSERT_TRUE(writer.ok()) << writer.status();
  absl::StatusOr<DirLock> reader = DirLock::Acquire(dir_, Mode::kShared);
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(reader.status().message(), HasSubstr(absl::StrCat("process ", getpid(), " ")));
}

TEST_F(DirLockTest, ReleasedOnDestructionNotOnMove) {
  {
    absl::StatusOr<DirLock> first = DirLock::Acquire(dir_, Mode::kExclusive);
    ASSERT_TRUE(first.ok()) << first.status();
    DirLock moved = *std::move(first);
    // The moved-from value holds nothing; the lock lives on in `moved`.
    EXPECT_FALSE(DirLock::Acquire(dir_, Mode::kExclusive).ok());
  }
  // Released, and the pid of the holder that has gone is no longer in the file.
  EXPECT_EQ(LockFileText(), "");
  absl::StatusOr<DirLock> again = DirLock::Acquire(dir_, Mode::kExclusive);
  ASSERT_TRUE(again.ok()) << again.status();
  // Move assignment releases the lock it replaces.
  absl::StatusOr<DirLock> other_dir_lock = DirLock::Acquire(other_dir_, Mode::kShared);
  ASSERT_TRUE(other_dir_lock.ok()) << other_dir_lock.status();
  *other_dir_lock = *std::move(again);
  EXPECT_FALSE(DirLock::Acquire(dir_, Mode::kShared).ok());
  EXPECT_TRUE(DirLock::Acquire(other_dir_, Mode::kExclusive).ok());
}

TEST_F(DirLockTest, LockFileOfAKilledHolderDoesNotBlock) {
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(ready[0]);
    absl::StatusOr<DirLock> held = DirLock::Acquire(dir_, Mode::kExclusive);
    const char verdict = held.ok() ? 'y' : 'n';
    (void)!write(ready[1], &verdict, 1);
    for (;;) pause();  // until SIGKILL: the lock is never released by the process itself
  }
  ChildGuard guard(child);
  close(ready[1]);
  char verdict = 0;
  ASSERT_EQ(read(ready[0], &verdict, 1), 1);
  close(ready[0]);
  ASSERT_EQ(verdict, 'y');
  absl::StatusOr<DirLock> refused = DirLock::Acquire(dir_, Mode::kExclusive);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr(absl::StrCat("process ", child, " ")));

  ASSERT_EQ(kill(child, SIGKILL), 0);
  EXPECT_TRUE(WIFSIGNALED(guard.Reap()));
  // The dead holder's pid is still in the file; the kernel dropped its lock.
  EXPECT_EQ(LockFileText(), absl::StrCat(child, "\n"));
  absl::StatusOr<DirLock> after = DirLock::Acquire(dir_, Mode::kExclusive);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(LockFileText(), absl::StrCat(getpid(), "\n"));
}

TEST_F(DirLockTest, LockFileWithADeadPidAndAReaderNamesNoPid) {
  // A LOCK file copied with the directory or left by a crash: its pid means nothing.
  std::ofstream(LockFile()) << "999999999\n";
  absl::StatusOr<DirLock> reader = DirLock::Acquire(dir_, Mode::kShared);
  ASSERT_TRUE(reader.ok()) << reader.status();
  absl::StatusOr<DirLock> writer = DirLock::Acquire(dir_, Mode::kExclusive);
  ASSERT_FALSE(writer.ok());
  EXPECT_THAT(writer.status().message(), Not(HasSubstr("999999999")));
  EXPECT_THAT(writer.status().message(),
              HasSubstr("no live pid in " + LockFile() + ": a read-only user"));
}

TEST_F(DirLockTest, ChildProcessesDoNotInheritTheLock) {
  absl::StatusOr<DirLock> lock = DirLock::Acquire(dir_, Mode::kExclusive);
  ASSERT_TRUE(lock.ok()) << lock.status();
  // A child that outlives the lock's release: cat, reading a pipe we hold open. glibc's
  // posix_spawn returns once the child has exec'd, so its descriptors are final.
  int input[2];
  ASSERT_EQ(pipe2(input, O_CLOEXEC), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, input[0], 0);
  char cat[] = "/bin/cat";
  char* argv[] = {cat, nullptr};
  pid_t child = -1;
  ASSERT_EQ(posix_spawn(&child, cat, &actions, nullptr, argv, environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  ChildGuard guard(child);
  close(input[0]);

  const fs::path fds = fs::path("/proc") / std::to_string(child) / "fd";
  int listed = 0;
  for (const fs::directory_entry& entry : fs::directory_iterator(fds)) {
    std::error_code ec;
    EXPECT_NE(fs::read_symlink(entry.path(), ec).string(), LockFile()) << entry.path();
    ++listed;
  }
  EXPECT_GE(listed, 3);  // stdin, stdout, stderr: the listing worked
  // Released here while the child lives: a fresh lock succeeds only if no child holds it.
  *lock = DirLock::Acquire(other_dir_, Mode::kShared).value();
  EXPECT_TRUE(DirLock::Acquire(dir_, Mode::kExclusive).ok());

  close(input[1]);  // cat reads end of file and exits
  const int status = guard.Reap();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST_F(DirLockTest, MissingDirectoryIsNotFound) {
  absl::StatusOr<DirLock> lock = DirLock::Acquire(dir_ + "/absent", Mode::kExclusive);
  ASSERT_FALSE(lock.ok());
  EXPECT_EQ(lock.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(lock.status().message(), HasSubstr(dir_ + "/absent/LOCK"));
}

}  // namespace
}  // namespace miseg

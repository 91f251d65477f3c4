#include "server/store/dir_lock.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace miseg {
namespace {

// The pid an exclusive holder recorded, when that process is alive; 0 otherwise (a shared
// holder, a holder that has not written its pid yet, or a file left by a dead process).
int64_t LiveRecordedPid(int fd) {
  char buffer[32];
  const ssize_t n = ::pread(fd, buffer, sizeof(buffer) - 1, 0);
  if (n <= 0) return 0;
  int64_t pid = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(buffer, n)), &pid) ||
      pid <= 0) {
    return 0;
  }
  if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno != EPERM) return 0;
  return pid;
}

int FlockNoWait(int fd, DirLock::Mode mode) {
  const int operation = (mode == DirLock::Mode::kExclusive ? LOCK_EX : LOCK_SH) | LOCK_NB;
  int rc;
  do {
    rc = ::flock(fd, operation);
  } while (rc != 0 && errno == EINTR);
  return rc;
}

}  // namespace

absl::StatusOr<DirLock> DirLock::Acquire(const std::string& dir, Mode mode) {
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(dir, ec);
  if (ec) absolute = dir;
  if (!absolute.has_filename()) absolute = absolute.parent_path();  // "data/" names "data"
  const std::string shown_dir = absolute.string();
  const std::string path = (absolute / kFileName).string();

  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  // A reader may lack write permission (a read-only mount, another user's directory):
  // flock works on a descriptor opened for reading.
  if (fd < 0 && mode == Mode::kShared && (errno == EACCES || errno == EROFS)) {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  }
  if (fd < 0) {
    const int error = errno;
    return absl::ErrnoToStatus(error, absl::StrCat("cannot open ", path));
  }

  if (FlockNoWait(fd, mode) != 0) {
    const int error = errno;
    if (error != EWOULDBLOCK) {
      ::close(fd);
      // ENOLCK: the filesystem (some NFS or FUSE mounts) offers no locks at all.
      return absl::ErrnoToStatus(error, absl::StrCat("cannot lock ", path));
    }
    const int64_t holder = LiveRecordedPid(fd);
    ::close(fd);
    return absl::FailedPreconditionError(absl::StrCat(
        "data directory ", shown_dir, " is in use by ",
        holder > 0 ? absl::StrCat("process ", holder, " (its pid is in ", path, ")")
                   : absl::StrCat("another process (no live pid in ", path,
                                  ": a read-only user, or a holder on another machine; "
                                  "`fuser -v ", path, "` lists this machine's)"),
        ": one process writes a data directory at a time"));
  }
  if (mode == Mode::kExclusive) {
    const std::string pid = absl::StrCat(::getpid(), "\n");
    ssize_t written = -1;
    if (::ftruncate(fd, 0) == 0) written = ::pwrite(fd, pid.data(), pid.size(), 0);
    if (written != static_cast<ssize_t>(pid.size())) {
      const int error = written < 0 ? errno : EIO;
      ::close(fd);
      return absl::ErrnoToStatus(error, absl::StrCat("cannot record the pid in ", path));
    }
  }
  return DirLock(path, fd, mode);
}

DirLock::DirLock(DirLock&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_), mode_(other.mode_) {
  other.fd_ = -1;
}

DirLock& DirLock::operator=(DirLock&& other) noexcept {
  if (this != &other) {
    Release();
    path_ = std::move(other.path_);
    fd_ = other.fd_;
    mode_ = other.mode_;
    other.fd_ = -1;
  }
  return *this;
}

DirLock::~DirLock() { Release(); }

void DirLock::Release() {
  if (fd_ < 0) return;
  // While the lock is still held: the next holder writes its own pid after locking, so
  // emptying the file here can never erase it.
  if (mode_ == Mode::kExclusive) (void)::ftruncate(fd_, 0);
  ::close(fd_);  // drops the flock
  fd_ = -1;
}

}  // namespace miseg

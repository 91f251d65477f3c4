// One process per data directory: an advisory lock on a LOCK file inside the directory,
// held for the life of the DirLock (LevelDB's LOCK, PostgreSQL's postmaster.pid). The
// server holds it exclusively from before it reads anything in the directory until it
// exits, so a second server (or a Kubernetes rollout's second pod on the same volume)
// never runs recovery or garbage collection against a live store. Read-only tools take it
// shared: several of them may run together, but not beside a writer.
//
// The lock is flock(2): the kernel drops it when the last descriptor of the open file
// goes, so a process killed by SIGKILL (or a power loss) never leaves a lock behind; a
// LOCK file that outlives its process is harmless. The descriptor is O_CLOEXEC, so a child
// the process starts does not keep the lock after its parent has gone. The exclusive
// holder writes its pid into the file, for the message a refused process prints and for
// operators (docs/operations.md); the pid is information only, never the lock itself.
// On network filesystems flock is only as good as the filesystem's lock support (see
// docs/operations.md).
//
// Thread safety: a DirLock is a move-only value with no shared state; Acquire may be
// called from any thread. Two DirLocks of one process on one directory conflict exactly as
// two processes do (flock locks belong to the open file, not to the process).
#ifndef MISEG_SERVER_STORE_DIR_LOCK_H_
#define MISEG_SERVER_STORE_DIR_LOCK_H_

#include <string>
#include <utility>

#include "absl/status/statusor.h"

namespace miseg {

class DirLock {
 public:
  enum class Mode {
    kShared,     // read-only users: any number at once, none beside an exclusive holder
    kExclusive,  // the one process that writes the directory
  };

  // The name of the lock file inside the directory.
  static constexpr char kFileName[] = "LOCK";

  // Locks dir (which must exist) without waiting. FailedPrecondition when another holder
  // conflicts, with a message naming the directory and, for an exclusive holder, its pid;
  // the errno's code when LOCK cannot be opened or locked (PermissionDenied, ...).
  static absl::StatusOr<DirLock> Acquire(const std::string& dir, Mode mode);

  DirLock(DirLock&& other) noexcept;
  DirLock& operator=(DirLock&& other) noexcept;
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  // Releases the lock; an exclusive holder first empties the pid from LOCK.
  ~DirLock();

  const std::string& path() const { return path_; }  // dir/LOCK
  Mode mode() const { return mode_; }

 private:
  DirLock(std::string path, int fd, Mode mode) : path_(std::move(path)), fd_(fd), mode_(mode) {}
  void Release();

  std::string path_;
  int fd_ = -1;
  Mode mode_ = Mode::kShared;
};

}  // namespace miseg

#endif  // MISEG_SERVER_STORE_DIR_LOCK_H_

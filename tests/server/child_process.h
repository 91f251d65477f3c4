// A child process for the tests' harnesses (miseg-server, Orthanc): its stdout and stderr
// captured by a thread, waited on by what it logs (no sleeps), killed or terminated on
// demand. Plus the temporary directory and shell helpers the harnesses share.
#ifndef MISEG_TESTS_SERVER_CHILD_PROCESS_H_
#define MISEG_TESTS_SERVER_CHILD_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace miseg::testing {

// A fresh temporary directory, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Runs a command line through /bin/sh; returns {exit status, stdout+stderr}.
std::pair<int, std::string> RunCommand(const std::string& command);

class ChildProcess {
 public:
  // Starts argv[0] with argv (no shell).
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(const std::vector<std::string>& argv);
  ~ChildProcess();  // SIGKILL if still running

  pid_t pid() const { return pid_; }
  bool exited() const { return exited_; }
  // Blocks until the output holds text (true), or the timeout passes or the output closes.
  bool WaitForLog(const std::string& text, std::chrono::seconds timeout);
  std::string log() const;

  // The exit status once the process has exited, -1 when it has not within timeout.
  int WaitExit(std::chrono::seconds timeout);
  void Kill();  // SIGKILL, reaped
  // SIGTERM; the exit status, or -1 when it had to be killed after timeout.
  int Terminate(std::chrono::seconds timeout);

 private:
  ChildProcess() = default;
  void ReadOutput(int fd);

  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_status_ = -1;
  std::thread reader_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::string log_;
  bool closed_ = false;
};

// A TCP port the kernel picks on 127.0.0.1, free again when this returns, for a process the
// test starts next (the DICOM node's port must be known before the server starts, and stay
// the same across its restarts, as a PACS expects). 0 when none could be had.
int FreeLoopbackPort();

}  // namespace miseg::testing

#endif  // MISEG_TESTS_SERVER_CHILD_PROCESS_H_

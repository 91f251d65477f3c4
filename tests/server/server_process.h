// A real miseg-server process for the integration tests: started with its own data
// directory on free loopback ports, its stderr captured, synchronised on its own
// "serving" log line and ready file (no sleeps), killed or terminated on demand.
#ifndef MISEG_TESTS_SERVER_SERVER_PROCESS_H_
#define MISEG_TESTS_SERVER_SERVER_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
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

class ServerProcess {
 public:
  // Starts build/server/miseg-server with --data_dir, loopback ports chosen by the kernel and
  // the given extra flags; returns once it serves, or an error holding its log when it exits
  // or stays silent for 60 s.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& data_dir, const std::vector<std::string>& flags = {});
  // Runs the server binary with exactly these flags and waits for it to exit; returns
  // {exit status, log}. For checks of refused configurations.
  static std::pair<int, std::string> RunToExit(const std::vector<std::string>& flags);

  ~ServerProcess();  // SIGKILL if still running

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  pid_t pid() const { return pid_; }

  void Kill();  // SIGKILL, reaped
  // SIGTERM; the exit status, or -1 when it has not exited within timeout (then killed).
  int Terminate(std::chrono::seconds timeout = std::chrono::seconds(60));
  // Blocks until the log holds text (true) or the timeout passes or the process exits.
  bool WaitForLog(const std::string& text, std::chrono::seconds timeout);
  std::string log() const;

 private:
  ServerProcess() = default;
  void ReadLog(int fd);
  int WaitExit(std::chrono::seconds timeout);

  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_status_ = -1;
  int grpc_port_ = 0, metrics_port_ = 0;
  std::thread reader_;
  mutable std::mutex mutex_;
  std::condition_variable log_changed_;
  std::string log_;
  bool log_closed_ = false;
};

// Runs a command line through /bin/sh; returns {exit status, stdout+stderr}.
std::pair<int, std::string> RunCommand(const std::string& command);

}  // namespace miseg::testing

#endif  // MISEG_TESTS_SERVER_SERVER_PROCESS_H_

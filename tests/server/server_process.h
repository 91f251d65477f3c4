// A real miseg-server process for the integration tests: started with its own data
// directory on free loopback ports, synchronised on its own "serving" log line and ready
// file (no sleeps), killed or terminated on demand.
#ifndef MISEG_TESTS_SERVER_SERVER_PROCESS_H_
#define MISEG_TESTS_SERVER_SERVER_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "tests/server/child_process.h"

namespace miseg::testing {

class ServerProcess {
 public:
  // Starts build/server/miseg-server with --data_dir, loopback ports chosen by the kernel and
  // the given extra flags (later flags win); returns once it serves, or an error holding its
  // log when it exits or stays silent for 60 s.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& data_dir, const std::vector<std::string>& flags = {});
  // Runs the server binary with exactly these flags and waits for it to exit; returns
  // {exit status, log}. For checks of refused configurations.
  static std::pair<int, std::string> RunToExit(const std::vector<std::string>& flags);

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  pid_t pid() const { return child_->pid(); }

  void Kill() { child_->Kill(); }  // SIGKILL, reaped
  // SIGTERM; the exit status, or -1 when it has not exited within timeout (then killed).
  int Terminate(std::chrono::seconds timeout = std::chrono::seconds(60)) {
    return child_->Terminate(timeout);
  }
  bool WaitForLog(const std::string& text, std::chrono::seconds timeout) {
    return child_->WaitForLog(text, timeout);
  }
  std::string log() const { return child_->log(); }

 private:
  explicit ServerProcess(std::unique_ptr<ChildProcess> child) : child_(std::move(child)) {}
  std::unique_ptr<ChildProcess> child_;
  int grpc_port_ = 0, metrics_port_ = 0;
};

}  // namespace miseg::testing

#endif  // MISEG_TESTS_SERVER_SERVER_PROCESS_H_

#include "tests/server/server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

#ifndef MISEG_SERVER_BINARY
#error "MISEG_SERVER_BINARY must name the miseg-server executable"
#endif

namespace miseg::testing {

TempDir::TempDir() {
  std::string pattern =
      (std::filesystem::temp_directory_path() / "miseg-server-test-XXXXXX").string();
  char* made = mkdtemp(pattern.data());
  path_ = made ? made : "";
}

TempDir::~TempDir() {
  std::error_code ignored;
  if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
}

namespace {

pid_t Spawn(const std::vector<std::string>& args, int* log_fd) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(pipe_fds[1], STDOUT_FILENO);
    dup2(pipe_fds[1], STDERR_FILENO);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(pipe_fds[1]);
  *log_fd = pipe_fds[0];
  return pid;
}

std::vector<std::string> CommandLine(const std::vector<std::string>& flags) {
  std::vector<std::string> args = {MISEG_SERVER_BINARY};
  args.insert(args.end(), flags.begin(), flags.end());
  return args;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::string& data_dir, const std::vector<std::string>& flags) {
  const std::string ready_file = data_dir + ".ready";
  std::error_code ignored;
  std::filesystem::remove(ready_file, ignored);
  std::vector<std::string> all = {"--data_dir=" + data_dir, "--listen=127.0.0.1:0",
                                  "--metrics_listen=127.0.0.1:0", "--ready_file=" + ready_file};
  all.insert(all.end(), flags.begin(), flags.end());  // later flags win
  std::unique_ptr<ServerProcess> server(new ServerProcess());
  int log_fd = -1;
  server->pid_ = Spawn(CommandLine(all), &log_fd);
  if (server->pid_ < 0) return absl::InternalError("cannot start miseg-server");
  server->reader_ = std::thread([s = server.get(), log_fd] { s->ReadLog(log_fd); });
  // The ready file is renamed into place before the "serving" line is logged.
  if (!server->WaitForLog("serving miseg.v1 on port", std::chrono::seconds(60))) {
    server->Kill();
    return absl::UnavailableError(absl::StrCat("miseg-server did not start:\n", server->log()));
  }
  std::ifstream ready(ready_file);
  std::string line;
  while (std::getline(ready, line)) {
    std::vector<std::string> kv = absl::StrSplit(line, '=');
    if (kv.size() != 2) continue;
    if (kv[0] == "grpc_port") (void)absl::SimpleAtoi(kv[1], &server->grpc_port_);
    if (kv[0] == "metrics_port") (void)absl::SimpleAtoi(kv[1], &server->metrics_port_);
  }
  if (server->grpc_port_ == 0 || server->metrics_port_ == 0) {
    server->Kill();
    return absl::InternalError(absl::StrCat("no ports in ", ready_file));
  }
  return server;
}

std::pair<int, std::string> ServerProcess::RunToExit(const std::vector<std::string>& flags) {
  std::unique_ptr<ServerProcess> server(new ServerProcess());
  int log_fd = -1;
  server->pid_ = Spawn(CommandLine(flags), &log_fd);
  server->reader_ = std::thread([s = server.get(), log_fd] { s->ReadLog(log_fd); });
  const int status = server->WaitExit(std::chrono::seconds(60));
  return {status, server->log()};
}

ServerProcess::~ServerProcess() {
  Kill();
  if (reader_.joinable()) reader_.join();
}

void ServerProcess::ReadLog(int fd) {
  char buffer[4096];
  while (true) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n <= 0) break;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      log_.append(buffer, static_cast<size_t>(n));
    }
    log_changed_.notify_all();
  }
  close(fd);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    log_closed_ = true;
  }
  log_changed_.notify_all();
}

bool ServerProcess::WaitForLog(const std::string& text, std::chrono::seconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return log_changed_.wait_for(lock, timeout, [&] {
    return log_.find(text) != std::string::npos || log_closed_;
  }) && log_.find(text) != std::string::npos;
}

std::string ServerProcess::log() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return log_;
}

int ServerProcess::WaitExit(std::chrono::seconds timeout) {
  if (exited_) return exit_status_;
  // The log pipe closes when the process (and every child holding it) exits.
  {
    std::unique_lock<std::mutex> lock(mutex_);
    log_changed_.wait_for(lock, timeout, [&] { return log_closed_; });
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!log_closed_) return -1;
  }
  // Its stderr closed: the process is exiting; reap it.
  int status = 0;
  if (waitpid(pid_, &status, 0) != pid_) return -1;
  exited_ = true;
  exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return exit_status_;
}

void ServerProcess::Kill() {
  if (pid_ <= 0 || exited_) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  exited_ = true;
  exit_status_ = 128 + SIGKILL;
  if (reader_.joinable()) reader_.join();
}

int ServerProcess::Terminate(std::chrono::seconds timeout) {
  if (pid_ <= 0 || exited_) return exit_status_;
  kill(pid_, SIGTERM);
  const int status = WaitExit(timeout);
  if (status < 0) Kill();
  if (reader_.joinable()) reader_.join();
  return status;
}

std::pair<int, std::string> RunCommand(const std::string& command) {
  std::string output;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

}  // namespace miseg::testing

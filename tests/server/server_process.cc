#include "tests/server/server_process.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

#ifndef MISEG_SERVER_BINARY
#error "MISEG_SERVER_BINARY must name the miseg-server executable"
#endif

namespace miseg::testing {
namespace {

// The build's miseg-server, or MISEG_TEST_SERVER_BINARY (a copy that a rebuild in a shared
// build folder cannot replace while a long run restarts it).
std::vector<std::string> CommandLine(const std::vector<std::string>& flags) {
  const char* binary = std::getenv("MISEG_TEST_SERVER_BINARY");
  std::vector<std::string> args = {binary != nullptr && *binary != '\0' ? binary
                                                                       : MISEG_SERVER_BINARY};
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
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Spawn(CommandLine(all));
  if (!child.ok()) return child.status();
  std::unique_ptr<ServerProcess> server(new ServerProcess(*std::move(child)));
  // The ready file is renamed into place before the "serving" line is logged.
  if (!server->WaitForLog("serving miseg.v1 on port", std::chrono::seconds(60))) {
    // Exited (its output closed): its status; still silent after 60 s: -1.
    const int status = server->child_->WaitExit(std::chrono::seconds(0));
    server->Kill();
    return absl::UnavailableError(absl::StrCat("miseg-server did not start (exit status ",
                                               status, "):\n", server->log()));
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
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Spawn(CommandLine(flags));
  if (!child.ok()) return {-1, std::string(child.status().message())};
  const int status = (*child)->WaitExit(std::chrono::seconds(60));
  return {status, (*child)->log()};
}

}  // namespace miseg::testing

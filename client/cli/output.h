// How `miseg` talks to people and scripts: progress bars on a terminal (silent when piped),
// JSON for scripts, one-line errors, and exit codes that tell usage errors, server errors
// and refused input apart.
#ifndef MISEG_CLIENT_CLI_OUTPUT_H_
#define MISEG_CLIENT_CLI_OUTPUT_H_

#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace miseg::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitServerError = 1,  // the server or the connection failed, or a job failed
  kExitUsage = 2,        // the command line is wrong
  kExitRefused = 3,      // the server refused the input (bad, unknown, conflicting)
  kExitDenied = 4,       // no or unknown token, or the role does not allow it
};

// The exit code for a status from the server (or from local checks of the input).
ExitCode ExitCodeFor(const absl::Status& status);
// "miseg: <message> (<CODE>)" on one line, on stderr.
void PrintError(const absl::Status& status);

// Message as JSON (proto3 JSON mapping, field names in lowerCamelCase), one line.
std::string ToJson(const google::protobuf::Message& message);

std::string HumanBytes(double bytes);
std::string HumanDuration(double seconds);

// A one-line progress bar redrawn in place on stderr, at most 10 times a second; nothing at
// all unless stderr is a terminal and the output is not JSON or quiet.
class ProgressBar {
 public:
  ProgressBar(std::string label, bool enabled);
  ~ProgressBar();
  void Update(int64_t done, int64_t total, const std::string& suffix = "");
  // Clears the bar so a normal line can be printed; the next Update redraws it.
  void Clear();
  void Finish();
  bool enabled() const { return enabled_; }

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_draw_{};
};

bool StderrIsTerminal();

}  // namespace miseg::cli

#endif  // MISEG_CLIENT_CLI_OUTPUT_H_

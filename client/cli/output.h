// How `miseg` talks to people and scripts: progress bars on a terminal (silent when piped),
// human-readable sizes and times, JSON for scripts, one-line errors, and exit codes that
// tell usage errors, server errors and refused input apart.
#ifndef MISEG_CLIENT_CLI_OUTPUT_H_
#define MISEG_CLIENT_CLI_OUTPUT_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/cli/terminal.h"
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

// 512 B, 12.3 KiB, 4.0 MiB, ... (binary units).
std::string HumanBytes(double bytes);
// 45s, 3m05s, 2h10m; "--" for a negative or absurd duration (an ETA not known yet).
std::string HumanDuration(double seconds);
// How long ago a moment was, the one style of times in human output: "just now",
// "45 s ago", "3 min ago", "5 h ago", "12 d ago"; "-" for 0 (never). A moment in the
// future (another clock) reads as "just now".
std::string HumanAge(int64_t unix_ms);

// A one-line progress bar redrawn in place on stderr, at most 10 times a second, never
// wider than the terminal (re-read after a resize; see LayoutProgressLine for what gives
// way); nothing at all unless enabled and stderr is a terminal. On a terminal without
// escape codes (TERM unset or "dumb") it redraws with a carriage return and spaces.
class ProgressBar {
 public:
  ProgressBar(std::string label, bool enabled);
  ~ProgressBar();
  // essential always shows (e.g. "step 107/300"); fields give way, lowest keep first.
  void Update(int64_t done, int64_t total, const std::string& essential,
              const std::vector<ProgressField>& fields = {});
  // Erases the bar so a normal line can be printed; the next Update redraws it.
  void Clear();
  // Leaves the bar of the last Update on its own line (drawn again if it was cleared or
  // throttled), so the screen keeps one bar, as the work ended.
  void Finish();
  bool enabled() const { return enabled_; }
  // Seconds since the bar was made, for rates.
  double ElapsedSeconds() const;

 private:
  void Erase(std::string* out);
  void Draw();

  const std::string label_;
  const bool enabled_;
  const bool escapes_;
  int columns_ = 0;       // the terminal's width when last read
  bool resized_ = false;  // a resize not yet redrawn
  bool drawn_ = false;
  int drawn_width_ = 0;   // columns of the line on the screen
  // The last Update, drawn or not.
  bool updated_ = false;
  double fraction_ = 0;
  std::string essential_;
  std::vector<ProgressField> fields_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_draw_{};
};

bool StderrIsTerminal();

}  // namespace miseg::cli

#endif  // MISEG_CLIENT_CLI_OUTPUT_H_

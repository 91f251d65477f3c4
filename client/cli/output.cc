#include "client/cli/output.h"

#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/util/json_util.h"

namespace miseg::cli {

ExitCode ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return kExitRefused;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return kExitDenied;
    default:
      return kExitServerError;
  }
}

void PrintError(const absl::Status& status) {
  std::string message(status.message());
  message = absl::StrReplaceAll(message, {{"\n", "; "}});
  if (status.code() == absl::StatusCode::kUnavailable && message.find("failed to connect") != std::string::npos) {
    message = "cannot reach the server (" + message + "); is miseg-server running? see --address";
  }
  fprintf(stderr, "miseg: %s (%s)\n", message.c_str(),
          absl::StatusCodeToString(status.code()).c_str());
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return unit == 0 ? absl::StrFormat("%.0f %s", bytes, units[unit])
                   : absl::StrFormat("%.1f %s", bytes, units[unit]);
}

std::string HumanDuration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "--";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string HumanAge(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  const int64_t s = (now_ms - unix_ms) / 1000;
  if (s < 5) return "just now";
  if (s < 60) return absl::StrFormat("%d s ago", s);
  if (s < 3600) return absl::StrFormat("%d min ago", s / 60);
  if (s < 86400) return absl::StrFormat("%d h ago", s / 3600);
  return absl::StrFormat("%d d ago", s / 86400);
}

bool StderrIsTerminal() { return IsTerminal(STDERR_FILENO); }

ProgressBar::ProgressBar(std::string label, bool enabled)
    : label_(std::move(label)),
      enabled_(enabled && StderrIsTerminal()),
      escapes_(enabled_ && TerminalHasEscapes(STDERR_FILENO)) {
  if (enabled_) {
    WatchTerminalResizes();
    (void)TakeTerminalResized();  // a resize before the first draw changes nothing
    columns_ = TerminalColumns(STDERR_FILENO);
  }
}

ProgressBar::~ProgressBar() { Finish(); }

double ProgressBar::ElapsedSeconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void ProgressBar::Erase(std::string* out) {
  if (!drawn_) return;
  if (!escapes_) {
    // The line is shorter than the terminal: spaces over it, back to its start.
    absl::StrAppend(out, "\r", std::string(drawn_width_, ' '), "\r");
    return;
  }
  // A terminal narrowed under the line has rewrapped it (tmux, VTE, kitty, iTerm2 do):
  // up to its first row, and clear from there down.
  const int rows = columns_ > 0 && drawn_width_ > columns_ ? (drawn_width_ - 1) / columns_ : 0;
  if (rows > 0) absl::StrAppend(out, "\x1b[", rows, "A");
  absl::StrAppend(out, rows > 0 ? "\r\x1b[J" : "\r\x1b[K");
}

void ProgressBar::Update(int64_t done, int64_t total, const std::string& essential,
                         const std::vector<ProgressField>& fields) {
  if (!enabled_) return;
  updated_ = true;
  fraction_ = total > 0 ? static_cast<double>(done) / total : 0;
  essential_ = essential;
  fields_ = fields;
  if (TakeTerminalResized()) {
    columns_ = TerminalColumns(STDERR_FILENO);
    resized_ = true;
  }
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && !resized_ && done < total && now - last_draw_ < std::chrono::milliseconds(100)) {
    return;
  }
  Draw();
}

void ProgressBar::Draw() {
  last_draw_ = std::chrono::steady_clock::now();
  resized_ = false;
  const std::string line = LayoutProgressLine(label_, fraction_, essential_, fields_, columns_);
  std::string out;
  Erase(&out);
  if (!escapes_) out += '\r';  // Erase wrote nothing when nothing was drawn
  out += line;
  fputs(out.c_str(), stderr);
  fflush(stderr);
  drawn_ = true;
  drawn_width_ = DisplayWidth(line);
}

void ProgressBar::Clear() {
  if (!enabled_ || !drawn_) return;
  if (TakeTerminalResized()) columns_ = TerminalColumns(STDERR_FILENO);
  std::string out;
  Erase(&out);
  fputs(out.c_str(), stderr);
  fflush(stderr);
  drawn_ = false;
}

void ProgressBar::Finish() {
  if (!enabled_ || !updated_) return;
  if (TakeTerminalResized()) columns_ = TerminalColumns(STDERR_FILENO);
  Draw();  // the last Update, however it was throttled or cleared
  fputs("\n", stderr);
  fflush(stderr);
  drawn_ = false;
  updated_ = false;
}

}  // namespace miseg::cli

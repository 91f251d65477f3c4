// One line per event on stderr, UTC-stamped. Never patient data: UIDs and ids at most.
//
// Three forms, chosen once at start (--log_format, SetLogFormat):
//   text    2026-01-31T12:00:00Z miseg-server: serving miseg.v1 on port 50051 ...
//   logfmt  time=2026-01-31T12:00:00.123Z level=info component=miseg-server msg="serving ..."
//   json    {"time":"2026-01-31T12:00:00.123Z","level":"info","component":"miseg-server","msg":"serving ..."}
// logfmt and json are for log aggregators (Loki, Elasticsearch, journald's forwarders): one
// line per event whatever the message holds (newlines and quotes are escaped), bytes that
// are not UTF-8 escaped as \u00XX in json.
#ifndef MISEG_SERVER_LOG_H_
#define MISEG_SERVER_LOG_H_

#include <sys/time.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <string>

namespace miseg {

enum class LogFormat { kText, kLogfmt, kJson };

namespace log_internal {
inline std::atomic<LogFormat>& Format() {
  static std::atomic<LogFormat> format{LogFormat::kText};
  return format;
}
inline std::atomic<const char*>& Component() {
  static std::atomic<const char*> component{"miseg-server"};
  return component;
}

// Length of the valid UTF-8 sequence at s[i], or 0.
inline size_t Utf8Length(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  }
  return n;
}

// The message as a quoted string: JSON's escapes (json), or logfmt's (the same, with bytes
// that are not UTF-8 kept as \xNN since logfmt has no \u).
inline std::string Quote(const std::string& s, bool json) {
  std::string out = "\"";
  char hex[8];
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      std::snprintf(hex, sizeof(hex), "\\u%04x", c);
      out += hex;
    } else if (c >= 0x80) {
      const size_t n = Utf8Length(s, i);
      if (n == 0) {
        std::snprintf(hex, sizeof(hex), json ? "\\u%04x" : "\\x%02X", c);
        out += hex;
      } else {
        out.append(s, i, n);
        i += n;
        continue;
      }
    } else {
      out += static_cast<char>(c);
    }
    ++i;
  }
  return out + "\"";
}
}  // namespace log_internal

// "text", "logfmt" or "json"; false (and nothing changes) for another name.
inline bool SetLogFormat(const std::string& name) {
  LogFormat format;
  if (name == "text") {
    format = LogFormat::kText;
  } else if (name == "logfmt") {
    format = LogFormat::kLogfmt;
  } else if (name == "json") {
    format = LogFormat::kJson;
  } else {
    return false;
  }
  log_internal::Format().store(format);
  return true;
}

// The program named in each line ("miseg-server" unless set; a string literal).
inline void SetLogComponent(const char* component) { log_internal::Component().store(component); }

inline void Log(const std::string& message, const char* level = "info") {
  timeval now;
  gettimeofday(&now, nullptr);
  std::tm utc;
  gmtime_r(&now.tv_sec, &utc);
  char stamp[40];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &utc);
  const std::string component = log_internal::Component().load();
  std::string line;
  switch (log_internal::Format().load()) {
    case LogFormat::kText:
      line = std::string(stamp) + "Z " + component + ": " + message;
      break;
    case LogFormat::kLogfmt: {
      char millis[8];
      std::snprintf(millis, sizeof(millis), ".%03dZ", static_cast<int>(now.tv_usec / 1000));
      line = std::string("time=") + stamp + millis + " level=" + level +
             " component=" + component + " msg=" + log_internal::Quote(message, false);
      break;
    }
    case LogFormat::kJson: {
      char millis[8];
      std::snprintf(millis, sizeof(millis), ".%03dZ", static_cast<int>(now.tv_usec / 1000));
      line = std::string("{\"time\":\"") + stamp + millis + "\",\"level\":\"" + level +
             "\",\"component\":\"" + component +
             "\",\"msg\":" + log_internal::Quote(message, true) + "}";
      break;
    }
  }
  std::cerr << (line + "\n") << std::flush;
}

}  // namespace miseg

#endif  // MISEG_SERVER_LOG_H_

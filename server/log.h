// One line per event on stderr, UTC-stamped. Never patient data: UIDs and ids at most.
#ifndef MISEG_SERVER_LOG_H_
#define MISEG_SERVER_LOG_H_

#include <ctime>
#include <iostream>
#include <string>

namespace miseg {

inline void Log(const std::string& message) {
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::tm utc;
  gmtime_r(&now, &utc);
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &utc);
  std::cerr << (std::string(stamp) + " miseg-server: " + message + "\n") << std::flush;
}

}  // namespace miseg

#endif  // MISEG_SERVER_LOG_H_

// Wall-clock time in the unit every stored timestamp uses.
#ifndef MISEG_CORE_COMMON_UNIX_TIME_H_
#define MISEG_CORE_COMMON_UNIX_TIME_H_

#include <chrono>
#include <cstdint>

namespace miseg {

// Milliseconds since the Unix epoch, now.
inline int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace miseg

#endif  // MISEG_CORE_COMMON_UNIX_TIME_H_

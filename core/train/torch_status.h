// The one place where LibTorch exceptions become absl::Status. Torch reports errors by
// throwing c10::Error; nothing above the training core may see an exception, so every
// public entry point runs its torch work through GuardTorch.
#ifndef MISEG_CORE_TRAIN_TORCH_STATUS_H_
#define MISEG_CORE_TRAIN_TORCH_STATUS_H_

#include <exception>
#include <new>
#include <string>
#include <utility>

#include <c10/util/Exception.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace miseg {

// Runs fn (returning absl::Status) and maps exceptions: out of memory to ResourceExhausted,
// anything else to `code` with `context` in front of the first line of the message.
template <typename Fn>
absl::Status GuardTorch(absl::string_view context, absl::StatusCode code, Fn&& fn) {
  const auto first_line = [](const std::string& what) { return what.substr(0, what.find('\n')); };
  try {
    return std::forward<Fn>(fn)();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(context, ": out of memory"));
  } catch (const c10::Error& e) {
    const std::string message = first_line(e.what_without_backtrace());
    if (message.find("out of memory") != std::string::npos) {
      return absl::ResourceExhaustedError(absl::StrCat(context, ": ", message));
    }
    return absl::Status(code, absl::StrCat(context, ": ", message));
  } catch (const std::exception& e) {
    return absl::Status(code, absl::StrCat(context, ": ", first_line(e.what())));
  }
}

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_TORCH_STATUS_H_

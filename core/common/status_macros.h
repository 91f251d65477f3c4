// RETURN_IF_ERROR / ASSIGN_OR_RETURN for absl::Status code. Debian 12's Abseil (20220623)
// ships neither, and every layer wants them, so the project keeps one small copy here.
#ifndef MISEG_CORE_COMMON_STATUS_MACROS_H_
#define MISEG_CORE_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MISEG_CONCAT_INNER_(a, b) a##b
#define MISEG_CONCAT_(a, b) MISEG_CONCAT_INNER_(a, b)

// Evaluates expr (an absl::Status); returns it from the enclosing function if not OK.
#define RETURN_IF_ERROR(expr)                   \
  do {                                          \
    ::absl::Status miseg_status_ = (expr);      \
    if (!miseg_status_.ok()) return miseg_status_; \
  } while (false)

// ASSIGN_OR_RETURN(auto x, MakeX()); declares or assigns lhs from an absl::StatusOr,
// returning its status from the enclosing function when it holds an error.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  MISEG_ASSIGN_OR_RETURN_IMPL_(MISEG_CONCAT_(miseg_statusor_, __LINE__), lhs, rexpr)

#define MISEG_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // MISEG_CORE_COMMON_STATUS_MACROS_H_

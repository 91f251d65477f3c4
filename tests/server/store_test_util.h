// What the store and job runner tests do to the store in the scheduler's place.
#ifndef MISEG_TESTS_SERVER_STORE_TEST_UTIL_H_
#define MISEG_TESTS_SERVER_STORE_TEST_UTIL_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/store/store.h"

namespace miseg {

// The oldest queued job, claimed (what the scheduler does for a one-rank job).
inline absl::StatusOr<std::optional<JobRecord>> ClaimNext(Store& store, const std::string& device) {
  absl::StatusOr<std::vector<JobRecord>> queued = store.ListQueuedJobs();
  if (!queued.ok()) return queued.status();
  if (queued->empty()) return std::optional<JobRecord>();
  return store.ClaimJob(queued->front().id, device);
}

}  // namespace miseg

#endif  // MISEG_TESTS_SERVER_STORE_TEST_UTIL_H_

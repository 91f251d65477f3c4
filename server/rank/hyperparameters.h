// A job's hyperparameters (miseg.v1.Hyperparameters): their defaults and the trainer's
// config they make. Shared by the server (which resolves a request's) and every rank,
// wherever it runs.
#ifndef MISEG_SERVER_RANK_HYPERPARAMETERS_H_
#define MISEG_SERVER_RANK_HYPERPARAMETERS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/train/config.h"
#include "miseg/v1/miseg.pb.h"

namespace miseg {

// The most ranks a job may ask for.
inline constexpr int32_t kMaxRanks = 256;

// Every unset field takes its default (docs/method.md); InvalidArgument naming the
// first bad field (including those TrainerConfig::Validate checks).
absl::StatusOr<v1::Hyperparameters> ResolveHyperparameters(const v1::Hyperparameters& in,
                                                           int64_t classes);
// A resolved set to the trainer's config (device and threads are the runner's).
TrainerConfig ToTrainerConfig(const v1::Hyperparameters& resolved, int64_t classes);

}  // namespace miseg

#endif  // MISEG_SERVER_RANK_HYPERPARAMETERS_H_

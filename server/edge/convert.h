// Between the API (miseg.v1 messages) and the domain (store records, trainer config):
// validation of client-supplied names and hyperparameters, and their defaults.
#ifndef MISEG_SERVER_EDGE_CONVERT_H_
#define MISEG_SERVER_EDGE_CONVERT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/common/unix_time.h"
#include "core/train/config.h"
#include "miseg/v1/miseg.pb.h"
#include "server/rank/hyperparameters.h"
#include "server/store/store.h"

namespace miseg {

// [a-z0-9][a-z0-9_.-]{0,62}: names become metric-free, log-safe identifiers.
absl::Status ValidateDatasetName(const std::string& name);
// At least two, unique, 1..64 printable characters without newlines.
absl::Status ValidateClassNames(const std::vector<std::string>& names);

v1::Dataset ToProto(const DatasetRecord& record);
v1::Study ToProto(const StudyRecord& record, const std::string& dataset_name);
v1::LabelingPriority ToProto(const LabelingPriorityRecord& record);
v1::Job ToProto(const JobRecord& record);
v1::Model ToProto(const ModelRecord& record, const std::vector<std::string>& class_names);

// True for the states a job never leaves (succeeded, failed, cancelled).
bool IsTerminal(v1::JobState state);

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_CONVERT_H_

// The hyperparameter file of `miseg train start --config FILE.json`: a miseg.v1.Hyperparameters
// in the proto3 JSON mapping ({"wMi": 0.1, "totalSteps": 2000, "widths": [16, 32]}; the
// field names of miseg.proto are accepted too). Protobuf and Abseil only, so the parser is
// fuzzed on its own (tests/client/hyperparameters_json_fuzzer.cc).
#ifndef MISEG_CLIENT_CLI_HYPERPARAMETERS_JSON_H_
#define MISEG_CLIENT_CLI_HYPERPARAMETERS_JSON_H_

#include <string>

#include "absl/status/statusor.h"
#include "miseg/v1/miseg.pb.h"

namespace miseg::cli {

// InvalidArgument with the parser's message for text that is not such an object (unknown
// fields included). Values are not range-checked here: the server resolves and checks them
// (ResolveHyperparameters), and its message reaches the user.
absl::StatusOr<v1::Hyperparameters> ParseHyperparametersJson(const std::string& text);

}  // namespace miseg::cli

#endif  // MISEG_CLIENT_CLI_HYPERPARAMETERS_JSON_H_

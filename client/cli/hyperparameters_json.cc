#include "client/cli/hyperparameters_json.h"

#include "google/protobuf/util/json_util.h"

namespace miseg::cli {

absl::StatusOr<v1::Hyperparameters> ParseHyperparametersJson(const std::string& text) {
  v1::Hyperparameters h;
  google::protobuf::util::JsonParseOptions options;
  const auto parsed = google::protobuf::util::JsonStringToMessage(text, &h, options);
  if (!parsed.ok()) return absl::InvalidArgumentError(parsed.message().as_string());
  return h;
}

}  // namespace miseg::cli

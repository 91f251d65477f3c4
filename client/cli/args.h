// Command-line arguments of `miseg`: positional words and --flags (--key=value,
// --key value, or a bare --switch). Each command says which flags it takes, so a typo is a
// usage error rather than silently ignored.
#ifndef MISEG_CLIENT_CLI_ARGS_H_
#define MISEG_CLIENT_CLI_ARGS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace miseg::cli {

class Args {
 public:
  // switches: flags that take no value.
  static absl::StatusOr<Args> Parse(int argc, char** argv, const std::set<std::string>& switches);

  const std::vector<std::string>& positional() const { return positional_; }
  // InvalidArgument naming the first flag not in allowed (global flags are always allowed).
  absl::Status Allow(const std::set<std::string>& allowed) const;

  bool Has(const std::string& flag) const { return flags_.count(flag) > 0; }
  std::string Get(const std::string& flag, const std::string& fallback = "") const;
  absl::StatusOr<std::optional<int64_t>> GetInt(const std::string& flag) const;
  absl::StatusOr<std::optional<double>> GetDouble(const std::string& flag) const;

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::string> flags_;
};

// The flags every command takes.
const std::set<std::string>& GlobalFlags();

}  // namespace miseg::cli

#endif  // MISEG_CLIENT_CLI_ARGS_H_

#include "client/cli/args.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace miseg::cli {

const std::set<std::string>& GlobalFlags() {
  static const std::set<std::string> flags = {
      "address", "token", "tls-ca", "tls-cert", "tls-key", "tls-server-name", "json", "output", "quiet", "help"};
  return flags;
}

absl::StatusOr<Args> Args::Parse(int argc, char** argv, const std::set<std::string>& switches) {
  Args args;
  bool only_positional = false;
  for (int i = 1; i < argc; ++i) {
    std::string word = argv[i];
    // -o FORMAT, the one short flag: the same as --output FORMAT.
    if (!only_positional && (word == "-o" || (absl::StartsWith(word, "-o") && word.size() > 2 &&
                                              word[2] != '-'))) {
      if (word.size() > 2) {
        args.flags_["output"] = word.substr(2);
      } else if (i + 1 < argc) {
        args.flags_["output"] = argv[++i];
      } else {
        return absl::InvalidArgumentError("-o needs a value: json, wide or text");
      }
      continue;
    }
    if (only_positional || !absl::StartsWith(word, "--") || word == "-") {
      args.positional_.push_back(word);
      continue;
    }
    if (word == "--") {
      only_positional = true;
      continue;
    }
    std::string key = word.substr(2);
    std::string value;
    const size_t equals = key.find('=');
    if (equals != std::string::npos) {
      value = key.substr(equals + 1);
      key = key.substr(0, equals);
    } else if (switches.count(key)) {
      value = "true";
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", key, " needs a value"));
    }
    if (key.empty()) return absl::InvalidArgumentError(absl::StrCat("malformed flag '", word, "'"));
    args.flags_[key] = value;
  }
  return args;
}

absl::Status Args::Allow(const std::set<std::string>& allowed) const {
  for (const auto& [key, value] : flags_) {
    if (!allowed.count(key) && !GlobalFlags().count(key)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", key));
    }
  }
  return absl::OkStatus();
}

std::string Args::Get(const std::string& flag, const std::string& fallback) const {
  auto it = flags_.find(flag);
  return it == flags_.end() ? fallback : it->second;
}

absl::StatusOr<std::optional<int64_t>> Args::GetInt(const std::string& flag) const {
  auto it = flags_.find(flag);
  if (it == flags_.end()) return std::optional<int64_t>();
  int64_t value;
  if (!absl::SimpleAtoi(it->second, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("usage: --", flag, " takes an integer, not '", it->second, "'"));
  }
  return std::optional<int64_t>(value);
}

absl::StatusOr<std::optional<double>> Args::GetDouble(const std::string& flag) const {
  auto it = flags_.find(flag);
  if (it == flags_.end()) return std::optional<double>();
  double value;
  if (!absl::SimpleAtod(it->second, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("usage: --", flag, " takes a number, not '", it->second, "'"));
  }
  return std::optional<double>(value);
}

}  // namespace miseg::cli

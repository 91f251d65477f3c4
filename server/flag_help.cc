#include "server/flag_help.h"

#include <algorithm>
#include <iostream>
#include <vector>

#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace miseg {
namespace {

bool AsksForHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-help" || arg == "--helpshort" || arg == "-helpshort") {
      return true;
    }
  }
  return false;
}

void PrintOwnFlags(const std::string& own_flags_file) {
  std::vector<const absl::CommandLineFlag*> own;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (absl::EndsWith(flag->Filename(), own_flags_file)) own.push_back(flag);
  }
  std::sort(own.begin(), own.end(), [](const absl::CommandLineFlag* a,
                                       const absl::CommandLineFlag* b) {
    return a->Name() < b->Name();
  });
  std::cout << absl::ProgramUsageMessage() << "\n\nFlags (--helpfull adds Abseil's own):\n";
  for (const absl::CommandLineFlag* flag : own) {
    const std::string value = flag->DefaultValue();
    std::cout << "  --" << flag->Name() << " (default: "
              << (flag->IsOfType<std::string>() ? absl::StrCat("\"", value, "\"") : value)
              << ")\n      " << flag->Help() << "\n";
  }
}

}  // namespace

bool HandleHelp(int argc, char** argv, const std::string& own_flags_file,
                const std::string& version_line) {
  absl::FlagsUsageConfig usage;
  const auto is_own = [own_flags_file](absl::string_view file) {
    return absl::EndsWith(file, own_flags_file);
  };
  usage.contains_helpshort_flags = is_own;
  usage.contains_help_flags = is_own;
  usage.version_string = [version_line] { return version_line; };
  absl::SetFlagsUsageConfig(usage);
  if (!AsksForHelp(argc, argv)) return false;
  PrintOwnFlags(own_flags_file);
  return true;
}

}  // namespace miseg

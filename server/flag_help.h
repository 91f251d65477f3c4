// --help for miseg's programs: only the program's own flags, sorted, each with its default,
// and exit status 0 (Abseil 20220623 exits 1 after --help and lists its own flags too;
// --helpfull still shows everything).
#ifndef MISEG_SERVER_FLAG_HELP_H_
#define MISEG_SERVER_FLAG_HELP_H_

#include <string>

namespace miseg {

// Sets Abseil's usage so that the flags defined in the source file whose name ends with
// own_flags_file are the program's own, and --version prints version_line. Returns true
// when argv asks for --help or --helpshort, after printing the program's usage message and
// its own flags: the caller then exits 0. Call after absl::SetProgramUsageMessage, before
// absl::ParseCommandLine.
bool HandleHelp(int argc, char** argv, const std::string& own_flags_file,
                const std::string& version_line);

}  // namespace miseg

#endif  // MISEG_SERVER_FLAG_HELP_H_

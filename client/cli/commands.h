// The subcommands of `miseg`.
#ifndef MISEG_CLIENT_CLI_COMMANDS_H_
#define MISEG_CLIENT_CLI_COMMANDS_H_

#include <string>

#include "client/cli/args.h"

namespace miseg::cli {

std::string Usage();
// Runs the command the positional words name; returns the process exit code.
int RunCommand(const Args& args);

}  // namespace miseg::cli

#endif  // MISEG_CLIENT_CLI_COMMANDS_H_

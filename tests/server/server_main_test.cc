// miseg-server's command line as an operator meets it: --help lists the server's own flags
// with their help and defaults, and exits 0.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/server/server_process.h"

namespace miseg::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(ServerMain, HelpListsTheServersOwnFlagsWithDefaults) {
  for (const char* help : {"--help", "--helpshort"}) {
    auto [status, output] = ServerProcess::RunToExit({help});
    EXPECT_EQ(status, 0) << help << "\n" << output;
    EXPECT_THAT(output, HasSubstr("miseg-server [flags]")) << output;
    EXPECT_THAT(output, HasSubstr("hash-token"));
    // A sample of the flags, each with its default and help text.
    EXPECT_THAT(output, HasSubstr("--data_dir (default: \"miseg-data\")\n"
                                  "      Directory of the database"));
    EXPECT_THAT(output, HasSubstr("--listen (default: \"127.0.0.1:50051\")\n"
                                  "      gRPC address"));
    EXPECT_THAT(output, HasSubstr("--inference_queue (default: 4)\n"
                                  "      Segmentations that may wait"));
    EXPECT_THAT(output, HasSubstr("--shutdown_grace_seconds (default: 30)\n"
                                  "      How long running calls may finish at shutdown\n"));
    EXPECT_THAT(output, HasSubstr("--allow_insecure_remote (default: false)\n"));
    EXPECT_THAT(output, HasSubstr("--devices (default: cpu)\n      The server's own training devices"));
    // Not Abseil's own flags, nor its "No flags matched".
    for (const char* absl_flag :
         {"--flagfile", "--fromenv", "--tryfromenv", "--undefok", "No flags matched"}) {
      EXPECT_THAT(output, Not(HasSubstr(absl_flag))) << output;
    }
  }
}

TEST(ServerMain, EveryFlagOfTheServerIsListedWithItsDefaultAndHelp) {
  auto [status, output] = ServerProcess::RunToExit({"--help"});
  ASSERT_EQ(status, 0) << output;
  int flags = 0;
  for (size_t at = output.find("\n  --"); at != std::string::npos;
       at = output.find("\n  --", at + 1)) {
    const size_t end = output.find('\n', at + 1);
    const std::string line = output.substr(at + 1, end - at - 1);
    EXPECT_THAT(line, HasSubstr(" (default: ")) << line;
    // The help text on the next line.
    EXPECT_EQ(output.compare(end + 1, 6, "      "), 0) << line;
    EXPECT_GT(output.find('\n', end + 1), end + 8) << line;
    ++flags;
  }
  EXPECT_GE(flags, 18) << output;
}

TEST(ServerMain, VersionNamesTheServer) {
  auto [status, output] = ServerProcess::RunToExit({"--version"});
  EXPECT_EQ(status, 0) << output;
  EXPECT_THAT(output, HasSubstr("miseg-server 0.1.0"));
}

}  // namespace
}  // namespace miseg::testing

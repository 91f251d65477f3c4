// miseg: the command line of miseg-server. See `miseg help`.
#include <cstdio>
#include <string>

#include "client/cli/args.h"
#include "client/cli/commands.h"
#include "client/cli/output.h"
#include "core/dicom/series_reader.h"
#include "dcmtk/oflog/oflog.h"

int main(int argc, char** argv) {
  using namespace miseg::cli;
  absl::StatusOr<Args> args =
      Args::Parse(argc, argv, {"json", "quiet", "help", "small", "watch", "no-follow", "wide", "force"});
  if (!args.ok()) {
    fprintf(stderr, "miseg: %s\n%s", std::string(args.status().message()).c_str(), Usage().c_str());
    return kExitUsage;
  }
  if (args->positional().empty() || args->Has("help") || args->positional()[0] == "help") {
    fputs(Usage().c_str(), args->positional().empty() && !args->Has("help") ? stderr : stdout);
    return args->positional().empty() && !args->Has("help") ? kExitUsage : kExitOk;
  }
  // DCMTK's own log lines ("W: DcmItem: ...") would interleave with the CLI's output; the
  // CLI reports what DCMTK could not read itself (a refused file, a "miseg:" error line).
  OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
  miseg::RegisterDicomCodecs();
  return RunCommand(*args);
}

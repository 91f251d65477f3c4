// miseg-chaos: the chaos test of issue 13 (tests/chaos/README.md).
//
//   miseg-chaos [--kills N] [--seed S] [--min-delay-ms A] [--max-delay-ms B]
//               [--job-steps T] [--keep DIR]
//
// Exit status 0 when every invariant held through every kill, 1 otherwise (each violation
// printed, with the seed to reproduce the run), 2 for a usage error, 77 when it cannot run
// here (Orthanc not installed).
#include <cstdlib>
#include <iostream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tests/chaos/chaos_harness.h"

namespace {

int Usage() {
  std::cerr << "usage: miseg-chaos [--kills N] [--seed S] [--min-delay-ms A] [--max-delay-ms B]"
               " [--job-steps T] [--keep DIR]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  miseg::chaos::ChaosOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) return Usage();
    const std::string value = argv[++i];
    bool ok = true;
    if (flag == "--kills") {
      ok = absl::SimpleAtoi(value, &options.kills) && options.kills >= 0;
    } else if (flag == "--seed") {
      ok = absl::SimpleAtoi(value, &options.seed);
    } else if (flag == "--min-delay-ms") {
      ok = absl::SimpleAtoi(value, &options.min_delay_ms);
    } else if (flag == "--max-delay-ms") {
      ok = absl::SimpleAtoi(value, &options.max_delay_ms);
    } else if (flag == "--job-steps") {
      ok = absl::SimpleAtoi(value, &options.job_steps) && options.job_steps > 2;
    } else if (flag == "--keep") {
      options.keep_dir = value;
    } else {
      ok = false;
    }
    if (!ok) return Usage();
  }
  if (options.min_delay_ms < 0 || options.max_delay_ms < options.min_delay_ms) return Usage();
  return miseg::chaos::Harness(options).Run();
}

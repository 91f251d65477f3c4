// Writes small phantom studies as DICOM folders for the tests that drive the server from
// outside C++ (the Python client test): <out>/<subject>/ holds one file per slice and, for
// the first `labeled` subjects, the DICOM SEG (every file named by its SOP Instance UID).
//   miseg-test-phantom OUT COUNT LABELED [POPULATION_SEED]
#include <cstdlib>
#include <iostream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/dicom/phantom_study.h"
#include "tests/server/test_studies.h"

int main(int argc, char** argv) {
  int count = 0, labeled = 0;
  uint64_t seed = 7;
  if ((argc != 4 && argc != 5) || !absl::SimpleAtoi(argv[2], &count) ||
      !absl::SimpleAtoi(argv[3], &labeled) || (argc == 5 && !absl::SimpleAtoi(argv[4], &seed))) {
    std::cerr << "usage: miseg-test-phantom OUT COUNT LABELED [POPULATION_SEED]\n";
    return 2;
  }
  for (int i = 0; i < count; ++i) {
    absl::StatusOr<miseg::PhantomStudy> study = miseg::testing::SmallPhantomStudy(seed, i, i < labeled);
    if (!study.ok()) {
      std::cerr << study.status() << "\n";
      return 1;
    }
    const std::string folder = absl::StrCat(argv[1], "/subject-", i);
    if (absl::Status s = miseg::WriteStudyToFolder(*study, folder); !s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
  }
  return 0;
}

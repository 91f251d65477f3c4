// Small phantom studies for the server tests (SmallPhantomOptions): uploads, training and
// segmentation take seconds on two CPU cores.
#ifndef MISEG_TESTS_SERVER_TEST_STUDIES_H_
#define MISEG_TESTS_SERVER_TEST_STUDIES_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/dicom/phantom_study.h"
#include "core/phantom/phantom.h"

namespace miseg::testing {

inline absl::StatusOr<PhantomStudy> SmallPhantomStudy(uint64_t population_seed, int index,
                                                      bool with_segmentation) {
  const PhantomOptions options = SmallPhantomOptions();
  const PhantomSubject subject = GeneratePhantomSubject(population_seed, index, options);
  return MakePhantomStudy(subject, absl::StrCat("p", population_seed, "-", index),
                          with_segmentation);
}

}  // namespace miseg::testing

#endif  // MISEG_TESTS_SERVER_TEST_STUDIES_H_

// Phantom subjects as the experiments use them: one population, subjects by index.
#ifndef MISEG_BENCH_PHANTOM_SUBJECTS_H_
#define MISEG_BENCH_PHANTOM_SUBJECTS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/phantom/phantom.h"
#include "core/volume/volume.h"

namespace miseg {

struct Subject {
  std::string id;
  ImageVolume image;
  LabelVolume labels;
};

// Subjects first .. first + count - 1 of the population.
inline std::vector<Subject> MakeSubjects(uint64_t population, int first, int count) {
  std::vector<Subject> out;
  for (int i = first; i < first + count; ++i) {
    PhantomSubject s = GeneratePhantomSubject(population, i);
    out.push_back({absl::StrCat("subject-", i), std::move(s.image), std::move(s.labels)});
  }
  return out;
}

}  // namespace miseg

#endif  // MISEG_BENCH_PHANTOM_SUBJECTS_H_

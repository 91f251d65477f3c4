// Which BLAS LibTorch calls in this process, and whether several threads may call it at
// once. Debian's serial OpenBLAS (libopenblas0-serial, what deploy/install-deps.sh installs)
// is built without locking: two threads inside it at once can be handed the same work
// buffer and corrupt each other's results (OpenBLAS issues #2126 and #2164). Training uses
// it for every transposed and 1x1 convolution, inference too, so two training jobs, or a
// training job and a segmentation, running at once on the CPU can silently change each
// other's numbers. Measured here (tests/server/job_runner_test.cc, two 6-step jobs at once
// against the same jobs one after the other): 5 runs in 30 differed with the serial
// OpenBLAS, 0 in 30 with Debian's OpenMP build of the same OpenBLAS (libopenblas0-openmp).
//
// Torch-free header; thread safe.
#ifndef MISEG_CORE_TRAIN_BLAS_H_
#define MISEG_CORE_TRAIN_BLAS_H_

#include <string>

namespace miseg {

struct BlasInfo {
  std::string config;        // openblas_get_config(), or "not OpenBLAS"
  bool thread_safe = false;  // false for an OpenBLAS built single-threaded
};

// A single-threaded OpenBLAS is reported unsafe even if it was built with USE_LOCKING
// (its configuration string does not say); any other BLAS is taken to be thread safe.
BlasInfo DescribeBlas();

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_BLAS_H_

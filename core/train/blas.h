// Which BLAS LibTorch calls in this process, and keeping it safe for several threads.
// Debian's serial OpenBLAS (libopenblas0-serial, what deploy/install-deps.sh installs because
// the pthread and OpenMP builds stop civetweb from starting its threads) is built without
// locking: two threads inside it at once can be handed the same work buffer and corrupt each
// other's results (OpenBLAS issues #2126 and #2164). LibTorch uses it for every transposed and
// 1x1 convolution, in training and inference, so two training jobs, or a job and a
// segmentation, running at once on the CPU silently changed each other's numbers: measured
// here (tests/server/job_runner_test.cc, two 6-step jobs at once against the same jobs one
// after the other), 5 runs in 30 differed with the serial OpenBLAS, 0 in 30 with Debian's
// OpenMP build of the same OpenBLAS.
//
// So this library defines the level-2 and level-3 BLAS entry points LibTorch calls (sgemm_,
// sgemv_, strsm_ and their d/c/z forms). An executable that links it exports them, the
// dynamic linker binds LibTorch's calls to them, and each forwards to the real function,
// under one process-wide lock when the BLAS is not thread safe (level-1 routines use no
// shared buffer and are left alone). With a thread-safe BLAS (OpenMP OpenBLAS, MKL, a CUDA
// LibTorch's own) the wrappers only forward.
//
// Torch-free header; thread safe.
#ifndef MISEG_CORE_TRAIN_BLAS_H_
#define MISEG_CORE_TRAIN_BLAS_H_

#include <string>

namespace miseg {

struct BlasInfo {
  std::string config;        // openblas_get_config(), or "not OpenBLAS"
  bool thread_safe = false;  // false for an OpenBLAS built single-threaded
  // Calls from several threads take turns (thread_safe is false and the wrappers above
  // serialise them): results are then the same as with one thread at a time.
  bool serialized = false;
};

// A single-threaded OpenBLAS is reported unsafe even if it was built with USE_LOCKING
// (its configuration string does not say); any other BLAS is taken to be thread safe.
BlasInfo DescribeBlas();

// True when concurrent BLAS calls are safe in this process, natively or serialised.
inline bool BlasSafeForThreads(const BlasInfo& info) { return info.thread_safe || info.serialized; }

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_BLAS_H_

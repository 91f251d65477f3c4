// DescribeBlas, and the BLAS entry points that serialise LibTorch's calls into a BLAS that is
// not thread safe (see blas.h).
#include "core/train/blas.h"

#include <dlfcn.h>

#include <complex>
#include <cstdio>
#include <cstdlib>

#include "absl/base/const_init.h"
#include "absl/synchronization/mutex.h"

namespace miseg {
namespace {

BlasInfo AskOpenBlas() {
  using GetConfig = char* (*)();
  // LibTorch links libopenblas.so.0 directly, so its symbols are in the global scope.
  auto get_config = reinterpret_cast<GetConfig>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  BlasInfo info;
  if (get_config == nullptr) {
    info.config = "not OpenBLAS";
    info.thread_safe = true;
    return info;
  }
  const char* config = get_config();
  info.config = config != nullptr ? config : "";
  info.thread_safe = info.config.find("SINGLE_THREADED") == std::string::npos;
  info.serialized = !info.thread_safe;
  return info;
}

const BlasInfo& Blas() {
  static const BlasInfo* const info = new BlasInfo(AskOpenBlas());
  return *info;
}

ABSL_CONST_INIT absl::Mutex blas_mutex(absl::kConstInit);
// Depth of our wrappers on this thread: a BLAS routine that calls another exported one goes
// through a wrapper again, and must not wait for the lock it holds.
thread_local int wrapper_depth = 0;

template <typename Fn>
Fn Real(const char* name) {
  void* real = dlsym(RTLD_NEXT, name);
  if (real == nullptr) {
    // Only reached when LibTorch calls a BLAS routine that nothing after us defines, which
    // the dynamic linker would have refused at load time without our definition.
    std::fprintf(stderr, "miseg: no BLAS defines %s\n", name);
    std::abort();
  }
  return reinterpret_cast<Fn>(real);
}

template <typename Fn, typename... Args>
void Forward(Fn real, Args... args) {
  if (!Blas().serialized || wrapper_depth > 0) {
    real(args...);
    return;
  }
  absl::MutexLock lock(&blas_mutex);
  ++wrapper_depth;
  real(args...);
  --wrapper_depth;
}

}  // namespace

BlasInfo DescribeBlas() { return Blas(); }

}  // namespace miseg

// Named by the training core's link options, so every executable linking it takes this object.
extern "C" {
extern const int miseg_blas_wrappers_linked;
const int miseg_blas_wrappers_linked = 1;
}

// Fortran BLAS signatures, as LibTorch declares them (no hidden string lengths).
#define MISEG_BLAS_GEMM(name, T)                                                             \
  extern "C" void name(const char* transa, const char* transb, const int* m, const int* n,   \
                       const int* k, const T* alpha, const T* a, const int* lda, const T* b, \
                       const int* ldb, const T* beta, T* c, const int* ldc) {                \
    static const auto real = miseg::Real<decltype(&name)>(#name);                            \
    miseg::Forward(real, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);      \
  }
#define MISEG_BLAS_GEMV(name, T)                                                             \
  extern "C" void name(const char* trans, const int* m, const int* n, const T* alpha,       \
                       const T* a, const int* lda, const T* x, const int* incx, const T* beta, \
                       T* y, const int* incy) {                                              \
    static const auto real = miseg::Real<decltype(&name)>(#name);                            \
    miseg::Forward(real, trans, m, n, alpha, a, lda, x, incx, beta, y, incy);                \
  }
#define MISEG_BLAS_TRSM(name, T)                                                             \
  extern "C" void name(const char* side, const char* uplo, const char* transa,              \
                       const char* diag, const int* m, const int* n, const T* alpha,        \
                       const T* a, const int* lda, T* b, const int* ldb) {                   \
    static const auto real = miseg::Real<decltype(&name)>(#name);                            \
    miseg::Forward(real, side, uplo, transa, diag, m, n, alpha, a, lda, b, ldb);             \
  }

MISEG_BLAS_GEMM(sgemm_, float)
MISEG_BLAS_GEMM(dgemm_, double)
MISEG_BLAS_GEMM(cgemm_, std::complex<float>)
MISEG_BLAS_GEMM(zgemm_, std::complex<double>)
MISEG_BLAS_GEMV(sgemv_, float)
MISEG_BLAS_GEMV(dgemv_, double)
MISEG_BLAS_TRSM(strsm_, float)
MISEG_BLAS_TRSM(dtrsm_, double)
MISEG_BLAS_TRSM(ctrsm_, std::complex<float>)
MISEG_BLAS_TRSM(ztrsm_, std::complex<double>)

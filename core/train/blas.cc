// DescribeBlas: asks the OpenBLAS that LibTorch loaded (if any) for its configuration.
#include "core/train/blas.h"

#include <dlfcn.h>

namespace miseg {

BlasInfo DescribeBlas() {
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
  return info;
}

}  // namespace miseg

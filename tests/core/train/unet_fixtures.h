// Test helper: batch-norm statistics far from their initial constants (mean 0, variance 1),
// so that folding them or reading them wrongly shows in the logits.
#ifndef MISEG_TESTS_CORE_TRAIN_UNET_FIXTURES_H_
#define MISEG_TESTS_CORE_TRAIN_UNET_FIXTURES_H_

#include <string>

#include "core/train/unet.h"

namespace miseg::testing {

inline void RandomiseBatchNormStatistics(UNet& model) {
  torch::NoGradGuard no_grad;
  for (auto& buffer : model->named_buffers()) {
    if (buffer.key().find("running_mean") != std::string::npos) buffer.value().normal_(0, 0.1);
    if (buffer.key().find("running_var") != std::string::npos) buffer.value().uniform_(0.5, 2);
  }
}

}  // namespace miseg::testing

#endif  // MISEG_TESTS_CORE_TRAIN_UNET_FIXTURES_H_

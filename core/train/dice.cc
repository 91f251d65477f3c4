// Dice counting in one pass over both volumes.
#include "core/train/dice.h"

#include "absl/strings/str_cat.h"

namespace miseg {

absl::StatusOr<std::vector<double>> DicePerClass(const LabelVolume& prediction,
                                                 const LabelVolume& truth, int64_t classes) {
  if (classes < 2 || classes > 256) return absl::InvalidArgumentError("dice: classes must be in [2, 256]");
  if (!prediction.consistent() || !truth.consistent() ||
      !prediction.geometry.SameGrid(truth.geometry)) {
    return absl::InvalidArgumentError("dice: prediction and truth must share one consistent grid");
  }
  std::vector<int64_t> predicted(classes, 0), actual(classes, 0), both(classes, 0);
  for (size_t i = 0; i < truth.voxels.size(); ++i) {
    const uint8_t p = prediction.voxels[i];
    const uint8_t t = truth.voxels[i];
    if (p >= classes || t >= classes) {
      return absl::InvalidArgumentError(absl::StrCat("dice: label ", int{p >= classes ? p : t},
                                                     " is not below the class count ", classes));
    }
    ++predicted[p];
    ++actual[t];
    if (p == t) ++both[p];
  }
  std::vector<double> dice;
  for (int64_t k = 1; k < classes; ++k) {
    const int64_t total = predicted[k] + actual[k];
    dice.push_back(total == 0 ? 1.0 : 2.0 * static_cast<double>(both[k]) / static_cast<double>(total));
  }
  return dice;
}

}  // namespace miseg

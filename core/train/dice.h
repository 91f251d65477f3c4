// 3D Dice per class between two label volumes on the same grid: the validation metric of
// the method (per class, per patient volume). Plain C++, so the server and the benchmarks
// can score segmentations without LibTorch.
#ifndef MISEG_CORE_TRAIN_DICE_H_
#define MISEG_CORE_TRAIN_DICE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/volume/volume.h"

namespace miseg {

// Dice of classes 1..classes-1 (index 0 of the result is class 1). A class absent from both
// volumes scores 1: the segmentation agrees that it is not there. InvalidArgument when the
// grids differ or a label is >= classes.
absl::StatusOr<std::vector<double>> DicePerClass(const LabelVolume& prediction,
                                                 const LabelVolume& truth, int64_t classes);

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_DICE_H_

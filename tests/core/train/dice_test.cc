// Dice on known masks, and its refusals.
#include "core/train/dice.h"

#include <gtest/gtest.h>

namespace miseg {
namespace {

LabelVolume Labels(int64_t slices, int64_t rows, int64_t cols, std::vector<uint8_t> values) {
  VolumeGeometry g;
  g.slices = slices;
  g.rows = rows;
  g.cols = cols;
  LabelVolume v(g);
  v.voxels = std::move(values);
  return v;
}

TEST(Dice, ExactOnKnownMasks) {
  // Class 1: predicted 3 voxels, true 4, overlap 2 -> 4/7. Class 2: predicted 1, true 1,
  // overlap 1 -> 1. Class 3: absent from both -> 1.
  const LabelVolume truth = Labels(2, 2, 3, {1, 1, 1, 1, 0, 0, 0, 0, 2, 0, 0, 0});
  const LabelVolume pred = Labels(2, 2, 3, {1, 1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0});
  auto dice = DicePerClass(pred, truth, 4);
  ASSERT_TRUE(dice.ok()) << dice.status();
  ASSERT_EQ(dice->size(), 3u);
  EXPECT_DOUBLE_EQ((*dice)[0], 4.0 / 7.0);
  EXPECT_DOUBLE_EQ((*dice)[1], 1.0);
  EXPECT_DOUBLE_EQ((*dice)[2], 1.0);
}

TEST(Dice, MissedClassScoresZero) {
  const LabelVolume truth = Labels(1, 1, 4, {0, 2, 2, 0});
  const LabelVolume pred = Labels(1, 1, 4, {0, 0, 0, 0});
  auto dice = DicePerClass(pred, truth, 3);
  ASSERT_TRUE(dice.ok());
  EXPECT_DOUBLE_EQ((*dice)[1], 0.0);
}

TEST(Dice, RefusesMismatchedGrids) {
  auto dice = DicePerClass(Labels(1, 2, 2, {0, 0, 0, 0}), Labels(1, 1, 4, {0, 0, 0, 0}), 2);
  EXPECT_EQ(dice.status().code(), absl::StatusCode::kInvalidArgument);
  LabelVolume broken = Labels(1, 2, 2, {0, 0, 0});
  EXPECT_EQ(DicePerClass(broken, broken, 2).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Dice, RefusesLabelsOutsideTheClasses) {
  const LabelVolume v = Labels(1, 1, 2, {0, 5});
  auto dice = DicePerClass(v, v, 4);
  EXPECT_EQ(dice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(dice.status().message().find("label 5"), std::string::npos);
}

}  // namespace
}  // namespace miseg

// A montage of a series' slices with a segmentation laid over them, for people who would
// rather look at a result than read Dice scores.
#ifndef MISEG_CLIENT_RENDER_OVERLAY_H_
#define MISEG_CLIENT_RENDER_OVERLAY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/render/png.h"
#include "core/volume/volume.h"

namespace miseg::render {

struct OverlayOptions {
  // Tiles per row of the grid; 0 picks ceil(sqrt(slices)). More than the slice count is
  // treated as the slice count.
  int columns = 0;
  // Each slice is resampled so that its longer side spans this many pixels (8..4096); the
  // other side follows the physical aspect (rows * row spacing vs cols * col spacing). Tiles
  // shrink on their own when the montage would exceed kMaxImageSide.
  int tile_size = 192;
  // Bilinear interpolation of intensities; false for nearest neighbour. Labels are always
  // sampled nearest-neighbour: they are categories, not quantities.
  bool bilinear = true;
  // Opacity of the class colour over the labelled pixels, 0..1.
  double fill_alpha = 0.45;
  // An opaque 1-pixel outline in the class colour around each labelled region, so that the
  // boundary stays visible where the fill is faint against bright tissue.
  bool outline = true;
  // 1-based slice numbers (as viewers count) in the top-left corner of each tile.
  bool slice_numbers = true;
  // A strip at the bottom with each class's colour and name.
  bool legend = true;
  // Drawn above the grid when not empty (e.g. the series and model).
  std::string title;
  // Font scale for all text, 1..8 (1 is 5x7-pixel glyphs).
  int text_scale = 1;
};

// The fixed class palette: 1 red, 2 green, 3 blue, 4 yellow, 5 magenta, 6 cyan, 7 orange,
// 8 purple, then brown, pink, teal, olive, and round again from red for label 13 on.
// Label 0 (background) is never drawn; it maps to black.
Rgb ClassColor(int label);

// The intensities mapped to black and white: the 1st and 99th percentiles of the finite
// voxels of the whole volume (so one hot pixel does not grey out every slice, and every
// slice shares one scale). Volumes over 4M voxels are sampled at a regular stride. A
// constant volume gives a unit-wide window around its value; no finite voxel gives [0, 1].
struct IntensityWindow {
  double low = 0.0;
  double high = 1.0;
};
IntensityWindow PercentileWindow(const ImageVolume& image);

// Renders every slice of image, greyscale in the percentile window, in a grid (slice 0
// top-left, row by row), with labels (same grid as image) blended in ClassColor(label).
// class_names[k] names label k (class_names[0], the background, is not shown); labels
// beyond class_names are shown as "class k". The legend lists every named foreground class
// and every other label value present. InvalidArgument when either volume is inconsistent,
// their grids differ, or an option is out of range.
absl::StatusOr<RgbImage> RenderOverlayMontage(const ImageVolume& image, const LabelVolume& labels,
                                              const std::vector<std::string>& class_names,
                                              const OverlayOptions& options = {});

}  // namespace miseg::render

#endif  // MISEG_CLIENT_RENDER_OVERLAY_H_

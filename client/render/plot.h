// Line plots of a training job's curves (loss terms, validation Dice) against steps, as a
// PNG-ready image: stacked panels sharing one step axis, white background.
#ifndef MISEG_CLIENT_RENDER_PLOT_H_
#define MISEG_CLIENT_RENDER_PLOT_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "client/render/png.h"

namespace miseg::render {

// One curve: (x, y) points, in any order (they are drawn sorted by x). Points with a
// non-finite x are dropped; a non-finite y breaks the line there, so that a diverged step
// shows as a gap instead of being bridged. A point with no drawable neighbour is drawn as a
// small square.
struct Series {
  std::string name;  // empty: no legend entry
  std::vector<std::pair<double, double>> points;
  // nullopt: SeriesColor(position of the series in its panel).
  std::optional<Rgb> color;
};

struct PlotPanel {
  std::string title;
  std::string y_label;
  std::vector<Series> series;
  // Fixed [low, high] for the y axis (e.g. {0, 1} for Dice); values outside are clipped at
  // the frame. nullopt: the finite data's range, padded and widened to round tick values.
  std::optional<std::pair<double, double>> y_range;
};

struct PlotSpec {
  std::string title;
  std::string x_label = "step";
  std::vector<PlotPanel> panels;
  // Image width, and the height of each panel including its title and tick labels.
  int width = 960;
  int panel_height = 340;
  // One x range for all panels, so that the same step lines up vertically.
  bool share_x = true;
  // Font scale, 1..4 (2 draws 10x14-pixel glyphs).
  int text_scale = 2;
};

// A tab10-like palette: blue, orange, green, red, purple, brown, pink, grey, olive, cyan,
// then round again.
Rgb SeriesColor(int index);

// Round tick values (1, 2 or 5 times a power of ten apart) inside [low, high], ends
// included when they are multiples of the step; about target_count of them. Empty when the
// interval is empty or not finite.
std::vector<double> NiceTicks(double low, double high, int target_count);

// Renders the panels stacked top to bottom under the title, each with a frame, grid, tick
// labels, its curves and a legend of series names to the right. Series without points and
// panels without finite points are fine (the latter say "no data"); constant data gets a
// padded range. InvalidArgument when there is no panel, a size is out of range (width
// 200..kMaxImageSide, panel_height 120..4096, total height within kMaxImageSide), or a fixed
// y range is not finite with low < high.
absl::StatusOr<RgbImage> RenderPlot(const PlotSpec& spec);

}  // namespace miseg::render

#endif  // MISEG_CLIENT_RENDER_PLOT_H_

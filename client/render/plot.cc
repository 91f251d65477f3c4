#include "client/render/plot.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/render/draw.h"

namespace miseg::render {
namespace {

constexpr Rgb kWhite = {255, 255, 255};
constexpr Rgb kInk = {20, 20, 20};
constexpr Rgb kFrame = {60, 60, 60};
constexpr Rgb kGrid = {228, 228, 228};
constexpr Rgb kMuted = {150, 150, 150};
constexpr int kLineThickness = 2;

constexpr std::array<Rgb, 10> kPalette = {{
    {31, 119, 180},   // blue
    {255, 127, 14},   // orange
    {44, 160, 44},    // green
    {214, 39, 40},    // red
    {148, 103, 189},  // purple
    {140, 86, 75},    // brown
    {227, 119, 194},  // pink
    {127, 127, 127},  // grey
    {188, 189, 34},   // olive
    {23, 190, 207},   // cyan
}};

struct Range {
  double low = 0.0;
  double high = 1.0;
};

// 1, 2 or 5 times a power of ten, the closest to raw (Heckbert's "nice numbers").
double NiceStep(double raw) {
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double fraction = raw / magnitude;
  double nice = 10.0;
  if (fraction < 1.5) {
    nice = 1.0;
  } else if (fraction < 3.0) {
    nice = 2.0;
  } else if (fraction < 7.0) {
    nice = 5.0;
  }
  return nice * magnitude;
}

std::vector<double> TicksWithStep(double low, double high, double step) {
  std::vector<double> ticks;
  if (!(step > 0.0) || !std::isfinite(step)) return ticks;
  // Tolerances of a millionth of a step keep ends that are multiples of the step despite
  // rounding (0.1 * 3 vs 0.3).
  const double first = std::ceil(low / step - 1e-6);
  const double last = std::floor(high / step + 1e-6);
  if (!std::isfinite(first) || !std::isfinite(last) || last - first > 1000) return ticks;
  for (double k = first; k <= last; k += 1.0) {
    const double value = k * step;
    ticks.push_back(value == 0.0 ? 0.0 : value);  // no "-0"
  }
  return ticks;
}

// Labels with as many decimals as the step needs: 0, 0.2, 0.4 and 1000, 2000.
std::string TickLabel(double value, double step) {
  char buffer[64];
  if (std::abs(value) >= 1e7 || step < 1e-6) {
    std::snprintf(buffer, sizeof(buffer), "%.4g", value);
  } else {
    const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 9);
    std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  }
  return buffer;
}

// Finite data spread of both coordinates; nullopt when there is no finite point.
struct Extent {
  Range x;
  Range y;
};
std::optional<Extent> DataExtent(const std::vector<Series>& series) {
  std::optional<Extent> extent;
  for (const Series& s : series) {
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      if (!extent) {
        extent = Extent{{x, x}, {y, y}};
        continue;
      }
      extent->x.low = std::min(extent->x.low, x);
      extent->x.high = std::max(extent->x.high, x);
      extent->y.low = std::min(extent->y.low, y);
      extent->y.high = std::max(extent->y.high, y);
    }
  }
  return extent;
}

// A single value gets room around it: a tenth of its magnitude, or 1 around zero.
Range PadIfFlat(Range r) {
  if (r.high > r.low) return r;
  const double pad = r.low != 0.0 ? std::abs(r.low) * 0.1 : 1.0;
  return {r.low - pad, r.high + pad};
}

// Data ranges to axis ranges: y gets a 5% margin and widens to round ticks (so the frame
// ends on a labelled value); x stays tight so the curves use the whole width.
Range AxisRangeY(Range data, int target_ticks) {
  data = PadIfFlat(data);
  const double margin = 0.05 * (data.high - data.low);
  data = {data.low - margin, data.high + margin};
  const double step = NiceStep((data.high - data.low) / std::max(1, target_ticks - 1));
  Range widened = {std::floor(data.low / step) * step, std::ceil(data.high / step) * step};
  // Beyond double precision (1e300-sized values) widening overflows: keep the plain range.
  if (!std::isfinite(widened.low) || !std::isfinite(widened.high)) return data;
  return widened;
}

struct PanelLayout {
  int top = 0;  // of the panel, title included
  int plot_left = 0, plot_top = 0, plot_width = 0, plot_height = 0;
  Range x;
  Range y;
  std::vector<double> x_ticks, y_ticks;
  double x_step = 1.0, y_step = 1.0;
  bool has_data = false;
};

absl::Status Validate(const PlotSpec& spec) {
  if (spec.panels.empty()) return absl::InvalidArgumentError("RenderPlot: no panel to draw");
  if (spec.width < 200 || spec.width > kMaxImageSide) {
    return absl::InvalidArgumentError(
        absl::StrCat("RenderPlot: width must be in [200, ", kMaxImageSide, "], got ", spec.width));
  }
  if (spec.panel_height < 120 || spec.panel_height > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("RenderPlot: panel_height must be in [120, 4096], got ", spec.panel_height));
  }
  if (spec.text_scale < 1 || spec.text_scale > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("RenderPlot: text_scale must be in [1, 4], got ", spec.text_scale));
  }
  for (const PlotPanel& panel : spec.panels) {
    if (!panel.y_range) continue;
    const auto [low, high] = *panel.y_range;
    if (!std::isfinite(low) || !std::isfinite(high) || !(low < high)) {
      return absl::InvalidArgumentError(absl::StrCat("RenderPlot: panel \"", panel.title,
                                                     "\" has y range [", low, ", ", high, "]"));
    }
  }
  return absl::OkStatus();
}

// Draws one series into the panel's plot area, clipped to it.
void DrawSeries(RgbImage& image, const PanelLayout& p, const Series& series, Rgb color) {
  std::vector<std::pair<double, double>> points;
  points.reserve(series.points.size());
  for (const auto& point : series.points) {
    if (std::isfinite(point.first)) points.push_back(point);
  }
  std::stable_sort(points.begin(), points.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });

  const double x_scale = (p.plot_width - 1) / (p.x.high - p.x.low);
  const double y_scale = (p.plot_height - 1) / (p.y.high - p.y.low);
  auto px = [&](double x) { return p.plot_left + (x - p.x.low) * x_scale; };
  auto py = [&](double y) { return p.plot_top + (p.y.high - y) * y_scale; };
  // Centre lines are clipped to the plot area; where the 2-pixel brush spills one pixel
  // right or down, the frame drawn afterwards covers it.
  const double right = p.plot_left + p.plot_width - 1;
  const double bottom = p.plot_top + p.plot_height - 1;
  auto finite = [&](size_t i) { return i < points.size() && std::isfinite(points[i].second); };

  for (size_t i = 0; i < points.size(); ++i) {
    if (!finite(i)) continue;
    const bool joined_before = i > 0 && finite(i - 1);
    const bool joined_after = finite(i + 1);
    if (joined_after) {
      double x0 = px(points[i].first), y0 = py(points[i].second);
      double x1 = px(points[i + 1].first), y1 = py(points[i + 1].second);
      if (ClipSegment(x0, y0, x1, y1, p.plot_left, p.plot_top, right, bottom)) {
        DrawLine(image, static_cast<int>(std::lround(x0)), static_cast<int>(std::lround(y0)),
                 static_cast<int>(std::lround(x1)), static_cast<int>(std::lround(y1)), color,
                 kLineThickness);
      }
    }
    if (!joined_before && !joined_after) {
      // A lone point would be invisible as a line: mark it with a 5x5 square.
      const double cx = px(points[i].first), cy = py(points[i].second);
      if (cx >= p.plot_left && cx <= right && cy >= p.plot_top && cy <= bottom) {
        const int x = static_cast<int>(std::lround(cx)), y = static_cast<int>(std::lround(cy));
        const int x_begin = std::max(x - 2, p.plot_left);
        const int y_begin = std::max(y - 2, p.plot_top);
        const int x_end = std::min(x + 3, p.plot_left + p.plot_width);
        const int y_end = std::min(y + 3, p.plot_top + p.plot_height);
        FillRect(image, x_begin, y_begin, x_end - x_begin, y_end - y_begin, color);
      }
    }
  }
}

// Sizes that follow from the text scale, the same for every panel.
struct Bands {
  int s = 1, char_height = 0, pad = 0, tick_length = 0;
  int title = 0, panel_title = 0, x_label = 0, plot_height = 0;
  int64_t total_height = 0;
};

Bands BandsFor(const PlotSpec& spec) {
  Bands b;
  b.s = spec.text_scale;
  b.char_height = kGlyphHeight * b.s;
  b.pad = 6 * b.s;
  b.tick_length = 3 * b.s;
  // Vertical bands: title, then per panel (panel title, plot, x tick labels), then x label.
  b.title = spec.title.empty() ? b.pad : TextHeight(spec.title, b.s + 1) + 2 * b.pad;
  b.panel_title = b.char_height + 2 * b.pad;
  const int x_ticks_band = b.tick_length + 2 * b.s + b.char_height + b.pad;
  b.x_label = spec.x_label.empty() ? b.pad : b.char_height + 2 * b.pad;
  b.plot_height = spec.panel_height - b.panel_title - x_ticks_band;
  b.total_height = static_cast<int64_t>(b.title) +
                   static_cast<int64_t>(spec.panels.size()) * spec.panel_height + b.x_label;
  return b;
}

// Ranges and y ticks per panel; also the widest y tick label and legend name, which the
// left and right margins depend on.
std::vector<PanelLayout> RangesAndTicks(const PlotSpec& spec, const Bands& b, int* widest_y_label,
                                        int* widest_legend) {
  std::vector<PanelLayout> layouts(spec.panels.size());
  std::optional<Range> shared_x;
  for (const PlotPanel& panel : spec.panels) {
    if (const auto extent = DataExtent(panel.series)) {
      shared_x = shared_x ? Range{std::min(shared_x->low, extent->x.low),
                                  std::max(shared_x->high, extent->x.high)}
                          : extent->x;
    }
  }
  const int target_y_ticks = std::clamp(b.plot_height / (22 * b.s), 2, 10);
  for (size_t i = 0; i < spec.panels.size(); ++i) {
    const PlotPanel& panel = spec.panels[i];
    PanelLayout& p = layouts[i];
    const auto extent = DataExtent(panel.series);
    p.has_data = extent.has_value();
    const std::optional<Range> x_data =
        spec.share_x ? shared_x : (extent ? std::optional<Range>(extent->x) : std::nullopt);
    p.x = x_data ? PadIfFlat(*x_data) : Range{0.0, 1.0};
    if (panel.y_range) {
      p.y = {panel.y_range->first, panel.y_range->second};
    } else {
      p.y = extent ? AxisRangeY(extent->y, target_y_ticks) : Range{0.0, 1.0};
    }
    p.y_step = NiceStep((p.y.high - p.y.low) / std::max(1, target_y_ticks - 1));
    p.y_ticks = TicksWithStep(p.y.low, p.y.high, p.y_step);
    for (double tick : p.y_ticks) {
      *widest_y_label = std::max(*widest_y_label, TextWidth(TickLabel(tick, p.y_step), b.s));
    }
    for (const Series& series : panel.series) {
      *widest_legend = std::max(*widest_legend, TextWidth(series.name, b.s));
    }
  }
  return layouts;
}

// Grid and ticks with their labels, under the curves.
void DrawGridAndTicks(RgbImage& image, const PanelLayout& p, const Bands& b) {
  const int s = b.s;
  const int plot_right = p.plot_left + p.plot_width - 1;
  const int plot_bottom = p.plot_top + p.plot_height - 1;
  for (double tick : p.x_ticks) {
    const int x = p.plot_left + static_cast<int>(std::lround((tick - p.x.low) / (p.x.high - p.x.low) *
                                                            (p.plot_width - 1)));
    DrawLine(image, x, p.plot_top, x, plot_bottom, kGrid);
    DrawLine(image, x, plot_bottom + 1, x, plot_bottom + b.tick_length, kFrame);
    const std::string label = TickLabel(tick, p.x_step);
    DrawText(image, x - TextWidth(label, s) / 2, plot_bottom + b.tick_length + 2 * s, label, kInk,
             s);
  }
  for (double tick : p.y_ticks) {
    const int y = p.plot_top + static_cast<int>(std::lround((p.y.high - tick) / (p.y.high - p.y.low) *
                                                           (p.plot_height - 1)));
    DrawLine(image, p.plot_left, y, plot_right, y, kGrid);
    DrawLine(image, p.plot_left - b.tick_length, y, p.plot_left - 1, y, kFrame);
    const std::string label = TickLabel(tick, p.y_step);
    DrawText(image, p.plot_left - b.tick_length - 2 * s - TextWidth(label, s),
             y - b.char_height / 2, label, kInk, s);
  }
}

// A coloured dash and the name per series, top-down beside the plot.
void DrawLegend(RgbImage& image, const PlotPanel& panel, const PanelLayout& p, const Bands& b) {
  const int legend_swatch = 2 * kCharAdvance * b.s;
  const int plot_right = p.plot_left + p.plot_width - 1;
  int legend_y = p.plot_top;
  for (size_t k = 0; k < panel.series.size(); ++k) {
    const Series& series = panel.series[k];
    if (series.name.empty()) continue;  // unnamed: a curve without an entry
    const int x = plot_right + 1 + b.pad;
    FillRect(image, x, legend_y + b.char_height / 2 - b.s, legend_swatch, 2 * b.s,
             series.color.value_or(SeriesColor(static_cast<int>(k))));
    DrawText(image, x + legend_swatch + 2 * b.s, legend_y, series.name, kInk, b.s);
    legend_y += b.char_height + 2 * b.pad / 3;
  }
}

void DrawPanel(RgbImage& image, const PlotPanel& panel, const PanelLayout& p, const Bands& b) {
  const int s = b.s;
  DrawGridAndTicks(image, p, b);
  for (size_t k = 0; k < panel.series.size(); ++k) {
    const Series& series = panel.series[k];
    DrawSeries(image, p, series, series.color.value_or(SeriesColor(static_cast<int>(k))));
  }
  if (!p.has_data) {
    const std::string message = "no data";
    DrawText(image, p.plot_left + (p.plot_width - TextWidth(message, s)) / 2,
             p.plot_top + (p.plot_height - b.char_height) / 2, message, kMuted, s);
  }
  // The frame over the curves.
  DrawRect(image, p.plot_left - 1, p.plot_top - 1, p.plot_width + 2, p.plot_height + 2, kFrame);
  DrawText(image, p.plot_left, p.top + b.pad, panel.title, kInk, s);
  if (!panel.y_label.empty()) {
    DrawTextVertical(image, b.pad, p.plot_top + (p.plot_height - TextWidth(panel.y_label, s)) / 2,
                     panel.y_label, kInk, s);
  }
  DrawLegend(image, panel, p, b);
}

}  // namespace

Rgb SeriesColor(int index) {
  const size_t n = kPalette.size();
  return kPalette[((index % static_cast<int>(n)) + n) % n];
}

std::vector<double> NiceTicks(double low, double high, int target_count) {
  if (!std::isfinite(low) || !std::isfinite(high) || !(high > low) || !std::isfinite(high - low)) {
    return {};
  }
  return TicksWithStep(low, high, NiceStep((high - low) / std::max(1, target_count - 1)));
}

absl::StatusOr<RgbImage> RenderPlot(const PlotSpec& spec) {
  if (absl::Status status = Validate(spec); !status.ok()) return status;
  const Bands b = BandsFor(spec);
  const int s = b.s;
  if (b.total_height > kMaxImageSide) {
    return absl::InvalidArgumentError(absl::StrCat("RenderPlot: ", spec.panels.size(),
                                                   " panels make the image ", b.total_height,
                                                   " pixels tall, over ", kMaxImageSide));
  }
  int widest_y_label = 0;
  int widest_legend = 0;
  std::vector<PanelLayout> layouts = RangesAndTicks(spec, b, &widest_y_label, &widest_legend);

  // Horizontal bands: y label, y tick labels, plot, legend (names capped to a third).
  const int legend_swatch = 2 * kCharAdvance * s;
  const int left = b.pad + b.char_height + b.pad + widest_y_label + 2 * s + b.tick_length;
  const int right = widest_legend > 0
                        ? std::min(2 * b.pad + legend_swatch + 2 * s + widest_legend, spec.width / 3)
                        : 2 * b.pad;
  const int plot_width = spec.width - left - right;
  if (plot_width < 40 || b.plot_height < 40) {
    return absl::InvalidArgumentError(
        absl::StrCat("RenderPlot: ", spec.width, "x", spec.panel_height, " panels leave a ",
                     plot_width, "x", b.plot_height, " plot area next to their labels"));
  }
  const int target_x_ticks = std::clamp(plot_width / (12 * kCharAdvance * s), 2, 10);

  RgbImage image(spec.width, static_cast<int>(b.total_height), kWhite);
  if (!spec.title.empty()) {
    DrawText(image, (spec.width - TextWidth(spec.title, s + 1)) / 2, b.pad, spec.title, kInk, s + 1);
  }
  for (size_t i = 0; i < spec.panels.size(); ++i) {
    PanelLayout& p = layouts[i];
    p.top = b.title + static_cast<int>(i) * spec.panel_height;
    p.plot_left = left;
    p.plot_top = p.top + b.panel_title;
    p.plot_width = plot_width;
    p.plot_height = b.plot_height;
    p.x_step = NiceStep((p.x.high - p.x.low) / std::max(1, target_x_ticks - 1));
    p.x_ticks = TicksWithStep(p.x.low, p.x.high, p.x_step);
    DrawPanel(image, spec.panels[i], p, b);
  }
  if (!spec.x_label.empty()) {
    const int y = b.title + static_cast<int>(spec.panels.size()) * spec.panel_height;
    DrawText(image, left + (plot_width - TextWidth(spec.x_label, s)) / 2, y, spec.x_label, kInk, s);
  }
  return image;
}

}  // namespace miseg::render

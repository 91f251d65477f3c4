#include "client/render/overlay.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/render/draw.h"

namespace miseg::render {
namespace {

constexpr Rgb kBackground = {24, 24, 24};
constexpr Rgb kText = {235, 235, 235};
constexpr Rgb kShadow = {0, 0, 0};
// Space between tiles and around the grid, in pixels.
constexpr int kGap = 2;
// Percentiles are computed from at most this many voxels.
constexpr size_t kMaxPercentileSamples = size_t{1} << 22;

constexpr std::array<Rgb, 12> kPalette = {{
    {255, 40, 40},    // red
    {40, 210, 40},    // green
    {50, 110, 255},   // blue
    {255, 225, 0},    // yellow
    {230, 40, 230},   // magenta
    {0, 220, 220},    // cyan
    {255, 140, 0},    // orange
    {150, 90, 255},   // purple
    {170, 110, 40},   // brown
    {255, 140, 190},  // pink
    {0, 150, 140},    // teal
    {150, 150, 0},    // olive
}};

struct TileSize {
  int width = 0;
  int height = 0;
};

// The tile for a slice whose longer physical side gets `longer` pixels.
TileSize TileFor(const VolumeGeometry& g, int longer) {
  // A missing or nonsensical spacing must not stop the picture: fall back to square pixels.
  auto usable = [](double s) { return std::isfinite(s) && s > 0.0 ? s : 1.0; };
  const double width_mm = static_cast<double>(g.cols) * usable(g.col_spacing_mm);
  const double height_mm = static_cast<double>(g.rows) * usable(g.row_spacing_mm);
  TileSize tile;
  if (width_mm >= height_mm) {
    tile.width = longer;
    tile.height = static_cast<int>(std::lround(longer * height_mm / width_mm));
  } else {
    tile.height = longer;
    tile.width = static_cast<int>(std::lround(longer * width_mm / height_mm));
  }
  tile.width = std::max(tile.width, 1);
  tile.height = std::max(tile.height, 1);
  return tile;
}

struct LegendEntry {
  int label = 0;
  std::string name;
};

struct LegendLayout {
  std::vector<std::pair<int, int>> positions;  // top-left of each entry, strip-relative
  int height = 0;
};

// Entries flow left to right and wrap to the width available.
LegendLayout LayOutLegend(const std::vector<LegendEntry>& entries, int width, int scale) {
  LegendLayout layout;
  if (entries.empty()) return layout;
  const int pad = 4 * scale;
  const int swatch = kGlyphHeight * scale;
  const int line = (kGlyphHeight + 5) * scale;
  int x = pad;
  int y = pad;
  for (const LegendEntry& entry : entries) {
    const int entry_width = swatch + 3 * scale + TextWidth(entry.name, scale);
    if (x > pad && x + entry_width > width - pad) {
      x = pad;
      y += line;
    }
    layout.positions.emplace_back(x, y);
    x += entry_width + 2 * kCharAdvance * scale;
  }
  layout.height = y + swatch + pad;
  return layout;
}

// Greyscale value for a voxel under the window; non-finite voxels are black.
float Grey(float v, double low, double inv_width) {
  if (!std::isfinite(v)) return 0.0f;
  const double t = std::clamp((v - low) * inv_width, 0.0, 1.0);
  return static_cast<float>(t * 255.0);
}

// Draws slice k into the tile at (x0, y0).
void DrawTile(const ImageVolume& image, const LabelVolume& labels, int64_t k,
              const IntensityWindow& window, const TileSize& tile, const OverlayOptions& options,
              int x0, int y0, RgbImage& out) {
  const VolumeGeometry& g = image.geometry;
  const double inv_width = 1.0 / (window.high - window.low);
  const double col_scale = static_cast<double>(g.cols) / tile.width;
  const double row_scale = static_cast<double>(g.rows) / tile.height;
  std::vector<uint8_t> tile_labels(static_cast<size_t>(tile.width) * tile.height);

  for (int ty = 0; ty < tile.height; ++ty) {
    // Pixel centres map to source coordinates, with voxel centres at integers.
    const double v = (ty + 0.5) * row_scale - 0.5;
    const int64_t nearest_row = std::clamp<int64_t>(std::llround(v), 0, g.rows - 1);
    for (int tx = 0; tx < tile.width; ++tx) {
      const double u = (tx + 0.5) * col_scale - 0.5;
      const int64_t nearest_col = std::clamp<int64_t>(std::llround(u), 0, g.cols - 1);
      float grey = 0.0f;
      if (options.bilinear) {
        const double cu = std::clamp(u, 0.0, static_cast<double>(g.cols - 1));
        const double cv = std::clamp(v, 0.0, static_cast<double>(g.rows - 1));
        const int64_t c0 = static_cast<int64_t>(cu);
        const int64_t r0 = static_cast<int64_t>(cv);
        const int64_t c1 = std::min(c0 + 1, g.cols - 1);
        const int64_t r1 = std::min(r0 + 1, g.rows - 1);
        const float fu = static_cast<float>(cu - c0);
        const float fv = static_cast<float>(cv - r0);
        const float top = Grey(image.at(k, r0, c0), window.low, inv_width) * (1 - fu) +
                          Grey(image.at(k, r0, c1), window.low, inv_width) * fu;
        const float bottom = Grey(image.at(k, r1, c0), window.low, inv_width) * (1 - fu) +
                             Grey(image.at(k, r1, c1), window.low, inv_width) * fu;
        grey = top * (1 - fv) + bottom * fv;
      } else {
        grey = Grey(image.at(k, nearest_row, nearest_col), window.low, inv_width);
      }
      const uint8_t level = static_cast<uint8_t>(std::lround(std::clamp(grey, 0.0f, 255.0f)));
      out.set(x0 + tx, y0 + ty, {level, level, level});
      tile_labels[static_cast<size_t>(ty) * tile.width + tx] =
          labels.at(k, nearest_row, nearest_col);
    }
  }

  for (int ty = 0; ty < tile.height; ++ty) {
    for (int tx = 0; tx < tile.width; ++tx) {
      const uint8_t label = tile_labels[static_cast<size_t>(ty) * tile.width + tx];
      if (label == 0) continue;
      bool boundary = false;
      if (options.outline) {
        // A labelled pixel with a differently labelled 4-neighbour inside the tile.
        auto differs = [&](int nx, int ny) {
          if (nx < 0 || ny < 0 || nx >= tile.width || ny >= tile.height) return false;
          return tile_labels[static_cast<size_t>(ny) * tile.width + nx] != label;
        };
        boundary = differs(tx - 1, ty) || differs(tx + 1, ty) || differs(tx, ty - 1) ||
                   differs(tx, ty + 1);
      }
      BlendPixel(out, x0 + tx, y0 + ty, ClassColor(label), boundary ? 1.0 : options.fill_alpha);
    }
  }

  if (options.slice_numbers) {
    const std::string number = absl::StrCat(k + 1);
    const int s = options.text_scale;
    // A drop shadow keeps the number readable over bright tissue and over labels alike.
    DrawText(out, x0 + 2 * s + 1, y0 + 2 * s + 1, number, kShadow, s);
    DrawText(out, x0 + 2 * s, y0 + 2 * s, number, kText, s);
  }
}

absl::Status ValidateOptions(const OverlayOptions& options) {
  if (options.columns < 0) {
    return absl::InvalidArgumentError(absl::StrCat("columns must be >= 0, got ", options.columns));
  }
  if (options.tile_size < 8 || options.tile_size > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("tile_size must be in [8, 4096], got ", options.tile_size));
  }
  if (!(options.fill_alpha >= 0.0 && options.fill_alpha <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("fill_alpha must be in [0, 1], got ", options.fill_alpha));
  }
  if (options.text_scale < 1 || options.text_scale > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("text_scale must be in [1, 8], got ", options.text_scale));
  }
  return absl::OkStatus();
}

absl::Status ValidateVolumes(const ImageVolume& image, const LabelVolume& labels) {
  if (!image.consistent()) {
    return absl::InvalidArgumentError(
        absl::StrCat("image volume is inconsistent: ", image.voxels.size(), " voxels for ",
                     image.geometry.slices, "x", image.geometry.rows, "x", image.geometry.cols));
  }
  if (!labels.consistent()) {
    return absl::InvalidArgumentError(
        absl::StrCat("label volume is inconsistent: ", labels.voxels.size(), " voxels for ",
                     labels.geometry.slices, "x", labels.geometry.rows, "x", labels.geometry.cols));
  }
  const VolumeGeometry& g = image.geometry;
  if (!labels.geometry.SameGrid(g)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "labels ", labels.geometry.slices, "x", labels.geometry.rows, "x", labels.geometry.cols,
        " do not match image ", g.slices, "x", g.rows, "x", g.cols));
  }
  return absl::OkStatus();
}

// Every named foreground class, then any other label value that occurs.
std::vector<LegendEntry> LegendFor(const LabelVolume& labels,
                                   const std::vector<std::string>& class_names) {
  std::array<bool, 256> present{};
  for (uint8_t label : labels.voxels) present[label] = true;
  std::vector<LegendEntry> legend;
  for (int label = 1; label < 256; ++label) {
    const bool named = static_cast<size_t>(label) < class_names.size();
    if (!named && !present[label]) continue;
    legend.push_back({label, named ? class_names[label] : absl::StrCat("class ", label)});
  }
  return legend;
}

struct MontageGrid {
  int64_t columns = 1, rows = 1;
  TileSize tile;
  int64_t width = 0, height = 0;  // of the tiles with their gaps
};

// Shrinks the tiles until the montage fits the encoder's limit; gives up only when even
// minimal tiles cannot fit (tens of thousands of slices).
absl::StatusOr<MontageGrid> FitMontage(const VolumeGeometry& g, const OverlayOptions& options,
                                       int title_height) {
  MontageGrid m;
  const int64_t slices = g.slices;
  m.columns = options.columns > 0
                  ? std::min<int64_t>(options.columns, slices)
                  : static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(slices))));
  m.rows = (slices + m.columns - 1) / m.columns;
  int longer = options.tile_size;
  while (true) {
    m.tile = TileFor(g, longer);
    m.width = m.columns * (m.tile.width + kGap) + kGap;
    m.height = m.rows * (m.tile.height + kGap) + kGap;
    // The legend adds less than a few hundred pixels; leave it room.
    const int64_t reserve = title_height + 512;
    if (m.width <= kMaxImageSide && m.height + reserve <= kMaxImageSide) return m;
    if (longer <= 8) {
      return absl::InvalidArgumentError(absl::StrCat("a montage of ", slices, " slices in ",
                                                     m.columns, " columns cannot fit ",
                                                     kMaxImageSide, " pixels per side"));
    }
    longer = std::max(8, longer * 3 / 4);
  }
}

}  // namespace

Rgb ClassColor(int label) {
  if (label <= 0) return {0, 0, 0};
  return kPalette[static_cast<size_t>(label - 1) % kPalette.size()];
}

IntensityWindow PercentileWindow(const ImageVolume& image) {
  const size_t n = image.voxels.size();
  const size_t stride =
      n > kMaxPercentileSamples ? (n + kMaxPercentileSamples - 1) / kMaxPercentileSamples : 1;
  std::vector<float> values;
  values.reserve(n / stride + 1);
  for (size_t i = 0; i < n; i += stride) {
    if (std::isfinite(image.voxels[i])) values.push_back(image.voxels[i]);
  }
  if (values.empty()) return {};
  auto percentile = [&values](double p) {
    const size_t index = static_cast<size_t>(std::llround(p * (values.size() - 1)));
    std::nth_element(values.begin(), values.begin() + index, values.end());
    return static_cast<double>(values[index]);
  };
  IntensityWindow window;
  window.low = percentile(0.01);
  window.high = percentile(0.99);
  if (!(window.high > window.low)) {
    window.low -= 0.5;
    window.high = window.low + 1.0;
  }
  return window;
}

absl::StatusOr<RgbImage> RenderOverlayMontage(const ImageVolume& image, const LabelVolume& labels,
                                              const std::vector<std::string>& class_names,
                                              const OverlayOptions& options) {
  if (absl::Status status = ValidateOptions(options); !status.ok()) return status;
  if (absl::Status status = ValidateVolumes(image, labels); !status.ok()) return status;
  const VolumeGeometry& g = image.geometry;
  std::vector<LegendEntry> legend;
  if (options.legend) legend = LegendFor(labels, class_names);
  const int scale = options.text_scale;
  const int title_height = options.title.empty() ? 0 : TextHeight(options.title, scale) + 6 * scale;
  absl::StatusOr<MontageGrid> grid = FitMontage(g, options, title_height);
  if (!grid.ok()) return grid.status();
  const LegendLayout legend_layout = LayOutLegend(legend, static_cast<int>(grid->width), scale);
  const int64_t height = title_height + grid->height + legend_layout.height;
  if (height > kMaxImageSide) {
    return absl::InvalidArgumentError(
        absl::StrCat("montage height ", height, " exceeds ", kMaxImageSide, " pixels"));
  }

  RgbImage out(static_cast<int>(grid->width), static_cast<int>(height), kBackground);
  if (!options.title.empty()) {
    DrawText(out, kGap + 2 * scale, 3 * scale, options.title, kText, scale);
  }
  const IntensityWindow window = PercentileWindow(image);
  const TileSize& tile = grid->tile;
  for (int64_t k = 0; k < g.slices; ++k) {
    const int x0 = static_cast<int>(kGap + (k % grid->columns) * (tile.width + kGap));
    const int y0 =
        static_cast<int>(title_height + kGap + (k / grid->columns) * (tile.height + kGap));
    DrawTile(image, labels, k, window, tile, options, x0, y0, out);
  }
  const int legend_top = static_cast<int>(title_height + grid->height);
  const int swatch = kGlyphHeight * scale;
  for (size_t i = 0; i < legend.size(); ++i) {
    const auto [x, y] = legend_layout.positions[i];
    FillRect(out, x, legend_top + y, swatch, swatch, ClassColor(legend[i].label));
    DrawText(out, x + swatch + 3 * scale, legend_top + y, legend[i].name, kText, scale);
  }
  return out;
}

}  // namespace miseg::render

// Tests of the client's pictures. The PNGs are decoded back by a small decoder written here
// from the specification (chunk CRCs, zlib, all five scanline filters) and checked pixel by
// pixel: the overlay's tints where the labels are, the grid of tiles, the legend; the plot's
// curves in their colours, clipping to fixed ranges, and NaN, infinite and empty data. The
// files also go to independent decoders when the machine has them (PIL, libpng's pngfix).
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/render/draw.h"
#include "client/render/overlay.h"
#include "client/render/plot.h"
#include "client/render/png.h"
#include "core/volume/volume.h"

namespace miseg::render {
namespace {

// ---------------------------------------------------------------------------------------
// A minimal PNG decoder for 8-bit truecolour, non-interlaced files: what EncodePng writes.

struct DecodedPng {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
  std::vector<std::string> chunk_types;  // in file order
  std::set<int> filters_used;
};

uint32_t ReadBigEndian32(const std::string& data, size_t at) {
  return (static_cast<uint32_t>(static_cast<uint8_t>(data[at])) << 24) |
         (static_cast<uint32_t>(static_cast<uint8_t>(data[at + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<uint8_t>(data[at + 2])) << 8) |
         static_cast<uint32_t>(static_cast<uint8_t>(data[at + 3]));
}

int PaethPredictor(int a, int b, int c) {
  const int p = a + b - c;
  const int pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  return pb <= pc ? b : c;
}

::testing::AssertionResult DecodePng(const std::string& png, DecodedPng* out) {
  static const std::string kSignature("\x89PNG\r\n\x1a\n", 8);
  if (png.compare(0, 8, kSignature) != 0) return ::testing::AssertionFailure() << "no signature";
  std::string idat;
  bool seen_iend = false;
  size_t at = 8;
  while (at < png.size()) {
    if (seen_iend) return ::testing::AssertionFailure() << "data after IEND";
    if (at + 12 > png.size()) return ::testing::AssertionFailure() << "truncated chunk header";
    const uint32_t length = ReadBigEndian32(png, at);
    if (at + 12 + length > png.size()) return ::testing::AssertionFailure() << "truncated chunk";
    const std::string type = png.substr(at + 4, 4);
    const std::string data = png.substr(at + 8, length);
    const uint32_t stored_crc = ReadBigEndian32(png, at + 8 + length);
    const uLong crc = crc32(crc32(0L, Z_NULL, 0),
                            reinterpret_cast<const Bytef*>(png.data() + at + 4), 4 + length);
    if (crc != stored_crc) return ::testing::AssertionFailure() << "bad CRC in " << type;
    out->chunk_types.push_back(type);
    if (type == "IHDR") {
      if (out->chunk_types.size() != 1) return ::testing::AssertionFailure() << "late IHDR";
      if (length != 13) return ::testing::AssertionFailure() << "IHDR length " << length;
      out->width = static_cast<int>(ReadBigEndian32(data, 0));
      out->height = static_cast<int>(ReadBigEndian32(data, 4));
      if (data[8] != 8 || data[9] != 2 || data[10] != 0 || data[11] != 0 || data[12] != 0) {
        return ::testing::AssertionFailure() << "not 8-bit RGB, deflate, adaptive, progressive";
      }
    } else if (type == "IDAT") {
      idat += data;
    } else if (type == "IEND") {
      if (length != 0) return ::testing::AssertionFailure() << "IEND with data";
      seen_iend = true;
    }
    at += 12 + length;
  }
  if (out->chunk_types.empty() || out->chunk_types.front() != "IHDR" || !seen_iend) {
    return ::testing::AssertionFailure() << "missing IHDR or IEND";
  }
  if (out->width <= 0 || out->height <= 0) return ::testing::AssertionFailure() << "empty size";

  const size_t row_bytes = static_cast<size_t>(out->width) * 3;
  const size_t expected = (row_bytes + 1) * out->height;
  std::vector<uint8_t> raw(expected + 1);  // one spare byte: too much data must not fit
  uLongf raw_size = raw.size();
  const int rc =
      uncompress(raw.data(), &raw_size, reinterpret_cast<const Bytef*>(idat.data()), idat.size());
  if (rc != Z_OK) return ::testing::AssertionFailure() << "zlib uncompress failed: " << rc;
  if (raw_size != expected) {
    return ::testing::AssertionFailure() << raw_size << " bytes of scanlines, want " << expected;
  }

  out->rgb.assign(row_bytes * out->height, 0);
  for (int y = 0; y < out->height; ++y) {
    const uint8_t filter = raw[y * (row_bytes + 1)];
    const uint8_t* in = &raw[y * (row_bytes + 1) + 1];
    uint8_t* row = &out->rgb[y * row_bytes];
    const uint8_t* prev = y > 0 ? &out->rgb[(y - 1) * row_bytes] : nullptr;
    if (filter > 4) return ::testing::AssertionFailure() << "filter type " << int{filter};
    out->filters_used.insert(filter);
    for (size_t i = 0; i < row_bytes; ++i) {
      const int a = i >= 3 ? row[i - 3] : 0;
      const int b = prev ? prev[i] : 0;
      const int c = prev && i >= 3 ? prev[i - 3] : 0;
      int predictor = 0;
      switch (filter) {
        case 1:
          predictor = a;
          break;
        case 2:
          predictor = b;
          break;
        case 3:
          predictor = (a + b) / 2;
          break;
        case 4:
          predictor = PaethPredictor(a, b, c);
          break;
        default:
          break;
      }
      row[i] = static_cast<uint8_t>(in[i] + predictor);
    }
  }
  return ::testing::AssertionSuccess();
}

// Encodes, decodes and checks that the decoded pixels are the image's.
void ExpectPngRoundTrip(const RgbImage& image, DecodedPng* decoded = nullptr) {
  absl::StatusOr<std::string> png = EncodePng(image);
  ASSERT_TRUE(png.ok()) << png.status();
  DecodedPng local;
  DecodedPng& d = decoded ? *decoded : local;
  ASSERT_TRUE(DecodePng(*png, &d));
  EXPECT_EQ(d.width, image.width);
  EXPECT_EQ(d.height, image.height);
  EXPECT_TRUE(d.rgb == image.rgb) << "decoded pixels differ";
}

std::string WriteTempFile(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

RgbImage NoiseAndGradient(int width, int height, uint32_t seed) {
  RgbImage image(width, height, {0, 0, 0});
  std::mt19937 rng(seed);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      // Left half noise (filter 0 or 1 wins), right half smooth (up, average or Paeth).
      if (x < width / 2) {
        image.set(x, y,
                  {static_cast<uint8_t>(rng()), static_cast<uint8_t>(rng()),
                   static_cast<uint8_t>(rng())});
      } else {
        image.set(x, y,
                  {static_cast<uint8_t>(x + y), static_cast<uint8_t>(2 * y),
                   static_cast<uint8_t>(255 - x)});
      }
    }
  }
  return image;
}

int CountColor(const RgbImage& image, Rgb color, int x0 = 0, int y0 = 0, int x1 = -1, int y1 = -1) {
  if (x1 < 0) x1 = image.width;
  if (y1 < 0) y1 = image.height;
  int count = 0;
  for (int y = y0; y < y1; ++y) {
    for (int x = x0; x < x1; ++x) count += image.get(x, y) == color;
  }
  return count;
}

// ---------------------------------------------------------------------------------------
// PNG

TEST(EncodePng, RoundTripsPixelsExactlyAtManySizes) {
  for (const auto& [w, h] :
       std::vector<std::pair<int, int>>{{1, 1}, {2, 1}, {1, 5}, {7, 3}, {64, 64}, {301, 97}}) {
    SCOPED_TRACE(absl::StrCat(w, "x", h));
    ExpectPngRoundTrip(NoiseAndGradient(w, h, static_cast<uint32_t>(w * 1000 + h)));
  }
}

TEST(EncodePng, WritesSignatureChunksInOrderWithValidCrcs) {
  absl::StatusOr<std::string> png = EncodePng(NoiseAndGradient(40, 30, 7));
  ASSERT_TRUE(png.ok());
  EXPECT_EQ(png->substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  DecodedPng decoded;
  ASSERT_TRUE(DecodePng(*png, &decoded));
  ASSERT_GE(decoded.chunk_types.size(), 3u);
  EXPECT_EQ(decoded.chunk_types.front(), "IHDR");
  EXPECT_EQ(decoded.chunk_types.back(), "IEND");
  for (size_t i = 1; i + 1 < decoded.chunk_types.size(); ++i) {
    EXPECT_EQ(decoded.chunk_types[i], "IDAT");
  }
  // The decoder really checks CRCs: one flipped bit in the IHDR payload is caught.
  std::string corrupt = *png;
  corrupt[8 + 8 + 3] ^= 0x01;
  DecodedPng ignored;
  EXPECT_FALSE(DecodePng(corrupt, &ignored));
}

TEST(EncodePng, PicksFiltersPerRowAndCompressesSmoothImages) {
  // Smooth rows are best predicted from above or diagonally: expect more than filter 0.
  RgbImage smooth(200, 100, {0, 0, 0});
  for (int y = 0; y < smooth.height; ++y) {
    for (int x = 0; x < smooth.width; ++x) {
      smooth.set(x, y,
                 {static_cast<uint8_t>(x), static_cast<uint8_t>(y * 2),
                  static_cast<uint8_t>((x + y) / 2)});
    }
  }
  DecodedPng decoded;
  ExpectPngRoundTrip(smooth, &decoded);
  EXPECT_TRUE(decoded.filters_used.size() > 1 || !decoded.filters_used.count(0))
      << "only filter 0 used on a gradient";
  absl::StatusOr<std::string> png = EncodePng(smooth);
  ASSERT_TRUE(png.ok());
  EXPECT_LT(png->size(), smooth.rgb.size() / 10);

  RgbImage flat(500, 400, {12, 200, 99});
  absl::StatusOr<std::string> flat_png = EncodePng(flat);
  ASSERT_TRUE(flat_png.ok());
  EXPECT_LT(flat_png->size(), 2000u);
}

TEST(EncodePng, RejectsEmptyInconsistentAndAbsurdImages) {
  EXPECT_EQ(EncodePng(RgbImage()).status().code(), absl::StatusCode::kInvalidArgument);
  RgbImage wrong_buffer(4, 4, {1, 2, 3});
  wrong_buffer.rgb.pop_back();
  EXPECT_EQ(EncodePng(wrong_buffer).status().code(), absl::StatusCode::kInvalidArgument);
  RgbImage lying_size(4, 4, {1, 2, 3});
  lying_size.width = 5;
  EXPECT_EQ(EncodePng(lying_size).status().code(), absl::StatusCode::kInvalidArgument);
  RgbImage negative;
  negative.width = -3;
  negative.height = 2;
  EXPECT_EQ(EncodePng(negative).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(RgbImage(kMaxImageSide + 1, 1, {})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(RgbImage(1, kMaxImageSide + 1, {})).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The limit itself is fine.
  DecodedPng decoded;
  ExpectPngRoundTrip(RgbImage(kMaxImageSide, 2, {9, 8, 7}), &decoded);
}

// PIL is an independent decoder; Debian's python3-pil may or may not be installed.
TEST(EncodePng, PilDecodesTheSamePixels) {
  const std::string python = MISEG_SYSTEM_PYTHON;
  if (std::system((python + " -c 'import PIL' >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << python << " has no PIL";
  }
  const RgbImage image = NoiseAndGradient(123, 45, 99);
  absl::StatusOr<std::string> png = EncodePng(image);
  ASSERT_TRUE(png.ok());
  const std::string in = WriteTempFile("render_test_pil.png", *png);
  const std::string out = ::testing::TempDir() + "render_test_pil.rgb";
  const std::string command =
      python +
      " -c \"import sys; from PIL import Image; im = Image.open(sys.argv[1]); "
      "im.load(); assert im.mode == 'RGB', im.mode; "
      "open(sys.argv[2], 'wb').write(im.tobytes())\" " +
      in + " " + out;
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  const std::string pixels = ReadFile(out);
  EXPECT_TRUE(pixels == std::string(image.rgb.begin(), image.rgb.end()));
}

// libpng's pngfix reads the file with libpng and reports chunk, CRC and zlib problems in
// its exit status (0: nothing to fix).
TEST(EncodePng, LibpngPngfixFindsNothingToFix) {
  const std::string pngfix = MISEG_PNGFIX;
  if (std::system(("test -x " + pngfix).c_str()) != 0) GTEST_SKIP() << "no " << pngfix;
  for (const auto& [w, h] : std::vector<std::pair<int, int>>{{1, 1}, {300, 200}}) {
    absl::StatusOr<std::string> png = EncodePng(NoiseAndGradient(w, h, 3));
    ASSERT_TRUE(png.ok());
    const std::string path = WriteTempFile(absl::StrCat("render_test_fix_", w, ".png"), *png);
    EXPECT_EQ(std::system((pngfix + " -q " + path).c_str()), 0) << path;
  }
}

// ---------------------------------------------------------------------------------------
// Drawing

TEST(Draw, TextDrawsGlyphPixelsAndMeasuresItself) {
  RgbImage image(100, 30, {255, 255, 255});
  DrawText(image, 2, 2, "I", {0, 0, 0}, 1);
  // 'I' is a 7-pixel stem plus two 2-pixel serifs.
  EXPECT_EQ(CountColor(image, {0, 0, 0}), 11);
  EXPECT_EQ(TextWidth("ab", 1), 11);
  EXPECT_EQ(TextWidth("ab", 3), 33);
  EXPECT_EQ(TextWidth("abc\nd", 1), 17);
  EXPECT_EQ(TextWidth("", 2), 0);
  EXPECT_EQ(TextHeight("x", 2), 14);
  EXPECT_EQ(TextHeight("x\ny", 1), 16);

  // Scale 2 draws four times the pixels.
  RgbImage big(100, 30, {255, 255, 255});
  DrawText(big, 2, 2, "I", {0, 0, 0}, 2);
  EXPECT_EQ(CountColor(big, {0, 0, 0}), 44);
}

TEST(Draw, EveryCharacterTheClientNeedsHasAGlyph) {
  const std::string needed =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.-_:/()%,+=";
  for (char ch : needed) {
    RgbImage image(8, 10, {255, 255, 255});
    DrawText(image, 1, 0, std::string(1, ch), {0, 0, 0}, 1);
    EXPECT_GT(CountColor(image, {0, 0, 0}), 0) << "blank glyph for '" << ch << "'";
  }
  RgbImage space(8, 10, {255, 255, 255});
  DrawText(space, 1, 1, " ", {0, 0, 0}, 1);
  EXPECT_EQ(CountColor(space, {0, 0, 0}), 0);
  // Letters that look alike in 5x7 still differ.
  auto bitmap = [](const std::string& s) {
    RgbImage image(8, 10, {255, 255, 255});
    DrawText(image, 1, 0, s, {0, 0, 0}, 1);
    return image.rgb;
  };
  EXPECT_NE(bitmap("O"), bitmap("0"));
  EXPECT_NE(bitmap("l"), bitmap("1"));
  EXPECT_NE(bitmap("I"), bitmap("l"));
  // Bytes outside printable ASCII draw as '?' instead of vanishing.
  EXPECT_EQ(bitmap("\x01"), bitmap("?"));
  EXPECT_EQ(bitmap("\xc3"), bitmap("?"));
}

TEST(Draw, TextAndShapesClipAtTheEdges) {
  RgbImage image(20, 10, {255, 255, 255});
  DrawText(image, -7, -3, "clipped text", {0, 0, 0}, 3);
  DrawText(image, 1000000, 1000000, "far away", {0, 0, 0}, 1);
  DrawTextVertical(image, 15, -100, "vertical", {0, 0, 0}, 2);
  FillRect(image, -5, -5, 8, 8, {1, 2, 3});
  EXPECT_EQ(CountColor(image, {1, 2, 3}), 9);
  FillRect(image, 18, 8, 100, 100, {4, 5, 6});
  EXPECT_EQ(CountColor(image, {4, 5, 6}), 4);
}

TEST(Draw, LinesIncludeBothEndsAndClip) {
  RgbImage image(50, 40, {255, 255, 255});
  const Rgb red = {255, 0, 0};
  DrawLine(image, 5, 7, 25, 7, red);
  EXPECT_EQ(CountColor(image, red), 21);
  const Rgb green = {0, 255, 0};
  DrawLine(image, 10, 10, 30, 30, green);
  EXPECT_EQ(CountColor(image, green), 21);
  EXPECT_EQ(image.get(10, 10), green);
  EXPECT_EQ(image.get(30, 30), green);
  EXPECT_EQ(image.get(20, 20), green);

  // A steep line visits each row once.
  const Rgb blue = {0, 0, 255};
  DrawLine(image, 40, 2, 43, 37, blue);
  EXPECT_EQ(CountColor(image, blue), 36);

  // Far-off endpoints are clipped, not walked: the visible part is the row across the image.
  RgbImage clip(50, 40, {255, 255, 255});
  DrawLine(clip, -1000000000, 20, 1000000000, 20, red);
  EXPECT_EQ(CountColor(clip, red), 50);
  DrawLine(clip, -100, -100, -10, 300, green);  // wholly outside
  EXPECT_EQ(CountColor(clip, green), 0);
  DrawLine(clip, 0, 0, 0, 0, blue);  // a single point
  EXPECT_EQ(CountColor(clip, blue), 1);

  // Thick lines stamp a square brush: 10 steps of a 2x2 brush cover 11x2 pixels.
  RgbImage thick(50, 40, {255, 255, 255});
  DrawLine(thick, 5, 5, 14, 5, red, 2);
  EXPECT_EQ(CountColor(thick, red), 22);
}

TEST(Draw, ClipSegmentKeepsTheInsidePart) {
  double x0 = -10, y0 = 5, x1 = 30, y1 = 5;
  ASSERT_TRUE(ClipSegment(x0, y0, x1, y1, 0, 0, 20, 10));
  EXPECT_DOUBLE_EQ(x0, 0);
  EXPECT_DOUBLE_EQ(x1, 20);
  double a = 0, b = 0, c = 10, d = 20;
  ASSERT_TRUE(ClipSegment(a, b, c, d, 0, 0, 100, 10));
  EXPECT_DOUBLE_EQ(c, 5);
  EXPECT_DOUBLE_EQ(d, 10);
  double e = 0, f = 20, g = 10, h = 30;
  EXPECT_FALSE(ClipSegment(e, f, g, h, 0, 0, 10, 10));
  double nan = std::numeric_limits<double>::quiet_NaN(), i = 0, j = 1, k = 1;
  EXPECT_FALSE(ClipSegment(nan, i, j, k, 0, 0, 10, 10));
}

TEST(Draw, BlendMixesByAlpha) {
  RgbImage image(2, 1, {100, 100, 100});
  BlendPixel(image, 0, 0, {200, 0, 100}, 0.5);
  EXPECT_EQ(image.get(0, 0), (Rgb{150, 50, 100}));
  BlendPixel(image, 1, 0, {7, 8, 9}, 1.0);
  EXPECT_EQ(image.get(1, 0), (Rgb{7, 8, 9}));
  BlendPixel(image, 5, 5, {7, 8, 9}, 1.0);  // outside: ignored
}

// ---------------------------------------------------------------------------------------
// Overlay montage

constexpr Rgb kMontageBackground = {24, 24, 24};

VolumeGeometry Grid(int64_t slices, int64_t rows, int64_t cols, double row_mm = 1.0,
                    double col_mm = 1.0) {
  VolumeGeometry g;
  g.slices = slices;
  g.rows = rows;
  g.cols = cols;
  g.row_spacing_mm = row_mm;
  g.col_spacing_mm = col_mm;
  return g;
}

// A constant image windows to mid grey (128), so every tile pixel that is not a label, an
// outline or a slice number is exactly (128, 128, 128).
ImageVolume ConstantImage(const VolumeGeometry& g, float value = 500.0f) {
  ImageVolume image(g);
  std::fill(image.voxels.begin(), image.voxels.end(), value);
  return image;
}

uint8_t Blend(uint8_t under, uint8_t over, double alpha) {
  return static_cast<uint8_t>(std::lround(under + alpha * (over - under)));
}

bool IsMidGrey(Rgb c) { return c == Rgb{128, 128, 128}; }

// Maximal runs of mid-grey pixels along a row (horizontal) or a column: [start, length).
std::vector<std::pair<int, int>> GreyRuns(const RgbImage& image, int fixed, bool horizontal) {
  std::vector<std::pair<int, int>> runs;
  const int n = horizontal ? image.width : image.height;
  int start = -1;
  for (int i = 0; i <= n; ++i) {
    const bool grey = i < n && IsMidGrey(horizontal ? image.get(i, fixed) : image.get(fixed, i));
    if (grey && start < 0) start = i;
    if (!grey && start >= 0) {
      runs.emplace_back(start, i - start);
      start = -1;
    }
  }
  return runs;
}

struct Tiles {
  std::vector<std::pair<int, int>> columns;  // x runs of the first tile row
  std::vector<std::pair<int, int>> rows;     // y runs of the first tile column
};

// Finds the grid by scanning across the first tile row and down the first tile column,
// just below and right of the slice number in the corner (tiles here are >= 40 pixels).
Tiles FindTiles(const RgbImage& image) {
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      if (!IsMidGrey(image.get(x, y))) continue;
      Tiles tiles;
      tiles.columns = GreyRuns(image, std::min(y + 12, image.height - 1), true);
      tiles.rows = GreyRuns(image, std::min(x + 16, image.width - 1), false);
      return tiles;
    }
  }
  return {};
}

TEST(OverlayMontage, TintsLabelledPixelsAndLeavesTheRestGrey) {
  // 5 slices of 40x40; slice 2 holds a 20x20 square of class 1, slice 4 one of class 2.
  const VolumeGeometry g = Grid(5, 40, 40);
  const ImageVolume image = ConstantImage(g);
  LabelVolume labels(g);
  for (int r = 10; r < 30; ++r) {
    for (int c = 10; c < 30; ++c) {
      labels.at(2, r, c) = 1;
      labels.at(4, r, c) = 2;
    }
  }
  OverlayOptions options;
  options.tile_size = 80;  // 2x upscale: the square covers tile pixels 20..59
  options.bilinear = false;
  absl::StatusOr<RgbImage> montage =
      RenderOverlayMontage(image, labels, {"background", "lesion", "organ"}, options);
  ASSERT_TRUE(montage.ok()) << montage.status();
  DecodedPng decoded;
  ExpectPngRoundTrip(*montage, &decoded);

  const Tiles tiles = FindTiles(*montage);
  ASSERT_EQ(tiles.columns.size(), 3u);  // ceil(sqrt(5))
  ASSERT_EQ(tiles.rows.size(), 2u);
  for (const auto& run : tiles.columns) EXPECT_EQ(run.second, 80);
  for (const auto& run : tiles.rows) EXPECT_EQ(run.second, 80);

  auto tile_origin = [&](int k) {
    return std::make_pair(tiles.columns[k % 3].first, tiles.rows[k / 3].first);
  };
  const double alpha = OverlayOptions().fill_alpha;
  const Rgb red = ClassColor(1);
  const Rgb green = ClassColor(2);
  const Rgb tinted_red = {Blend(128, red.r, alpha), Blend(128, red.g, alpha),
                          Blend(128, red.b, alpha)};
  const Rgb tinted_green = {Blend(128, green.r, alpha), Blend(128, green.g, alpha),
                            Blend(128, green.b, alpha)};
  EXPECT_GT(tinted_red.r, tinted_red.g + 40);
  EXPECT_EQ(tinted_red.g, tinted_red.b);

  const auto [x2, y2] = tile_origin(2);
  // Inside the square: translucent red over grey; on its edge: the opaque outline; outside:
  // the untouched grey.
  for (int ty = 22; ty < 58; ty += 5) {
    for (int tx = 22; tx < 58; tx += 5) {
      EXPECT_EQ(montage->get(x2 + tx, y2 + ty), tinted_red) << tx << "," << ty;
    }
  }
  EXPECT_EQ(montage->get(x2 + 20, y2 + 40), red);
  EXPECT_EQ(montage->get(x2 + 59, y2 + 40), red);
  EXPECT_EQ(montage->get(x2 + 40, y2 + 20), red);
  EXPECT_EQ(montage->get(x2 + 19, y2 + 40), (Rgb{128, 128, 128}));
  EXPECT_EQ(montage->get(x2 + 60, y2 + 40), (Rgb{128, 128, 128}));
  EXPECT_EQ(montage->get(x2 + 70, y2 + 70), (Rgb{128, 128, 128}));
  EXPECT_EQ(CountColor(*montage, tinted_red, x2, y2, x2 + 80, y2 + 80), 38 * 38);

  const auto [x4, y4] = tile_origin(4);
  EXPECT_EQ(montage->get(x4 + 40, y4 + 40), tinted_green);

  // Unlabelled slices stay grey (apart from their number).
  for (int k : {0, 1, 3}) {
    const auto [x, y] = tile_origin(k);
    EXPECT_EQ(CountColor(*montage, tinted_red, x, y, x + 80, y + 80), 0) << k;
    EXPECT_GT(CountColor(*montage, {128, 128, 128}, x, y, x + 80, y + 80), 80 * 80 - 200) << k;
  }
}

TEST(OverlayMontage, OutlineAndNumbersCanBeTurnedOff) {
  const VolumeGeometry g = Grid(1, 10, 10);
  LabelVolume labels(g);
  for (int r = 2; r < 8; ++r) {
    for (int c = 2; c < 8; ++c) labels.at(0, r, c) = 3;
  }
  OverlayOptions options;
  options.tile_size = 100;
  options.outline = false;
  options.slice_numbers = false;
  options.legend = false;
  options.fill_alpha = 1.0;
  absl::StatusOr<RgbImage> montage =
      RenderOverlayMontage(ConstantImage(g), labels, {"bg", "a", "b", "c"}, options);
  ASSERT_TRUE(montage.ok()) << montage.status();
  // An opaque fill of the 6x6-voxel square, upscaled 10x, nothing else coloured or written.
  EXPECT_EQ(CountColor(*montage, ClassColor(3)), 60 * 60);
  EXPECT_EQ(CountColor(*montage, {128, 128, 128}), 100 * 100 - 60 * 60);
  EXPECT_EQ(CountColor(*montage, {235, 235, 235}), 0);  // no text
}

TEST(OverlayMontage, TileCountAndSizeFollowSlicesColumnsAndAspect) {
  struct Case {
    int64_t slices;
    int columns;
    size_t want_columns, want_rows;
  };
  for (const Case& c : std::vector<Case>{
           {1, 0, 1, 1}, {4, 0, 2, 2}, {10, 0, 4, 3}, {7, 7, 7, 1}, {3, 10, 3, 1}, {6, 1, 1, 6}}) {
    SCOPED_TRACE(absl::StrCat(c.slices, " slices, columns ", c.columns));
    const VolumeGeometry g = Grid(c.slices, 30, 30);
    OverlayOptions options;
    options.tile_size = 60;
    options.columns = c.columns;
    absl::StatusOr<RgbImage> montage =
        RenderOverlayMontage(ConstantImage(g), LabelVolume(g), {}, options);
    ASSERT_TRUE(montage.ok()) << montage.status();
    const Tiles tiles = FindTiles(*montage);
    EXPECT_EQ(tiles.columns.size(), c.want_columns);
    EXPECT_EQ(tiles.rows.size(), c.want_rows);
    // Count the tiles of the last grid row: the remainder of the slices.
    const int last_row_y = tiles.rows.back().first + 30;
    const size_t last = GreyRuns(*montage, last_row_y, true).size();
    const size_t remainder = c.slices % c.want_columns;
    EXPECT_EQ(last, remainder == 0 ? c.want_columns : remainder);
  }

  // Rows twice as far apart as columns: a 40x40 matrix is 80 mm tall and 40 mm wide.
  const VolumeGeometry tall = Grid(2, 40, 40, /*row_mm=*/2.0, /*col_mm=*/1.0);
  OverlayOptions options;
  options.tile_size = 100;
  absl::StatusOr<RgbImage> montage =
      RenderOverlayMontage(ConstantImage(tall), LabelVolume(tall), {}, options);
  ASSERT_TRUE(montage.ok());
  const Tiles tiles = FindTiles(*montage);
  ASSERT_EQ(tiles.columns.size(), 2u);
  EXPECT_EQ(tiles.columns[0].second, 50);
  ASSERT_EQ(tiles.rows.size(), 1u);
  EXPECT_EQ(tiles.rows[0].second, 100);

  // Downscaling: 400x400 slices into 100-pixel tiles, both interpolations.
  const VolumeGeometry large = Grid(2, 400, 400);
  for (bool bilinear : {false, true}) {
    options.bilinear = bilinear;
    montage = RenderOverlayMontage(ConstantImage(large), LabelVolume(large), {}, options);
    ASSERT_TRUE(montage.ok());
    const Tiles t = FindTiles(*montage);
    ASSERT_EQ(t.columns.size(), 2u);
    EXPECT_EQ(t.columns[0].second, 100);
  }
}

TEST(OverlayMontage, LegendStripShowsEachClassColourAndName) {
  const VolumeGeometry g = Grid(2, 20, 20);
  LabelVolume labels(g);
  labels.at(0, 5, 5) = 1;
  labels.at(1, 6, 6) = 7;  // beyond the names: listed as "class 7"
  OverlayOptions options;
  options.tile_size = 60;
  absl::StatusOr<RgbImage> montage =
      RenderOverlayMontage(ConstantImage(g), labels, {"background", "rv", "myo", "lv"}, options);
  ASSERT_TRUE(montage.ok()) << montage.status();
  const Tiles tiles = FindTiles(*montage);
  ASSERT_FALSE(tiles.rows.empty());
  const int grid_bottom = tiles.rows.back().first + tiles.rows.back().second;
  ASSERT_GT(montage->height, grid_bottom + 8);
  // Swatches for classes 1, 2, 3 (named, present or not) and 7 (present), text in between.
  for (int label : {1, 2, 3, 7}) {
    EXPECT_GE(
        CountColor(*montage, ClassColor(label), 0, grid_bottom, montage->width, montage->height),
        49)
        << "no swatch for " << label;
  }
  for (int label : {4, 5, 6, 8}) {
    EXPECT_EQ(
        CountColor(*montage, ClassColor(label), 0, grid_bottom, montage->width, montage->height), 0)
        << "swatch for absent, unnamed " << label;
  }
  EXPECT_GT(CountColor(*montage, {235, 235, 235}, 0, grid_bottom, montage->width, montage->height),
            50);

  // Without a legend the montage ends with the grid's margin.
  options.legend = false;
  absl::StatusOr<RgbImage> bare =
      RenderOverlayMontage(ConstantImage(g), labels, {"background", "rv", "myo", "lv"}, options);
  ASSERT_TRUE(bare.ok());
  EXPECT_LT(bare->height, montage->height);
  EXPECT_EQ(CountColor(*bare, ClassColor(2)), 0);
}

TEST(OverlayMontage, TitleGoesAboveTheGrid) {
  const VolumeGeometry g = Grid(1, 20, 20);
  OverlayOptions options;
  options.tile_size = 40;
  absl::StatusOr<RgbImage> plain =
      RenderOverlayMontage(ConstantImage(g), LabelVolume(g), {}, options);
  options.title = "series 1.2.3 / model v2";
  absl::StatusOr<RgbImage> titled =
      RenderOverlayMontage(ConstantImage(g), LabelVolume(g), {}, options);
  ASSERT_TRUE(plain.ok() && titled.ok());
  EXPECT_GT(titled->height, plain->height);
  EXPECT_GT(FindTiles(*titled).rows[0].first, FindTiles(*plain).rows[0].first);
}

TEST(OverlayMontage, RejectsMismatchedOrInconsistentVolumesAndBadOptions) {
  const VolumeGeometry g = Grid(3, 20, 20);
  const ImageVolume image = ConstantImage(g);
  for (const VolumeGeometry& other : {Grid(2, 20, 20), Grid(3, 21, 20), Grid(3, 20, 19)}) {
    EXPECT_EQ(RenderOverlayMontage(image, LabelVolume(other), {}).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  ImageVolume short_image = image;
  short_image.voxels.pop_back();
  EXPECT_EQ(RenderOverlayMontage(short_image, LabelVolume(g), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  LabelVolume short_labels(g);
  short_labels.voxels.resize(5);
  EXPECT_EQ(RenderOverlayMontage(image, short_labels, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderOverlayMontage(ImageVolume(), LabelVolume(), {}).status().code(),
            absl::StatusCode::kInvalidArgument);

  for (auto mutate : std::vector<void (*)(OverlayOptions&)>{
           [](OverlayOptions& o) { o.columns = -1; }, [](OverlayOptions& o) { o.tile_size = 4; },
           [](OverlayOptions& o) { o.tile_size = 100000; },
           [](OverlayOptions& o) { o.fill_alpha = 1.5; },
           [](OverlayOptions& o) { o.fill_alpha = std::nan(""); },
           [](OverlayOptions& o) { o.text_scale = 0; }}) {
    OverlayOptions options;
    mutate(options);
    EXPECT_EQ(RenderOverlayMontage(image, LabelVolume(g), {}, options).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(OverlayMontage, ShrinksTilesToStayWithinThePngLimit) {
  // 400 slices in one row at 192 pixels would be 77,000 pixels wide.
  const VolumeGeometry g = Grid(400, 8, 8);
  OverlayOptions options;
  options.columns = 400;
  absl::StatusOr<RgbImage> montage =
      RenderOverlayMontage(ConstantImage(g), LabelVolume(g), {}, options);
  ASSERT_TRUE(montage.ok()) << montage.status();
  EXPECT_LE(montage->width, kMaxImageSide);
  EXPECT_TRUE(EncodePng(*montage).ok());
  // Beyond what even 8-pixel tiles can fit: refused.
  const VolumeGeometry huge = Grid(2000, 2, 2);
  options.columns = 2000;
  EXPECT_EQ(
      RenderOverlayMontage(ConstantImage(huge), LabelVolume(huge), {}, options).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(OverlayMontage, WindowsIntensitiesAtThe1stAnd99thPercentiles) {
  const VolumeGeometry g = Grid(1, 100, 100);
  ImageVolume image(g);
  for (size_t i = 0; i < image.voxels.size(); ++i) image.voxels[i] = static_cast<float>(i);
  image.voxels[17] = std::numeric_limits<float>::quiet_NaN();
  image.voxels[18] = std::numeric_limits<float>::infinity();
  image.voxels[19] = 1e30f;  // one hot pixel does not stretch the window
  const IntensityWindow window = PercentileWindow(image);
  // Three of the lowest values are gone or moved to the top: the 1st percentile shifts by 3.
  EXPECT_NEAR(window.low, 103, 1);
  EXPECT_NEAR(window.high, 9900, 2);

  const IntensityWindow constant = PercentileWindow(ConstantImage(g, 42.0f));
  EXPECT_DOUBLE_EQ(constant.high - constant.low, 1.0);
  EXPECT_NEAR(0.5 * (constant.low + constant.high), 42.0, 1e-9);

  ImageVolume all_nan = ConstantImage(g, std::numeric_limits<float>::quiet_NaN());
  const IntensityWindow fallback = PercentileWindow(all_nan);
  EXPECT_LT(fallback.low, fallback.high);

  // In the montage: below the window is black, above it white, NaN black.
  image.voxels[0] = -5000.0f;
  image.voxels[99] = 1e6f;
  OverlayOptions options;
  options.tile_size = 100;
  options.bilinear = false;
  options.slice_numbers = false;
  absl::StatusOr<RgbImage> montage = RenderOverlayMontage(image, LabelVolume(g), {}, options);
  ASSERT_TRUE(montage.ok());
  // Find the tile: the top-left pixel of the tile is voxel (0, 0).
  int x0 = -1, y0 = -1;
  for (int y = 0; y < montage->height && x0 < 0; ++y) {
    for (int x = 0; x < montage->width; ++x) {
      if (montage->get(x, y) != kMontageBackground) {
        x0 = x;
        y0 = y;
        break;
      }
    }
  }
  ASSERT_GE(x0, 0);
  EXPECT_EQ(montage->get(x0, y0), (Rgb{0, 0, 0}));
  EXPECT_EQ(montage->get(x0 + 99, y0), (Rgb{255, 255, 255}));
  EXPECT_EQ(montage->get(x0 + 17, y0), (Rgb{0, 0, 0}));
  const Rgb middle = montage->get(x0 + 50, y0 + 50);  // voxel 5050: mid-window
  EXPECT_NEAR(middle.r, 128, 3);
}

TEST(OverlayMontage, PaletteStartsRedGreenBlueYellowAndStaysDistinct) {
  EXPECT_GT(ClassColor(1).r, 200);
  EXPECT_LT(ClassColor(1).g, 100);
  EXPECT_GT(ClassColor(2).g, 150);
  EXPECT_LT(ClassColor(2).r, 100);
  EXPECT_GT(ClassColor(3).b, 200);
  EXPECT_LT(ClassColor(3).r, 100);
  EXPECT_GT(ClassColor(4).r, 200);
  EXPECT_GT(ClassColor(4).g, 200);
  EXPECT_LT(ClassColor(4).b, 50);
  std::set<std::tuple<int, int, int>> colours;
  for (int label = 1; label <= 12; ++label) {
    const Rgb c = ClassColor(label);
    colours.insert({c.r, c.g, c.b});
  }
  EXPECT_EQ(colours.size(), 12u);
  EXPECT_EQ(ClassColor(13), ClassColor(1));
}

// ---------------------------------------------------------------------------------------
// Plot

Series Line(const std::string& name, std::vector<std::pair<double, double>> points) {
  Series series;
  series.name = name;
  series.points = std::move(points);
  return series;
}

PlotSpec TrainingPlot() {
  PlotSpec spec;
  spec.title = "job 7: unet (semi-supervised)";
  PlotPanel losses;
  losses.title = "losses";
  losses.y_label = "loss";
  Series total = Line("total", {}), supervised = Line("supervised", {}),
         consistency = Line("consistency", {}), mi = Line("mutual information", {});
  for (int step = 0; step <= 2000; step += 20) {
    const double t = step / 2000.0;
    supervised.points.push_back({step, 1.0 * std::exp(-3 * t) + 0.1});
    consistency.points.push_back({step, 0.2 * t});
    mi.points.push_back({step, -0.1 * t});
    total.points.push_back({step, std::exp(-3 * t) + 0.1 + 0.1 * t});
  }
  losses.series = {total, supervised, consistency, mi};
  PlotPanel dice;
  dice.title = "validation Dice";
  dice.y_label = "Dice";
  dice.y_range = {{0.0, 1.0}};
  for (int k = 0; k < 3; ++k) {
    Series s = Line(absl::StrCat("class ", k + 1), {});
    for (int step = 0; step <= 2000; step += 200) {
      s.points.push_back({step, (0.9 - 0.1 * k) * (1 - std::exp(-4.0 * step / 2000))});
    }
    s.color = ClassColor(k + 1);
    dice.series.push_back(s);
  }
  spec.panels = {losses, dice};
  return spec;
}

TEST(RenderPlot, DrawsEveryCurveInItsColourOnWhite) {
  const PlotSpec spec = TrainingPlot();
  absl::StatusOr<RgbImage> plot = RenderPlot(spec);
  ASSERT_TRUE(plot.ok()) << plot.status();
  DecodedPng decoded;
  ExpectPngRoundTrip(*plot, &decoded);
  EXPECT_EQ(plot->width, spec.width);
  EXPECT_GT(CountColor(*plot, {255, 255, 255}), plot->width * plot->height / 2);
  // Long curves leave hundreds of pixels in their colour; the legend alone would leave ~50.
  for (int k = 0; k < 4; ++k) {
    EXPECT_GT(CountColor(*plot, SeriesColor(k)), 400) << "loss series " << k;
  }
  for (int k = 1; k <= 3; ++k) {
    EXPECT_GT(CountColor(*plot, ClassColor(k)), 400) << "Dice class " << k;
  }
  // The losses panel is on top, the Dice panel below it.
  auto mean_row = [&](Rgb c) {
    double sum = 0;
    int n = 0;
    for (int y = 0; y < plot->height; ++y) {
      for (int x = 0; x < plot->width * 6 / 10; ++x) {
        if (plot->get(x, y) == c) {
          sum += y;
          ++n;
        }
      }
    }
    return n ? sum / n : -1.0;
  };
  EXPECT_LT(mean_row(SeriesColor(1)), mean_row(ClassColor(1)));
  // Text and axes are drawn in dark ink.
  EXPECT_GT(CountColor(*plot, {20, 20, 20}), 500);
}

TEST(RenderPlot, PaletteColoursAreDistinct) {
  std::set<std::tuple<int, int, int>> colours;
  for (int k = 0; k < 10; ++k) {
    const Rgb c = SeriesColor(k);
    colours.insert({c.r, c.g, c.b});
    EXPECT_NE(c, (Rgb{255, 255, 255}));
  }
  EXPECT_EQ(colours.size(), 10u);
  EXPECT_EQ(SeriesColor(10), SeriesColor(0));
}

// Rows (within the plot's middle columns, away from the legend) where a colour appears.
std::pair<int, int> RowSpan(const RgbImage& image, Rgb color) {
  int lo = std::numeric_limits<int>::max(), hi = -1;
  for (int y = 0; y < image.height; ++y) {
    for (int x = image.width / 4; x < image.width * 6 / 10; ++x) {
      if (image.get(x, y) == color) {
        lo = std::min(lo, y);
        hi = std::max(hi, y);
      }
    }
  }
  return {lo, hi};
}

TEST(RenderPlot, FixedRangePlacesAndClipsValues) {
  PlotSpec spec;
  PlotPanel panel;
  panel.y_range = {{0.0, 1.0}};
  panel.series = {Line("", {{0, 0.0}, {100, 0.0}}), Line("", {{0, 0.5}, {100, 0.5}}),
                  Line("", {{0, 1.0}, {100, 1.0}}), Line("", {{0, 3.0}, {100, 3.0}}),
                  Line("", {{0, 0.5}, {100, 3.0}})};
  spec.panels = {panel};
  absl::StatusOr<RgbImage> plot = RenderPlot(spec);
  ASSERT_TRUE(plot.ok()) << plot.status();

  const auto [zero_top, zero_bottom] = RowSpan(*plot, SeriesColor(0));
  const auto [half_top, half_bottom] = RowSpan(*plot, SeriesColor(1));
  const auto [one_top, one_bottom] = RowSpan(*plot, SeriesColor(2));
  ASSERT_GE(zero_bottom, 0);
  ASSERT_GE(half_bottom, 0);
  ASSERT_GE(one_bottom, 0);
  EXPECT_LT(one_top, half_top);
  EXPECT_LT(half_top, zero_top);
  EXPECT_NEAR(half_top, 0.5 * (zero_top + one_top), 1.0);
  // y = 3 lies wholly above the range: not drawn at all.
  EXPECT_EQ(RowSpan(*plot, SeriesColor(3)).second, -1);
  // The rising line is cut at the top of the frame.
  const auto [rise_top, rise_bottom] = RowSpan(*plot, SeriesColor(4));
  EXPECT_GE(rise_top, one_top);
  EXPECT_LE(rise_bottom, half_bottom + 1);

  // Without the fixed range the axis grows to include 3, and the 0..1 lines bunch up.
  spec.panels[0].y_range.reset();
  absl::StatusOr<RgbImage> automatic = RenderPlot(spec);
  ASSERT_TRUE(automatic.ok());
  EXPECT_GE(RowSpan(*automatic, SeriesColor(3)).second, 0);
  const int auto_spread =
      RowSpan(*automatic, SeriesColor(0)).first - RowSpan(*automatic, SeriesColor(2)).first;
  EXPECT_LT(auto_spread, (zero_top - one_top) / 2);
}

TEST(RenderPlot, SurvivesNanInfEmptySeriesAndEmptyPanels) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  PlotSpec spec;
  PlotPanel mixed;
  mixed.title = "mixed";
  mixed.series = {Line("with gaps", {{0, 1},
                                     {1, nan},
                                     {2, 2},
                                     {3, inf},
                                     {4, 1.5},
                                     {5, 1.0},
                                     {nan, 7},
                                     {6, -inf},
                                     {7, 0.5},
                                     {8, 0.7}}),
                  Line("empty", {}), Line("all nan", {{0, nan}, {1, nan}}),
                  Line("huge", {{0, 1e300}, {8, -1e300}})};
  PlotPanel empty;
  empty.title = "nothing yet";
  PlotPanel only_nan;
  only_nan.series = {Line("nan", {{0, nan}})};
  spec.panels = {mixed, empty, only_nan};
  absl::StatusOr<RgbImage> plot = RenderPlot(spec);
  ASSERT_TRUE(plot.ok()) << plot.status();
  ExpectPngRoundTrip(*plot);
  // The finite stretches of the first series are drawn.
  EXPECT_GT(CountColor(*plot, SeriesColor(0)), 100);
  // "no data" appears for the two panels without finite points.
  EXPECT_GT(CountColor(*plot, {150, 150, 150}), 40);
}

TEST(RenderPlot, GapsAtNonFiniteValues) {
  // A line from x=0 to x=10 with NaN in the middle leaves the middle columns empty.
  PlotSpec spec;
  PlotPanel panel;
  panel.y_range = {{0.0, 2.0}};
  const double nan = std::numeric_limits<double>::quiet_NaN();
  panel.series = {Line("", {{0, 1}, {4, 1}, {5, nan}, {6, 1}, {10, 1}})};
  spec.panels = {panel};
  absl::StatusOr<RgbImage> plot = RenderPlot(spec);
  ASSERT_TRUE(plot.ok());
  const auto [top, bottom] = RowSpan(*plot, SeriesColor(0));
  ASSERT_GE(top, 0);
  std::vector<bool> coloured(plot->width, false);
  for (int x = 0; x < plot->width; ++x) coloured[x] = plot->get(x, top) == SeriesColor(0);
  const int first =
      static_cast<int>(std::find(coloured.begin(), coloured.end(), true) - coloured.begin());
  const int last =
      plot->width - 1 -
      static_cast<int>(std::find(coloured.rbegin(), coloured.rend(), true) - coloured.rbegin());
  const int middle = (first + last) / 2;
  EXPECT_FALSE(coloured[middle]);
  EXPECT_TRUE(coloured[first + (last - first) / 5]);
  EXPECT_TRUE(coloured[last - (last - first) / 5]);
}

TEST(RenderPlot, SinglePointsAndConstantsGetVisibleMarksAndPaddedRanges) {
  PlotSpec spec;
  PlotPanel panel;
  panel.series = {Line("one point", {{100, 0.42}})};
  spec.panels = {panel};
  absl::StatusOr<RgbImage> plot = RenderPlot(spec);
  ASSERT_TRUE(plot.ok()) << plot.status();
  // A 5x5 marker (the legend dash adds its own pixels, so at least 25).
  EXPECT_GE(CountColor(*plot, SeriesColor(0)), 25);
  const auto [top, bottom] = RowSpan(*plot, SeriesColor(0));
  EXPECT_EQ(bottom - top, 4);

  // A constant curve sits inside the frame, not on its edge.
  panel.series = {Line("flat", {{0, 5.0}, {10, 5.0}})};
  spec.panels = {panel};
  plot = RenderPlot(spec);
  ASSERT_TRUE(plot.ok());
  const auto [flat_top, flat_bottom] = RowSpan(*plot, SeriesColor(0));
  ASSERT_GE(flat_top, 0);
  EXPECT_EQ(flat_bottom - flat_top, 1);  // 2-pixel line
  int frame_top = -1, frame_bottom = -1;
  const int x = plot->width / 2;
  for (int y = 0; y < plot->height; ++y) {
    if (plot->get(x, y) == Rgb{60, 60, 60}) {
      if (frame_top < 0) frame_top = y;
      frame_bottom = y;
    }
  }
  EXPECT_GT(flat_top, frame_top + 20);
  EXPECT_LT(flat_bottom, frame_bottom - 20);
}

TEST(RenderPlot, NiceTicksAreRoundAndCoverTheRange) {
  EXPECT_EQ(NiceTicks(0, 1, 6), (std::vector<double>{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}));
  const std::vector<double> steps = NiceTicks(0, 9876, 5);
  EXPECT_EQ(steps, (std::vector<double>{0, 2000, 4000, 6000, 8000}));
  EXPECT_EQ(NiceTicks(-3, 7, 5), (std::vector<double>{-2, 0, 2, 4, 6}));
  const std::vector<double> small = NiceTicks(0.0012, 0.0047, 4);
  ASSERT_FALSE(small.empty());
  for (double t : small) {
    EXPECT_GE(t, 0.0012);
    EXPECT_LE(t, 0.0047);
  }
  EXPECT_TRUE(NiceTicks(1, 1, 5).empty());
  EXPECT_TRUE(NiceTicks(2, 1, 5).empty());
  EXPECT_TRUE(NiceTicks(0, std::numeric_limits<double>::infinity(), 5).empty());
  EXPECT_TRUE(NiceTicks(std::nan(""), 1, 5).empty());
  for (double t : NiceTicks(-1, 1, 5)) EXPECT_FALSE(std::signbit(t) && t == 0.0) << "-0 tick";
}

TEST(RenderPlot, RejectsMissingPanelsBadSizesAndBadRanges) {
  EXPECT_EQ(RenderPlot(PlotSpec()).status().code(), absl::StatusCode::kInvalidArgument);
  PlotSpec spec = TrainingPlot();
  for (auto mutate : std::vector<void (*)(PlotSpec&)>{
           [](PlotSpec& s) { s.width = 50; }, [](PlotSpec& s) { s.width = kMaxImageSide + 1; },
           [](PlotSpec& s) { s.panel_height = 10; }, [](PlotSpec& s) { s.text_scale = 0; },
           [](PlotSpec& s) {
             s.panels[1].y_range = {{1.0, 1.0}};
           },
           [](PlotSpec& s) {
             s.panels[1].y_range = {{1.0, 0.0}};
           },
           [](PlotSpec& s) {
             s.panels[1].y_range = {{0.0, std::nan("")}};
           },
           [](PlotSpec& s) {
             s.panel_height = 4000;
             s.panels.resize(5);
           }}) {
    PlotSpec bad = spec;
    mutate(bad);
    EXPECT_EQ(RenderPlot(bad).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace miseg::render

// An RGB raster and a self-contained PNG encoder (zlib only), so that the miseg client can
// write pictures without an image library.
#ifndef MISEG_CLIENT_RENDER_PNG_H_
#define MISEG_CLIENT_RENDER_PNG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace miseg::render {

// Largest width or height EncodePng accepts: anything bigger is a bug upstream (a montage
// of thousands of slices, a plot sized in micrometres), not a picture anyone can look at.
inline constexpr int kMaxImageSide = 16384;

struct Rgb {
  uint8_t r = 0;
  uint8_t g = 0;
  uint8_t b = 0;

  friend bool operator==(const Rgb& a, const Rgb& b) {
    return a.r == b.r && a.g == b.g && a.b == b.b;
  }
  friend bool operator!=(const Rgb& a, const Rgb& b) { return !(a == b); }
};

// 8-bit RGB pixels, row-major from the top-left corner, 3 bytes per pixel.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;

  RgbImage() = default;
  // Callers keep sizes within kMaxImageSide; negative sizes give an empty image.
  RgbImage(int w, int h, Rgb fill);

  // True when the buffer holds exactly width * height pixels and neither side is empty.
  bool consistent() const;
  bool contains(int x, int y) const { return x >= 0 && y >= 0 && x < width && y < height; }

  // Unchecked accessors: the caller has checked contains(x, y).
  Rgb get(int x, int y) const {
    const uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
    return {p[0], p[1], p[2]};
  }
  void set(int x, int y, Rgb c) {
    uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }
};

// Encodes the image as an 8-bit truecolour, non-interlaced PNG file (the whole file, in
// memory). Each scanline gets the PNG filter that suits it best (libpng's minimum sum of
// absolute differences heuristic). InvalidArgument for an empty or inconsistent image or a
// side over kMaxImageSide.
absl::StatusOr<std::string> EncodePng(const RgbImage& image);

}  // namespace miseg::render

#endif  // MISEG_CLIENT_RENDER_PNG_H_

#include "client/render/draw.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

namespace miseg::render {
namespace {

// The classic 5x7 LCD font for ASCII 32..126: five column bytes per glyph, left to right,
// bit 0 the top row. Lower case is kept (it reads better in legends than shouting), with
// real descenders for g, j, p, q and y in bit 7, the first spacing row below the cell.
constexpr uint8_t kFont5x7[95][5] = {
    {0x00, 0x00, 0x00, 0x00, 0x00},  // ' '
    {0x00, 0x00, 0x5F, 0x00, 0x00},  // !
    {0x00, 0x07, 0x00, 0x07, 0x00},  // "
    {0x14, 0x7F, 0x14, 0x7F, 0x14},  // #
    {0x24, 0x2A, 0x7F, 0x2A, 0x12},  // $
    {0x23, 0x13, 0x08, 0x64, 0x62},  // %
    {0x36, 0x49, 0x55, 0x22, 0x50},  // &
    {0x00, 0x05, 0x03, 0x00, 0x00},  // '
    {0x00, 0x1C, 0x22, 0x41, 0x00},  // (
    {0x00, 0x41, 0x22, 0x1C, 0x00},  // )
    {0x08, 0x2A, 0x1C, 0x2A, 0x08},  // *
    {0x08, 0x08, 0x3E, 0x08, 0x08},  // +
    {0x00, 0x50, 0x30, 0x00, 0x00},  // ,
    {0x08, 0x08, 0x08, 0x08, 0x08},  // -
    {0x00, 0x60, 0x60, 0x00, 0x00},  // .
    {0x20, 0x10, 0x08, 0x04, 0x02},  // /
    {0x3E, 0x51, 0x49, 0x45, 0x3E},  // 0
    {0x00, 0x42, 0x7F, 0x40, 0x00},  // 1
    {0x42, 0x61, 0x51, 0x49, 0x46},  // 2
    {0x21, 0x41, 0x45, 0x4B, 0x31},  // 3
    {0x18, 0x14, 0x12, 0x7F, 0x10},  // 4
    {0x27, 0x45, 0x45, 0x45, 0x39},  // 5
    {0x3C, 0x4A, 0x49, 0x49, 0x30},  // 6
    {0x01, 0x71, 0x09, 0x05, 0x03},  // 7
    {0x36, 0x49, 0x49, 0x49, 0x36},  // 8
    {0x06, 0x49, 0x49, 0x29, 0x1E},  // 9
    {0x00, 0x36, 0x36, 0x00, 0x00},  // :
    {0x00, 0x56, 0x36, 0x00, 0x00},  // ;
    {0x08, 0x14, 0x22, 0x41, 0x00},  // <
    {0x14, 0x14, 0x14, 0x14, 0x14},  // =
    {0x00, 0x41, 0x22, 0x14, 0x08},  // >
    {0x02, 0x01, 0x51, 0x09, 0x06},  // ?
    {0x32, 0x49, 0x79, 0x41, 0x3E},  // @
    {0x7E, 0x11, 0x11, 0x11, 0x7E},  // A
    {0x7F, 0x49, 0x49, 0x49, 0x36},  // B
    {0x3E, 0x41, 0x41, 0x41, 0x22},  // C
    {0x7F, 0x41, 0x41, 0x22, 0x1C},  // D
    {0x7F, 0x49, 0x49, 0x49, 0x41},  // E
    {0x7F, 0x09, 0x09, 0x09, 0x01},  // F
    {0x3E, 0x41, 0x49, 0x49, 0x7A},  // G
    {0x7F, 0x08, 0x08, 0x08, 0x7F},  // H
    {0x00, 0x41, 0x7F, 0x41, 0x00},  // I
    {0x20, 0x40, 0x41, 0x3F, 0x01},  // J
    {0x7F, 0x08, 0x14, 0x22, 0x41},  // K
    {0x7F, 0x40, 0x40, 0x40, 0x40},  // L
    {0x7F, 0x02, 0x0C, 0x02, 0x7F},  // M
    {0x7F, 0x04, 0x08, 0x10, 0x7F},  // N
    {0x3E, 0x41, 0x41, 0x41, 0x3E},  // O
    {0x7F, 0x09, 0x09, 0x09, 0x06},  // P
    {0x3E, 0x41, 0x51, 0x21, 0x5E},  // Q
    {0x7F, 0x09, 0x19, 0x29, 0x46},  // R
    {0x46, 0x49, 0x49, 0x49, 0x31},  // S
    {0x01, 0x01, 0x7F, 0x01, 0x01},  // T
    {0x3F, 0x40, 0x40, 0x40, 0x3F},  // U
    {0x1F, 0x20, 0x40, 0x20, 0x1F},  // V
    {0x3F, 0x40, 0x38, 0x40, 0x3F},  // W
    {0x63, 0x14, 0x08, 0x14, 0x63},  // X
    {0x07, 0x08, 0x70, 0x08, 0x07},  // Y
    {0x61, 0x51, 0x49, 0x45, 0x43},  // Z
    {0x00, 0x7F, 0x41, 0x41, 0x00},  // [
    {0x02, 0x04, 0x08, 0x10, 0x20},  // backslash
    {0x00, 0x41, 0x41, 0x7F, 0x00},  // ]
    {0x04, 0x02, 0x01, 0x02, 0x04},  // ^
    {0x40, 0x40, 0x40, 0x40, 0x40},  // _
    {0x00, 0x01, 0x02, 0x04, 0x00},  // `
    {0x20, 0x54, 0x54, 0x54, 0x78},  // a
    {0x7F, 0x48, 0x44, 0x44, 0x38},  // b
    {0x38, 0x44, 0x44, 0x44, 0x20},  // c
    {0x38, 0x44, 0x44, 0x48, 0x7F},  // d
    {0x38, 0x54, 0x54, 0x54, 0x18},  // e
    {0x08, 0x7E, 0x09, 0x01, 0x02},  // f
    {0x98, 0xA4, 0xA4, 0xA4, 0x7C},  // g
    {0x7F, 0x08, 0x04, 0x04, 0x78},  // h
    {0x00, 0x44, 0x7D, 0x40, 0x00},  // i
    {0x80, 0x80, 0x84, 0x7D, 0x00},  // j
    {0x7F, 0x10, 0x28, 0x44, 0x00},  // k
    {0x00, 0x41, 0x7F, 0x40, 0x00},  // l
    {0x7C, 0x04, 0x18, 0x04, 0x78},  // m
    {0x7C, 0x08, 0x04, 0x04, 0x78},  // n
    {0x38, 0x44, 0x44, 0x44, 0x38},  // o
    {0xFC, 0x24, 0x24, 0x24, 0x18},  // p
    {0x18, 0x24, 0x24, 0x24, 0xFC},  // q
    {0x7C, 0x08, 0x04, 0x04, 0x08},  // r
    {0x48, 0x54, 0x54, 0x54, 0x20},  // s
    {0x04, 0x3F, 0x44, 0x40, 0x20},  // t
    {0x3C, 0x40, 0x40, 0x20, 0x7C},  // u
    {0x1C, 0x20, 0x40, 0x20, 0x1C},  // v
    {0x3C, 0x40, 0x30, 0x40, 0x3C},  // w
    {0x44, 0x28, 0x10, 0x28, 0x44},  // x
    {0x9C, 0xA0, 0xA0, 0xA0, 0x7C},  // y
    {0x44, 0x64, 0x54, 0x4C, 0x44},  // z
    {0x00, 0x08, 0x36, 0x41, 0x00},  // {
    {0x00, 0x00, 0x7F, 0x00, 0x00},  // |
    {0x00, 0x41, 0x36, 0x08, 0x00},  // }
    {0x08, 0x04, 0x08, 0x10, 0x08},  // ~
};

const uint8_t* Glyph(char ch) {
  const unsigned char c = static_cast<unsigned char>(ch);
  if (c < 32 || c > 126) return kFont5x7['?' - 32];
  return kFont5x7[c - 32];
}

// Calls plot(gx, gy) for every set pixel of the text, in unrotated text coordinates with
// the top-left of the first line at (0, 0); the caller maps them onto the image.
template <typename PlotFn>
void ForEachTextPixel(const std::string& text, int scale, bool multiline, PlotFn plot) {
  int pen_x = 0;
  int pen_y = 0;
  for (char ch : text) {
    if (ch == '\n' && multiline) {
      pen_x = 0;
      pen_y += kLineAdvance * scale;
      continue;
    }
    const uint8_t* columns = Glyph(ch);
    for (int col = 0; col < kGlyphWidth; ++col) {
      for (int row = 0; row < 8; ++row) {
        if (!(columns[col] & (1u << row))) continue;
        for (int dy = 0; dy < scale; ++dy) {
          for (int dx = 0; dx < scale; ++dx) {
            plot(pen_x + col * scale + dx, pen_y + row * scale + dy);
          }
        }
      }
    }
    pen_x += kCharAdvance * scale;
  }
}

void PutPixel(RgbImage& image, int x, int y, Rgb color) {
  if (image.contains(x, y)) image.set(x, y, color);
}

}  // namespace

bool ClipSegment(double& x0, double& y0, double& x1, double& y1, double x_min, double y_min,
                 double x_max, double y_max) {
  if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1)) {
    return false;
  }
  double t0 = 0.0;
  double t1 = 1.0;
  const double dx = x1 - x0;
  const double dy = y1 - y0;
  const double p[4] = {-dx, dx, -dy, dy};
  const double q[4] = {x0 - x_min, x_max - x0, y0 - y_min, y_max - y0};
  for (int i = 0; i < 4; ++i) {
    if (p[i] == 0.0) {
      if (q[i] < 0.0) return false;  // parallel to and outside this edge
      continue;
    }
    const double t = q[i] / p[i];
    if (p[i] < 0.0) {
      if (t > t1) return false;
      t0 = std::max(t0, t);
    } else {
      if (t < t0) return false;
      t1 = std::min(t1, t);
    }
  }
  const double ax = x0 + t0 * dx, ay = y0 + t0 * dy;
  const double bx = x0 + t1 * dx, by = y0 + t1 * dy;
  // Endpoints near the double range overflow dx or dy; such a segment is not drawable.
  if (!std::isfinite(ax) || !std::isfinite(ay) || !std::isfinite(bx) || !std::isfinite(by)) {
    return false;
  }
  x0 = ax;
  y0 = ay;
  x1 = bx;
  y1 = by;
  return true;
}

void FillRect(RgbImage& image, int x, int y, int width, int height, Rgb color) {
  const int64_t x_begin = std::max<int64_t>(x, 0);
  const int64_t y_begin = std::max<int64_t>(y, 0);
  const int64_t x_end = std::min<int64_t>(static_cast<int64_t>(x) + width, image.width);
  const int64_t y_end = std::min<int64_t>(static_cast<int64_t>(y) + height, image.height);
  for (int64_t yy = y_begin; yy < y_end; ++yy) {
    for (int64_t xx = x_begin; xx < x_end; ++xx) {
      image.set(static_cast<int>(xx), static_cast<int>(yy), color);
    }
  }
}

void DrawRect(RgbImage& image, int x, int y, int width, int height, Rgb color) {
  if (width <= 0 || height <= 0) return;
  FillRect(image, x, y, width, 1, color);
  FillRect(image, x, y + height - 1, width, 1, color);
  FillRect(image, x, y, 1, height, color);
  FillRect(image, x + width - 1, y, 1, height, color);
}

void BlendPixel(RgbImage& image, int x, int y, Rgb color, double alpha) {
  if (!image.contains(x, y)) return;
  alpha = std::clamp(alpha, 0.0, 1.0);
  const Rgb old = image.get(x, y);
  auto mix = [alpha](uint8_t under, uint8_t over) {
    return static_cast<uint8_t>(std::lround(under + alpha * (over - under)));
  };
  image.set(x, y, {mix(old.r, color.r), mix(old.g, color.g), mix(old.b, color.b)});
}

void DrawLine(RgbImage& image, int x0, int y0, int x1, int y1, Rgb color, int thickness) {
  thickness = std::max(thickness, 1);
  // The square brush reaches `thickness` pixels beyond the centre line at most, so keep the
  // part of the line that can still touch the image and iterate only over that.
  double ax = x0, ay = y0, bx = x1, by = y1;
  if (!ClipSegment(ax, ay, bx, by, -thickness, -thickness,
                   static_cast<double>(image.width) - 1 + thickness,
                   static_cast<double>(image.height) - 1 + thickness)) {
    return;
  }
  int cx0 = static_cast<int>(std::lround(ax)), cy0 = static_cast<int>(std::lround(ay));
  const int cx1 = static_cast<int>(std::lround(bx)), cy1 = static_cast<int>(std::lround(by));
  const int dx = std::abs(cx1 - cx0);
  const int dy = -std::abs(cy1 - cy0);
  const int step_x = cx0 < cx1 ? 1 : -1;
  const int step_y = cy0 < cy1 ? 1 : -1;
  const int brush_offset = (thickness - 1) / 2;
  int error = dx + dy;
  while (true) {
    if (thickness == 1) {
      PutPixel(image, cx0, cy0, color);
    } else {
      FillRect(image, cx0 - brush_offset, cy0 - brush_offset, thickness, thickness, color);
    }
    if (cx0 == cx1 && cy0 == cy1) break;
    const int doubled = 2 * error;
    if (doubled >= dy) {
      error += dy;
      cx0 += step_x;
    }
    if (doubled <= dx) {
      error += dx;
      cy0 += step_y;
    }
  }
}

void DrawText(RgbImage& image, int x, int y, const std::string& text, Rgb color, int scale) {
  scale = std::max(scale, 1);
  ForEachTextPixel(text, scale, /*multiline=*/true,
                   [&](int gx, int gy) { PutPixel(image, x + gx, y + gy, color); });
}

void DrawTextVertical(RgbImage& image, int x, int y, const std::string& text, Rgb color,
                      int scale) {
  scale = std::max(scale, 1);
  // Rotating anticlockwise sends the text's x axis up the image and its y axis rightwards,
  // so the start of the text sits at the bottom of the rotated box.
  if (text.empty()) return;
  // Measured here, not with TextWidth: a '\n' is a glyph ('?') on a vertical line.
  const int length =
      (static_cast<int>(text.size()) * kCharAdvance - (kCharAdvance - kGlyphWidth)) * scale;
  ForEachTextPixel(text, scale, /*multiline=*/false,
                   [&](int gx, int gy) { PutPixel(image, x + gy, y + length - 1 - gx, color); });
}

int TextWidth(const std::string& text, int scale) {
  scale = std::max(scale, 1);
  int widest = 0;
  int current = 0;
  for (char ch : text) {
    if (ch == '\n') {
      current = 0;
      continue;
    }
    ++current;
    widest = std::max(widest, current);
  }
  return widest == 0 ? 0 : (widest * kCharAdvance - (kCharAdvance - kGlyphWidth)) * scale;
}

int TextHeight(const std::string& text, int scale) {
  scale = std::max(scale, 1);
  if (text.empty()) return 0;
  const int lines = 1 + static_cast<int>(std::count(text.begin(), text.end(), '\n'));
  return ((lines - 1) * kLineAdvance + kGlyphHeight) * scale;
}

}  // namespace miseg::render

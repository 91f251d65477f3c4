// Drawing primitives and a built-in 5x7 bitmap font for RgbImage: just enough to label
// montages and plots without a font or graphics library. Everything clips to the image, so
// callers may draw partly (or wholly) outside it.
#ifndef MISEG_CLIENT_RENDER_DRAW_H_
#define MISEG_CLIENT_RENDER_DRAW_H_

#include <string>

#include "client/render/png.h"

namespace miseg::render {

// The font's glyphs are 5x7 pixels in a 6x9 cell (one column and two rows of spacing) at
// scale 1; the descenders of g, j, p, q and y take the first spacing row. Every size below
// is multiplied by the scale.
inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 7;
inline constexpr int kCharAdvance = 6;
inline constexpr int kLineAdvance = 9;

// Fills the rectangle with top-left corner (x, y), clipped to the image.
void FillRect(RgbImage& image, int x, int y, int width, int height, Rgb color);

// Outlines the rectangle (1 pixel wide, inside its bounds), clipped to the image.
void DrawRect(RgbImage& image, int x, int y, int width, int height, Rgb color);

// Blends color over the pixel with the given opacity (0 keeps the pixel, 1 replaces it);
// does nothing outside the image.
void BlendPixel(RgbImage& image, int x, int y, Rgb color, double alpha);

// A Bresenham line from (x0, y0) to (x1, y1), both ends included, clipped to the image.
// thickness > 1 stamps a thickness x thickness square at each step (plot lines read better
// at 2 pixels).
void DrawLine(RgbImage& image, int x0, int y0, int x1, int y1, Rgb color, int thickness = 1);

// Liang-Barsky: clips the segment (x0, y0)-(x1, y1) to the rectangle [x_min, x_max] x
// [y_min, y_max] in place; false when nothing of it is inside. In double so that far-off
// endpoints (a diverged loss) cannot overflow pixel arithmetic.
bool ClipSegment(double& x0, double& y0, double& x1, double& y1, double x_min, double y_min,
                 double x_max, double y_max);

// Draws text with its top-left corner at (x, y). Lower-case letters have their own glyphs;
// bytes outside printable ASCII draw as '?'; '\n' starts a new line at x. scale < 1 draws
// as 1.
void DrawText(RgbImage& image, int x, int y, const std::string& text, Rgb color, int scale);

// The same text rotated a quarter turn anticlockwise (reading bottom to top, as a y-axis
// label), with the top-left corner of its rotated bounding box at (x, y). No line breaks.
void DrawTextVertical(RgbImage& image, int x, int y, const std::string& text, Rgb color, int scale);

// Width and height in pixels of text drawn by DrawText at this scale (the widest line;
// no trailing spacing). An empty string measures 0 x 0.
int TextWidth(const std::string& text, int scale);
int TextHeight(const std::string& text, int scale);

}  // namespace miseg::render

#endif  // MISEG_CLIENT_RENDER_DRAW_H_

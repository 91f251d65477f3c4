#include "client/render/png.h"

#include <zlib.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace miseg::render {
namespace {

constexpr int kBytesPerPixel = 3;

void AppendBigEndian32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>((v >> 24) & 0xff));
  out.push_back(static_cast<char>((v >> 16) & 0xff));
  out.push_back(static_cast<char>((v >> 8) & 0xff));
  out.push_back(static_cast<char>(v & 0xff));
}

// length, type, data, CRC-32 of type and data.
void AppendChunk(std::string& out, const char type[4], const std::string& data) {
  AppendBigEndian32(out, static_cast<uint32_t>(data.size()));
  const size_t type_at = out.size();
  out.append(type, 4);
  out.append(data);
  uLong crc = crc32(0L, Z_NULL, 0);
  // crc32 takes a uInt length; chunks stay far below 4 GiB (kMaxImageSide caps the image).
  crc = crc32(crc, reinterpret_cast<const Bytef*>(out.data() + type_at),
              static_cast<uInt>(4 + data.size()));
  AppendBigEndian32(out, static_cast<uint32_t>(crc));
}

uint8_t Paeth(int a, int b, int c) {
  const int p = a + b - c;
  const int pa = std::abs(p - a);
  const int pb = std::abs(p - b);
  const int pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return static_cast<uint8_t>(a);
  if (pb <= pc) return static_cast<uint8_t>(b);
  return static_cast<uint8_t>(c);
}

// Filters one scanline with filter `type` (0 none, 1 sub, 2 up, 3 average, 4 Paeth) into
// out (without the filter byte). prev is the previous unfiltered row, or zeros for row 0.
void FilterRow(int type, const uint8_t* row, const uint8_t* prev, size_t n, uint8_t* out) {
  for (size_t i = 0; i < n; ++i) {
    const int a = i >= kBytesPerPixel ? row[i - kBytesPerPixel] : 0;
    const int b = prev[i];
    const int c = i >= kBytesPerPixel ? prev[i - kBytesPerPixel] : 0;
    int predictor = 0;
    switch (type) {
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
        predictor = Paeth(a, b, c);
        break;
      default:
        break;
    }
    out[i] = static_cast<uint8_t>(row[i] - predictor);
  }
}

// The PNG specification's suggested heuristic: bytes read as signed, smallest sum of
// magnitudes wins. It compresses photos and plots alike far better than filter 0 everywhere.
uint64_t SignedMagnitudeSum(const uint8_t* data, size_t n) {
  uint64_t sum = 0;
  for (size_t i = 0; i < n; ++i)
    sum += static_cast<uint64_t>(std::abs(static_cast<int8_t>(data[i])));
  return sum;
}

}  // namespace

RgbImage::RgbImage(int w, int h, Rgb fill) : width(w < 0 ? 0 : w), height(h < 0 ? 0 : h) {
  rgb.resize(static_cast<size_t>(width) * height * kBytesPerPixel);
  for (size_t i = 0; i < rgb.size(); i += kBytesPerPixel) {
    rgb[i] = fill.r;
    rgb[i + 1] = fill.g;
    rgb[i + 2] = fill.b;
  }
}

bool RgbImage::consistent() const {
  return width > 0 && height > 0 &&
         rgb.size() == static_cast<size_t>(width) * height * kBytesPerPixel;
}

absl::StatusOr<std::string> EncodePng(const RgbImage& image) {
  if (image.width <= 0 || image.height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("EncodePng: empty image ", image.width, "x", image.height));
  }
  if (image.width > kMaxImageSide || image.height > kMaxImageSide) {
    return absl::InvalidArgumentError(absl::StrCat("EncodePng: image ", image.width, "x",
                                                   image.height, " exceeds ", kMaxImageSide,
                                                   " pixels per side"));
  }
  if (!image.consistent()) {
    return absl::InvalidArgumentError(absl::StrCat("EncodePng: ", image.rgb.size(),
                                                   " bytes do not hold a ", image.width, "x",
                                                   image.height, " RGB image"));
  }

  const size_t row_bytes = static_cast<size_t>(image.width) * kBytesPerPixel;
  std::vector<uint8_t> filtered((row_bytes + 1) * image.height);
  const std::vector<uint8_t> zero_row(row_bytes, 0);
  std::array<std::vector<uint8_t>, 5> candidates;
  for (auto& candidate : candidates) candidate.resize(row_bytes);
  for (int y = 0; y < image.height; ++y) {
    const uint8_t* row = &image.rgb[y * row_bytes];
    const uint8_t* prev = y > 0 ? &image.rgb[(y - 1) * row_bytes] : zero_row.data();
    int best = 0;
    uint64_t best_sum = std::numeric_limits<uint64_t>::max();
    for (int type = 0; type < 5; ++type) {
      FilterRow(type, row, prev, row_bytes, candidates[type].data());
      const uint64_t sum = SignedMagnitudeSum(candidates[type].data(), row_bytes);
      if (sum < best_sum) {
        best_sum = sum;
        best = type;
      }
    }
    uint8_t* out = &filtered[y * (row_bytes + 1)];
    out[0] = static_cast<uint8_t>(best);
    std::memcpy(out + 1, candidates[best].data(), row_bytes);
  }

  uLongf compressed_size = compressBound(static_cast<uLong>(filtered.size()));
  std::string compressed(compressed_size, '\0');
  const int rc =
      compress2(reinterpret_cast<Bytef*>(compressed.data()), &compressed_size, filtered.data(),
                static_cast<uLong>(filtered.size()), Z_DEFAULT_COMPRESSION);
  if (rc != Z_OK) {
    return absl::InternalError(absl::StrCat("EncodePng: zlib compress2 failed with ", rc));
  }
  compressed.resize(compressed_size);

  std::string ihdr;
  AppendBigEndian32(ihdr, static_cast<uint32_t>(image.width));
  AppendBigEndian32(ihdr, static_cast<uint32_t>(image.height));
  ihdr.push_back(8);  // bit depth
  ihdr.push_back(2);  // colour type: truecolour
  ihdr.push_back(0);  // compression method: deflate
  ihdr.push_back(0);  // filter method: adaptive
  ihdr.push_back(0);  // interlace: none

  std::string png("\x89PNG\r\n\x1a\n", 8);
  AppendChunk(png, "IHDR", ihdr);
  AppendChunk(png, "IDAT", compressed);
  AppendChunk(png, "IEND", "");
  return png;
}

}  // namespace miseg::render

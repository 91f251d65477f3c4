// JPEG 2000 decoding (ISO/IEC 15444-1) through OpenJPEG, independent of DCMTK: DCMTK 3.6.7
// has no JPEG 2000 codec, so the series reader hands this one each frame's codestream.
// High-Throughput JPEG 2000 (15444-15) is recognised and refused: OpenJPEG 2.5.0 decodes it
// but aborts the process on some malformed HT code-blocks (an assert, found by fuzzing). A raw
// codestream (J2K, what DICOM's transfer syntaxes 1.2.840.10008.1.2.4.90/.91/.201-.203
// carry) and a JP2 file (which some writers put in DICOM anyway) are both accepted.
//
// The main header is parsed here first and checked against the caller's limits before
// OpenJPEG sees the data: a codestream claiming a huge image, too many tiles or components
// is refused with InvalidArgument before anything sized by it is allocated. Every failure
// is InvalidArgument naming the reason (OpenJPEG's own message where it has one); nothing
// here crashes on bad input or writes to stderr. Thread-safe: calls share no state.
#ifndef MISEG_CORE_DICOM_JPEG2000_H_
#define MISEG_CORE_DICOM_JPEG2000_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace miseg {

struct Jpeg2000Limits {
  int64_t max_rows_or_cols = 8192;
  int64_t max_pixels = int64_t{1} << 28;  // rows x columns of one image
  int max_components = 4;
  // ISO 15444-1 numbers tiles 0..65534; a header with more is malformed, and OpenJPEG
  // allocates per tile while reading it.
  int64_t max_tiles = 65535;
};

// What the main header (SIZ) says.
struct Jpeg2000Header {
  int64_t rows = 0;
  int64_t cols = 0;
  int components = 0;
  int bits = 0;            // precision of every component (1..16 are decoded)
  bool is_signed = false;  // of every component
  int64_t tiles = 0;
  bool jp2 = false;              // a JP2 file rather than a raw codestream
  // HTJ2K (15444-15): Rsiz says so, a CAP marker, or a COD/COC of the main or a tile-part
  // header gives HT code-blocks. Such codestreams are refused by DecodeJpeg2000 (see there).
  bool high_throughput = false;
};

// Parses the main header without decoding anything and without allocating more than a few
// bytes; InvalidArgument when it is not JPEG 2000, truncated, or inconsistent (zero or
// inverted extent, zero tile size, subsampled components). Limits are not applied.
absl::StatusOr<Jpeg2000Header> ReadJpeg2000Header(absl::string_view data);

// A decoded image: rows x cols pixels, components interleaved per pixel, each sample
// `bytes_per_sample` bytes little-endian (1 or 2), two's complement when signed.
struct Jpeg2000Image {
  Jpeg2000Header header;
  int bytes_per_sample = 1;
  std::vector<uint8_t> samples;
};

// Decodes a whole image at full resolution; InvalidArgument for HTJ2K (high_throughput).
// bytes_per_sample: 1 or 2, or 0 for the smallest
// that holds the header's precision (1 up to 8 bits); a precision wider than it asks for,
// or over 16 bits, is InvalidArgument. Components must share precision and signedness.
// Limits are checked on the header before OpenJPEG allocates anything for the image.
absl::StatusOr<Jpeg2000Image> DecodeJpeg2000(absl::string_view data,
                                             const Jpeg2000Limits& limits = {},
                                             int bytes_per_sample = 0);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_JPEG2000_H_

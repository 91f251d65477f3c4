// JPEG 2000 decoding through OpenJPEG: our own parse of the main header (SIZ) to apply the
// limits before OpenJPEG allocates anything, then OpenJPEG over an in-memory stream with its
// messages captured (it would otherwise print nothing useful, or to stderr), then the
// components interleaved into 8- or 16-bit samples.
#include "core/dicom/jpeg2000.h"

#include <openjpeg.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "core/common/status_macros.h"

namespace miseg {
namespace {

constexpr unsigned char kJp2Signature[12] = {0x00, 0x00, 0x00, 0x0C, 0x6A, 0x50,
                                             0x20, 0x20, 0x0D, 0x0A, 0x87, 0x0A};
constexpr uint16_t kSoc = 0xFF4F;
constexpr uint16_t kSiz = 0xFF51;
constexpr uint16_t kRsizHighThroughput = 0x4000;  // 15444-15: Part 15 capabilities

absl::Status Malformed(absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat("JPEG 2000: ", reason));
}

uint16_t Be16(absl::string_view d, size_t at) {
  return static_cast<uint16_t>((static_cast<uint8_t>(d[at]) << 8) | static_cast<uint8_t>(d[at + 1]));
}
uint32_t Be32(absl::string_view d, size_t at) {
  return (uint32_t{Be16(d, at)} << 16) | Be16(d, at + 2);
}
uint64_t Be64(absl::string_view d, size_t at) {
  return (uint64_t{Be32(d, at)} << 32) | Be32(d, at + 4);
}

bool IsJp2(absl::string_view data) {
  return data.size() >= sizeof(kJp2Signature) &&
         std::memcmp(data.data(), kJp2Signature, sizeof(kJp2Signature)) == 0;
}

// The contiguous codestream box ("jp2c") of a JP2 file (ISO 15444-1 Annex I).
absl::StatusOr<absl::string_view> Jp2Codestream(absl::string_view data) {
  size_t at = 0;
  while (data.size() - at >= 8) {
    uint64_t length = Be32(data, at);
    const absl::string_view type = data.substr(at + 4, 4);
    size_t header = 8;
    if (length == 1) {  // XLBox follows
      if (data.size() - at < 16) break;
      length = Be64(data, at + 8);
      header = 16;
    } else if (length == 0) {  // the box runs to the end
      length = data.size() - at;
    }
    if (length < header || length > data.size() - at) break;
    if (type == "jp2c") return data.substr(at + header, length - header);
    at += length;
  }
  return Malformed("JP2 file without a complete codestream box");
}

// SIZ (ISO 15444-1 A.5.1), which must follow SOC directly.
absl::StatusOr<Jpeg2000Header> ParseSiz(absl::string_view cs) {
  if (cs.size() < 4 || Be16(cs, 0) != kSoc || Be16(cs, 2) != kSiz) {
    return Malformed("not a JPEG 2000 codestream (no SOC and SIZ markers)");
  }
  if (cs.size() < 4 + 38) return Malformed("truncated SIZ marker segment");
  const size_t s = 4;  // the segment, from Lsiz
  const uint16_t lsiz = Be16(cs, s);
  const uint16_t rsiz = Be16(cs, s + 2);
  const uint32_t x = Be32(cs, s + 4), y = Be32(cs, s + 8);
  const uint32_t x0 = Be32(cs, s + 12), y0 = Be32(cs, s + 16);
  const uint32_t tw = Be32(cs, s + 20), th = Be32(cs, s + 24);
  const uint32_t tx0 = Be32(cs, s + 28), ty0 = Be32(cs, s + 32);
  const uint16_t csiz = Be16(cs, s + 36);
  if (csiz == 0 || lsiz != 38 + 3 * uint32_t{csiz} || cs.size() < s + lsiz) {
    return Malformed(absl::StrCat("SIZ marker segment of ", lsiz, " bytes for ", csiz,
                                  " components is inconsistent or truncated"));
  }
  if (x <= x0 || y <= y0) return Malformed("empty image extent in SIZ");
  if (tw == 0 || th == 0 || tx0 > x0 || ty0 > y0 || uint64_t{tx0} + tw <= x0 ||
      uint64_t{ty0} + th <= y0) {
    return Malformed("inconsistent tiling in SIZ");
  }
  Jpeg2000Header header;
  header.cols = x - x0;
  header.rows = y - y0;
  header.components = csiz;
  header.tiles = static_cast<int64_t>((uint64_t{x} - tx0 + tw - 1) / tw) *
                 static_cast<int64_t>((uint64_t{y} - ty0 + th - 1) / th);
  header.high_throughput = (rsiz & kRsizHighThroughput) != 0;
  for (uint16_t c = 0; c < csiz; ++c) {
    const uint8_t ssiz = static_cast<uint8_t>(cs[s + 38 + 3 * c]);
    const uint8_t dx = static_cast<uint8_t>(cs[s + 39 + 3 * c]);
    const uint8_t dy = static_cast<uint8_t>(cs[s + 40 + 3 * c]);
    const int bits = (ssiz & 0x7F) + 1;
    const bool is_signed = (ssiz & 0x80) != 0;
    if (dx != 1 || dy != 1) return Malformed("subsampled components are not supported");
    if (c == 0) {
      header.bits = bits;
      header.is_signed = is_signed;
    } else if (bits != header.bits || is_signed != header.is_signed) {
      return Malformed("components of different precision or signedness");
    }
  }
  return header;
}

constexpr uint16_t kCap = 0xFF50, kCod = 0xFF52, kCoc = 0xFF53, kSot = 0xFF90, kSod = 0xFF93;
constexpr uint8_t kCodeBlockHighThroughput = 0x40;  // code-block style bit: HT (15444-15)

// Whether the marker segment at `at` (a COD or COC) gives its code-blocks the HT style.
bool HighThroughputStyle(absl::string_view cs, size_t at, uint16_t marker, int components) {
  // COD: marker, Lcod, Scod, SGcod (4), then levels, xcb, ycb, style. COC: marker, Lcoc,
  // Ccoc (1 or 2), Scoc, then levels, xcb, ycb, style.
  const size_t style = marker == kCod ? at + 12 : at + 4 + (components < 257 ? 1 : 2) + 1 + 3;
  return style < cs.size() && (static_cast<uint8_t>(cs[style]) & kCodeBlockHighThroughput);
}

// Walks the marker segments of the main header (from `at`, after SIZ) and of each tile-part
// header, as a decoder meets them: true when one is a CAP or gives HT code-blocks. Where the
// walk cannot go on (truncated, not a marker), neither can a decoder: no HT block is reached.
bool UsesHighThroughput(absl::string_view cs, size_t at, int components) {
  bool in_tile_part = false;
  size_t next_tile_part = 0;
  while (at + 4 <= cs.size()) {
    const uint16_t marker = Be16(cs, at);
    if (marker == kSot) {
      const uint32_t psot = at + 10 <= cs.size() ? Be32(cs, at + 6) : 0;
      in_tile_part = true;
      next_tile_part = psot == 0 ? cs.size() : at + psot;  // 0: the last, to the end
    } else if (marker == kSod) {
      if (!in_tile_part || next_tile_part >= cs.size() || next_tile_part <= at) return false;
      at = next_tile_part;
      continue;
    } else if (marker == kCap) {
      return true;
    } else if ((marker == kCod || marker == kCoc) &&
               HighThroughputStyle(cs, at, marker, components)) {
      return true;
    } else if (marker < 0xFF00) {
      break;  // not a marker: the decoder fails here too
    }
    at += 2 + Be16(cs, at + 2);
  }
  return false;
}

absl::Status CheckLimits(const Jpeg2000Header& h, const Jpeg2000Limits& limits) {
  if (h.rows > limits.max_rows_or_cols || h.cols > limits.max_rows_or_cols ||
      h.rows * h.cols > limits.max_pixels) {
    return Malformed(absl::StrCat("image of ", h.rows, "x", h.cols, " exceeds the limit of ",
                                  limits.max_rows_or_cols, " rows or columns and ",
                                  limits.max_pixels, " pixels"));
  }
  if (h.components > limits.max_components) {
    return Malformed(absl::StrCat(h.components, " components exceed the limit of ",
                                  limits.max_components));
  }
  if (h.tiles > limits.max_tiles) {
    return Malformed(absl::StrCat(h.tiles, " tiles exceed the limit of ", limits.max_tiles));
  }
  if (h.bits > 16) return Malformed(absl::StrCat(h.bits, "-bit samples are not supported"));
  return absl::OkStatus();
}

// OpenJPEG reads through these callbacks from the caller's bytes; nothing is copied.
struct MemoryStream {
  absl::string_view data;
  size_t offset = 0;
};

OPJ_SIZE_T ReadFn(void* buffer, OPJ_SIZE_T bytes, void* user) {
  auto* m = static_cast<MemoryStream*>(user);
  if (m->offset >= m->data.size()) return static_cast<OPJ_SIZE_T>(-1);  // end of stream
  const size_t n = std::min<size_t>(bytes, m->data.size() - m->offset);
  std::memcpy(buffer, m->data.data() + m->offset, n);
  m->offset += n;
  return n;
}
OPJ_OFF_T SkipFn(OPJ_OFF_T bytes, void* user) {
  auto* m = static_cast<MemoryStream*>(user);
  if (bytes < 0) {
    if (static_cast<uint64_t>(-bytes) > m->offset) return -1;
    m->offset -= static_cast<size_t>(-bytes);
    return bytes;
  }
  // Past the end is allowed, as with a file; the next read reports the end.
  m->offset = static_cast<size_t>(
      std::min<uint64_t>(m->data.size(), uint64_t{m->offset} + static_cast<uint64_t>(bytes)));
  return bytes;
}
OPJ_BOOL SeekFn(OPJ_OFF_T position, void* user) {
  auto* m = static_cast<MemoryStream*>(user);
  if (position < 0 || static_cast<uint64_t>(position) > m->data.size()) return OPJ_FALSE;
  m->offset = static_cast<size_t>(position);
  return OPJ_TRUE;
}

// OpenJPEG's first error message, for ours.
void OnError(const char* message, void* user) {
  auto* first = static_cast<std::string*>(user);
  if (first->empty() && message != nullptr) {
    *first = std::string(absl::StripTrailingAsciiWhitespace(message)).substr(0, 200);
  }
}
void Ignore(const char*, void*) {}

struct CodecDeleter {
  void operator()(opj_codec_t* c) const { opj_destroy_codec(c); }
};
struct StreamDeleter {
  void operator()(opj_stream_t* s) const { opj_stream_destroy(s); }
};
struct ImageDeleter {
  void operator()(opj_image_t* i) const { opj_image_destroy(i); }
};

absl::Status Failed(absl::string_view step, const std::string& message) {
  return Malformed(absl::StrCat("cannot ", step, message.empty() ? "" : ": ", message));
}

// The decoded image must be what our parse of SIZ said: never trust one parse for the limits
// and another for the copy.
absl::Status CheckDecoded(const opj_image_t& image, const Jpeg2000Header& h) {
  if (static_cast<int>(image.numcomps) != h.components) {
    return Malformed(absl::StrCat("decoded ", image.numcomps, " components where SIZ says ",
                                  h.components, " (a JP2 palette?)"));
  }
  for (int c = 0; c < h.components; ++c) {
    const opj_image_comp_t& comp = image.comps[c];
    if (comp.data == nullptr || comp.w != static_cast<OPJ_UINT32>(h.cols) ||
        comp.h != static_cast<OPJ_UINT32>(h.rows) || comp.dx != 1 || comp.dy != 1 ||
        static_cast<int>(comp.prec) != h.bits || (comp.sgnd != 0) != h.is_signed) {
      return Malformed(absl::StrCat("decoded component ", c, " does not match SIZ"));
    }
  }
  return absl::OkStatus();
}

// Interleaves the components into little-endian samples, clamped to the precision's range.
void Interleave(const opj_image_t& image, const Jpeg2000Header& h, int bytes,
                std::vector<uint8_t>* out) {
  const int64_t pixels = h.rows * h.cols;
  const int32_t lo = h.is_signed ? -(int32_t{1} << (h.bits - 1)) : 0;
  const int32_t hi = h.is_signed ? (int32_t{1} << (h.bits - 1)) - 1 : (int32_t{1} << h.bits) - 1;
  out->resize(static_cast<size_t>(pixels * h.components * bytes));
  uint8_t* dst = out->data();
  for (int64_t i = 0; i < pixels; ++i) {
    for (int c = 0; c < h.components; ++c) {
      const uint32_t v = static_cast<uint32_t>(std::clamp(image.comps[c].data[i], lo, hi));
      *dst++ = static_cast<uint8_t>(v);
      if (bytes == 2) *dst++ = static_cast<uint8_t>(v >> 8);
    }
  }
}

}  // namespace

absl::StatusOr<Jpeg2000Header> ReadJpeg2000Header(absl::string_view data) {
  absl::string_view codestream = data;
  if (IsJp2(data)) {
    ASSIGN_OR_RETURN(codestream, Jp2Codestream(data));
  }
  ASSIGN_OR_RETURN(Jpeg2000Header header, ParseSiz(codestream));
  header.jp2 = IsJp2(data);
  const size_t after_siz = 4 + Be16(codestream, 4);
  header.high_throughput = header.high_throughput ||
                           UsesHighThroughput(codestream, after_siz, header.components);
  return header;
}

absl::StatusOr<Jpeg2000Image> DecodeJpeg2000(absl::string_view data, const Jpeg2000Limits& limits,
                                             int bytes_per_sample) {
  ASSIGN_OR_RETURN(const Jpeg2000Header header, ReadJpeg2000Header(data));
  RETURN_IF_ERROR(CheckLimits(header, limits));
  if (header.high_throughput) {
    // Fuzzing found Debian's OpenJPEG 2.5.0 aborting the whole process on an assert in its
    // HT block decoder (ht_dec.c mel_init) for a malformed HTJ2K codestream: a hostile
    // upload would take the server down, so HT code-blocks are not handed to it.
    return Malformed("High-Throughput JPEG 2000 (HTJ2K) is not decoded: OpenJPEG 2.5.0's "
                     "HT decoder is not safe on malformed input");
  }
  const int bytes = bytes_per_sample != 0 ? bytes_per_sample : (header.bits <= 8 ? 1 : 2);
  if ((bytes != 1 && bytes != 2) || header.bits > 8 * bytes) {
    return Malformed(absl::StrCat(header.bits, "-bit samples do not fit ", bytes,
                                  "-byte samples"));
  }

  std::unique_ptr<opj_codec_t, CodecDeleter> codec(
      opj_create_decompress(header.jp2 ? OPJ_CODEC_JP2 : OPJ_CODEC_J2K));
  if (codec == nullptr) return absl::InternalError("OpenJPEG: cannot create a decoder");
  std::string error;
  opj_set_error_handler(codec.get(), OnError, &error);
  opj_set_warning_handler(codec.get(), Ignore, nullptr);
  opj_set_info_handler(codec.get(), Ignore, nullptr);
  opj_dparameters_t parameters;
  opj_set_default_decoder_parameters(&parameters);
  if (!opj_setup_decoder(codec.get(), &parameters)) return Failed("set up the decoder", error);

  MemoryStream memory{data, 0};
  std::unique_ptr<opj_stream_t, StreamDeleter> stream(
      opj_stream_create(/*p_buffer_size=*/64 * 1024, /*p_is_input=*/OPJ_TRUE));
  if (stream == nullptr) return absl::InternalError("OpenJPEG: cannot create a stream");
  opj_stream_set_user_data(stream.get(), &memory, nullptr);
  opj_stream_set_user_data_length(stream.get(), data.size());
  opj_stream_set_read_function(stream.get(), ReadFn);
  opj_stream_set_skip_function(stream.get(), SkipFn);
  opj_stream_set_seek_function(stream.get(), SeekFn);

  opj_image_t* raw_image = nullptr;
  const bool read = opj_read_header(stream.get(), codec.get(), &raw_image);
  std::unique_ptr<opj_image_t, ImageDeleter> image(raw_image);
  if (!read || image == nullptr) return Failed("read the main header", error);
  if (!opj_decode(codec.get(), stream.get(), image.get()) ||
      !opj_end_decompress(codec.get(), stream.get())) {
    return Failed("decode", error);
  }
  RETURN_IF_ERROR(CheckDecoded(*image, header));
  Jpeg2000Image result;
  result.header = header;
  result.bytes_per_sample = bytes;
  Interleave(*image, header, bytes, &result.samples);
  return result;
}

}  // namespace miseg

// Tests of core/dicom/jpeg2000: images made here and encoded by an outside tool
// (opj_compress) decode to exactly what went in; the frames of pydicom's JPEG 2000 samples
// (lossless, lossy, a 3-component JP2 from GDCM) decode to what opj_decompress writes, and
// MR_small's lossless codestream to MR_small.dcm's native pixels; headers claiming huge
// images or tile grids are refused before decoding; truncated and garbage input is
// InvalidArgument.
#include "core/dicom/jpeg2000.h"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace miseg {
namespace {

using ::testing::HasSubstr;

const std::string kPydicom = MISEG_PYDICOM_TEST_FILES;

std::string Temp(const std::string& name) { return testing::TempDir() + "/miseg_j2k_" + name; }

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}
void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

bool RunQuiet(const std::string& command) { return std::system((command + " >/dev/null 2>&1").c_str()) == 0; }

#define SKIP_WITHOUT(path) \
  if (!std::filesystem::exists(path)) GTEST_SKIP() << (path) << " is not installed"

// The first frame's codestream of a DICOM file, taken out by pydicom (not by us).
std::optional<std::string> FrameByPydicom(const std::string& dicom) {
  const std::string out = Temp(std::filesystem::path(dicom).filename().string() + ".frame");
  const std::string script = absl::StrCat(
      "import pydicom; from pydicom.encaps import generate_pixel_data_frame; ",
      "d = pydicom.dcmread('", dicom, "'); ",
      "open('", out, "', 'wb').write(next(generate_pixel_data_frame(d.PixelData)))");
  if (!RunQuiet(absl::StrCat(MISEG_SYSTEM_PYTHON, " -c \"", script, "\""))) return std::nullopt;
  return ReadBytes(out);
}

// opj_decompress's output as interleaved little-endian samples (it writes planes).
std::optional<std::vector<uint8_t>> DecodeByOpenJpegTool(const std::string& codestream,
                                                         const Jpeg2000Header& h, int bytes) {
  const std::string in = Temp(h.jp2 ? "tool_in.jp2" : "tool_in.j2k");
  const std::string out = Temp("tool_out.rawl");
  WriteBytes(in, codestream);
  std::filesystem::remove(out);
  if (!RunQuiet(absl::StrCat(MISEG_OPJ_DECOMPRESS, " -i ", in, " -o ", out))) return std::nullopt;
  const std::string planes = ReadBytes(out);
  const size_t pixels = static_cast<size_t>(h.rows * h.cols);
  if (planes.size() != pixels * h.components * bytes) return std::nullopt;
  std::vector<uint8_t> interleaved(planes.size());
  for (int c = 0; c < h.components; ++c) {
    for (size_t i = 0; i < pixels; ++i) {
      for (int b = 0; b < bytes; ++b) {
        interleaved[(i * h.components + c) * bytes + b] =
            static_cast<uint8_t>(planes[(c * pixels + i) * bytes + b]);
      }
    }
  }
  return interleaved;
}

// ---------------------------------------------------------------------------------------
// Encoded by opj_compress from data made here: lossless must give it back exactly.

struct Source {
  std::string name;     // file name with the extension opj_compress reads
  std::string options;  // opj_compress's raw-format option, if any
  int bytes;
  std::string raw;  // the samples, little endian, as they must come back
};

std::vector<Source> Sources() {
  std::mt19937 random(21);
  std::vector<Source> sources;
  {  // 8-bit unsigned, as PGM
    const int w = 37, h = 23;
    std::string pixels;
    for (int i = 0; i < w * h; ++i) pixels.push_back(static_cast<char>(random() % 256));
    sources.push_back({"u8.pgm", "", 1, pixels});
  }
  auto raw16 = [&](int lo, int hi) {
    std::string pixels;
    for (int i = 0; i < 40 * 24; ++i) {
      const int v = lo + static_cast<int>(random() % static_cast<unsigned>(hi - lo + 1));
      pixels.push_back(static_cast<char>(v & 0xFF));
      pixels.push_back(static_cast<char>((v >> 8) & 0xFF));
    }
    return pixels;
  };
  sources.push_back({"u16.rawl", "-F 40,24,1,16,u", 2, raw16(0, 65535)});
  sources.push_back({"s16.rawl", "-F 40,24,1,16,s", 2, raw16(-32768, 32767)});
  return sources;
}

TEST(Jpeg2000, OpjCompressLosslessDecodesExactly) {
  SKIP_WITHOUT(MISEG_OPJ_COMPRESS);
  for (const Source& source : Sources()) {
    const std::string input = Temp(source.name);
    if (source.name == "u8.pgm") {
      WriteBytes(input, "P5\n37 23\n255\n" + source.raw);
    } else {
      WriteBytes(input, source.raw);
    }
    // Raw codestream and JP2, one tile and 16 x 16 tiles.
    for (const std::string format : {"j2k", "jp2"}) {
      for (const std::string tiles : {"", " -t 16,16"}) {
        SCOPED_TRACE(absl::StrCat(source.name, " as ", format, tiles));
        const std::string output = Temp("out." + format);
        ASSERT_TRUE(RunQuiet(absl::StrCat(MISEG_OPJ_COMPRESS, " -i ", input, " -o ", output, " -n 3 ",
                                     source.options, tiles)));
        absl::StatusOr<Jpeg2000Image> image = DecodeJpeg2000(ReadBytes(output));
        ASSERT_TRUE(image.ok()) << image.status();
        EXPECT_EQ(image->header.jp2, format == "jp2");
        EXPECT_EQ(image->header.is_signed, source.name[0] == 's');
        EXPECT_EQ(image->header.bits, 8 * source.bytes);
        EXPECT_EQ(image->bytes_per_sample, source.bytes);
        EXPECT_EQ(std::string(image->samples.begin(), image->samples.end()), source.raw);
      }
    }
  }
}

TEST(Jpeg2000, EightBitsWidenToSixteenOnRequest) {
  SKIP_WITHOUT(MISEG_OPJ_COMPRESS);
  const Source source = Sources().front();
  WriteBytes(Temp("w.pgm"), "P5\n37 23\n255\n" + source.raw);
  ASSERT_TRUE(RunQuiet(absl::StrCat(MISEG_OPJ_COMPRESS, " -i ", Temp("w.pgm"), " -o ", Temp("w.j2k"),
                               " -n 3")));
  absl::StatusOr<Jpeg2000Image> image = DecodeJpeg2000(ReadBytes(Temp("w.j2k")), {}, 2);
  ASSERT_TRUE(image.ok()) << image.status();
  ASSERT_EQ(image->samples.size(), 2 * source.raw.size());
  for (size_t i = 0; i < source.raw.size(); ++i) {
    ASSERT_EQ(image->samples[2 * i], static_cast<uint8_t>(source.raw[i]));
    ASSERT_EQ(image->samples[2 * i + 1], 0);
  }
}

// ---------------------------------------------------------------------------------------
// pydicom's samples against opj_decompress.

void ExpectMatchesOpenJpegTool(const std::string& file, int components, int bits,
                               bool is_signed, bool jp2) {
  SKIP_WITHOUT(kPydicom + "/" + file);
  SKIP_WITHOUT(MISEG_OPJ_DECOMPRESS);
  std::optional<std::string> codestream = FrameByPydicom(kPydicom + "/" + file);
  if (!codestream) GTEST_SKIP() << "pydicom is not available to " << MISEG_SYSTEM_PYTHON;
  absl::StatusOr<Jpeg2000Image> image = DecodeJpeg2000(*codestream);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->header.components, components);
  EXPECT_EQ(image->header.bits, bits);
  EXPECT_EQ(image->header.is_signed, is_signed);
  EXPECT_EQ(image->header.jp2, jp2);
  std::optional<std::vector<uint8_t>> reference =
      DecodeByOpenJpegTool(*codestream, image->header, image->bytes_per_sample);
  ASSERT_TRUE(reference.has_value()) << "opj_decompress failed on " << file;
  EXPECT_TRUE(*reference == image->samples) << file << " differs from opj_decompress";
}

TEST(Jpeg2000, PydicomLossyMatchesOpjDecompress) {
  ExpectMatchesOpenJpegTool("JPEG2000.dcm", 1, 16, true, false);
}
TEST(Jpeg2000, Pydicom693LossyMatchesOpjDecompress) {
  ExpectMatchesOpenJpegTool("693_J2KI.dcm", 1, 16, true, false);
}
TEST(Jpeg2000, GdcmColourJp2MatchesOpjDecompress) {
  ExpectMatchesOpenJpegTool("GDCMJ2K_TextGBR.dcm", 3, 8, false, true);
}

// High-Throughput JPEG 2000 (15444-15): recognised by Rsiz, CAP or an HT code-block style,
// and refused. Debian's OpenJPEG 2.5.0 decodes it, but aborts the process on an assert in
// its HT decoder for malformed code-blocks (what the regression seeds, found by the fuzzer
// within seconds from the two real HTJ2K files of OpenJPEG's test data, do).
TEST(Jpeg2000, HighThroughputIsRecognisedAndRefused) {
  for (const char* name : {"htj2k_byte_causal.j2c", "htj2k_byte.jph",
                           "regression_htj2k_mel_init_assert.j2c",
                           "regression_htj2k_mel_init_assert.jph"}) {
    SCOPED_TRACE(name);
    const std::string codestream = ReadBytes(absl::StrCat(MISEG_JPEG2000_SEEDS, "/", name));
    absl::StatusOr<Jpeg2000Header> header = ReadJpeg2000Header(codestream);
    ASSERT_TRUE(header.ok()) << header.status();
    EXPECT_TRUE(header->high_throughput);
    absl::StatusOr<Jpeg2000Image> image = DecodeJpeg2000(codestream);
    EXPECT_TRUE(absl::IsInvalidArgument(image.status())) << image.status();
    EXPECT_THAT(image.status().message(), HasSubstr("HTJ2K) is not decoded"));
  }
  // A Part 1 codestream whose COD alone gives HT code-blocks (Rsiz says nothing).
  std::string part1 = ReadBytes(MISEG_JPEG2000_SEEDS "/u8_lossless.j2k");
  ASSERT_TRUE(DecodeJpeg2000(part1).ok());
  const size_t cod = part1.find(std::string("\xFF\x52", 2));
  ASSERT_NE(cod, std::string::npos);
  part1[cod + 12] = static_cast<char>(part1[cod + 12] | 0x40);
  absl::StatusOr<Jpeg2000Header> header = ReadJpeg2000Header(part1);
  ASSERT_TRUE(header.ok());
  EXPECT_TRUE(header->high_throughput);
  EXPECT_FALSE(DecodeJpeg2000(part1).ok());
}

TEST(Jpeg2000, MrSmallLosslessEqualsNativeMrSmall) {
  SKIP_WITHOUT(kPydicom + "/MR_small.dcm");
  std::optional<std::string> codestream = FrameByPydicom(kPydicom + "/MR_small_jp2klossless.dcm");
  if (!codestream) GTEST_SKIP() << "pydicom is not available";
  const std::string native = Temp("mr_small.raw");
  ASSERT_TRUE(RunQuiet(absl::StrCat(MISEG_SYSTEM_PYTHON, " -c \"import pydicom; open('", native,
                               "', 'wb').write(pydicom.dcmread('", kPydicom,
                               "/MR_small.dcm').PixelData)\"")));
  absl::StatusOr<Jpeg2000Image> image = DecodeJpeg2000(*codestream);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->header.rows, 64);
  EXPECT_EQ(image->header.cols, 64);
  EXPECT_TRUE(std::string(image->samples.begin(), image->samples.end()) == ReadBytes(native));
}

// ---------------------------------------------------------------------------------------
// Hostile and broken input.

// SOC + SIZ for one component, nothing after it.
std::string MainHeader(uint32_t cols, uint32_t rows, uint32_t tile_cols, uint32_t tile_rows,
                       uint16_t rsiz = 0, uint8_t ssiz = 15) {
  std::string h = {'\xFF', '\x4F', '\xFF', '\x51'};
  auto be16 = [&h](uint32_t v) {
    h.push_back(static_cast<char>(v >> 8));
    h.push_back(static_cast<char>(v));
  };
  auto be32 = [&](uint32_t v) {
    be16(v >> 16);
    be16(v & 0xFFFF);
  };
  be16(38 + 3);
  be16(rsiz);
  be32(cols);
  be32(rows);
  be32(0);
  be32(0);
  be32(tile_cols);
  be32(tile_rows);
  be32(0);
  be32(0);
  be16(1);
  h += {static_cast<char>(ssiz), 1, 1};
  return h;
}

TEST(Jpeg2000, RefusesHugeImageFromItsHeader) {
  // 60000 x 60000 16-bit: 7 GB decoded. Only the header is there: a decoder that allocated
  // before checking would still fail here, but with another message, or be killed.
  const std::string header = MainHeader(60000, 60000, 60000, 60000);
  absl::StatusOr<Jpeg2000Header> parsed = ReadJpeg2000Header(header);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->rows, 60000);
  absl::StatusOr<Jpeg2000Image> image = DecodeJpeg2000(header);
  EXPECT_TRUE(absl::IsInvalidArgument(image.status())) << image.status();
  EXPECT_THAT(image.status().message(), HasSubstr("image of 60000x60000 exceeds the limit"));
  // Within the side limit but not the pixel limit.
  Jpeg2000Limits limits;
  limits.max_pixels = 1000;
  image = DecodeJpeg2000(MainHeader(64, 64, 64, 64), limits);
  EXPECT_THAT(image.status().message(), HasSubstr("exceeds the limit"));
}

TEST(Jpeg2000, RefusesHugeTileGridFromItsHeader) {
  // 8192 x 8192 in 1 x 1 tiles: 67 million tiles, which OpenJPEG would allocate for.
  absl::StatusOr<Jpeg2000Image> image = DecodeJpeg2000(MainHeader(8192, 8192, 1, 1));
  EXPECT_TRUE(absl::IsInvalidArgument(image.status())) << image.status();
  EXPECT_THAT(image.status().message(), HasSubstr("67108864 tiles exceed the limit of 65535"));
}

TEST(Jpeg2000, ReadsHighThroughputCapabilityAndPrecision) {
  absl::StatusOr<Jpeg2000Header> header = ReadJpeg2000Header(MainHeader(10, 20, 10, 20, 0x4000, 0x8B));
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_TRUE(header->high_throughput);
  EXPECT_TRUE(header->is_signed);
  EXPECT_EQ(header->bits, 12);
  EXPECT_EQ(header->cols, 10);
  EXPECT_EQ(header->rows, 20);
  EXPECT_EQ(header->tiles, 1);
}

TEST(Jpeg2000, RefusesInconsistentHeaders) {
  for (const std::string& bad : {std::string(), std::string("not jpeg 2000 at all"),
                                 MainHeader(0, 10, 10, 10), MainHeader(10, 10, 0, 10),
                                 MainHeader(10, 10, 10, 10).substr(0, 30),
                                 MainHeader(10, 10, 10, 10, 0, 0x1F) /* 32 bits */}) {
    absl::StatusOr<Jpeg2000Image> image = DecodeJpeg2000(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(image.status())) << image.status();
    EXPECT_THAT(image.status().message(), HasSubstr("JPEG 2000"));
  }
}

TEST(Jpeg2000, TruncatedCodestreamsAreInvalidArgument) {
  const std::string full = ReadBytes(MISEG_JPEG2000_SEEDS "/s16_lossless.j2k");
  ASSERT_GT(full.size(), 100u);
  ASSERT_TRUE(DecodeJpeg2000(full).ok());
  for (size_t length = 0; length + 1 < full.size(); length += 7) {
    absl::StatusOr<Jpeg2000Image> image = DecodeJpeg2000(full.substr(0, length));
    EXPECT_TRUE(absl::IsInvalidArgument(image.status())) << length << ": " << image.status();
  }
}

TEST(Jpeg2000, RefusesPrecisionWiderThanAsked) {
  absl::StatusOr<Jpeg2000Image> image =
      DecodeJpeg2000(ReadBytes(MISEG_JPEG2000_SEEDS "/s16_lossless.j2k"), {}, 1);
  EXPECT_TRUE(absl::IsInvalidArgument(image.status())) << image.status();
  EXPECT_THAT(image.status().message(), HasSubstr("16-bit samples do not fit 1-byte samples"));
}

TEST(Jpeg2000, EverySeedDecodes) {
  int seeds = 0;
  for (const auto& entry : std::filesystem::directory_iterator(MISEG_JPEG2000_SEEDS)) {
    const std::string name = entry.path().filename().string();
    if (name.find("htj2k") != std::string::npos) continue;  // refused, above
    absl::StatusOr<Jpeg2000Image> image = DecodeJpeg2000(ReadBytes(entry.path().string()));
    EXPECT_TRUE(image.ok()) << entry.path() << ": " << image.status();
    ++seeds;
  }
  EXPECT_GE(seeds, 8);
}

}  // namespace
}  // namespace miseg

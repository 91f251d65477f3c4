// Tests of core/dicom/series_reader: real files no one here wrote (pydicom's, GDCM's and
// dicom3tools' samples shipped by Debian), compared with what pydicom reads from them; series
// built here with DCMTK (oblique, shuffled, re-encoded into every supported transfer syntax,
// enhanced multi-frame); and one test per kind of bad input, each checking that the message
// names the instance and the reason.
#include "core/dicom/series_reader.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcostrmb.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcpixseq.h>
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dcrlerp.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmjpeg/djrplol.h>
#include <dcmtk/dcmjpeg/djrploss.h>
#include <dcmtk/dcmjpls/djrparam.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/dicom/dicom_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace miseg {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using Vec3 = std::array<double, 3>;

const std::string kPydicom = MISEG_PYDICOM_TEST_FILES;

std::string Pydicom(const std::string& name) { return kPydicom + "/" + name; }

std::optional<std::string> ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

// Reads one file from disk as a one-buffer set, named by its base name.
absl::StatusOr<std::vector<SeriesVolume>> ReadFiles(const std::vector<std::string>& paths,
                                                    std::vector<std::string>* skipped = nullptr) {
  std::vector<DicomBuffer> buffers;
  for (const std::string& path : paths) {
    std::optional<std::string> bytes = ReadFileBytes(path);
    if (!bytes) return absl::NotFoundError(path);
    buffers.push_back({std::filesystem::path(path).filename().string(), *bytes});
  }
  return ReadSeries(buffers, skipped);
}

#define SKIP_IF_ABSENT(path)                                      \
  do {                                                            \
    if (!std::filesystem::exists(path)) GTEST_SKIP() << (path) << " is not installed"; \
  } while (false)

// ---------------------------------------------------------------------------------------
// pydicom as the reference: a small script run by the system Python prints the rescaled
// values of every frame, and the geometry. It uses pixel_array when numpy is there; without
// numpy (Debian's pydicom does not pull it in) it unpacks the PixelData pydicom parsed with
// struct. Either way the file is parsed by pydicom, not by us.
constexpr char kPydicomScript[] = R"PY(
import struct, sys
try:
    import pydicom
except ImportError:
    print("SKIP"); sys.exit(0)
ds = pydicom.dcmread(sys.argv[1])
frames = int(ds.get("NumberOfFrames", 1) or 1)
slope = float(ds.get("RescaleSlope", 1) or 1)
intercept = float(ds.get("RescaleIntercept", 0) or 0)
if "DoseGridScaling" in ds and "RescaleSlope" not in ds:
    slope = float(ds.DoseGridScaling)
count = ds.Rows * ds.Columns * frames
try:
    import numpy
    values = [float(v) for v in ds.pixel_array.flatten()]
except ImportError:
    bits, stored, high = ds.BitsAllocated, ds.BitsStored, ds.HighBit
    code = {8: "B", 16: "H", 32: "I"}[bits]
    order = "<" if ds.is_little_endian else ">"
    words = struct.unpack(order + code * count, ds.PixelData[: count * bits // 8])
    mask, shift = (1 << stored) - 1, high + 1 - stored
    values = []
    for w in words:
        v = (w >> shift) & mask
        if ds.PixelRepresentation == 1 and v >> (stored - 1):
            v -= 1 << stored
        values.append(float(v))
print(ds.Rows, ds.Columns, frames)
print(" ".join(repr(slope * v + intercept) for v in values))
print(" ".join(repr(float(x)) for x in ds.get("ImagePositionPatient", [])))
print(" ".join(repr(float(x)) for x in ds.get("PixelSpacing", [])))
)PY";

struct PydicomReference {
  int64_t rows = 0, cols = 0, frames = 0;
  std::vector<double> values;
  std::vector<double> position;
  std::vector<double> pixel_spacing;
};

// nullopt when the system Python or its pydicom is missing (the caller skips).
std::optional<PydicomReference> ReadWithPydicom(const std::string& path) {
  if (!std::filesystem::exists(MISEG_SYSTEM_PYTHON)) return std::nullopt;
  const std::string script = testing::TempDir() + "/miseg_pydicom_reference.py";
  {
    std::ofstream out(script);
    out << kPydicomScript;
  }
  const std::string command = std::string(MISEG_SYSTEM_PYTHON) + " " + script + " '" + path + "' 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return std::nullopt;
  std::string output;
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof(chunk), pipe)) > 0) output.append(chunk, n);
  if (pclose(pipe) != 0 || output.rfind("SKIP", 0) == 0 || output.empty()) return std::nullopt;
  std::istringstream lines(output);
  std::string line;
  PydicomReference reference;
  std::getline(lines, line);
  std::istringstream(line) >> reference.rows >> reference.cols >> reference.frames;
  auto numbers = [&lines, &line](std::vector<double>* into) {
    std::getline(lines, line);
    std::istringstream values(line);
    double v;
    while (values >> v) into->push_back(v);
  };
  numbers(&reference.values);
  numbers(&reference.position);
  numbers(&reference.pixel_spacing);
  return reference;
}

// Our volume against pydicom's values: same size, every voxel equal as float.
void ExpectMatchesPydicom(const std::string& path) {
  std::optional<PydicomReference> reference = ReadWithPydicom(path);
  if (!reference) GTEST_SKIP() << "pydicom is not available to " << MISEG_SYSTEM_PYTHON;
  auto volumes = ReadFiles({path});
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  ASSERT_THAT(*volumes, SizeIs(1));
  const ImageVolume& image = volumes->front().image;
  EXPECT_EQ(image.geometry.rows, reference->rows);
  EXPECT_EQ(image.geometry.cols, reference->cols);
  EXPECT_EQ(image.geometry.slices, reference->frames);
  ASSERT_EQ(image.voxels.size(), reference->values.size());
  int64_t mismatches = 0;
  for (size_t i = 0; i < image.voxels.size(); ++i) {
    if (image.voxels[i] != static_cast<float>(reference->values[i])) {
      if (++mismatches <= 5) {
        ADD_FAILURE() << path << " voxel " << i << ": ours " << image.voxels[i] << ", pydicom "
                      << reference->values[i];
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
  if (reference->position.size() == 3) {
    for (int a = 0; a < 3; ++a) {
      EXPECT_NEAR(image.geometry.origin_mm[a], reference->position[a], 1e-9);
    }
  }
  if (reference->pixel_spacing.size() == 2) {
    EXPECT_DOUBLE_EQ(image.geometry.row_spacing_mm, reference->pixel_spacing[0]);
    EXPECT_DOUBLE_EQ(image.geometry.col_spacing_mm, reference->pixel_spacing[1]);
  }
}

// ---------------------------------------------------------------------------------------
// Real files.

TEST(SeriesReader, MrSmallMatchesPydicom) { ExpectMatchesPydicom(Pydicom("MR_small.dcm")); }

TEST(SeriesReader, CtSmallMatchesPydicomInHounsfieldUnits) {
  ExpectMatchesPydicom(Pydicom("CT_small.dcm"));
  auto volumes = ReadFiles({Pydicom("CT_small.dcm")});
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  const ImageVolume& image = volumes->front().image;
  // CT_small carries RescaleIntercept -1024: stored values are not HU, ours must be.
  EXPECT_LT(*std::min_element(image.voxels.begin(), image.voxels.end()), -800.0f);
  EXPECT_EQ(volumes->front().modality, "CT");
}

TEST(SeriesReader, MrSmallIsIdenticalInEveryTransferSyntax) {
  auto reference = ReadFiles({Pydicom("MR_small.dcm")});
  ASSERT_TRUE(reference.ok()) << reference.status();
  const ImageVolume& expected = reference->front().image;
  ASSERT_EQ(expected.geometry.rows, 64);
  ASSERT_EQ(expected.geometry.cols, 64);
  ASSERT_EQ(expected.geometry.slices, 1);
  // Values read off MR_small.dcm with pydicom (pixel (0,0), (31,31), (63,63)).
  EXPECT_EQ(expected.at(0, 0, 0), 905.0f);
  for (const char* variant :
       {"MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
        "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"}) {
    SCOPED_TRACE(variant);
    auto volumes = ReadFiles({Pydicom(variant)});
    ASSERT_TRUE(volumes.ok()) << volumes.status();
    ASSERT_THAT(*volumes, SizeIs(1));
    EXPECT_EQ(volumes->front().image.voxels, expected.voxels);
    EXPECT_EQ(volumes->front().image.geometry.origin_mm, expected.geometry.origin_mm);
    EXPECT_EQ(volumes->front().slices.front().sop_instance_uid,
              reference->front().slices.front().sop_instance_uid);
  }
}

TEST(SeriesReader, DeflatedFileMatchesPydicom) { ExpectMatchesPydicom(Pydicom("image_dfl.dcm")); }

TEST(SeriesReader, TwelveBitMrFromDicom3toolsMatchesPydicom) {
  const std::string path = "/usr/share/doc/dicom3tools/examples/0051.dcm";
  SKIP_IF_ABSENT(path);
  ExpectMatchesPydicom(path);
}

TEST(SeriesReader, RtDoseMultiFrameMatchesPydicomInEverySyntax) {
  ExpectMatchesPydicom(Pydicom("rtdose.dcm"));
  auto reference = ReadFiles({Pydicom("rtdose.dcm")});
  ASSERT_TRUE(reference.ok()) << reference.status();
  const SeriesVolume& dose = reference->front();
  // Frames are placed by GridFrameOffsetVector (0, 5, 10, ... mm) along the normal.
  EXPECT_EQ(dose.image.geometry.slices, 15);
  EXPECT_NEAR(dose.image.geometry.slice_spacing_mm, 5.0, 1e-9);
  ASSERT_THAT(dose.slices, SizeIs(15));
  EXPECT_EQ(dose.slices[3].frame_number, 4);
  // rtdose_expb.dcm holds 32-bit samples big endian; rtdose_rle.dcm labels every element UN.
  for (const char* variant : {"rtdose_expb.dcm", "rtdose_rle.dcm"}) {
    SCOPED_TRACE(variant);
    auto volumes = ReadFiles({Pydicom(variant)});
    ASSERT_TRUE(volumes.ok()) << volumes.status();
    EXPECT_EQ(volumes->front().image.voxels, dose.image.voxels);
  }
}

TEST(SeriesReader, JpegExtendedDecodesToReferencePoints) {
  // pydicom's own tests check these two points, read off the image in OsiriX.
  for (const char* name : {"JPEG-lossy.dcm", "JPGExtended.dcm"}) {
    SCOPED_TRACE(name);
    auto volumes = ReadFiles({Pydicom(name)});
    ASSERT_TRUE(volumes.ok()) << volumes.status();
    const ImageVolume& image = volumes->front().image;
    ASSERT_EQ(image.geometry.rows, 1024);
    ASSERT_EQ(image.geometry.cols, 256);
    EXPECT_EQ(image.at(0, 420, 140), 244.0f);
    EXPECT_EQ(image.at(0, 230, 120), 95.0f);
  }
}

TEST(SeriesReader, XaMultiFrameJpegLosslessFromGdcmDecodes) {
  // Four frames of an X-ray angiography run: no ImagePositionPatient anywhere, so the frames
  // are stacked in stored order with the identity geometry (see ReadSeries).
  const std::string path = "/usr/share/doc/libgdcm3.0/examples/00191113.dcm";
  SKIP_IF_ABSENT(path);
  // GDCM's sample carries UIDs with leading zeros ("999.999.2.19940822.083000"), which
  // PS3.5 9.1 forbids: refused as it is, naming the attribute (issue 18)...
  auto refused = ReadFiles({path});
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("is not a valid UID: '999.999.2.19"));
  // ...and decoded once its UIDs are valid.
  std::optional<std::string> bytes = ReadFileBytes(path);
  ASSERT_TRUE(bytes);
  auto file = ParseDicom(*bytes, "00191113.dcm");
  ASSERT_TRUE(file.ok()) << file.status();
  DcmDataset* dataset = (*file)->getDataset();
  dataset->putAndInsertString(DCM_SOPInstanceUID, "999.999.2.19960619.163000.1.103");
  dataset->putAndInsertString(DCM_StudyInstanceUID, "999.999.2.19940822.83000");
  dataset->putAndInsertString(DCM_SeriesInstanceUID, "999.999.2.19940822.83000.1");
  absl::StatusOr<std::string> fixed = SerializeDicom(**file, dataset->getOriginalXfer());
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  auto volumes = ReadSeries({DicomBuffer{"00191113.dcm", *fixed}});
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  const SeriesVolume& xa = volumes->front();
  EXPECT_EQ(xa.image.geometry.slices, 4);
  EXPECT_EQ(xa.image.geometry.rows, 512);
  EXPECT_EQ(xa.image.geometry.cols, 512);
  EXPECT_EQ(xa.image.geometry.origin_mm, (Vec3{0, 0, 0}));
  ASSERT_THAT(xa.slices, SizeIs(4));
  EXPECT_EQ(xa.slices[2].frame_number, 3);
  const auto [lo, hi] = std::minmax_element(xa.image.voxels.begin(), xa.image.voxels.end());
  EXPECT_LT(*lo, *hi);
  EXPECT_LE(*hi, 255.0f);
}

TEST(SeriesReader, FileWithoutMetaHeaderIsReadable) {
  // A bare dataset (no preamble, no group 2), in implicit VR little endian: DCMTK's default
  // for files without a meta header.
  std::optional<std::string> bytes = ReadFileBytes(Pydicom("MR_small.dcm"));
  ASSERT_TRUE(bytes);
  auto file = ParseDicom(*bytes, "MR_small.dcm");
  ASSERT_TRUE(file.ok()) << file.status();
  DcmDataset* dataset = (*file)->getDataset();
  ASSERT_TRUE(dataset->chooseRepresentation(EXS_LittleEndianImplicit, nullptr).good());
  std::string bare(dataset->calcElementLength(EXS_LittleEndianImplicit, EET_ExplicitLength), '\0');
  DcmOutputBufferStream stream(bare.data(), bare.size());
  dataset->transferInit();
  ASSERT_TRUE(dataset->write(stream, EXS_LittleEndianImplicit, EET_ExplicitLength, nullptr).good());
  dataset->transferEnd();
  void* written = nullptr;
  offile_off_t length = 0;
  stream.flushBuffer(written, length);
  bare.resize(static_cast<size_t>(length));
  ASSERT_NE(bare.substr(128, 4), "DICM");

  auto volumes = ReadSeries({{"bare dataset", bare}});
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  auto reference = ReadFiles({Pydicom("MR_small.dcm")});
  ASSERT_TRUE(reference.ok());
  EXPECT_EQ(volumes->front().image.voxels, reference->front().image.voxels);
}

TEST(SeriesReader, PydicomNoMetaSampleIsRefusedCleanly) {
  // pydicom's no_meta.dcm starts one byte into an element: pydicom itself refuses it without
  // force=True, and with it reads one garbage element. Ours is a clean InvalidArgument.
  auto volumes = ReadFiles({Pydicom("no_meta.dcm")});
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("no_meta.dcm"));
}


TEST(SeriesReader, RejectsTruncatedFile) {
  auto volumes = ReadFiles({Pydicom("MR_truncated.dcm")});
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("MR_truncated.dcm"));
  EXPECT_THAT(volumes.status().message(), HasSubstr("truncated"));
}

TEST(SeriesReader, SkipsNonImageInstances) {
  std::vector<std::string> skipped;
  auto volumes = ReadFiles({Pydicom("rtplan.dcm"), Pydicom("MR_small.dcm"),
                            Pydicom("rtstruct.dcm"), Pydicom("test-SR.dcm"),
                            Pydicom("liver_1frame.dcm")},
                           &skipped);
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  EXPECT_THAT(*volumes, SizeIs(1));
  ASSERT_THAT(skipped, SizeIs(4));
  EXPECT_THAT(skipped[0], HasSubstr("rtplan.dcm"));
  EXPECT_THAT(skipped[1], HasSubstr("rtstruct.dcm"));
  EXPECT_THAT(skipped[2], HasSubstr("test-SR.dcm"));
  EXPECT_THAT(skipped[3], HasSubstr("liver_1frame.dcm"));
  EXPECT_THAT(skipped[3], HasSubstr("Segmentation"));
}

TEST(SeriesReader, RejectsASetWithNoImage) {
  std::vector<std::string> skipped;
  auto volumes = ReadFiles({Pydicom("rtplan.dcm"), Pydicom("test-SR.dcm")}, &skipped);
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("no image instance"));
  EXPECT_THAT(skipped, SizeIs(2));
}

TEST(SeriesReader, RejectsColourImages) {
  auto volumes = ReadFiles({Pydicom("SC_rgb_rle.dcm")});
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("SC_rgb_rle.dcm"));
  EXPECT_THAT(volumes.status().message(), HasSubstr("SamplesPerPixel 3"));
}

TEST(SeriesReader, RejectsMalformedNumberOfFrames) {
  // pydicom's badVR.dcm has NumberOfFrames "1A".
  auto volumes = ReadFiles({Pydicom("badVR.dcm")});
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("NumberOfFrames '1A'"));
}

// ---------------------------------------------------------------------------------------
// Series built here with DCMTK.

// An MR series as a scanner might write it. Stored values are a deterministic pattern over
// the whole range BitsStored allows (both extremes included).
struct SeriesSpec {
  int rows = 12;
  int cols = 10;
  int slices = 12;
  // Oblique: rows along (cos 30, sin 30, 0), columns tilted 20 degrees out of the xy plane.
  std::array<double, 6> orientation = {0.8660254037844386, 0.5, 0.0,
                                       -0.4698463103929542, 0.8137976813493737, 0.3420201433256687};
  Vec3 origin = {-120.5, 33.25, 17.0};
  double slice_spacing = 2.5;
  std::array<double, 2> pixel_spacing = {0.75, 0.9};
  int bits_allocated = 16;
  int bits_stored = 16;
  int high_bit = 15;
  bool is_signed = true;
  bool junk_above_high_bit = false;  // set the unused top bits (overlay bits, say) to 1
  std::string photometric = "MONOCHROME2";
  std::string slope = "0.5";
  std::string intercept = "-100";
  std::string study_uid = "1.2.826.0.1.3680043.9.7171.1";
  std::string series_uid = "1.2.826.0.1.3680043.9.7171.1.1";
  std::string frame_of_reference_uid = "1.2.826.0.1.3680043.9.7171.1.2";
  std::string uid_prefix = "1.2.826.0.1.3680043.9.7171.1.1.";
};

Vec3 Normal(const SeriesSpec& spec) {
  const auto& o = spec.orientation;
  return {o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]};
}

Vec3 SlicePosition(const SeriesSpec& spec, int k) {
  const Vec3 n = Normal(spec);
  return {spec.origin[0] + k * spec.slice_spacing * n[0],
          spec.origin[1] + k * spec.slice_spacing * n[1],
          spec.origin[2] + k * spec.slice_spacing * n[2]};
}

int64_t StoredValue(const SeriesSpec& spec, int k, int r, int c) {
  const int64_t range = int64_t{1} << spec.bits_stored;
  const int64_t lowest = spec.is_signed ? -(range / 2) : 0;
  if (k == 0 && r == 0 && c == 0) return lowest;
  if (k == 0 && r == 0 && c == 1) return lowest + range - 1;
  const uint64_t mixed = (static_cast<uint64_t>(k) * 7919 + static_cast<uint64_t>(r) * 104729 +
                          static_cast<uint64_t>(c) * 1299709) * 2654435761ULL;
  return lowest + static_cast<int64_t>((mixed >> 7) % static_cast<uint64_t>(range));
}

float ExpectedValue(const SeriesSpec& spec, int k, int r, int c) {
  int64_t v = StoredValue(spec, k, r, c);
  if (spec.photometric == "MONOCHROME1") {
    v = spec.is_signed ? -1 - v : ((int64_t{1} << spec.bits_stored) - 1) - v;
  }
  return static_cast<float>(std::stod(spec.slope) * static_cast<double>(v) +
                            std::stod(spec.intercept));
}

std::string Decimals(const std::vector<double>& values) {
  std::string out;
  for (double v : values) {
    char text[32];
    std::snprintf(text, sizeof(text), "%.10g", v);
    absl::StrAppend(&out, out.empty() ? "" : "\\", text);
  }
  return out;
}

// The frame's samples as BitsAllocated-wide little-endian words.
std::vector<uint8_t> FrameBytes(const SeriesSpec& spec, int k) {
  const int bytes = spec.bits_allocated / 8;
  const int shift = spec.high_bit + 1 - spec.bits_stored;
  const uint64_t mask = (uint64_t{1} << spec.bits_stored) - 1;
  uint64_t junk = 0;
  if (spec.junk_above_high_bit) {
    junk = ((uint64_t{1} << spec.bits_allocated) - 1) & ~(((uint64_t{1} << (spec.high_bit + 1)) - 1));
  }
  std::vector<uint8_t> out;
  for (int r = 0; r < spec.rows; ++r) {
    for (int c = 0; c < spec.cols; ++c) {
      const uint64_t word =
          ((static_cast<uint64_t>(StoredValue(spec, k, r, c)) & mask) << shift) | junk;
      for (int b = 0; b < bytes; ++b) out.push_back(static_cast<uint8_t>(word >> (8 * b)));
    }
  }
  return out;
}

void PutPixelData(DcmDataset& ds, const SeriesSpec& spec, const std::vector<uint8_t>& bytes) {
  if (spec.bits_allocated == 8) {
    ASSERT_TRUE(ds.putAndInsertUint8Array(DCM_PixelData, bytes.data(), bytes.size()).good());
  } else {
    std::vector<Uint16> words(bytes.size() / 2);
    for (size_t i = 0; i < words.size(); ++i) {
      words[i] = static_cast<Uint16>(bytes[2 * i] | (bytes[2 * i + 1] << 8));
    }
    ASSERT_TRUE(ds.putAndInsertUint16Array(DCM_PixelData, words.data(), words.size()).good());
  }
}

// Attributes every image here carries: patient, study, series, pixel format.
void PutCommon(DcmDataset& ds, const SeriesSpec& spec) {
  ds.putAndInsertString(DCM_PatientName, "Phantom^Reader");
  ds.putAndInsertString(DCM_PatientID, "READER-TEST");
  ds.putAndInsertString(DCM_StudyInstanceUID, spec.study_uid.c_str());
  ds.putAndInsertString(DCM_SeriesInstanceUID, spec.series_uid.c_str());
  ds.putAndInsertString(DCM_FrameOfReferenceUID, spec.frame_of_reference_uid.c_str());
  ds.putAndInsertString(DCM_Modality, "MR");
  ds.putAndInsertString(DCM_SeriesDescription, "reader test");
  ds.putAndInsertUint16(DCM_Rows, static_cast<Uint16>(spec.rows));
  ds.putAndInsertUint16(DCM_Columns, static_cast<Uint16>(spec.cols));
  ds.putAndInsertUint16(DCM_SamplesPerPixel, 1);
  ds.putAndInsertString(DCM_PhotometricInterpretation, spec.photometric.c_str());
  ds.putAndInsertUint16(DCM_BitsAllocated, static_cast<Uint16>(spec.bits_allocated));
  ds.putAndInsertUint16(DCM_BitsStored, static_cast<Uint16>(spec.bits_stored));
  ds.putAndInsertUint16(DCM_HighBit, static_cast<Uint16>(spec.high_bit));
  ds.putAndInsertUint16(DCM_PixelRepresentation, spec.is_signed ? 1 : 0);
}

std::string SliceUid(const SeriesSpec& spec, int k) { return spec.uid_prefix + std::to_string(k + 1); }

// Slice k of the series as a single-frame MR image.
std::unique_ptr<DcmFileFormat> MakeSlice(const SeriesSpec& spec, int k, int instance_number) {
  auto file = std::make_unique<DcmFileFormat>();
  DcmDataset& ds = *file->getDataset();
  ds.putAndInsertString(DCM_SOPClassUID, UID_MRImageStorage);
  ds.putAndInsertString(DCM_SOPInstanceUID, SliceUid(spec, k).c_str());
  PutCommon(ds, spec);
  ds.putAndInsertString(DCM_InstanceNumber, std::to_string(instance_number).c_str());
  const Vec3 p = SlicePosition(spec, k);
  ds.putAndInsertString(DCM_ImagePositionPatient, Decimals({p[0], p[1], p[2]}).c_str());
  ds.putAndInsertString(DCM_ImageOrientationPatient,
                        Decimals({spec.orientation.begin(), spec.orientation.end()}).c_str());
  ds.putAndInsertString(DCM_PixelSpacing,
                        Decimals({spec.pixel_spacing[0], spec.pixel_spacing[1]}).c_str());
  ds.putAndInsertString(DCM_SliceThickness, Decimals({spec.slice_spacing}).c_str());
  ds.putAndInsertString(DCM_RescaleSlope, spec.slope.c_str());
  ds.putAndInsertString(DCM_RescaleIntercept, spec.intercept.c_str());
  PutPixelData(ds, spec, FrameBytes(spec, k));
  return file;
}

// Re-encodes a dataset into `syntax` and serialises it as Part-10.
std::string Encode(DcmFileFormat& file, E_TransferSyntax syntax) {
  RegisterDicomCodecs();
  DcmDataset& ds = *file.getDataset();
  DJ_RPLossless jpeg_lossless_sv1(/*aPrediction=*/1, /*aPt=*/0);
  DJ_RPLossless jpeg_lossless_p14(/*aPrediction=*/6, /*aPt=*/0);
  DJLSRepresentationParameter jpeg_ls(/*nearlosslessDeviation=*/0, /*losslessProcess=*/OFTrue);
  DcmRLERepresentationParameter rle;
  DJ_RPLossy jpeg_baseline(/*aQuality=*/90);
  const DcmRepresentationParameter* parameter = nullptr;
  if (syntax == EXS_JPEGProcess1) parameter = &jpeg_baseline;
  if (syntax == EXS_JPEGProcess14SV1) parameter = &jpeg_lossless_sv1;
  if (syntax == EXS_JPEGProcess14) parameter = &jpeg_lossless_p14;
  if (syntax == EXS_JPEGLSLossless) parameter = &jpeg_ls;
  if (syntax == EXS_RLELossless) parameter = &rle;
  const OFCondition changed = ds.chooseRepresentation(syntax, parameter);
  EXPECT_TRUE(changed.good()) << DcmXfer(syntax).getXferName() << ": " << changed.text();
  EXPECT_TRUE(ds.canWriteXfer(syntax)) << DcmXfer(syntax).getXferName();
  auto bytes = SerializeDicom(file, syntax);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : std::string();
}

// The whole series as buffers in a shuffled order with shuffled InstanceNumbers, so that
// neither file order nor InstanceNumber gives the slice order away. `edit` may change slice
// k's dataset before it is encoded.
std::vector<DicomBuffer> MakeSeries(
    const SeriesSpec& spec, E_TransferSyntax syntax = EXS_LittleEndianExplicit,
    const std::function<void(int, DcmDataset&)>& edit = nullptr) {
  std::mt19937 rng(20240611);
  std::vector<int> order(static_cast<size_t>(spec.slices)), numbers(order.size());
  for (int k = 0; k < spec.slices; ++k) order[k] = numbers[k] = k;
  std::shuffle(order.begin(), order.end(), rng);
  std::shuffle(numbers.begin(), numbers.end(), rng);
  std::vector<DicomBuffer> buffers;
  for (int k : order) {
    std::unique_ptr<DcmFileFormat> file = MakeSlice(spec, k, numbers[k] + 1);
    if (edit) edit(k, *file->getDataset());
    buffers.push_back({absl::StrCat("slice-", k, ".dcm"), Encode(*file, syntax)});
  }
  return buffers;
}

// Checks a volume against the spec: geometry, slice order, every voxel; and, for a series of
// one file per slice, that slice k came from the file made for slice k.
void ExpectSeriesVolume(const SeriesVolume& volume, const SeriesSpec& spec,
                        bool one_file_per_slice = true) {
  const VolumeGeometry& g = volume.image.geometry;
  ASSERT_TRUE(volume.image.consistent());
  ASSERT_EQ(g.slices, spec.slices);
  ASSERT_EQ(g.rows, spec.rows);
  ASSERT_EQ(g.cols, spec.cols);
  const Vec3 n = Normal(spec);
  for (int a = 0; a < 3; ++a) {
    EXPECT_NEAR(g.origin_mm[a], spec.origin[a], 1e-6);
    EXPECT_NEAR(g.row_direction[a], spec.orientation[a], 1e-9);
    EXPECT_NEAR(g.col_direction[a], spec.orientation[3 + a], 1e-9);
    EXPECT_NEAR(g.slice_direction[a], n[a], 1e-9);
  }
  EXPECT_NEAR(g.slice_spacing_mm, spec.slice_spacing, 1e-6);
  EXPECT_DOUBLE_EQ(g.row_spacing_mm, spec.pixel_spacing[0]);
  EXPECT_DOUBLE_EQ(g.col_spacing_mm, spec.pixel_spacing[1]);
  EXPECT_EQ(volume.study_instance_uid, spec.study_uid);
  EXPECT_EQ(volume.series_instance_uid, spec.series_uid);
  EXPECT_EQ(volume.frame_of_reference_uid, spec.frame_of_reference_uid);
  EXPECT_EQ(volume.modality, "MR");
  ASSERT_THAT(volume.slices, SizeIs(spec.slices));
  int64_t mismatches = 0;
  for (int k = 0; k < spec.slices; ++k) {
    if (one_file_per_slice) {
      EXPECT_EQ(volume.slices[k].sop_instance_uid, SliceUid(spec, k));
    }
    for (int r = 0; r < spec.rows; ++r) {
      for (int c = 0; c < spec.cols; ++c) {
        if (volume.image.at(k, r, c) != ExpectedValue(spec, k, r, c) && ++mismatches <= 5) {
          ADD_FAILURE() << "voxel " << k << "," << r << "," << c << ": "
                        << volume.image.at(k, r, c) << " != " << ExpectedValue(spec, k, r, c);
        }
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

SeriesVolume ReadOneSeries(const std::vector<DicomBuffer>& buffers) {
  auto volumes = ReadSeries(buffers);
  EXPECT_TRUE(volumes.ok()) << volumes.status();
  if (!volumes.ok() || volumes->size() != 1) {
    ADD_FAILURE() << "expected one series";
    return {};
  }
  return std::move(volumes->front());
}

TEST(SeriesReader, OrdersObliqueShuffledSeriesByPosition) {
  const SeriesSpec spec;
  ExpectSeriesVolume(ReadOneSeries(MakeSeries(spec)), spec);
}

TEST(SeriesReader, SeriesAlongNegativeNormalStartsAtLowestProjection) {
  // Positions decreasing along the normal: slice 0 of the volume is the scanner's last one.
  SeriesSpec spec;
  spec.origin = SlicePosition(spec, spec.slices - 1);
  spec.slice_spacing = -spec.slice_spacing;
  const SeriesVolume volume = ReadOneSeries(MakeSeries(spec));
  EXPECT_NEAR(volume.image.geometry.slice_spacing_mm, 2.5, 1e-6);
  EXPECT_EQ(volume.slices.front().sop_instance_uid, SliceUid(spec, spec.slices - 1));
  EXPECT_EQ(volume.slices.back().sop_instance_uid, SliceUid(spec, 0));
}

TEST(SeriesReader, SameVolumeInEveryTransferSyntax) {
  const SeriesSpec spec;
  const SeriesVolume expected = ReadOneSeries(MakeSeries(spec));
  ExpectSeriesVolume(expected, spec);
  for (E_TransferSyntax syntax :
       {EXS_LittleEndianImplicit, EXS_BigEndianExplicit, EXS_DeflatedLittleEndianExplicit,
        EXS_RLELossless, EXS_JPEGLSLossless, EXS_JPEGProcess14SV1, EXS_JPEGProcess14}) {
    SCOPED_TRACE(DcmXfer(syntax).getXferName());
    const std::vector<DicomBuffer> buffers = MakeSeries(spec, syntax);
    // The files really are in that syntax.
    auto parsed = ParseDicom(buffers.front().bytes, "check");
    ASSERT_TRUE(parsed.ok());
    OFString syntax_uid;
    ASSERT_TRUE((*parsed)->getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, syntax_uid).good());
    EXPECT_EQ(std::string(syntax_uid.c_str()), DcmXfer(syntax).getXferID());
    const SeriesVolume volume = ReadOneSeries(buffers);
    EXPECT_EQ(volume.image.voxels, expected.image.voxels);
    EXPECT_EQ(volume.image.geometry.origin_mm, expected.image.geometry.origin_mm);
    EXPECT_EQ(volume.image.geometry.slice_spacing_mm, expected.image.geometry.slice_spacing_mm);
  }
}

TEST(SeriesReader, EightBitUnsignedInEveryLosslessSyntax) {
  SeriesSpec spec;
  spec.bits_allocated = spec.bits_stored = 8;
  spec.high_bit = 7;
  spec.is_signed = false;
  spec.slope = "1";
  spec.intercept = "0";
  const SeriesVolume expected = ReadOneSeries(MakeSeries(spec));
  ExpectSeriesVolume(expected, spec);
  for (E_TransferSyntax syntax : {EXS_BigEndianExplicit, EXS_RLELossless, EXS_JPEGLSLossless,
                                  EXS_JPEGProcess14SV1}) {
    SCOPED_TRACE(DcmXfer(syntax).getXferName());
    EXPECT_EQ(ReadOneSeries(MakeSeries(spec, syntax)).image.voxels, expected.image.voxels);
  }
}

TEST(SeriesReader, JpegBaselineDecodesCloseToTheOriginal) {
  // Lossy: the values only have to be close; the mean of a noisy pattern survives.
  SeriesSpec spec;
  spec.bits_allocated = spec.bits_stored = 8;
  spec.high_bit = 7;
  spec.is_signed = false;
  spec.slope = "1";
  spec.intercept = "0";
  spec.rows = spec.cols = 32;
  const SeriesVolume original = ReadOneSeries(MakeSeries(spec));
  const SeriesVolume decoded = ReadOneSeries(MakeSeries(spec, EXS_JPEGProcess1));
  ASSERT_EQ(decoded.image.voxels.size(), original.image.voxels.size());
  double sum_original = 0, sum_decoded = 0;
  for (size_t i = 0; i < original.image.voxels.size(); ++i) {
    sum_original += original.image.voxels[i];
    sum_decoded += decoded.image.voxels[i];
  }
  const double n = static_cast<double>(original.image.voxels.size());
  EXPECT_NEAR(sum_decoded / n, sum_original / n, 2.0);
  EXPECT_NE(decoded.image.voxels, original.image.voxels);  // it really was lossy
  EXPECT_EQ(decoded.image.geometry.origin_mm, original.image.geometry.origin_mm);
}

TEST(SeriesReader, TwelveBitSignedIsSignExtendedAndIgnoresBitsAboveHighBit) {
  SeriesSpec spec;
  spec.bits_stored = 12;
  spec.high_bit = 11;
  spec.junk_above_high_bit = true;  // bits 12..15 set: must not leak into the values
  ExpectSeriesVolume(ReadOneSeries(MakeSeries(spec)), spec);
  EXPECT_EQ(ExpectedValue(spec, 0, 0, 0), 0.5f * -2048 - 100);  // the extreme is in the data
}

TEST(SeriesReader, TwelveBitSignedInEveryLosslessSyntax) {
  SeriesSpec spec;
  spec.bits_stored = 12;
  spec.high_bit = 11;
  const SeriesVolume expected = ReadOneSeries(MakeSeries(spec));
  ExpectSeriesVolume(expected, spec);
  for (E_TransferSyntax syntax :
       {EXS_BigEndianExplicit, EXS_RLELossless, EXS_JPEGLSLossless, EXS_JPEGProcess14SV1}) {
    SCOPED_TRACE(DcmXfer(syntax).getXferName());
    EXPECT_EQ(ReadOneSeries(MakeSeries(spec, syntax)).image.voxels, expected.image.voxels);
  }
}

TEST(SeriesReader, StoredBitsBelowAHighHighBitAreShiftedDown) {
  SeriesSpec spec;
  spec.bits_stored = 12;
  spec.high_bit = 15;  // stored in bits 4..15
  spec.is_signed = false;
  ExpectSeriesVolume(ReadOneSeries(MakeSeries(spec)), spec);
}

TEST(SeriesReader, Monochrome1IsInvertedWithinTheStoredRange) {
  SeriesSpec spec;
  spec.photometric = "MONOCHROME1";
  spec.bits_stored = 12;
  spec.high_bit = 11;
  spec.is_signed = false;
  spec.slope = "1";
  spec.intercept = "0";
  const SeriesVolume volume = ReadOneSeries(MakeSeries(spec));
  ExpectSeriesVolume(volume, spec);
  // Stored 0 (white in MONOCHROME1) reads as 4095, the brightest value.
  EXPECT_EQ(volume.image.at(0, 0, 0), 4095.0f);
  EXPECT_EQ(volume.image.at(0, 0, 1), 0.0f);
}

TEST(SeriesReader, Monochrome1SignedIsInverted) {
  SeriesSpec spec;
  spec.photometric = "MONOCHROME1";
  const SeriesVolume volume = ReadOneSeries(MakeSeries(spec));
  ExpectSeriesVolume(volume, spec);
}

TEST(SeriesReader, DefaultsToIdentityRescaleWhenAbsent) {
  SeriesSpec spec;
  spec.slope = "1";
  spec.intercept = "0";
  ExpectSeriesVolume(ReadOneSeries(MakeSeries(spec, EXS_LittleEndianExplicit,
                                              [](int, DcmDataset& ds) {
                                                delete ds.remove(DCM_RescaleSlope);
                                                delete ds.remove(DCM_RescaleIntercept);
                                              })),
                     spec);
}

// The same series as one enhanced MR instance: shared pixel measures, orientation and pixel
// value transformation; one plane position per frame; frames stored in a shuffled order.
std::string MakeEnhancedMr(const SeriesSpec& spec, bool per_frame_rescale,
                           std::vector<int>* frame_slice = nullptr) {
  auto file = std::make_unique<DcmFileFormat>();
  DcmDataset& ds = *file->getDataset();
  ds.putAndInsertString(DCM_SOPClassUID, UID_EnhancedMRImageStorage);
  ds.putAndInsertString(DCM_SOPInstanceUID, (spec.uid_prefix + "999").c_str());
  PutCommon(ds, spec);
  ds.putAndInsertString(DCM_NumberOfFrames, std::to_string(spec.slices).c_str());
  DcmItem* shared = nullptr;
  ds.findOrCreateSequenceItem(DCM_SharedFunctionalGroupsSequence, shared, 0);
  DcmItem* item = nullptr;
  shared->findOrCreateSequenceItem(DCM_PixelMeasuresSequence, item, 0);
  item->putAndInsertString(DCM_PixelSpacing,
                           Decimals({spec.pixel_spacing[0], spec.pixel_spacing[1]}).c_str());
  item->putAndInsertString(DCM_SliceThickness, Decimals({spec.slice_spacing}).c_str());
  shared->findOrCreateSequenceItem(DCM_PlaneOrientationSequence, item, 0);
  item->putAndInsertString(DCM_ImageOrientationPatient,
                           Decimals({spec.orientation.begin(), spec.orientation.end()}).c_str());
  if (!per_frame_rescale) {
    shared->findOrCreateSequenceItem(DCM_PixelValueTransformationSequence, item, 0);
    item->putAndInsertString(DCM_RescaleSlope, spec.slope.c_str());
    item->putAndInsertString(DCM_RescaleIntercept, spec.intercept.c_str());
    item->putAndInsertString(DCM_RescaleType, "US");
  }
  std::vector<int> order(static_cast<size_t>(spec.slices));
  for (int k = 0; k < spec.slices; ++k) order[k] = k;
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  std::vector<uint8_t> pixels;
  for (int f = 0; f < spec.slices; ++f) {
    const int k = order[f];
    DcmItem* frame = nullptr;
    ds.findOrCreateSequenceItem(DCM_PerFrameFunctionalGroupsSequence, frame, -2);
    frame->findOrCreateSequenceItem(DCM_PlanePositionSequence, item, 0);
    const Vec3 p = SlicePosition(spec, k);
    item->putAndInsertString(DCM_ImagePositionPatient, Decimals({p[0], p[1], p[2]}).c_str());
    frame->findOrCreateSequenceItem(DCM_FrameContentSequence, item, 0);
    item->putAndInsertUint16(DCM_FrameAcquisitionNumber, static_cast<Uint16>(f + 1));
    if (per_frame_rescale) {
      frame->findOrCreateSequenceItem(DCM_PixelValueTransformationSequence, item, 0);
      item->putAndInsertString(DCM_RescaleSlope, spec.slope.c_str());
      item->putAndInsertString(DCM_RescaleIntercept, spec.intercept.c_str());
      item->putAndInsertString(DCM_RescaleType, "US");
    }
    const std::vector<uint8_t> bytes = FrameBytes(spec, k);
    pixels.insert(pixels.end(), bytes.begin(), bytes.end());
  }
  if (frame_slice != nullptr) *frame_slice = order;
  PutPixelData(ds, spec, pixels);
  auto bytes = SerializeDicom(*file);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return *bytes;
}

TEST(SeriesReader, EnhancedMultiFrameMatchesSingleFrameSeries) {
  const SeriesSpec spec;
  const SeriesVolume single = ReadOneSeries(MakeSeries(spec));
  for (bool per_frame_rescale : {false, true}) {
    SCOPED_TRACE(per_frame_rescale ? "per-frame rescale" : "shared rescale");
    std::vector<int> frame_slice;
    const SeriesVolume enhanced =
        ReadOneSeries({{"enhanced.dcm", MakeEnhancedMr(spec, per_frame_rescale, &frame_slice)}});
    ExpectSeriesVolume(enhanced, spec, /*one_file_per_slice=*/false);
    EXPECT_EQ(enhanced.image.voxels, single.image.voxels);
    EXPECT_EQ(enhanced.image.geometry.origin_mm, single.image.geometry.origin_mm);
    EXPECT_NEAR(enhanced.image.geometry.slice_spacing_mm, single.image.geometry.slice_spacing_mm,
                1e-12);
    // Slice k came from the frame that held slice k.
    for (int f = 0; f < spec.slices; ++f) {
      const SliceSource& source = enhanced.slices[frame_slice[f]];
      EXPECT_EQ(source.frame_number, f + 1);
      EXPECT_EQ(source.sop_instance_uid, spec.uid_prefix + "999");
      EXPECT_EQ(source.sop_class_uid, UID_EnhancedMRImageStorage);
    }
  }
}

TEST(SeriesReader, EnhancedMultiFrameInCompressedSyntaxes) {
  const SeriesSpec spec;
  const std::string plain = MakeEnhancedMr(spec, false);
  const SeriesVolume expected = ReadOneSeries({{"enhanced.dcm", plain}});
  for (E_TransferSyntax syntax : {EXS_RLELossless, EXS_JPEGLSLossless, EXS_JPEGProcess14SV1}) {
    SCOPED_TRACE(DcmXfer(syntax).getXferName());
    auto file = ParseDicom(plain, "enhanced.dcm");
    ASSERT_TRUE(file.ok());
    const SeriesVolume volume = ReadOneSeries({{"enhanced.dcm", Encode(**file, syntax)}});
    EXPECT_EQ(volume.image.voxels, expected.image.voxels);
  }
}

TEST(SeriesReader, LegacyMultiFrameWithSpacingBetweenSlices) {
  // One position, frames spaced along the normal.
  SeriesSpec spec;
  spec.slices = 5;
  std::unique_ptr<DcmFileFormat> file = MakeSlice(spec, 0, 1);
  DcmDataset& ds = *file->getDataset();
  ds.putAndInsertString(DCM_NumberOfFrames, "5");
  ds.putAndInsertString(DCM_SpacingBetweenSlices, "2.5");
  std::vector<uint8_t> pixels;
  for (int k = 0; k < spec.slices; ++k) {
    const std::vector<uint8_t> bytes = FrameBytes(spec, k);
    pixels.insert(pixels.end(), bytes.begin(), bytes.end());
  }
  PutPixelData(ds, spec, pixels);
  const SeriesVolume volume = ReadOneSeries({{"legacy.dcm", Encode(*file, EXS_LittleEndianExplicit)}});
  ExpectSeriesVolume(volume, spec, /*one_file_per_slice=*/false);
  EXPECT_EQ(volume.slices[4].frame_number, 5);
}

TEST(SeriesReader, RejectsLegacyMultiFrameWithOnePositionAndNoSpacing) {
  SeriesSpec spec;
  spec.slices = 3;
  std::unique_ptr<DcmFileFormat> file = MakeSlice(spec, 0, 1);
  DcmDataset& ds = *file->getDataset();
  ds.putAndInsertString(DCM_NumberOfFrames, "3");
  std::vector<uint8_t> pixels;
  for (int k = 0; k < 3; ++k) {
    const std::vector<uint8_t> bytes = FrameBytes(spec, k);
    pixels.insert(pixels.end(), bytes.begin(), bytes.end());
  }
  PutPixelData(ds, spec, pixels);
  auto volumes = ReadSeries({{"legacy.dcm", Encode(*file, EXS_LittleEndianExplicit)}});
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("legacy.dcm"));
  EXPECT_THAT(volumes.status().message(), HasSubstr(SliceUid(spec, 0)));
  EXPECT_THAT(volumes.status().message(), HasSubstr("cannot place frames"));
}

TEST(SeriesReader, GroupsInstancesByStudyAndSeries) {
  SeriesSpec a;
  SeriesSpec b;
  b.series_uid = "1.2.826.0.1.3680043.9.7171.1.5";
  b.uid_prefix = "1.2.826.0.1.3680043.9.7171.1.5.";
  b.slices = 4;
  SeriesSpec c = b;  // same series UID, other study: a different series
  c.study_uid = "1.2.826.0.1.3680043.9.7171.2";
  c.uid_prefix = "1.2.826.0.1.3680043.9.7171.2.5.";
  std::vector<DicomBuffer> buffers = MakeSeries(b);
  for (auto& buffer : MakeSeries(a)) buffers.push_back(buffer);
  for (auto& buffer : MakeSeries(c)) buffers.push_back(buffer);
  std::shuffle(buffers.begin() + 1, buffers.end(), std::mt19937(3));
  auto volumes = ReadSeries(buffers);
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  ASSERT_THAT(*volumes, SizeIs(3));
  // Series come in order of first appearance; buffers[0] belongs to b.
  EXPECT_EQ((*volumes)[0].series_instance_uid, b.series_uid);
  EXPECT_EQ((*volumes)[0].study_instance_uid, b.study_uid);
  for (const SeriesVolume& volume : *volumes) {
    if (volume.study_instance_uid == c.study_uid) {
      ExpectSeriesVolume(volume, c);
    } else if (volume.series_instance_uid == a.series_uid) {
      ExpectSeriesVolume(volume, a);
    } else {
      ExpectSeriesVolume(volume, b);
    }
  }
}

TEST(SeriesReader, ReferenceHeaderIsFirstSliceWithoutPixelData) {
  const SeriesSpec spec;
  const SeriesVolume volume = ReadOneSeries(MakeSeries(spec, EXS_JPEGLSLossless));
  auto header = ParseDicom(volume.reference_header, "header");
  ASSERT_TRUE(header.ok()) << header.status();
  DcmDataset& ds = *(*header)->getDataset();
  OFString value;
  EXPECT_TRUE(ds.findAndGetOFString(DCM_PatientID, value).good());
  EXPECT_EQ(std::string(value.c_str()), "READER-TEST");
  EXPECT_TRUE(ds.findAndGetOFString(DCM_SOPInstanceUID, value).good());
  EXPECT_EQ(std::string(value.c_str()), SliceUid(spec, 0));
  EXPECT_FALSE(ds.tagExists(DCM_PixelData));
  EXPECT_EQ(ds.getOriginalXfer(), EXS_LittleEndianExplicit);
}

TEST(SeriesReader, SingleImageWithoutGeometryGetsIdentityGeometry) {
  SeriesSpec spec;
  spec.slices = 1;
  std::unique_ptr<DcmFileFormat> file = MakeSlice(spec, 0, 1);
  delete file->getDataset()->remove(DCM_ImagePositionPatient);
  delete file->getDataset()->remove(DCM_ImageOrientationPatient);
  const SeriesVolume volume = ReadOneSeries({{"one.dcm", Encode(*file, EXS_LittleEndianExplicit)}});
  const VolumeGeometry& g = volume.image.geometry;
  EXPECT_EQ(g.origin_mm, (Vec3{0, 0, 0}));
  EXPECT_EQ(g.row_direction, (Vec3{1, 0, 0}));
  EXPECT_EQ(g.col_direction, (Vec3{0, 1, 0}));
  EXPECT_EQ(g.slice_spacing_mm, 1.0);
  EXPECT_EQ(g.row_spacing_mm, 0.75);  // PixelSpacing is still meaningful
  EXPECT_EQ(volume.image.at(0, 3, 4), ExpectedValue(spec, 0, 3, 4));
}

TEST(SeriesReader, ReadsConcurrently) {
  // The server reads uploads on several threads at once.
  const SeriesSpec spec;
  const std::vector<DicomBuffer> jpeg_ls = MakeSeries(spec, EXS_JPEGLSLossless);
  const std::vector<DicomBuffer> rle = MakeSeries(spec, EXS_RLELossless);
  const SeriesVolume expected = ReadOneSeries(MakeSeries(spec));
  std::vector<std::vector<float>> results(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      for (int round = 0; round < 5; ++round) {
        auto volumes = ReadSeries(i % 2 ? jpeg_ls : rle);
        if (volumes.ok()) results[i] = volumes->front().image.voxels;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const std::vector<float>& voxels : results) EXPECT_EQ(voxels, expected.image.voxels);
}

TEST(SeriesReader, RegisterDicomCodecsIsSafeFromManyThreads) {
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back([] { RegisterDicomCodecs(); });
  for (std::thread& thread : threads) thread.join();
  SUCCEED();
}

// ---------------------------------------------------------------------------------------
// Bad input: one test per kind; each message names the instance and the reason.

// Reads a synthetic series in which slice `bad` was edited; expects InvalidArgument whose
// message contains every fragment.
void ExpectRejected(const std::vector<DicomBuffer>& buffers,
                    const std::vector<std::string>& fragments,
                    const SeriesReaderLimits& limits = {}) {
  auto volumes = ReadSeries(buffers, nullptr, limits);
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument) << volumes.status();
  for (const std::string& fragment : fragments) {
    EXPECT_THAT(volumes.status().message(), HasSubstr(fragment));
  }
}

TEST(SeriesReader, RejectsNotDicom) {
  ExpectRejected({{"notes.txt", "This is a text file, not a DICOM file at all.\n"}},
                 {"notes.txt", "DICOM"});
  ExpectRejected({{"empty.dcm", ""}}, {"empty.dcm", "empty"});
  std::string preamble_only(132, '\0');
  preamble_only.replace(128, 4, "DICM");
  ExpectRejected({{"preamble.dcm", preamble_only}}, {"preamble.dcm"});
}

TEST(SeriesReader, RejectsTruncatedSlice) {
  const SeriesSpec spec;
  std::vector<DicomBuffer> buffers = MakeSeries(spec);
  buffers[2].bytes.resize(buffers[2].bytes.size() - 50);
  ExpectRejected(buffers, {buffers[2].name, "truncated"});
}

TEST(SeriesReader, RejectsDifferentImageSize) {
  const SeriesSpec spec;
  SeriesSpec wide = spec;
  wide.cols = 11;
  std::vector<DicomBuffer> buffers = MakeSeries(spec);
  std::unique_ptr<DcmFileFormat> odd = MakeSlice(wide, 20, 21);
  odd->getDataset()->putAndInsertString(DCM_SOPInstanceUID, "1.2.3.4.5.6.7");
  buffers.push_back({"wide.dcm", Encode(*odd, EXS_LittleEndianExplicit)});
  ExpectRejected(buffers, {"wide.dcm", "1.2.3.4.5.6.7", "image size 12x11 differs from 12x10"});
}

TEST(SeriesReader, RejectsDifferentOrientation) {
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [](int k, DcmDataset& ds) {
                              if (k == 5) ds.putAndInsertString(DCM_ImageOrientationPatient, "1\\0\\0\\0\\1\\0");
                            }),
                 {"slice-5.dcm", SliceUid(spec, 5), "ImageOrientationPatient differs"});
}

TEST(SeriesReader, RejectsDifferentPixelSpacing) {
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [](int k, DcmDataset& ds) {
                              if (k == 7) ds.putAndInsertString(DCM_PixelSpacing, "0.75\\0.95");
                            }),
                 {"slice-7.dcm", SliceUid(spec, 7), "PixelSpacing differs"});
}

TEST(SeriesReader, RejectsDuplicatePosition) {
  const SeriesSpec spec;
  std::vector<DicomBuffer> buffers = MakeSeries(spec);
  std::unique_ptr<DcmFileFormat> twin = MakeSlice(spec, 4, 99);
  twin->getDataset()->putAndInsertString(DCM_SOPInstanceUID, "1.2.3.4.5.6.8");
  buffers.push_back({"twin.dcm", Encode(*twin, EXS_LittleEndianExplicit)});
  ExpectRejected(buffers, {"twin.dcm", "1.2.3.4.5.6.8", "duplicate position", "slice-4.dcm"});
}

TEST(SeriesReader, RejectsTheSameInstanceTwice) {
  const SeriesSpec spec;
  std::vector<DicomBuffer> buffers = MakeSeries(spec);
  buffers.push_back({"copy.dcm", buffers[0].bytes});
  ExpectRejected(buffers, {"copy.dcm", "same SOP Instance UID as " + buffers[0].name});
}

TEST(SeriesReader, RejectsGap) {
  const SeriesSpec spec;
  std::vector<DicomBuffer> buffers = MakeSeries(spec);
  buffers.erase(std::find_if(buffers.begin(), buffers.end(),
                             [](const DicomBuffer& b) { return b.name == "slice-6.dcm"; }));
  ExpectRejected(buffers, {"missing slice between", "slice-5.dcm", SliceUid(spec, 5),
                           "slice-7.dcm", "5 mm apart", "spacing is 2.5 mm"});
}

TEST(SeriesReader, RejectsIrregularSpacing) {
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [&spec](int k, DcmDataset& ds) {
                              if (k != 3) return;
                              Vec3 p = SlicePosition(spec, 3);
                              const Vec3 q = SlicePosition(spec, 4);
                              for (int a = 0; a < 3; ++a) p[a] = 0.6 * p[a] + 0.4 * q[a];
                              ds.putAndInsertString(DCM_ImagePositionPatient,
                                                    Decimals({p[0], p[1], p[2]}).c_str());
                            }),
                 {"irregular slice spacing", "slice-3.dcm"});
}

TEST(SeriesReader, RejectsTiltedStack) {
  // Each slice shifted 1 mm along the rows per slice: a gantry tilt, not origin + k * normal.
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [&spec](int k, DcmDataset& ds) {
                              Vec3 p = SlicePosition(spec, k);
                              for (int a = 0; a < 3; ++a) p[a] += k * 1.0 * spec.orientation[a];
                              ds.putAndInsertString(DCM_ImagePositionPatient,
                                                    Decimals({p[0], p[1], p[2]}).c_str());
                            }),
                 {"off the normal", "gantry tilt"});
}

TEST(SeriesReader, RejectsMissingPositionInMultiSliceSeries) {
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [](int k, DcmDataset& ds) {
                              if (k == 9) delete ds.remove(DCM_ImagePositionPatient);
                            }),
                 {"slice-9.dcm", SliceUid(spec, 9), "missing ImagePositionPatient"});
}

TEST(SeriesReader, RejectsMalformedPosition) {
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [](int k, DcmDataset& ds) {
                              if (k == 2) ds.putAndInsertString(DCM_ImagePositionPatient, "1\\x\\3");
                            }),
                 {"slice-2.dcm", SliceUid(spec, 2), "ImagePositionPatient '1\\x\\3' is not 3 numbers"});
}

TEST(SeriesReader, RejectsDifferentFrameOfReference) {
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [](int k, DcmDataset& ds) {
                              if (k == 1) ds.putAndInsertString(DCM_FrameOfReferenceUID, "1.2.3");
                            }),
                 {"slice-1.dcm", SliceUid(spec, 1), "FrameOfReferenceUID differs"});
}

TEST(SeriesReader, RejectsColourSlice) {
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [](int k, DcmDataset& ds) {
                              if (k == 0) {
                                ds.putAndInsertUint16(DCM_SamplesPerPixel, 3);
                                ds.putAndInsertString(DCM_PhotometricInterpretation, "RGB");
                              }
                            }),
                 {"slice-0.dcm", SliceUid(spec, 0), "colour images are not supported"});
}

TEST(SeriesReader, RejectsPaletteColour) {
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [](int k, DcmDataset& ds) {
                              if (k == 0) ds.putAndInsertString(DCM_PhotometricInterpretation, "PALETTE COLOR");
                            }),
                 {"slice-0.dcm", "PhotometricInterpretation 'PALETTE COLOR' is not supported"});
}

TEST(SeriesReader, RejectsMissingPixelData) {
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [](int k, DcmDataset& ds) {
                              if (k == 8) delete ds.remove(DCM_PixelData);
                            }),
                 {"slice-8.dcm", SliceUid(spec, 8), "missing PixelData"});
}

TEST(SeriesReader, RejectsShortPixelData) {
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [](int k, DcmDataset& ds) {
                              if (k == 10) {
                                std::vector<Uint16> words(50, 7);
                                ds.putAndInsertUint16Array(DCM_PixelData, words.data(), words.size());
                              }
                            }),
                 {"slice-10.dcm", SliceUid(spec, 10), "PixelData holds 100 bytes",
                  "12 rows x 10 columns x 1 frames x 2 bytes need 240"});
}

TEST(SeriesReader, RejectsShortPixelDataInMultiFrame) {
  // NumberOfFrames claims more frames than the pixel data holds.
  SeriesSpec spec;
  spec.slices = 1;
  std::unique_ptr<DcmFileFormat> file = MakeSlice(spec, 0, 1);
  file->getDataset()->putAndInsertString(DCM_NumberOfFrames, "4");
  file->getDataset()->putAndInsertString(DCM_SpacingBetweenSlices, "2");
  ExpectRejected({{"frames.dcm", Encode(*file, EXS_LittleEndianExplicit)}},
                 {"frames.dcm", "PixelData holds 240 bytes", "need 960"});
}

TEST(SeriesReader, RejectsAbsurdSizesBeforeAllocating) {
  SeriesSpec spec;
  spec.slices = 1;
  // NumberOfFrames of a billion on a 240-byte image: refused from the header alone.
  std::unique_ptr<DcmFileFormat> file = MakeSlice(spec, 0, 1);
  file->getDataset()->putAndInsertString(DCM_NumberOfFrames, "1000000000");
  ExpectRejected({{"huge.dcm", Encode(*file, EXS_LittleEndianExplicit)}},
                 {"huge.dcm", SliceUid(spec, 0), "frames exceed the limit"});
  // Rows beyond the limit.
  SeriesReaderLimits limits;
  limits.max_rows_or_cols = 11;
  ExpectRejected(MakeSeries(spec), {"slice-0.dcm", "exceeds the limit of 11 rows or columns"},
                 limits);
  // A series whose total exceeds the voxel limit, each instance within it.
  SeriesSpec many;
  limits = {};
  limits.max_voxels = 12 * 10 * 11;
  ExpectRejected(MakeSeries(many), {"voxels exceed the limit of 1320"}, limits);
  limits = {};
  limits.max_slices = 11;
  ExpectRejected(MakeSeries(many), {"12 slices exceed the limit of 11"}, limits);
}

TEST(SeriesReader, RejectsDeflateBomb) {
  // 64 MiB of zeros in a private element deflate to a few dozen KiB: refused at the
  // inflation limit, before DCMTK reads the dataset.
  SeriesSpec spec;
  spec.slices = 1;
  std::unique_ptr<DcmFileFormat> file = MakeSlice(spec, 0, 1);
  std::vector<Uint8> zeros(size_t{64} << 20, 0);
  ASSERT_TRUE(file->getDataset()
                  ->putAndInsertUint8Array(DcmTag(0x0009, 0x1010, EVR_OB), zeros.data(), zeros.size())
                  .good());
  const std::string bomb = Encode(*file, EXS_DeflatedLittleEndianExplicit);
  ASSERT_LT(bomb.size(), size_t{1} << 20);
  SeriesReaderLimits limits;
  limits.max_inflated_bytes = 16 << 20;
  ExpectRejected({{"bomb.dcm", bomb}}, {"bomb.dcm", "inflates beyond the limit of 16777216"},
                 limits);
  // Within the limit the same file reads (and SerializeDicom wrote > 1 MiB deflated).
  limits.max_inflated_bytes = 128 << 20;
  auto volumes = ReadSeries({{"bomb.dcm", bomb}}, nullptr, limits);
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  EXPECT_EQ(volumes->front().image.at(0, 2, 3), ExpectedValue(spec, 0, 2, 3));
}

TEST(SeriesReader, DeflatedIncompressibleDataSerialisesCompletely) {
  // Noise does not deflate: the output outgrows any size computed up front.
  SeriesSpec spec;
  spec.rows = spec.cols = 512;
  spec.slices = 1;
  std::unique_ptr<DcmFileFormat> file = MakeSlice(spec, 0, 1);
  std::mt19937 rng(1);
  std::vector<Uint8> noise(size_t{4} << 20);
  for (Uint8& b : noise) b = static_cast<Uint8>(rng());
  ASSERT_TRUE(file->getDataset()
                  ->putAndInsertUint8Array(DcmTag(0x0009, 0x1010, EVR_OB), noise.data(), noise.size())
                  .good());
  const std::string deflated = Encode(*file, EXS_DeflatedLittleEndianExplicit);
  ASSERT_GT(deflated.size(), noise.size());
  const SeriesVolume volume = ReadOneSeries({{"noise.dcm", deflated}});
  EXPECT_EQ(volume.image.at(0, 300, 200), ExpectedValue(spec, 0, 300, 200));
}

TEST(SeriesReader, RejectsInconsistentPixelFormat) {
  const SeriesSpec spec;
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [](int k, DcmDataset& ds) {
                              if (k == 0) ds.putAndInsertUint16(DCM_BitsStored, 17);
                            }),
                 {"slice-0.dcm", "inconsistent pixel format"});
  ExpectRejected(MakeSeries(spec, EXS_LittleEndianExplicit,
                            [](int k, DcmDataset& ds) {
                              if (k == 0) ds.putAndInsertUint16(DCM_BitsAllocated, 12);
                            }),
                 {"slice-0.dcm", "BitsAllocated 12 is not supported"});
}

TEST(SeriesReader, RejectsCorruptCompressedPixelData) {
  // A JPEG-LS series whose compressed stream of one slice is overwritten with noise.
  const SeriesSpec spec;
  std::vector<DicomBuffer> buffers = MakeSeries(spec, EXS_JPEGLSLossless);
  std::string& bytes = buffers[0].bytes;
  const size_t start = bytes.size() - 200;
  for (size_t i = start; i < bytes.size() - 20; ++i) bytes[i] = static_cast<char>(i * 37);
  auto volumes = ReadSeries(buffers);
  ASSERT_FALSE(volumes.ok());
  EXPECT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr(buffers[0].name));
}

// ---------------------------------------------------------------------------------------
// JPEG 2000 (our OpenJPEG codec; DCMTK 3.6.7 has none).

TEST(SeriesReader, MrSmallJpeg2000LosslessEqualsNativeMrSmall) {
  SKIP_IF_ABSENT(Pydicom("MR_small_jp2klossless.dcm"));
  auto native = ReadFiles({Pydicom("MR_small.dcm")});
  auto j2k = ReadFiles({Pydicom("MR_small_jp2klossless.dcm")});
  ASSERT_TRUE(native.ok()) << native.status();
  ASSERT_TRUE(j2k.ok()) << j2k.status();
  ASSERT_THAT(*j2k, SizeIs(1));
  EXPECT_EQ(j2k->front().image.voxels, native->front().image.voxels);
  EXPECT_EQ(j2k->front().image.geometry.origin_mm, native->front().image.geometry.origin_mm);
  EXPECT_EQ(j2k->front().slices.front().sop_instance_uid,
            native->front().slices.front().sop_instance_uid);
  EXPECT_FALSE(j2k->front().lossy.lossy);
}

TEST(SeriesReader, Jpeg2000LossySamplesMatchPydicomAndAreFlaggedLossy) {
  for (const char* name : {"JPEG2000.dcm", "693_J2KI.dcm"}) {
    SCOPED_TRACE(name);
    SKIP_IF_ABSENT(Pydicom(name));
    ExpectMatchesPydicom(Pydicom(name));
    auto volumes = ReadFiles({Pydicom(name)});
    ASSERT_TRUE(volumes.ok()) << volumes.status();
    const LossyCompression& lossy = volumes->front().lossy;
    EXPECT_TRUE(lossy.lossy);
    ASSERT_FALSE(lossy.methods.empty());
    EXPECT_EQ(lossy.methods.back(), "ISO_15444_1");
    EXPECT_EQ(lossy.ratios.size(), lossy.methods.size());
  }
}

TEST(SeriesReader, Jpeg2000WithPixelRepresentationMismatchMatchesPydicom) {
  SKIP_IF_ABSENT(Pydicom("J2K_pixelrep_mismatch.dcm"));
  ExpectMatchesPydicom(Pydicom("J2K_pixelrep_mismatch.dcm"));
}

TEST(SeriesReader, Jpeg2000ColourIsRefusedAsColour) {
  SKIP_IF_ABSENT(Pydicom("GDCMJ2K_TextGBR.dcm"));
  auto volumes = ReadFiles({Pydicom("GDCMJ2K_TextGBR.dcm")});
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("colour images are not supported"));
}


// The buffers re-encoded to JPEG 2000 lossless by opj_compress; nullopt when the tools or
// pydicom are missing.
std::optional<std::vector<DicomBuffer>> ReencodeWithOpjCompress(
    const std::vector<DicomBuffer>& buffers, int fragments_per_frame, bool offset_table) {
  if (!std::filesystem::exists(MISEG_SYSTEM_PYTHON) ||
      !std::filesystem::exists("/usr/bin/opj_compress")) {
    return std::nullopt;
  }
  const std::string dir = testing::TempDir() + "/miseg_j2k_series";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  // opj_compress encodes, pydicom wraps: nothing of ours touches the encoding.
  std::string command = absl::StrCat(MISEG_SYSTEM_PYTHON, " ", MISEG_JPEG2000_REENCODE,
                                     " --fragments ", fragments_per_frame,
                                     offset_table ? "" : " --no-offset-table");
  for (size_t i = 0; i < buffers.size(); ++i) {
    const std::string in = absl::StrCat(dir, "/in", i, ".dcm");
    std::ofstream(in, std::ios::binary) << buffers[i].bytes;
    absl::StrAppend(&command, " ", in, " ", dir, "/out", i, ".dcm");
  }
  if (std::system((command + " >/dev/null 2>&1").c_str()) != 0) return std::nullopt;
  std::vector<DicomBuffer> encoded;
  for (size_t i = 0; i < buffers.size(); ++i) {
    std::optional<std::string> bytes = ReadFileBytes(absl::StrCat(dir, "/out", i, ".dcm"));
    if (!bytes) return std::nullopt;
    encoded.push_back({buffers[i].name, *bytes});
  }
  return encoded;
}

TEST(SeriesReader, SeriesReencodedByOpjCompressGivesTheSameVolume) {
  for (bool is_signed : {true, false}) {
    SeriesSpec spec;
    spec.is_signed = is_signed;
    if (!is_signed) {
      spec.bits_allocated = spec.bits_stored = 8;
      spec.high_bit = 7;
    }
    SCOPED_TRACE(is_signed ? "16-bit signed" : "8-bit unsigned");
    const std::vector<DicomBuffer> native = MakeSeries(spec);
    const SeriesVolume expected = ReadOneSeries(native);
    ExpectSeriesVolume(expected, spec);
    std::optional<std::vector<DicomBuffer>> j2k = ReencodeWithOpjCompress(native, 1, true);
    if (!j2k) GTEST_SKIP() << "opj_compress or pydicom is missing";
    auto parsed = ParseDicom(j2k->front().bytes, "check");
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ((*parsed)->getDataset()->getOriginalXfer(), EXS_JPEG2000LosslessOnly);
    const SeriesVolume volume = ReadOneSeries(*j2k);
    EXPECT_EQ(volume.image.voxels, expected.image.voxels);
    EXPECT_EQ(volume.image.geometry.origin_mm, expected.image.geometry.origin_mm);
    EXPECT_EQ(volume.slices.front().sop_instance_uid, expected.slices.front().sop_instance_uid);
    EXPECT_FALSE(volume.lossy.lossy);
  }
}

TEST(SeriesReader, Jpeg2000MultiFrameInEveryFragmentLayout) {
  const SeriesSpec spec;
  const std::string plain = MakeEnhancedMr(spec, false);
  const SeriesVolume expected = ReadOneSeries({{"enhanced.dcm", plain}});
  // One fragment per frame or three; with a Basic Offset Table or without (frames then found
  // by their count, or by the codestreams' SOC markers).
  for (int fragments : {1, 3}) {
    for (bool offset_table : {true, false}) {
      SCOPED_TRACE(absl::StrCat(fragments, " fragments per frame, offset table ", offset_table));
      std::optional<std::vector<DicomBuffer>> j2k =
          ReencodeWithOpjCompress({{"enhanced.dcm", plain}}, fragments, offset_table);
      if (!j2k) GTEST_SKIP() << "opj_compress or pydicom is missing";
      EXPECT_EQ(ReadOneSeries(*j2k).image.voxels, expected.image.voxels);
      // And checked from disk without its voxels, one frame at a time.
      const std::string path = testing::TempDir() + "/miseg_j2k_enhanced.dcm";
      std::ofstream(path, std::ios::binary) << j2k->front().bytes;
      auto checked = CheckSeriesFiles({path}, {"enhanced.dcm"});
      ASSERT_TRUE(checked.ok()) << checked.status();
      EXPECT_EQ(checked->front().image.geometry.slices, spec.slices);
    }
  }
}

// A Part-10 buffer with its transfer syntax UID replaced (and the meta group length fixed).
std::string WithTransferSyntax(const std::string& bytes, const std::string& from,
                               const std::string& to) {
  std::string padded = to;
  if (padded.size() % 2 == 1) padded.push_back('\0');
  std::string old_element = std::string("\x02\x00\x10\x00UI", 6);
  old_element += static_cast<char>(from.size()), old_element += '\0', old_element += from;
  std::string new_element = std::string("\x02\x00\x10\x00UI", 6);
  new_element += static_cast<char>(padded.size()), new_element += '\0', new_element += padded;
  std::string out = bytes;
  const size_t at = out.find(old_element);
  if (at == std::string::npos) return out;
  out.replace(at, old_element.size(), new_element);
  const size_t group = out.find(std::string("\x02\x00\x00\x00UL\x04\x00", 8));
  uint32_t length = 0;
  std::memcpy(&length, out.data() + group + 8, 4);
  length += static_cast<uint32_t>(new_element.size() - old_element.size());
  std::memcpy(out.data() + group + 8, &length, 4);
  return out;
}

TEST(SeriesReader, HighThroughputJpeg2000SyntaxIsDecodedAndLossyOneFlagged) {
  SKIP_IF_ABSENT(Pydicom("MR_small_jp2klossless.dcm"));
  const std::string original = *ReadFileBytes(Pydicom("MR_small_jp2klossless.dcm"));
  auto native = ReadFiles({Pydicom("MR_small.dcm")});
  ASSERT_TRUE(native.ok());
  // DCMTK 3.6.7 does not know the HTJ2K UIDs. A Part 1 codestream under them (which HTJ2K
  // decoders read too) decodes; HT code-blocks themselves are refused (next test).
  for (const char* syntax : {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203"}) {
    SCOPED_TRACE(syntax);
    const std::string bytes = WithTransferSyntax(original, "1.2.840.10008.1.2.4.90", syntax);
    ASSERT_NE(bytes, original);
    auto volumes = ReadSeries({{"ht.dcm", bytes}});
    ASSERT_TRUE(volumes.ok()) << volumes.status();
    EXPECT_EQ(volumes->front().image.voxels, native->front().image.voxels);
    const bool lossy = std::string(syntax) == "1.2.840.10008.1.2.4.203";
    EXPECT_EQ(volumes->front().lossy.lossy, lossy);
    if (lossy) EXPECT_THAT(volumes->front().lossy.methods, ElementsAre("ISO_15444_15"));
  }
}

// MR_small_jp2klossless with its Rows and Columns edited, or its codestream replaced.
std::string EditedMrSmallJpeg2000(const std::function<void(DcmDataset&)>& edit) {
  auto file = ParseDicom(*ReadFileBytes(Pydicom("MR_small_jp2klossless.dcm")), "j2k");
  EXPECT_TRUE(file.ok());
  edit(*(*file)->getDataset());
  auto bytes = SerializeDicom(**file, EXS_JPEG2000LosslessOnly);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : "";
}

TEST(SeriesReader, Jpeg2000LargerThanRowsAndColumnsIsRefusedBeforeDecoding) {
  SKIP_IF_ABSENT(Pydicom("MR_small_jp2klossless.dcm"));
  const std::string smaller = EditedMrSmallJpeg2000([](DcmDataset& ds) {
    ds.putAndInsertUint16(DCM_Rows, 32);
    ds.putAndInsertUint16(DCM_Columns, 32);
  });
  auto volumes = ReadSeries({{"small.dcm", smaller}});
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("small.dcm"));
  EXPECT_THAT(volumes.status().message(), HasSubstr("image of 64x64 exceeds the limit of 32"));
}

TEST(SeriesReader, Jpeg2000ClaimingAHugeImageIsRefusedBeforeDecoding) {
  SKIP_IF_ABSENT(Pydicom("MR_small_jp2klossless.dcm"));
  // The codestream's SIZ says 60000 x 60000 (7 GB of 16-bit samples): refused by its header.
  const std::string huge = EditedMrSmallJpeg2000([](DcmDataset& ds) {
    DcmElement* element = nullptr;
    ASSERT_TRUE(ds.findAndGetElement(DCM_PixelData, element).good());
    DcmPixelSequence* sequence = nullptr;
    ASSERT_TRUE(static_cast<DcmPixelData*>(element)
                    ->getEncapsulatedRepresentation(EXS_JPEG2000LosslessOnly, nullptr, sequence)
                    .good());
    DcmPixelItem* item = nullptr;
    ASSERT_TRUE(sequence->getItem(item, 1).good());
    Uint8* data = nullptr;
    ASSERT_TRUE(item->getUint8Array(data).good());
    for (size_t at : {8, 12}) {  // Xsiz, Ysiz (big endian)
      data[at] = 0x00, data[at + 1] = 0x00, data[at + 2] = 0xEA, data[at + 3] = 0x60;
    }
  });
  auto volumes = ReadSeries({{"huge.dcm", huge}});
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("image of 60000x60000 exceeds the limit"));
}

TEST(SeriesReader, HighThroughputCodestreamInDicomIsRefusedByName) {
  SKIP_IF_ABSENT(Pydicom("MR_small_jp2klossless.dcm"));
  // A real HTJ2K codestream (20 x 20, 8-bit; OpenJPEG's test data) in MR_small's place,
  // under the HTJ2K lossless UID: refused, not handed to OpenJPEG 2.5.0's HT decoder (which
  // aborts on malformed HT code-blocks; see jpeg2000.h).
  const std::string ht =
      *ReadFileBytes(std::string(MISEG_JPEG2000_SEEDS) + "/htj2k_byte_causal.j2c");
  const std::string j2k = EditedMrSmallJpeg2000([&ht](DcmDataset& ds) {
    ds.putAndInsertUint16(DCM_Rows, 20);
    ds.putAndInsertUint16(DCM_Columns, 20);
    ds.putAndInsertUint16(DCM_BitsAllocated, 8);
    ds.putAndInsertUint16(DCM_BitsStored, 8);
    ds.putAndInsertUint16(DCM_HighBit, 7);
    ds.putAndInsertUint16(DCM_PixelRepresentation, 0);
    DcmElement* element = nullptr;
    ASSERT_TRUE(ds.findAndGetElement(DCM_PixelData, element).good());
    DcmPixelSequence* sequence = nullptr;
    ASSERT_TRUE(static_cast<DcmPixelData*>(element)
                    ->getEncapsulatedRepresentation(EXS_JPEG2000LosslessOnly, nullptr, sequence)
                    .good());
    DcmPixelItem* item = nullptr;
    ASSERT_TRUE(sequence->getItem(item, 1).good());
    ASSERT_TRUE(item->putUint8Array(reinterpret_cast<const Uint8*>(ht.data()), ht.size()).good());
  });
  const std::string bytes =
      WithTransferSyntax(j2k, "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201");
  auto volumes = ReadSeries({{"ht.dcm", bytes}});
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("ht.dcm"));
  EXPECT_THAT(volumes.status().message(), HasSubstr("(HTJ2K) is not decoded"));
}

TEST(SeriesReader, Jpeg2000WithMissingFramesIsRefused) {
  SKIP_IF_ABSENT(Pydicom("MR_small_jp2klossless.dcm"));
  // Two frames claimed, one codestream and no offset table.
  const std::string bytes = EditedMrSmallJpeg2000(
      [](DcmDataset& ds) {
        ds.putAndInsertString(DCM_NumberOfFrames, "2");
        ds.putAndInsertString(DCM_SpacingBetweenSlices, "5");
      });
  auto volumes = ReadSeries({{"two.dcm", bytes}});
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("1 codestreams for 2 frames"))
      << volumes.status();
}

TEST(SeriesReader, JpegBaselineAndLossyImageCompressionAreFlagged) {
  SeriesSpec spec;
  spec.bits_allocated = spec.bits_stored = 8;
  spec.high_bit = 7;
  spec.is_signed = false;
  spec.rows = spec.cols = 32;
  const SeriesVolume jpeg = ReadOneSeries(MakeSeries(spec, EXS_JPEGProcess1));
  EXPECT_TRUE(jpeg.lossy.lossy);
  EXPECT_THAT(jpeg.lossy.methods, ElementsAre("ISO_10918_1"));
  ASSERT_THAT(jpeg.lossy.ratios, SizeIs(1));
  EXPECT_GT(std::stod(jpeg.lossy.ratios[0]), 1.0);
  // Native pixels that were lossy-compressed before: the source's own record is kept.
  const SeriesVolume recorded = ReadOneSeries(MakeSeries(
      spec, EXS_LittleEndianExplicit, [](int, DcmDataset& ds) {
        ds.putAndInsertString(DCM_LossyImageCompression, "01");
        ds.putAndInsertString(DCM_LossyImageCompressionMethod, "ISO_10918_1");
        ds.putAndInsertString(DCM_LossyImageCompressionRatio, "12.5");
      }));
  EXPECT_TRUE(recorded.lossy.lossy);
  EXPECT_THAT(recorded.lossy.methods, ElementsAre("ISO_10918_1"));
  EXPECT_THAT(recorded.lossy.ratios, ElementsAre("12.5"));
  EXPECT_FALSE(ReadOneSeries(MakeSeries(spec)).lossy.lossy);
}

TEST(SeriesReader, RejectsUnsupportedTransferSyntaxByName) {
  // MPEG-2 video: no decoder, refused by name, naming the instance.
  SKIP_IF_ABSENT(Pydicom("MR_small_jp2klossless.dcm"));
  const std::string bytes =
      WithTransferSyntax(*ReadFileBytes(Pydicom("MR_small_jp2klossless.dcm")),
                         "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.100");
  auto volumes = ReadSeries({{"video.dcm", bytes}});
  ASSERT_EQ(volumes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(volumes.status().message(), HasSubstr("video.dcm"));
  EXPECT_THAT(volumes.status().message(), HasSubstr("unsupported transfer syntax MPEG2"));
}

// ---------------------------------------------------------------------------------------
// Folders.

TEST(SeriesReader, LoadDicomFolderReadsRecursivelyInPathOrder) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(testing::TempDir()) / "miseg_reader_folder";
  fs::remove_all(root);
  fs::create_directories(root / "b" / "deeper");
  fs::create_directories(root / "a");
  const SeriesSpec spec;
  const std::vector<DicomBuffer> buffers = MakeSeries(spec);
  for (size_t i = 0; i < buffers.size(); ++i) {
    const fs::path dir = i % 3 == 0 ? root / "a" : (i % 3 == 1 ? root / "b" : root / "b" / "deeper");
    std::ofstream(dir / buffers[i].name, std::ios::binary) << buffers[i].bytes;
  }
  auto loaded = LoadDicomFolder(root.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_THAT(*loaded, SizeIs(buffers.size()));
  EXPECT_TRUE(std::is_sorted(loaded->begin(), loaded->end(),
                             [](const DicomBuffer& x, const DicomBuffer& y) { return x.name < y.name; }));
  ExpectSeriesVolume(ReadOneSeries(*loaded), spec);
  fs::remove_all(root);
}

TEST(SeriesReader, LoadDicomFolderNotFound) {
  auto loaded = LoadDicomFolder(testing::TempDir() + "/no/such/folder");
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace miseg

// miseg-bench-dicom: how fast ReadSeries turns a 200-slice 256x256 16-bit MR series held in
// memory into a volume, in explicit VR little endian, JPEG-LS lossless and RLE. Beside each
// figure, a baseline measured in the same run on the same buffers: DCMTK alone parsing
// every file and decoding its pixel data, without our grouping, geometry checks and
// conversion to real-world values, so the ratio says what the volume assembly costs.
// Prints one JSON object per syntax with --json, a readable line otherwise.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcrlerp.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmjpls/djrparam.h>

#include "bench/bench_figures.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/series_reader.h"

ABSL_FLAG(int64_t, slices, 200, "slices in the series");
ABSL_FLAG(int64_t, matrix, 256, "rows and columns of each slice");
ABSL_FLAG(int64_t, reps, 5, "timed repetitions (the median is reported)");
ABSL_FLAG(bool, json, false, "print one JSON object per transfer syntax");

namespace miseg {
namespace {

using Clock = std::chrono::steady_clock;

// An axial MR-like series: a bright ellipse with a gradient over a dark background, plus
// noise, 12 significant bits in 16, so that the lossless codecs see realistic entropy.
std::vector<DicomBuffer> MakeSeries(int64_t slices, int64_t matrix, E_TransferSyntax syntax) {
  std::mt19937 rng(42);
  std::normal_distribution<double> noise(0.0, 12.0);
  const std::string study = DeterministicUid("bench-study");
  const std::string series = DeterministicUid("bench-series");
  const std::string frame_of_reference = DeterministicUid("bench-for");
  std::vector<DicomBuffer> buffers;
  for (int64_t k = 0; k < slices; ++k) {
    DcmFileFormat file;
    DcmDataset& ds = *file.getDataset();
    ds.putAndInsertString(DCM_SOPClassUID, UID_MRImageStorage);
    ds.putAndInsertString(DCM_SOPInstanceUID, DeterministicUid(absl::StrCat("bench-", k)).c_str());
    ds.putAndInsertString(DCM_StudyInstanceUID, study.c_str());
    ds.putAndInsertString(DCM_SeriesInstanceUID, series.c_str());
    ds.putAndInsertString(DCM_FrameOfReferenceUID, frame_of_reference.c_str());
    ds.putAndInsertString(DCM_Modality, "MR");
    ds.putAndInsertString(DCM_PatientID, "BENCH");
    ds.putAndInsertString(DCM_InstanceNumber, std::to_string(k + 1).c_str());
    ds.putAndInsertString(DCM_ImagePositionPatient,
                          absl::StrCat("-120\\-120\\", absl::StrFormat("%.4f", 1.5 * k)).c_str());
    ds.putAndInsertString(DCM_ImageOrientationPatient, "1\\0\\0\\0\\1\\0");
    ds.putAndInsertString(DCM_PixelSpacing, "0.9375\\0.9375");
    ds.putAndInsertString(DCM_SliceThickness, "1.5");
    ds.putAndInsertString(DCM_RescaleSlope, "1");
    ds.putAndInsertString(DCM_RescaleIntercept, "0");
    ds.putAndInsertUint16(DCM_Rows, static_cast<Uint16>(matrix));
    ds.putAndInsertUint16(DCM_Columns, static_cast<Uint16>(matrix));
    ds.putAndInsertUint16(DCM_SamplesPerPixel, 1);
    ds.putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2");
    ds.putAndInsertUint16(DCM_BitsAllocated, 16);
    ds.putAndInsertUint16(DCM_BitsStored, 12);
    ds.putAndInsertUint16(DCM_HighBit, 11);
    ds.putAndInsertUint16(DCM_PixelRepresentation, 0);
    std::vector<Uint16> pixels(static_cast<size_t>(matrix * matrix));
    const double half = matrix / 2.0;
    for (int64_t r = 0; r < matrix; ++r) {
      for (int64_t c = 0; c < matrix; ++c) {
        const double y = (r - half) / (0.8 * half), x = (c - half) / (0.6 * half);
        const double inside = x * x + y * y < 1.0 ? 900.0 + 300.0 * y : 40.0;
        pixels[static_cast<size_t>(r * matrix + c)] = static_cast<Uint16>(
            std::clamp(inside + noise(rng) + 2.0 * static_cast<double>(k), 0.0, 4095.0));
      }
    }
    ds.putAndInsertUint16Array(DCM_PixelData, pixels.data(), pixels.size());
    DJLSRepresentationParameter jpeg_ls(/*nearlosslessDeviation=*/0, /*losslessProcess=*/OFTrue);
    DcmRLERepresentationParameter rle;
    const DcmRepresentationParameter* parameter = nullptr;
    if (syntax == EXS_JPEGLSLossless) parameter = &jpeg_ls;
    if (syntax == EXS_RLELossless) parameter = &rle;
    if (ds.chooseRepresentation(syntax, parameter).bad()) {
      std::fprintf(stderr, "cannot encode in %s\n", DcmXfer(syntax).getXferName());
      std::exit(1);
    }
    auto bytes = SerializeDicom(file, syntax);
    if (!bytes.ok()) {
      std::fprintf(stderr, "%s\n", bytes.status().ToString().c_str());
      std::exit(1);
    }
    buffers.push_back({absl::StrCat("slice-", k, ".dcm"), std::move(*bytes)});
  }
  // Files arrive in no particular order.
  std::shuffle(buffers.begin(), buffers.end(), rng);
  return buffers;
}

// The baseline: DCMTK parses each buffer and decodes its pixel data, nothing more.
bool DcmtkOnly(const std::vector<DicomBuffer>& buffers, uint64_t* checksum) {
  for (const DicomBuffer& buffer : buffers) {
    auto file = ParseDicom(buffer.bytes, buffer.name);
    if (!file.ok()) return false;
    DcmDataset& ds = *(*file)->getDataset();
    if (ds.chooseRepresentation(EXS_LittleEndianExplicit, nullptr).bad()) return false;
    DcmElement* element = nullptr;
    Uint16* words = nullptr;
    if (ds.findAndGetElement(DCM_PixelData, element).bad() ||
        element->getUint16Array(words).bad() || words == nullptr) {
      return false;
    }
    *checksum += words[element->getLength() / 4];  // touch the data so nothing is skipped
  }
  return true;
}

int Run() {
  RegisterDicomCodecs();
  const int64_t slices = absl::GetFlag(FLAGS_slices);
  const int64_t matrix = absl::GetFlag(FLAGS_matrix);
  const int64_t reps = std::max<int64_t>(1, absl::GetFlag(FLAGS_reps));
  const double pixel_mb = static_cast<double>(slices * matrix * matrix * 2) / 1e6;
  for (E_TransferSyntax syntax : {EXS_LittleEndianExplicit, EXS_JPEGLSLossless, EXS_RLELossless}) {
    const std::vector<DicomBuffer> buffers = MakeSeries(slices, matrix, syntax);
    double input_mb = 0;
    for (const DicomBuffer& b : buffers) input_mb += static_cast<double>(b.bytes.size()) / 1e6;
    std::vector<double> ours, baseline;
    uint64_t checksum = 0;
    for (int64_t rep = 0; rep <= reps; ++rep) {  // rep 0 warms up caches and allocators
      const auto t0 = Clock::now();
      auto volumes = ReadSeries(buffers);
      const auto t1 = Clock::now();
      if (!volumes.ok() || volumes->size() != 1 ||
          volumes->front().image.geometry.slices != slices) {
        std::fprintf(stderr, "ReadSeries failed: %s\n", volumes.status().ToString().c_str());
        return 1;
      }
      const auto t2 = Clock::now();
      if (!DcmtkOnly(buffers, &checksum)) {
        std::fprintf(stderr, "DCMTK baseline failed\n");
        return 1;
      }
      const auto t3 = Clock::now();
      if (rep == 0) continue;
      ours.push_back(std::chrono::duration<double>(t1 - t0).count());
      baseline.push_back(std::chrono::duration<double>(t3 - t2).count());
    }
    const double t_ours = Median(ours), t_base = Median(baseline);
    const char* name = DcmXfer(syntax).getXferName();
    if (absl::GetFlag(FLAGS_json)) {
      std::printf(
          "{\"bench\":\"dicom_read\",\"syntax\":\"%s\",\"slices\":%lld,\"matrix\":%lld,"
          "\"input_mb\":%.2f,\"pixel_mb\":%.2f,\"read_series_s\":%.4f,\"slices_per_s\":%.1f,"
          "\"pixel_mb_per_s\":%.1f,\"dcmtk_only_s\":%.4f,\"dcmtk_only_slices_per_s\":%.1f,"
          "\"ratio_to_dcmtk_only\":%.3f,\"reps\":%lld}\n",
          name, static_cast<long long>(slices), static_cast<long long>(matrix), input_mb,
          pixel_mb, t_ours, slices / t_ours, pixel_mb / t_ours, t_base, slices / t_base,
          t_ours / t_base, static_cast<long long>(reps));
    } else {
      std::printf(
          "%-34s %lld x %lldx%lld: ReadSeries %.3f s = %.0f slices/s, %.0f MB/s of pixels "
          "(%.1f MB in); DCMTK parse+decode only %.3f s = %.0f slices/s; ratio %.2f\n",
          name, static_cast<long long>(slices), static_cast<long long>(matrix),
          static_cast<long long>(matrix), t_ours, slices / t_ours, pixel_mb / t_ours, input_mb,
          t_base, slices / t_base, t_ours / t_base);
    }
  }
  return 0;
}

}  // namespace
}  // namespace miseg

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Times ReadSeries on a 200-slice MR series in memory against DCMTK parsing alone.");
  absl::ParseCommandLine(argc, argv);
  return miseg::Run();
}

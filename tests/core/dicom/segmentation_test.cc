// Tests of DICOM SEG writing and reading (core/dicom/segmentation.cc) and of the image series
// writer they rely on: a small phantom written as an MR series and a SEG, checked by
// dicom3tools' dciodvfy (no "Error" lines), by pydicom (frames, segments, labels,
// referenced series, and every frame's set pixels counted from the raw bit stream) and by
// our own reader (same labels voxel for voxel); then the variants (empty segment, a source
// without optional attributes, FRACTIONAL, matching by position) and every bad input.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmfg/fgderimg.h>
#include <dcmtk/dcmfg/fgfracon.h>
#include <dcmtk/dcmfg/fgpixmsr.h>
#include <dcmtk/dcmfg/fgplanor.h>
#include <dcmtk/dcmfg/fgplanpo.h>
#include <dcmtk/dcmseg/segdoc.h>
#include <dcmtk/dcmseg/segment.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/segmentation.h"
#include "core/dicom/series_writer.h"
#include "core/phantom/phantom.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace miseg {
namespace {

using ::testing::HasSubstr;

// ---- helpers ----------------------------------------------------------------------------

struct CommandResult {
  int exit_code = -1;
  std::string output;
};

CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// A per-test folder, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "miseg-seg-test-XXXXXX").string();
    path_ = mkdtemp(pattern.data()) != nullptr ? pattern : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string Write(const std::string& name, const std::string& bytes) const {
    const std::string file = (std::filesystem::path(path_) / name).string();
    std::ofstream(file, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return file;
  }

 private:
  std::string path_;
};

// Runs dciodvfy; returns its "Error" lines and prints the warnings into the test log.
std::vector<std::string> DciodvfyErrors(const std::string& file, const std::string& what) {
  const CommandResult run = RunCommand(absl::StrCat(MISEG_DCIODVFY, " '", file, "'"));
  std::vector<std::string> errors;
  int warnings = 0;
  for (absl::string_view line : absl::StrSplit(run.output, '\n')) {
    if (absl::StartsWith(line, "Error")) errors.emplace_back(line);
    if (absl::StartsWith(line, "Warning")) {
      ++warnings;
      std::printf("[dciodvfy %s] %.*s\n", what.c_str(), static_cast<int>(line.size()), line.data());
    }
  }
  std::printf("[dciodvfy %s] %zu errors, %d warnings\n", what.c_str(), errors.size(), warnings);
  if (run.exit_code < 0) errors.push_back("dciodvfy did not run: " + run.output);
  return errors;
}

// pydicom's view of a SEG, one "key=value" per line, with per-frame set-pixel counts from the
// raw (bit-continuous) pixel data, decoded without numpy.
std::map<std::string, std::string> PydicomView(const std::string& file) {
  const std::string script = R"PY(
import sys, pydicom
ds = pydicom.dcmread(sys.argv[1])
print("sop_class=" + str(ds.SOPClassUID))
print("type=" + str(ds.SegmentationType))
n = int(ds.NumberOfFrames)
print("frames=%d" % n)
print("segments=%d" % len(ds.SegmentSequence))
print("labels=" + ",".join(str(s.SegmentLabel) for s in ds.SegmentSequence))
print("codes=" + ",".join(str(s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in ds.SegmentSequence))
print("algorithm=" + str(ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName))
print("referenced_series=" + str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID))
print("referenced_instances=%d" % len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence))
print("frame_of_reference=" + str(ds.get("FrameOfReferenceUID", "")))
pixels = ds.Rows * ds.Columns
bits = int.from_bytes(ds.PixelData, "little")
counts = {}
for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
    segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    frame = (bits >> (f * pixels)) & ((1 << pixels) - 1)
    key = "%d/%s" % (segment, source)
    counts[key] = counts.get(key, 0) + bin(frame).count("1")
for key in sorted(counts):
    print("count/" + key + "=%d" % counts[key])
)PY";
  TempDir dir;
  const std::string script_file = dir.Write("view.py", script);
  const CommandResult run =
      RunCommand(absl::StrCat(MISEG_SYSTEM_PYTHON, " '", script_file, "' '", file, "'"));
  std::map<std::string, std::string> view;
  for (absl::string_view line : absl::StrSplit(run.output, '\n')) {
    const size_t eq = line.find('=');
    if (eq != absl::string_view::npos)
      view[std::string(line.substr(0, eq))] = std::string(line.substr(eq + 1));
  }
  if (run.exit_code != 0) view["error"] = run.output;
  return view;
}

PhantomSubject SmallSubject(int index = 0) {
  PhantomOptions options;
  options.min_slices = options.max_slices = 6;
  options.min_matrix = options.max_matrix = 50;  // 2500 pixels: frames do not end on a byte
  return GeneratePhantomSubject(/*population_seed=*/11, index, options);
}

struct WrittenSeries {
  std::vector<DicomBuffer> files;
  SeriesVolume series;
  LabelVolume labels;  // on series.image's grid
};

WrittenSeries WriteSmallSeries(const PhantomSubject& subject) {
  ImageSeriesInfo info;
  info.patient_id = "SEG-TEST";
  info.patient_name = "TEST^SEG";
  info.study_date = "20240102";
  info.study_time = "101010";
  info.study_id = "42";
  WrittenSeries out;
  auto files = WriteImageSeries(subject.image, info, &out.series);
  EXPECT_TRUE(files.ok()) << files.status();
  if (files.ok()) out.files = *std::move(files);
  out.labels =
      ReaderReversesSlices(subject.image.geometry) ? FlipSlices(subject.labels) : subject.labels;
  return out;
}

std::map<std::string, int64_t> CountsBySegmentAndSource(const WrittenSeries& w) {
  std::map<std::string, int64_t> counts;
  const int64_t n = w.labels.geometry.slice_size();
  for (int64_t k = 0; k < w.labels.geometry.slices; ++k) {
    for (int c = 1; c < 4; ++c) {
      int64_t count = 0;
      for (int64_t i = 0; i < n; ++i) count += w.labels.voxels[static_cast<size_t>(k * n + i)] == c;
      if (count > 0)
        counts[absl::StrCat(c, "/", w.series.slices[static_cast<size_t>(k)].sop_instance_uid)] =
            count;
    }
  }
  return counts;
}

// Re-serialises a SEG after `edit` changed its dataset.
template <typename Edit>
std::string EditDataset(const std::string& bytes, Edit edit) {
  auto file = ParseDicom(bytes, "seg");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return "";
  edit(*(*file)->getDataset());
  auto out = SerializeDicom(**file);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : "";
}

std::string SopInstanceUid(const std::string& bytes) {
  auto file = ParseDicom(bytes, "x");
  OFString uid;
  if (file.ok()) (*file)->getDataset()->findAndGetOFString(DCM_SOPInstanceUID, uid);
  return uid.c_str();
}

SegmentationWriteOptions PhantomOptionsForSeg() {
  SegmentationWriteOptions options;
  options.class_names = PhantomClassNames();
  options.model_version = "test-model/step-1";
  return options;
}

// ---- writing: validated by dciodvfy, pydicom and our reader ------------------------------

TEST(Segmentation, PhantomSegPassesDciodvfyPydicomAndReadsBackIdentical) {
  const PhantomSubject subject = SmallSubject();
  const WrittenSeries w = WriteSmallSeries(subject);
  ASSERT_EQ(w.files.size(), 6u);
  auto seg = WriteSegmentation(w.series, w.labels, PhantomOptionsForSeg());
  ASSERT_TRUE(seg.ok()) << seg.status();

  TempDir dir;
  const std::string seg_file = dir.Write("seg.dcm", *seg);
  const std::string image_file = dir.Write("image.dcm", w.files[0].bytes);
  EXPECT_THAT(DciodvfyErrors(seg_file, "SEG"), ::testing::IsEmpty());
  EXPECT_THAT(DciodvfyErrors(image_file, "MR image"), ::testing::IsEmpty());

  const auto view = PydicomView(seg_file);
  ASSERT_EQ(view.count("error"), 0u) << view.at("error");
  EXPECT_EQ(view.at("sop_class"), UID_SegmentationStorage);
  EXPECT_EQ(view.at("type"), "BINARY");
  EXPECT_EQ(view.at("segments"), "3");
  EXPECT_EQ(view.at("labels"), "right_ventricle,myocardium,left_ventricle");
  EXPECT_EQ(view.at("codes"), "53085002,74281007,87878005");
  EXPECT_EQ(view.at("algorithm"), "miseg");
  EXPECT_EQ(view.at("referenced_series"), w.series.series_instance_uid);
  EXPECT_EQ(view.at("referenced_instances"), "6");
  EXPECT_EQ(view.at("frame_of_reference"), w.series.frame_of_reference_uid);
  const auto expected_counts = CountsBySegmentAndSource(w);
  EXPECT_EQ(view.at("frames"), absl::StrCat(expected_counts.size()));
  for (const auto& [key, count] : expected_counts) {
    ASSERT_EQ(view.count("count/" + key), 1u) << key;
    EXPECT_EQ(view.at("count/" + key), absl::StrCat(count)) << key;
  }

  auto read = ReadSegmentation(DicomBuffer{"seg.dcm", *seg}, w.series, PhantomClassNames());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->labels.voxels, w.labels.voxels);
  EXPECT_EQ(read->segment_labels,
            std::vector<std::string>({"right_ventricle", "myocardium", "left_ventricle"}));
  EXPECT_EQ(read->referenced_series_instance_uid, w.series.series_instance_uid);
  EXPECT_EQ(read->sop_instance_uid, SopInstanceUid(*seg));
}

TEST(Segmentation, EmptySegmentIsWrittenAndReadBack) {
  const PhantomSubject subject = SmallSubject();
  WrittenSeries w = WriteSmallSeries(subject);
  for (uint8_t& v : w.labels.voxels) {
    if (v == kPhantomMyocardium) v = 0;
  }
  auto seg = WriteSegmentation(w.series, w.labels, PhantomOptionsForSeg());
  ASSERT_TRUE(seg.ok()) << seg.status();
  TempDir dir;
  const std::string seg_file = dir.Write("seg.dcm", *seg);
  EXPECT_THAT(DciodvfyErrors(seg_file, "SEG with an empty segment"), ::testing::IsEmpty());
  const auto view = PydicomView(seg_file);
  ASSERT_EQ(view.count("error"), 0u) << view.at("error");
  EXPECT_EQ(view.at("segments"), "3");
  EXPECT_EQ(view.at("labels"), "right_ventricle,myocardium,left_ventricle");
  auto read = ReadSegmentation(DicomBuffer{"seg.dcm", *seg}, w.series, PhantomClassNames());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->labels.voxels, w.labels.voxels);
}

// Issue 21: a SEG derived from lossy-compressed images says so (PS3.3 C.7.6.1.1.5), with
// the source's methods and ratios in step order; a value that is not a valid CS or DS is
// left out rather than failing the SEG; a lossless source's SEG has no such attributes.
TEST(Segmentation, SegOfLossySourceCarriesLossyImageCompression) {
  const PhantomSubject subject = SmallSubject();
  WrittenSeries w = WriteSmallSeries(subject);
  w.series.lossy.lossy = true;
  w.series.lossy.methods = {"ISO_10918_1", "ISO_15444_1", "bad\\value"};
  w.series.lossy.ratios = {"8.5", "12.25", "not a number"};
  auto seg = WriteSegmentation(w.series, w.labels, PhantomOptionsForSeg());
  ASSERT_TRUE(seg.ok()) << seg.status();
  TempDir dir;
  const std::string seg_file = dir.Write("seg.dcm", *seg);
  EXPECT_THAT(DciodvfyErrors(seg_file, "SEG of a lossy source"), ::testing::IsEmpty());
  auto parsed = ParseDicom(*seg, "seg");
  ASSERT_TRUE(parsed.ok());
  DcmDataset& ds = *(*parsed)->getDataset();
  OFString flag, methods, ratios;
  ds.findAndGetOFString(DCM_LossyImageCompression, flag);
  ds.findAndGetOFStringArray(DCM_LossyImageCompressionMethod, methods);
  ds.findAndGetOFStringArray(DCM_LossyImageCompressionRatio, ratios);
  EXPECT_EQ(std::string(flag.c_str()), "01");
  EXPECT_EQ(std::string(methods.c_str()), "ISO_10918_1\\ISO_15444_1");
  EXPECT_EQ(std::string(ratios.c_str()), "8.5\\12.25");

  w.series.lossy = {};
  seg = WriteSegmentation(w.series, w.labels, PhantomOptionsForSeg());
  ASSERT_TRUE(seg.ok()) << seg.status();
  parsed = ParseDicom(*seg, "seg");
  ASSERT_TRUE(parsed.ok());
  flag.clear();
  (*parsed)->getDataset()->findAndGetOFString(DCM_LossyImageCompression, flag);
  EXPECT_NE(std::string(flag.c_str()), "01");
}

TEST(Segmentation, AllBackgroundAndGenericClassesWork) {
  const PhantomSubject subject = SmallSubject();
  WrittenSeries w = WriteSmallSeries(subject);
  SegmentationWriteOptions options;
  options.class_names = {"background", "Liver", "spleen tissue"};
  for (uint8_t& v : w.labels.voxels) v = v == kPhantomLeftVentricle ? 2 : 0;
  auto seg = WriteSegmentation(w.series, w.labels, options);
  ASSERT_TRUE(seg.ok()) << seg.status();
  TempDir dir;
  const std::string seg_file = dir.Write("seg.dcm", *seg);
  EXPECT_THAT(DciodvfyErrors(seg_file, "SEG with generic classes"), ::testing::IsEmpty());
  const auto view = PydicomView(seg_file);
  ASSERT_EQ(view.count("error"), 0u) << view.at("error");
  EXPECT_EQ(view.at("codes"), "85756007,85756007");
  // Labels match case-insensitively, with spaces and underscores equivalent.
  auto read = ReadSegmentation(DicomBuffer{"seg.dcm", *seg}, w.series,
                               {"background", "LIVER", "Spleen_Tissue"});
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->labels.voxels, w.labels.voxels);
}

TEST(Segmentation, SourceWithoutOptionalAttributesStillGivesValidSeg) {
  const PhantomSubject subject = SmallSubject();
  WrittenSeries w = WriteSmallSeries(subject);
  SeriesVolume bare = w.series;
  bare.frame_of_reference_uid.clear();
  bare.reference_header = EditDataset(w.series.reference_header, [](DcmDataset& ds) {
    for (const DcmTagKey& tag :
         {DCM_FrameOfReferenceUID, DCM_PositionReferenceIndicator, DCM_StudyDate, DCM_StudyTime,
          DCM_PatientBirthDate, DCM_PatientSex, DCM_PatientName, DCM_PatientID, DCM_AccessionNumber,
          DCM_ReferringPhysicianName, DCM_StudyID, DCM_Manufacturer, DCM_ManufacturerModelName,
          DCM_SpecificCharacterSet, DCM_StudyDescription, DCM_SeriesDate, DCM_SeriesTime}) {
      ds.findAndDeleteElement(tag);
    }
  });
  ASSERT_FALSE(bare.reference_header.empty());
  auto seg = WriteSegmentation(bare, w.labels, PhantomOptionsForSeg());
  ASSERT_TRUE(seg.ok()) << seg.status();
  TempDir dir;
  const std::string seg_file = dir.Write("seg.dcm", *seg);
  EXPECT_THAT(DciodvfyErrors(seg_file, "SEG from a bare source"), ::testing::IsEmpty());
  const auto view = PydicomView(seg_file);
  ASSERT_EQ(view.count("error"), 0u) << view.at("error");
  EXPECT_EQ(view.at("frame_of_reference"), "");
  auto read = ReadSegmentation(DicomBuffer{"seg.dcm", *seg}, bare, PhantomClassNames());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->labels.voxels, w.labels.voxels);

  // No reference header at all: the study UID from the SeriesVolume is enough.
  bare.reference_header.clear();
  auto seg2 = WriteSegmentation(bare, w.labels, PhantomOptionsForSeg());
  ASSERT_TRUE(seg2.ok()) << seg2.status();
  const std::string seg2_file = dir.Write("seg2.dcm", *seg2);
  EXPECT_THAT(DciodvfyErrors(seg2_file, "SEG without a reference header"), ::testing::IsEmpty());
}

// Issue 18: patient and study attributes of the source that break their VR (a fuzzed date,
// a control character in a name, bytes not valid in the declared character set) are blanked
// before they are copied, so the SEG is still written and valid; a source whose Study
// Instance UID cannot be copied is refused up front with InvalidArgument naming it.
TEST(Segmentation, SourceWithBadValuesGivesValidSegOrIsRefusedUpFront) {
  const PhantomSubject subject = SmallSubject();
  WrittenSeries w = WriteSmallSeries(subject);
  SeriesVolume bad = w.series;
  bad.reference_header = EditDataset(w.series.reference_header, [](DcmDataset& ds) {
    ds.putAndInsertString(DCM_SpecificCharacterSet, "ISO_IR 192");
    ds.putAndInsertString(DCM_PatientBirthDate, "2021x\\31");
    ds.putAndInsertString(DCM_StudyDate, "99999999999");
    ds.putAndInsertString(DCM_StudyTime, "ab:cd");
    ds.putAndInsertString(DCM_PatientSex, "QQQQQQQQQQQQQQQQQQQQQQQQ");
    ds.putAndInsertString(DCM_PatientName, "Buc^J\xE9r\xF4me\x01");
    ds.putAndInsertString(DCM_StudyID, "0123456789abcdefXYZ");
    ds.putAndInsertString(DCM_AccessionNumber, "\x1B\x1B\x1B");
  });
  EXPECT_TRUE(CheckSegmentationSource(bad).ok());
  auto seg = WriteSegmentation(bad, w.labels, PhantomOptionsForSeg());
  ASSERT_TRUE(seg.ok()) << seg.status();
  TempDir dir;
  const std::string seg_file = dir.Write("seg.dcm", *seg);
  EXPECT_THAT(DciodvfyErrors(seg_file, "SEG from a source with bad values"), ::testing::IsEmpty());
  auto read = ReadSegmentation(DicomBuffer{"seg.dcm", *seg}, bad, PhantomClassNames());
  ASSERT_TRUE(read.ok()) << read.status();

  SeriesVolume refused = w.series;
  refused.reference_header = EditDataset(w.series.reference_header, [](DcmDataset& ds) {
    ds.putAndInsertString(DCM_StudyInstanceUID, "1.2.03");
  });
  const absl::Status check = CheckSegmentationSource(refused);
  EXPECT_EQ(check.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(check.message()), HasSubstr("StudyInstanceUID"));
  EXPECT_EQ(WriteSegmentation(refused, w.labels, PhantomOptionsForSeg()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A multi-frame source (e.g. enhanced MR): frames reference the one instance by frame number.
TEST(Segmentation, MultiFrameSourceIsReferencedByFrameNumber) {
  const PhantomSubject subject = SmallSubject();
  const WrittenSeries w = WriteSmallSeries(subject);
  SeriesVolume multi = w.series;
  const std::string uid = DeterministicUid("enhanced-mr-instance");
  for (size_t k = 0; k < multi.slices.size(); ++k) {
    multi.slices[k] = SliceSource{uid, UID_EnhancedMRImageStorage, static_cast<int32_t>(k + 1)};
  }
  auto seg = WriteSegmentation(multi, w.labels, PhantomOptionsForSeg());
  ASSERT_TRUE(seg.ok()) << seg.status();
  TempDir dir;
  EXPECT_THAT(DciodvfyErrors(dir.Write("seg.dcm", *seg), "SEG of a multi-frame source"),
              ::testing::IsEmpty());
  auto read = ReadSegmentation(DicomBuffer{"seg.dcm", *seg}, multi, PhantomClassNames());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->labels.voxels, w.labels.voxels);

  // A frame number the source does not have.
  SeriesVolume shorter = multi;
  shorter.slices.back().frame_number = 99;
  auto status =
      ReadSegmentation(DicomBuffer{"seg.dcm", *seg}, shorter, PhantomClassNames()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("frame 6 of SOP Instance ", uid,
                                                       " which is not in the series")));
}

TEST(Segmentation, WriterRejectsLabelsOffTheGrid) {
  const PhantomSubject subject = SmallSubject();
  WrittenSeries w = WriteSmallSeries(subject);
  LabelVolume wrong = w.labels;
  wrong.geometry.rows -= 1;
  wrong.voxels.resize(static_cast<size_t>(wrong.geometry.voxel_count()));
  EXPECT_EQ(WriteSegmentation(w.series, wrong, PhantomOptionsForSeg()).status().code(),
            absl::StatusCode::kInvalidArgument);
  LabelVolume too_high = w.labels;
  too_high.voxels[0] = 7;
  auto status = WriteSegmentation(w.series, too_high, PhantomOptionsForSeg()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("label 7"));
}

// ---- the series writer's other paths ---------------------------------------------------

TEST(SeriesWriter, CtIntegersAreStoredExactlyAndPassDciodvfy) {
  VolumeGeometry g;
  g.slices = 3;
  g.rows = 20;
  g.cols = 24;
  g.row_spacing_mm = 0.7;
  g.col_spacing_mm = 0.8;
  g.slice_spacing_mm = 2.5;
  g.origin_mm = {-10.0, 20.0, 30.0};
  ImageVolume ct(g);
  for (size_t i = 0; i < ct.voxels.size(); ++i)
    ct.voxels[i] = static_cast<float>(static_cast<int>(i % 4096) - 1024);
  ImageSeriesInfo info;
  info.modality = "CT";
  info.uid_root = "1.2.826.0.1.3680043.10.1234";
  info.body_part_examined = "CHEST";
  SeriesVolume described;
  auto files = WriteImageSeries(ct, info, &described);
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_EQ(files->size(), 3u);
  EXPECT_EQ(described.image.voxels, ct.voxels);  // exact: signed 16-bit, slope 1
  EXPECT_EQ(described.slices[0].sop_class_uid, UID_CTImageStorage);
  EXPECT_TRUE(absl::StartsWith(described.series_instance_uid, info.uid_root + "."));
  EXPECT_TRUE(absl::StartsWith(described.slices[0].sop_instance_uid, info.uid_root + "."));
  // slice_direction = row x col here, so the reader keeps the order.
  EXPECT_FALSE(ReaderReversesSlices(g));
  EXPECT_EQ(described.image.geometry.origin_mm, g.origin_mm);
  TempDir dir;
  EXPECT_THAT(DciodvfyErrors(dir.Write("ct.dcm", (*files)[1].bytes), "CT image"),
              ::testing::IsEmpty());
}

TEST(SeriesWriter, RejectsWhatItCannotWrite) {
  VolumeGeometry g;
  g.slices = 2;
  g.rows = g.cols = 4;
  ImageVolume image(g);
  ImageSeriesInfo info;
  info.modality = "US";
  EXPECT_EQ(WriteImageSeries(image, info).status().code(), absl::StatusCode::kInvalidArgument);
  info.modality = "MR";
  image.voxels[3] = std::nanf("");
  EXPECT_EQ(WriteImageSeries(image, info).status().code(), absl::StatusCode::kInvalidArgument);
  image.voxels.pop_back();
  EXPECT_EQ(WriteImageSeries(image, info).status().code(), absl::StatusCode::kInvalidArgument);

  // Values that do not fit their VR: refused, without echoing patient data.
  ImageVolume fine(g);
  info.patient_name = "Doe\\Jane";
  auto status = WriteImageSeries(fine, info).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("PatientName"));
  EXPECT_THAT(status.message(), ::testing::Not(HasSubstr("Doe")));
  info.patient_name = "Doe^Jane";
  info.study_date = "2024-01-01";
  EXPECT_EQ(WriteImageSeries(fine, info).status().code(), absl::StatusCode::kInvalidArgument);
  info.study_date = "20240101";
  EXPECT_TRUE(WriteImageSeries(fine, info).ok());
}

// ---- reading other SEGs ----------------------------------------------------------------

// A FRACTIONAL (probability) SEG made with dcmseg directly: each class is 200/255 where the
// label is and 100/255 (below one half) on the rest of the slices it appears on.
std::string MakeFractionalSeg(const WrittenSeries& w) {
  const VolumeGeometry& g = w.series.image.geometry;
  DcmSegmentation* raw = nullptr;
  OFCondition cond = DcmSegmentation::createFractionalSegmentation(
      raw, static_cast<Uint16>(g.rows), static_cast<Uint16>(g.cols), DcmSegTypes::SFT_PROBABILITY,
      255, IODGeneralEquipmentModule::EquipmentInfo("test", "test", "1", "1"),
      ContentIdentificationMacro("1", "FRACTIONAL", "", "test"));
  EXPECT_TRUE(cond.good()) << cond.text();
  if (cond.bad()) return "";
  std::unique_ptr<DcmSegmentation> seg(raw);
  auto header = ParseDicom(w.series.reference_header, "header");
  EXPECT_TRUE(header.ok());
  seg->importHierarchy(*(*header)->getDataset(), OFTrue, OFTrue, OFTrue, OFFalse);
  seg->getSeries().setSeriesNumber("5");
  const char* names[] = {"", "Right Ventricle", "MYOCARDIUM", "left-ventricle"};
  for (int c = 1; c < 4; ++c) {
    DcmSegment* segment = nullptr;
    DcmSegment::create(segment, names[c],
                       CodeSequenceMacro("123037004", "SCT", "Anatomical Structure"),
                       CodeSequenceMacro("85756007", "SCT", "Tissue"), DcmSegTypes::SAT_MANUAL);
    Uint16 number = 0;
    EXPECT_TRUE(seg->addSegment(segment, number).good());
    EXPECT_EQ(number, c);
  }
  FGPixelMeasures measures;
  measures.setPixelSpacing(absl::StrCat(g.row_spacing_mm, "\\", g.col_spacing_mm).c_str());
  measures.setSliceThickness(absl::StrCat(g.slice_spacing_mm).c_str());
  seg->addForAllFrames(measures);
  FGPlaneOrientationPatient* orientation = FGPlaneOrientationPatient::createMinimal(
      absl::StrCat(g.row_direction[0]).c_str(), absl::StrCat(g.row_direction[1]).c_str(),
      absl::StrCat(g.row_direction[2]).c_str(), absl::StrCat(g.col_direction[0]).c_str(),
      absl::StrCat(g.col_direction[1]).c_str(), absl::StrCat(g.col_direction[2]).c_str());
  seg->addForAllFrames(*orientation);
  delete orientation;
  seg->getDimensions().addDimensionIndex(DCM_ReferencedSegmentNumber, "1.2.3.4",
                                         DCM_SegmentIdentificationSequence);
  seg->getDimensions().addDimensionIndex(DCM_ImagePositionPatient, "1.2.3.4",
                                         DCM_PlanePositionSequence);
  const int64_t n = g.slice_size();
  for (int c = 1; c < 4; ++c) {
    for (int64_t k = 0; k < g.slices; ++k) {
      std::vector<Uint8> frame(static_cast<size_t>(n));
      bool any = false;
      for (int64_t i = 0; i < n; ++i) {
        const bool in = w.labels.voxels[static_cast<size_t>(k * n + i)] == c;
        frame[static_cast<size_t>(i)] = in ? 200 : 100;
        any |= in;
      }
      if (!any) continue;
      std::array<double, 3> p;
      for (int i = 0; i < 3; ++i)
        p[i] = g.origin_mm[i] + k * g.slice_spacing_mm * g.slice_direction[i];
      std::unique_ptr<FGPlanePosPatient> position(FGPlanePosPatient::createMinimal(
          absl::StrCat(p[0]).c_str(), absl::StrCat(p[1]).c_str(), absl::StrCat(p[2]).c_str()));
      FGFrameContent content;
      content.setDimensionIndexValues(static_cast<Uint32>(c), 0);
      content.setDimensionIndexValues(static_cast<Uint32>(k + 1), 1);
      ImageSOPInstanceReferenceMacro ref;
      ref.setReferencedSOPClassUID(w.series.slices[static_cast<size_t>(k)].sop_class_uid.c_str());
      ref.setReferencedSOPInstanceUID(
          w.series.slices[static_cast<size_t>(k)].sop_instance_uid.c_str());
      OFVector<ImageSOPInstanceReferenceMacro> refs;
      refs.push_back(ref);
      std::unique_ptr<FGDerivationImage> derivation(
          DcmSegmentation::createDerivationImageFG(refs, "test"));
      OFVector<FGBase*> groups;
      groups.push_back(position.get());
      groups.push_back(&content);
      groups.push_back(derivation.get());
      EXPECT_TRUE(seg->addFrame(frame.data(), static_cast<Uint16>(c), groups).good());
    }
  }
  DcmFileFormat file;
  cond = seg->writeDataset(*file.getDataset());
  EXPECT_TRUE(cond.good()) << cond.text();
  auto bytes = SerializeDicom(file);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : "";
}

TEST(Segmentation, ReadsFractionalSeg) {
  const PhantomSubject subject = SmallSubject(1);
  const WrittenSeries w = WriteSmallSeries(subject);
  const std::string seg = MakeFractionalSeg(w);
  ASSERT_FALSE(seg.empty());
  auto read = ReadSegmentation(DicomBuffer{"fractional", seg}, w.series, PhantomClassNames());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->labels.voxels, w.labels.voxels);
  EXPECT_EQ(read->segment_labels,
            std::vector<std::string>({"Right Ventricle", "MYOCARDIUM", "left-ventricle"}));
}

TEST(Segmentation, MatchesFramesByPositionWithoutReferences) {
  const PhantomSubject subject = SmallSubject();
  const WrittenSeries w = WriteSmallSeries(subject);
  auto seg = WriteSegmentation(w.series, w.labels, PhantomOptionsForSeg());
  ASSERT_TRUE(seg.ok()) << seg.status();
  const std::string stripped = EditDataset(*seg, [](DcmDataset& ds) {
    DcmSequenceOfItems* frames = nullptr;
    ASSERT_TRUE(ds.findAndGetSequence(DCM_PerFrameFunctionalGroupsSequence, frames).good());
    for (unsigned long f = 0; f < frames->card(); ++f) {
      frames->getItem(f)->findAndDeleteElement(DCM_DerivationImageSequence);
      frames->getItem(f)->findAndDeleteElement(DCM_SourceImageSequence, OFTrue, OFTrue);
    }
    DcmItem* shared = nullptr;
    if (ds.findAndGetSequenceItem(DCM_SharedFunctionalGroupsSequence, shared).good()) {
      shared->findAndDeleteElement(DCM_DerivationImageSequence);
    }
  });
  ASSERT_FALSE(stripped.empty());
  {
    auto parsed = ParseDicom(stripped, "stripped");
    ASSERT_TRUE(parsed.ok());
    DcmElement* found = nullptr;
    EXPECT_TRUE((*parsed)
                    ->getDataset()
                    ->findAndGetElement(DCM_DerivationImageSequence, found, OFTrue)
                    .bad());
  }
  auto read = ReadSegmentation(DicomBuffer{"stripped", stripped}, w.series, PhantomClassNames());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->labels.voxels, w.labels.voxels);

  // A series shifted by half a slice: no frame position lies on a slice.
  SeriesVolume shifted = w.series;
  for (int i = 0; i < 3; ++i) {
    shifted.image.geometry.origin_mm[i] +=
        0.5 * shifted.image.geometry.slice_spacing_mm * shifted.image.geometry.slice_direction[i];
  }
  auto status =
      ReadSegmentation(DicomBuffer{"stripped", stripped}, shifted, PhantomClassNames()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("lies on no slice of the series"));
}

// ---- bad input ---------------------------------------------------------------------------

class SegmentationBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    w_ = WriteSmallSeries(SmallSubject());
    auto seg = WriteSegmentation(w_.series, w_.labels, PhantomOptionsForSeg());
    ASSERT_TRUE(seg.ok()) << seg.status();
    seg_ = *seg;
    seg_uid_ = SopInstanceUid(seg_);
    ASSERT_FALSE(seg_uid_.empty());
  }
  absl::Status Read(const std::string& bytes, const SeriesVolume& series,
                    const std::vector<std::string>& classes = PhantomClassNames()) {
    return ReadSegmentation(DicomBuffer{"bad.dcm", bytes}, series, classes).status();
  }
  WrittenSeries w_;
  std::string seg_;
  std::string seg_uid_;
};

TEST_F(SegmentationBadInput, NotASeg) {
  const absl::Status status = Read(w_.files[0].bytes, w_.series);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("not a DICOM Segmentation"));
  EXPECT_THAT(status.message(), HasSubstr(UID_MRImageStorage));
}

TEST_F(SegmentationBadInput, ReferencedInstanceMissingFromSeries) {
  SeriesVolume other = w_.series;
  const std::string missing = other.slices[2].sop_instance_uid;
  other.slices[2].sop_instance_uid = "1.2.3.4.5";
  const absl::Status status = Read(seg_, other);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("references SOP Instance " + missing + " which is not in the series"));
  EXPECT_THAT(status.message(), HasSubstr(seg_uid_));
}

TEST_F(SegmentationBadInput, WrongFrameSize) {
  SeriesVolume other = w_.series;
  other.image.geometry.cols += 1;
  other.image.voxels.resize(static_cast<size_t>(other.image.geometry.voxel_count()));
  const absl::Status status = Read(seg_, other);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("frame size 50x50 does not match the series' 50x51"));
  EXPECT_THAT(status.message(), HasSubstr(seg_uid_));
}

TEST_F(SegmentationBadInput, UnknownSegmentLabel) {
  const absl::Status status =
      Read(seg_, w_.series, {"background", "right_ventricle", "left_ventricle", "liver"});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("segment 2 ('myocardium') matches none of the classes"));
}

TEST_F(SegmentationBadInput, GarbageBytes) {
  std::string garbage(3000, '\0');
  for (size_t i = 0; i < garbage.size(); ++i)
    garbage[i] = static_cast<char>((i * 2654435761u) >> 13);
  EXPECT_EQ(Read(garbage, w_.series).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Read("", w_.series).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SegmentationBadInput, TruncatedFile) {
  for (size_t keep : {size_t{200}, seg_.size() / 2, seg_.size() - 10}) {
    const absl::Status status = Read(seg_.substr(0, keep), w_.series);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << keep << ": " << status;
  }
}

TEST_F(SegmentationBadInput, TruncatedPixelData) {
  const std::string bytes = EditDataset(seg_, [](DcmDataset& ds) {
    const Uint8 few[4] = {1, 2, 3, 4};
    ds.putAndInsertUint8Array(DCM_PixelData, few, 4);
  });
  const absl::Status status = Read(bytes, w_.series);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("truncated"));
  EXPECT_THAT(status.message(), HasSubstr(seg_uid_));
}

TEST_F(SegmentationBadInput, LabelmapIsUnsupported) {
  const std::string bytes = EditDataset(
      seg_, [](DcmDataset& ds) { ds.putAndInsertString(DCM_SegmentationType, "LABELMAP"); });
  const absl::Status status = Read(bytes, w_.series);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'LABELMAP' is not supported"));
}

TEST_F(SegmentationBadInput, FrameOfAnUndeclaredSegment) {
  const std::string bytes = EditDataset(seg_, [](DcmDataset& ds) {
    DcmItem* frame = nullptr;
    ASSERT_TRUE(ds.findAndGetSequenceItem(DCM_PerFrameFunctionalGroupsSequence, frame, 0).good());
    DcmItem* id = nullptr;
    ASSERT_TRUE(frame->findAndGetSequenceItem(DCM_SegmentIdentificationSequence, id, 0).good());
    id->putAndInsertUint16(DCM_ReferencedSegmentNumber, 9);
  });
  const absl::Status status = Read(bytes, w_.series);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("frame 1 belongs to segment 9"));
}

TEST_F(SegmentationBadInput, AbsurdNumberOfFrames) {
  const std::string bytes = EditDataset(
      seg_, [](DcmDataset& ds) { ds.putAndInsertString(DCM_NumberOfFrames, "2000000000"); });
  const absl::Status status = Read(bytes, w_.series);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("truncated"));
}

// Random byte corruptions anywhere in a valid SEG: every outcome is a value or an
// InvalidArgument, never a crash. MISEG_SEG_CORRUPTIONS raises the count for longer runs.
TEST_F(SegmentationBadInput, RandomCorruptionsNeverCrash) {
  int iterations = 300;
  if (const char* env = std::getenv("MISEG_SEG_CORRUPTIONS"))
    iterations = std::max(1, std::atoi(env));
  uint64_t state = 0x9E3779B97F4A7C15ULL;
  auto next = [&state] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  int ok = 0, invalid = 0;
  for (int i = 0; i < iterations; ++i) {
    std::string bytes = seg_;
    const int flips = 1 + static_cast<int>(next() % 4);
    for (int f = 0; f < flips; ++f) {
      // Mostly the header and functional groups (where the structure is), sometimes pixels.
      const size_t span = next() % 4 == 0 ? bytes.size() : std::min<size_t>(bytes.size(), 6000);
      bytes[next() % span] = static_cast<char>(next());
    }
    if (next() % 8 == 0) bytes.resize(next() % bytes.size());
    const auto result =
        ReadSegmentation(DicomBuffer{"corrupt", bytes}, w_.series, PhantomClassNames());
    if (result.ok()) {
      ++ok;
      EXPECT_TRUE(result->labels.consistent());
    } else {
      ++invalid;
      EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
    }
  }
  std::printf("[corruptions] %d read, %d refused\n", ok, invalid);
}

}  // namespace
}  // namespace miseg

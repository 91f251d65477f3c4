// Tests of the phantom as DICOM (core/dicom/phantom_study.cc): deterministic UIDs, the files
// on disk, and the round trip the issue asks for: phantom series and SEG written to a
// folder, validated by dciodvfy and pydicom, read back by our reader (series and SEG)
// identical to what was written.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdeftag.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/phantom_study.h"
#include "core/dicom/segmentation.h"
#include "core/dicom/series_reader.h"
#include "core/dicom/series_writer.h"
#include "core/phantom/phantom.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace miseg {
namespace {

std::string RunCommand(const std::string& command, int* exit_code) {
  std::string output;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return output;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return output;
}

class PhantomStudyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "miseg-phantom-study-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  static PhantomSubject Subject(int index = 0) {
    PhantomOptions options;
    options.min_slices = options.max_slices = 5;
    options.min_matrix = 48;
    options.max_matrix = 64;
    return GeneratePhantomSubject(/*population_seed=*/3, index, options);
  }
  std::string dir_;
};

std::string Uid(const std::string& bytes, const DcmTagKey& tag) {
  auto file = ParseDicom(bytes, "x");
  OFString value;
  if (file.ok()) (*file)->getDataset()->findAndGetOFString(tag, value);
  return value.c_str();
}

TEST_F(PhantomStudyTest, UidsAreDeterministicPerSubjectId) {
  const PhantomSubject subject = Subject();
  auto a = MakePhantomStudy(subject, "007", true);
  auto b = MakePhantomStudy(subject, "007", true);
  auto c = MakePhantomStudy(subject, "008", true);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok() && c.ok());
  ASSERT_EQ(a->image_files.size(), 5u);
  EXPECT_EQ(a->series.study_instance_uid, b->series.study_instance_uid);
  EXPECT_EQ(a->series.series_instance_uid, b->series.series_instance_uid);
  EXPECT_EQ(a->series.frame_of_reference_uid, b->series.frame_of_reference_uid);
  EXPECT_NE(a->series.study_instance_uid, c->series.study_instance_uid);
  EXPECT_NE(a->series.series_instance_uid, c->series.series_instance_uid);
  std::set<std::string> uids;
  for (size_t i = 0; i < a->image_files.size(); ++i) {
    const std::string uid = Uid(a->image_files[i].bytes, DCM_SOPInstanceUID);
    EXPECT_EQ(uid, Uid(b->image_files[i].bytes, DCM_SOPInstanceUID));
    EXPECT_TRUE(uids.insert(uid).second);
    EXPECT_EQ(Uid(a->image_files[i].bytes, DCM_PatientID), "PHANTOM-007");
    EXPECT_EQ(Uid(a->image_files[i].bytes, DCM_Modality), "MR");
    EXPECT_TRUE(absl::StartsWith(uid, "2.25.")) << uid;
  }
  ASSERT_TRUE(a->segmentation && b->segmentation);
  EXPECT_EQ(Uid(a->segmentation->bytes, DCM_SOPInstanceUID),
            Uid(b->segmentation->bytes, DCM_SOPInstanceUID));
  EXPECT_EQ(Uid(a->segmentation->bytes, DCM_SeriesInstanceUID),
            Uid(b->segmentation->bytes, DCM_SeriesInstanceUID));
  EXPECT_EQ(Uid(a->segmentation->bytes, DCM_StudyInstanceUID), a->series.study_instance_uid);
  EXPECT_EQ(Uid(a->segmentation->bytes, DCM_PatientID), "PHANTOM-007");

  auto without = MakePhantomStudy(subject, "007", false);
  ASSERT_TRUE(without.ok());
  EXPECT_FALSE(without->segmentation.has_value());
  EXPECT_EQ(MakePhantomStudy(subject, "", true).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakePhantomStudy(subject, "a\\b", true).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(PhantomStudyTest, WritesOneFilePerInstanceNamedByUid) {
  auto study = MakePhantomStudy(Subject(), "files", true);
  ASSERT_TRUE(study.ok()) << study.status();
  const std::string folder = dir_ + "/nested/study";
  ASSERT_TRUE(WriteStudyToFolder(*study, folder).ok());
  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(folder))
    names.insert(entry.path().filename());
  std::set<std::string> expected;
  for (const DicomBuffer& f : study->image_files)
    expected.insert(Uid(f.bytes, DCM_SOPInstanceUID) + ".dcm");
  expected.insert(Uid(study->segmentation->bytes, DCM_SOPInstanceUID) + ".dcm");
  EXPECT_EQ(names, expected);  // and no temporary file left behind
  // Writing again over the same files is fine.
  EXPECT_TRUE(WriteStudyToFolder(*study, folder).ok());
}

// Intensities survive the 16-bit storage within the documented bound.
TEST_F(PhantomStudyTest, QuantisationErrorWithinBound) {
  const PhantomSubject subject = Subject(1);
  auto study = MakePhantomStudy(subject, "quant", false);
  ASSERT_TRUE(study.ok());
  const ImageVolume original =
      ReaderReversesSlices(subject.image.geometry) ? FlipSlices(subject.image) : subject.image;
  float lo = original.voxels[0], hi = lo;
  for (float v : original.voxels) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const double bound = (static_cast<double>(hi) - lo) / 131068.0 + std::abs(hi) * 1.2e-7 + 1e-6;
  double worst = 0;
  ASSERT_EQ(study->series.image.voxels.size(), original.voxels.size());
  for (size_t i = 0; i < original.voxels.size(); ++i) {
    worst = std::max(
        worst, std::abs(static_cast<double>(study->series.image.voxels[i]) - original.voxels[i]));
  }
  std::printf("[quantisation] range %.3f..%.3f, worst error %.6f, bound %.6f\n", lo, hi, worst,
              bound);
  EXPECT_LE(worst, bound);
}

// The issue's round trip: written, validated by dciodvfy and pydicom, read back identical.
TEST_F(PhantomStudyTest, RoundTripThroughFolderDciodvfyPydicomAndOurReaders) {
  const PhantomSubject subject = Subject(2);
  auto study = MakePhantomStudy(subject, "roundtrip", true);
  ASSERT_TRUE(study.ok()) << study.status();
  ASSERT_TRUE(WriteStudyToFolder(*study, dir_).ok());
  const std::string seg_uid = Uid(study->segmentation->bytes, DCM_SOPInstanceUID);
  const std::string seg_file = dir_ + "/" + seg_uid + ".dcm";
  const std::string image_file =
      dir_ + "/" + Uid(study->image_files[0].bytes, DCM_SOPInstanceUID) + ".dcm";

  for (const auto& [file, what] :
       {std::pair{seg_file, "phantom SEG"}, std::pair{image_file, "phantom MR"}}) {
    int code = -1;
    const std::string out = RunCommand(absl::StrCat(MISEG_DCIODVFY, " '", file, "'"), &code);
    int errors = 0, warnings = 0;
    for (absl::string_view line : absl::StrSplit(out, '\n')) {
      if (absl::StartsWith(line, "Error")) {
        ++errors;
        ADD_FAILURE() << what << ": " << line;
      }
      if (absl::StartsWith(line, "Warning")) {
        ++warnings;
        std::printf("[dciodvfy %s] %.*s\n", what, static_cast<int>(line.size()), line.data());
      }
    }
    std::printf("[dciodvfy %s] %d errors, %d warnings\n", what, errors, warnings);
    EXPECT_GE(code, 0);
  }

  // pydicom reads the whole folder: one MR series of 5 and a SEG pointing at it.
  const std::string script = R"PY(
import sys, os, pydicom
series, seg = set(), None
mr = 0
for name in sorted(os.listdir(sys.argv[1])):
    ds = pydicom.dcmread(os.path.join(sys.argv[1], name))
    if ds.Modality == "SEG":
        seg = ds
    else:
        mr += 1
        series.add(ds.SeriesInstanceUID)
print("mr_files=%d" % mr)
print("mr_series=" + ",".join(sorted(series)))
print("seg_frames=%d" % int(seg.NumberOfFrames))
print("seg_segments=" + ",".join(str(s.SegmentLabel) for s in seg.SegmentSequence))
print("seg_referenced_series=" + seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
print("seg_patient=" + str(seg.PatientID))
print("seg_for=" + str(seg.FrameOfReferenceUID))
)PY";
  const std::string script_file =
      dir_ + "/../" + std::filesystem::path(dir_).filename().string() + "-view.py";
  std::ofstream(script_file) << script;
  int code = -1;
  const std::string out =
      RunCommand(absl::StrCat(MISEG_SYSTEM_PYTHON, " '", script_file, "' '", dir_, "'"), &code);
  std::filesystem::remove(script_file);
  ASSERT_EQ(code, 0) << out;
  std::map<std::string, std::string> view;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    const size_t eq = line.find('=');
    if (eq != absl::string_view::npos)
      view[std::string(line.substr(0, eq))] = std::string(line.substr(eq + 1));
  }
  EXPECT_EQ(view["mr_files"], "5");
  EXPECT_EQ(view["mr_series"], study->series.series_instance_uid);
  EXPECT_EQ(view["seg_segments"], "right_ventricle,myocardium,left_ventricle");
  EXPECT_EQ(view["seg_referenced_series"], study->series.series_instance_uid);
  EXPECT_EQ(view["seg_patient"], "PHANTOM-roundtrip");
  EXPECT_EQ(view["seg_for"], study->series.frame_of_reference_uid);
  EXPECT_FALSE(view["seg_frames"].empty());

  // Our readers: the folder back into a series (the SEG is skipped) equal to the described
  // one, and the SEG onto it equal to the phantom's labels.
  auto files = LoadDicomFolder(dir_);
  ASSERT_TRUE(files.ok()) << files.status();
  std::vector<std::string> skipped;
  auto read = ReadSeries(*files, &skipped);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), 1u);
  EXPECT_EQ(skipped.size(), 1u);
  const SeriesVolume& series = read->front();
  const SeriesVolume& described = study->series;
  EXPECT_EQ(series.series_instance_uid, described.series_instance_uid);
  EXPECT_EQ(series.study_instance_uid, described.study_instance_uid);
  EXPECT_EQ(series.frame_of_reference_uid, described.frame_of_reference_uid);
  ASSERT_EQ(series.slices.size(), described.slices.size());
  for (size_t k = 0; k < series.slices.size(); ++k) {
    EXPECT_EQ(series.slices[k].sop_instance_uid, described.slices[k].sop_instance_uid) << k;
  }
  const VolumeGeometry& g = series.image.geometry;
  const VolumeGeometry& d = described.image.geometry;
  ASSERT_TRUE(g.SameGrid(d));
  EXPECT_NEAR(g.row_spacing_mm, d.row_spacing_mm, 1e-9);
  EXPECT_NEAR(g.col_spacing_mm, d.col_spacing_mm, 1e-9);
  EXPECT_NEAR(g.slice_spacing_mm, d.slice_spacing_mm, 1e-9);
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(g.origin_mm[i], d.origin_mm[i], 1e-9);
    EXPECT_NEAR(g.row_direction[i], d.row_direction[i], 1e-12);
    EXPECT_NEAR(g.col_direction[i], d.col_direction[i], 1e-12);
    EXPECT_NEAR(g.slice_direction[i], d.slice_direction[i], 1e-12);
  }
  EXPECT_EQ(series.image.voxels, described.image.voxels);

  const LabelVolume expected =
      ReaderReversesSlices(subject.image.geometry) ? FlipSlices(subject.labels) : subject.labels;
  for (const SeriesVolume* source : {&series, &described}) {
    auto labels = ReadSegmentation(*study->segmentation, *source, PhantomClassNames());
    ASSERT_TRUE(labels.ok()) << labels.status();
    EXPECT_EQ(labels->labels.voxels, expected.voxels);
    EXPECT_EQ(labels->sop_instance_uid, seg_uid);
  }
}

}  // namespace
}  // namespace miseg

namespace miseg {
namespace {

double MeanUnder(const ImageVolume& image, const LabelVolume& labels, uint8_t label, int64_t k) {
  double sum = 0;
  int64_t n = 0;
  for (int64_t r = 0; r < image.geometry.rows; ++r) {
    for (int64_t c = 0; c < image.geometry.cols; ++c) {
      if (labels.at(k, r, c) == label) {
        sum += image.at(k, r, c);
        ++n;
      }
    }
  }
  return n > 0 ? sum / static_cast<double>(n) : -1;
}

// Full-size subjects, whose rows x columns are not multiples of 8 (BINARY SEG frames then
// end mid-byte): the SEG read back puts every class on the same anatomy as the phantom's
// own labels, slice by slice.
TEST(PhantomStudyAnatomyTest, LabelsReadBackCoverTheSameAnatomy) {
  RegisterDicomCodecs();
  for (int index : {0, 1, 2}) {
    const PhantomSubject subject = GeneratePhantomSubject(1, index, PhantomOptions{});
    absl::StatusOr<PhantomStudy> study = MakePhantomStudy(subject, "anatomy", true);
    ASSERT_TRUE(study.ok());
    absl::StatusOr<std::vector<SeriesVolume>> read = ReadSeries(study->image_files);
    ASSERT_TRUE(read.ok());
    absl::StatusOr<SegmentationLabels> labels =
        ReadSegmentation(*study->segmentation, read->front(), PhantomClassNames());
    ASSERT_TRUE(labels.ok());
    const bool reversed = ReaderReversesSlices(subject.image.geometry);
    const int64_t slices = subject.image.geometry.slices;
    const LabelVolume expected_labels = reversed ? FlipSlices(subject.labels) : subject.labels;
    const ImageVolume expected_image = reversed ? FlipSlices(subject.image) : subject.image;
    int64_t label_diff = 0;
    double image_diff = 0;
    for (size_t i = 0; i < expected_labels.voxels.size(); ++i) {
      label_diff += expected_labels.voxels[i] != labels->labels.voxels[i];
      image_diff = std::max<double>(image_diff, std::abs(expected_image.voxels[i] - read->front().image.voxels[i]));
    }
    EXPECT_EQ(label_diff, 0) << "subject " << index;
    EXPECT_LT(image_diff, 0.05) << "subject " << index;
    for (int64_t k = 0; k < slices; ++k) {
      const int64_t original = reversed ? slices - 1 - k : k;
      for (uint8_t label : {1, 2, 3}) {
        const double ours = MeanUnder(read->front().image, labels->labels, label, k);
        const double truth = MeanUnder(subject.image, subject.labels, label, original);
        EXPECT_NEAR(ours, truth, 1e-3 * std::max(1.0, std::abs(truth)))
            << "subject " << index << " slice " << k << " label " << int(label);
      }
    }
  }
}

}  // namespace
}  // namespace miseg

// Tests of reading series from files on disk (ReadSeriesFromFiles, CheckSeriesFiles in
// core/dicom/series_reader, IdentifyInstanceFile, ParseDicomFile): the same results and the
// same messages as reading the same bytes from memory, for every sample file Debian ships
// with pydicom (good, truncated, deflated, big-endian, compressed, not images at all), for
// phantom series with and without defects, and for cut-off files; and a checked series
// (no voxels) is enough for ReadSegmentation.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/dicom/instance_info.h"
#include "core/dicom/phantom_study.h"
#include "core/dicom/segmentation.h"
#include "core/dicom/series_reader.h"
#include "core/phantom/phantom.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const char kPydicomFiles[] = "/usr/lib/python3/dist-packages/pydicom/data/test_files";

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

class SeriesFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "miseg_series_files.XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Writes the buffers as files; returns their paths, and their names in *names.
  std::vector<std::string> Write(const std::vector<DicomBuffer>& buffers,
                                 std::vector<std::string>* names) {
    std::vector<std::string> paths;
    names->clear();
    for (size_t i = 0; i < buffers.size(); ++i) {
      const std::string path = (fs::path(dir_) / absl::StrCat(paths_written_++, ".dcm")).string();
      std::ofstream(path, std::ios::binary) << buffers[i].bytes;
      paths.push_back(path);
      names->push_back(buffers[i].name);
    }
    return paths;
  }

  // Reads the buffers from memory and from disk both ways; expects the same outcome.
  void ExpectSameAsInMemory(const std::vector<DicomBuffer>& buffers, const std::string& what) {
    SCOPED_TRACE(what);
    std::vector<std::string> names;
    const std::vector<std::string> paths = Write(buffers, &names);
    std::vector<std::string> skipped_memory, skipped_checked;
    auto memory = ReadSeries(buffers, &skipped_memory);
    auto from_files = ReadSeriesFromFiles(paths, names);
    auto checked = CheckSeriesFiles(paths, names, &skipped_checked);
    ASSERT_EQ(memory.status(), from_files.status());
    ASSERT_EQ(memory.status(), checked.status());
    if (!memory.ok()) return;
    EXPECT_EQ(skipped_memory, skipped_checked);
    ASSERT_EQ(memory->size(), from_files->size());
    ASSERT_EQ(memory->size(), checked->size());
    for (size_t v = 0; v < memory->size(); ++v) {
      const SeriesVolume& m = (*memory)[v];
      for (const SeriesVolume* other : {&(*from_files)[v], &(*checked)[v]}) {
        EXPECT_EQ(m.series_instance_uid, other->series_instance_uid);
        EXPECT_EQ(m.study_instance_uid, other->study_instance_uid);
        EXPECT_EQ(m.frame_of_reference_uid, other->frame_of_reference_uid);
        EXPECT_EQ(m.modality, other->modality);
        EXPECT_EQ(m.reference_header, other->reference_header);
        ASSERT_EQ(m.slices.size(), other->slices.size());
        for (size_t k = 0; k < m.slices.size(); ++k) {
          EXPECT_EQ(m.slices[k].sop_instance_uid, other->slices[k].sop_instance_uid);
          EXPECT_EQ(m.slices[k].frame_number, other->slices[k].frame_number);
        }
        const VolumeGeometry& a = m.image.geometry;
        const VolumeGeometry& b = other->image.geometry;
        EXPECT_TRUE(a.SameGrid(b));
        EXPECT_EQ(a.origin_mm, b.origin_mm);
        EXPECT_EQ(a.slice_direction, b.slice_direction);
        EXPECT_EQ(a.slice_spacing_mm, b.slice_spacing_mm);
        EXPECT_EQ(a.row_spacing_mm, b.row_spacing_mm);
      }
      EXPECT_TRUE((*from_files)[v].image.voxels == m.image.voxels);
      EXPECT_TRUE((*checked)[v].image.voxels.empty());
    }
  }

  std::string dir_;
  int paths_written_ = 0;
};

PhantomStudy SmallStudy(int index, bool with_segmentation) {
  const PhantomSubject subject =
      GeneratePhantomSubject(/*population_seed=*/5, index, SmallPhantomOptions());
  absl::StatusOr<PhantomStudy> study =
      MakePhantomStudy(subject, absl::StrCat("files-", index), with_segmentation);
  if (!study.ok()) std::abort();
  return *std::move(study);
}

TEST_F(SeriesFilesTest, EveryPydicomSampleReadsAsFromMemory) {
  if (!fs::exists(kPydicomFiles)) GTEST_SKIP() << kPydicomFiles << " is not installed";
  int files = 0;
  for (const auto& entry : fs::directory_iterator(kPydicomFiles)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".dcm") continue;
    ++files;
    const std::string name = entry.path().filename().string();
    ExpectSameAsInMemory({{name, ReadBytes(entry.path().string())}}, name);
    // And as identified for an upload.
    std::vector<std::string> names;
    const std::vector<std::string> paths = Write({{name, ReadBytes(entry.path().string())}},
                                                 &names);
    auto memory = IdentifyInstance({name, ReadBytes(entry.path().string())});
    auto from_file = IdentifyInstanceFile(paths[0], name);
    ASSERT_EQ(memory.status(), from_file.status()) << name;
    if (memory.ok()) {
      EXPECT_EQ(memory->sop_instance_uid, from_file->sop_instance_uid);
      EXPECT_EQ(memory->series_instance_uid, from_file->series_instance_uid);
      EXPECT_EQ(memory->modality, from_file->modality);
    }
  }
  EXPECT_GT(files, 40);
}

TEST_F(SeriesFilesTest, PhantomSeriesReadsAsFromMemory) {
  const PhantomStudy study = SmallStudy(0, false);
  ExpectSameAsInMemory(study.image_files, "whole series");
  std::vector<DicomBuffer> reversed(study.image_files.rbegin(), study.image_files.rend());
  ExpectSameAsInMemory(reversed, "reversed");
  // Two series at once.
  std::vector<DicomBuffer> two = study.image_files;
  for (const DicomBuffer& f : SmallStudy(1, false).image_files) two.push_back(f);
  ExpectSameAsInMemory(two, "two series");
}

TEST_F(SeriesFilesTest, DefectsGiveTheSameMessages) {
  const PhantomStudy study = SmallStudy(0, true);
  std::vector<DicomBuffer> gap = study.image_files;
  gap.erase(gap.begin() + 2);
  ExpectSameAsInMemory(gap, "gap");
  std::vector<DicomBuffer> twice = study.image_files;
  twice.push_back(twice[1]);
  twice.back().name = "copy.dcm";
  ExpectSameAsInMemory(twice, "same instance twice");
  std::vector<DicomBuffer> with_seg = study.image_files;
  with_seg.push_back(*study.segmentation);
  ExpectSameAsInMemory(with_seg, "with a SEG (skipped)");
  ExpectSameAsInMemory({*study.segmentation}, "a SEG alone");
  std::vector<DicomBuffer> garbage = study.image_files;
  garbage.push_back({"notes.txt", "this is not DICOM"});
  ExpectSameAsInMemory(garbage, "garbage");
  ExpectSameAsInMemory({{"empty.dcm", ""}}, "empty");
}

TEST_F(SeriesFilesTest, CutOffFilesGiveTheSameMessages) {
  const PhantomStudy study = SmallStudy(0, false);
  const std::string& whole = study.image_files[1].bytes;
  for (size_t cut : {size_t{10}, size_t{131}, size_t{200}, size_t{600}, whole.size() / 2,
                     whole.size() - 1}) {
    std::vector<DicomBuffer> files = study.image_files;
    files[1].bytes = whole.substr(0, cut);
    ExpectSameAsInMemory(files, absl::StrCat("cut at ", cut));
    std::vector<std::string> names;
    const std::vector<std::string> paths = Write({files[1]}, &names);
    EXPECT_EQ(IdentifyInstance(files[1]).status(), IdentifyInstanceFile(paths[0], names[0]).status())
        << "cut at " << cut;
  }
}

TEST_F(SeriesFilesTest, MissingFileIsUnavailable) {
  auto read = ReadSeriesFromFiles({(fs::path(dir_) / "absent.dcm").string()}, {"absent.dcm"});
  EXPECT_EQ(read.status().code(), absl::StatusCode::kUnavailable) << read.status();
  EXPECT_EQ(IdentifyInstanceFile((fs::path(dir_) / "absent.dcm").string(), "absent.dcm")
                .status()
                .code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(CheckSeriesFiles({"a"}, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SeriesFilesTest, CheckedSeriesIsEnoughForTheSegmentation) {
  const PhantomStudy study = SmallStudy(2, true);
  std::vector<std::string> names;
  const std::vector<std::string> paths = Write(study.image_files, &names);
  auto checked = CheckSeriesFiles(paths, names);
  ASSERT_TRUE(checked.ok()) << checked.status();
  ASSERT_EQ(checked->size(), 1u);
  EXPECT_FALSE(checked->front().image.consistent());
  auto from_checked =
      ReadSegmentation(*study.segmentation, checked->front(), PhantomClassNames());
  auto from_volume = ReadSegmentation(*study.segmentation, study.series, PhantomClassNames());
  ASSERT_TRUE(from_checked.ok()) << from_checked.status();
  ASSERT_TRUE(from_volume.ok()) << from_volume.status();
  EXPECT_TRUE(from_checked->labels.voxels == from_volume->labels.voxels);

  // A volume whose voxels do not match its geometry is still refused.
  SeriesVolume broken = checked->front();
  broken.image.voxels.resize(3);
  EXPECT_THAT(ReadSegmentation(*study.segmentation, broken, PhantomClassNames()).status().message(),
              HasSubstr("inconsistent"));
}

}  // namespace
}  // namespace miseg

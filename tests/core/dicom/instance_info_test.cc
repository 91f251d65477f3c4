// Tests of core/dicom/instance_info: the identity of a file, and the refusal, naming the
// attribute, of an instance whose UIDs break PS3.5 9.1 or whose text is not UTF-8.
#include "core/dicom/instance_info.h"

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcsequen.h>

#include <fstream>
#include <sstream>
#include <string>

#include "core/dicom/dicom_text.h"
#include "core/dicom/dicom_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace miseg {
namespace {

using ::testing::HasSubstr;

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

DicomBuffer Mutated(const char* file, const DcmTagKey& tag, const std::string& value) {
  DcmFileFormat ff;
  EXPECT_TRUE(ff.loadFile((std::string(MISEG_PYDICOM_TEST_FILES) + "/" + file).c_str()).good());
  EXPECT_TRUE(ff.getDataset()
                  ->putAndInsertString(tag, value.c_str(), static_cast<Uint32>(value.size()))
                  .good());
  absl::StatusOr<std::string> bytes = SerializeDicom(ff);
  EXPECT_TRUE(bytes.ok());
  return {"bad.dcm", bytes.value_or("")};
}

TEST(InstanceInfo, IdentifiesARealFile) {
  const std::string path = std::string(MISEG_PYDICOM_TEST_FILES) + "/MR_small.dcm";
  absl::StatusOr<InstanceInfo> info = IdentifyInstance({"MR_small.dcm", ReadBytes(path)});
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->modality, "MR");
  EXPECT_TRUE(ValidateUid(info->study_instance_uid).ok());
  absl::StatusOr<InstanceInfo> from_file = IdentifyInstanceFile(path, "MR_small.dcm");
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(from_file->sop_instance_uid, info->sop_instance_uid);
}

TEST(InstanceInfo, RefusesInvalidUidsNamingTheAttribute) {
  struct Case {
    DcmTagKey tag;
    std::string value;
    const char* expected;
  };
  const Case cases[] = {
      {DCM_StudyInstanceUID, "1.2.\xFF\xFE",
       "StudyInstanceUID is not a valid UID: '1.2.\\xFF\\xFE'"},
      {DCM_SeriesInstanceUID, "1.02.3", "SeriesInstanceUID is not a valid UID: '1.02.3'"},
      {DCM_SOPInstanceUID, "1..3", "SOPInstanceUID is not a valid UID"},
      {DCM_SOPInstanceUID, std::string(70, '7'), "more than 64"},
      {DCM_FrameOfReferenceUID, "abc", "FrameOfReferenceUID is not a valid UID: 'abc'"},
      {DCM_StudyInstanceUID, "", "StudyInstanceUID is missing"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<InstanceInfo> info = IdentifyInstance(Mutated("MR_small.dcm", c.tag, c.value));
    ASSERT_FALSE(info.ok()) << c.expected;
    EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(info.status().message()), HasSubstr(c.expected));
    EXPECT_THAT(std::string(info.status().message()), HasSubstr("bad.dcm"));
    EXPECT_TRUE(IsValidUtf8(info.status().message()));
  }
}

TEST(InstanceInfo, RefusesASegReferencingAnInvalidSeriesUid) {
  DcmFileFormat ff;
  DcmDataset* ds = ff.getDataset();
  ds->putAndInsertString(DCM_SOPClassUID, kSegmentationStorageUid);
  ds->putAndInsertString(DCM_SOPInstanceUID, "1.2.3.4");
  ds->putAndInsertString(DCM_StudyInstanceUID, "1.2.3");
  ds->putAndInsertString(DCM_SeriesInstanceUID, "1.2.3.5");
  DcmItem* item = nullptr;
  ASSERT_TRUE(ds->findOrCreateSequenceItem(DCM_ReferencedSeriesSequence, item, -2).good());
  item->putAndInsertString(DCM_SeriesInstanceUID, "1.2.x");
  absl::StatusOr<std::string> bytes = SerializeDicom(ff);
  ASSERT_TRUE(bytes.ok());
  absl::StatusOr<InstanceInfo> info = IdentifyInstance({"seg.dcm", *bytes});
  ASSERT_FALSE(info.ok());
  EXPECT_THAT(std::string(info.status().message()),
              HasSubstr("ReferencedSeriesSequence item 1: SeriesInstanceUID is not a valid UID"));
}

TEST(InstanceInfo, ModalityIsAlwaysUtf8) {
  absl::StatusOr<InstanceInfo> info =
      IdentifyInstance(Mutated("MR_small.dcm", DCM_Modality, "M\xC0R"));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->modality, "M\\xC0R");
}

}  // namespace
}  // namespace miseg

// Tests of core/dicom/dicom_text: the UID rule of PS3.5 9.1, SafeText on hostile bytes, and
// character set decoding of pydicom's real non-ASCII sample files (Latin-1, UTF-8, GB18030,
// Greek, Cyrillic and the ISO 2022 Japanese and Korean code extensions), compared with what
// pydicom decodes from the same files.
#include "core/dicom/dicom_text.h"

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>

#include <memory>
#include <string>

#include "core/dicom/dicom_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace miseg {
namespace {

using ::testing::HasSubstr;

const std::string kCharsetFiles = MISEG_PYDICOM_CHARSET_FILES;

TEST(DicomText, ValidatesUids) {
  EXPECT_TRUE(ValidateUid("1.2.840.10008.5.1.4.1.1.4").ok());
  EXPECT_TRUE(ValidateUid("0").ok());
  EXPECT_TRUE(ValidateUid("1.0.2").ok());
  EXPECT_TRUE(ValidateUid(std::string("1.2.3\0", 6)).ok());  // NUL padding
  EXPECT_TRUE(ValidateUid("1.2.3 ").ok());                   // space padding
  EXPECT_TRUE(ValidateUid(std::string(64, '1')).ok());
  EXPECT_FALSE(ValidateUid("").ok());
  EXPECT_FALSE(ValidateUid(std::string(65, '1')).ok());
  EXPECT_FALSE(ValidateUid("1..2").ok());
  EXPECT_FALSE(ValidateUid(".1.2").ok());
  EXPECT_FALSE(ValidateUid("1.2.").ok());
  EXPECT_FALSE(ValidateUid("1.02.3").ok());
  EXPECT_FALSE(ValidateUid("1.2.3a").ok());
  EXPECT_FALSE(ValidateUid("1.2\\1.3").ok());
  EXPECT_FALSE(ValidateUid(std::string("1.2\0.3", 6)).ok());
  EXPECT_FALSE(ValidateUid("1.2.\xC3\xA9").ok());
  EXPECT_THAT(std::string(ValidateUid("1.02").message()), HasSubstr("leading zero"));
}

TEST(DicomText, ValidatesUtf8) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("J\xC3\xA9r\xC3\xB4me \xE5\xB1\xB1 \xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("J\xE9r\xF4me"));      // Latin-1
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xE5\xB1"));          // truncated
}

TEST(DicomText, SafeTextKeepsUtf8AndEscapesTheRest) {
  EXPECT_EQ(SafeText("Buc^J\xC3\xA9r\xC3\xB4me"), "Buc^J\xC3\xA9r\xC3\xB4me");
  EXPECT_EQ(SafeText("Buc^J\xE9r\xF4me"), "Buc^J\\xE9r\\xF4me");
  EXPECT_EQ(SafeText(std::string("a\0b\n\x1B[31m\x7F", 10)), "a\\x00b\\n\\x1B[31m\\x7F");
  EXPECT_EQ(SafeText("\xC2\x9B"
                     "x"),
            "\\xC2\\x9Bx");  // C1 control
  EXPECT_EQ(SafeText("1.2\\3.4"), "1.2\\3.4");
  // Cut at a character boundary, with an ellipsis.
  EXPECT_EQ(SafeText("abcdef", 4), "abcd\xE2\x80\xA6");
  EXPECT_EQ(SafeText("ab\xE5\xB1\xB1", 4), "ab\xE2\x80\xA6");
  EXPECT_EQ(SafeText("abcd", 4), "abcd");
  // Whatever goes in, valid UTF-8 comes out.
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  EXPECT_TRUE(IsValidUtf8(SafeText(all, 10000)));
  EXPECT_TRUE(IsValidUtf8(SafeText(all + all, 17)));
}

TEST(DicomText, DecodesByCharacterSet) {
  EXPECT_EQ(*DecodeDicomString("Buc^J\xE9r\xF4me", "ISO_IR 100"), "Buc^J\xC3\xA9r\xC3\xB4me");
  EXPECT_EQ(*DecodeDicomString("Buc^J\xC3\xA9r\xC3\xB4me", "ISO_IR 192"),
            "Buc^J\xC3\xA9r\xC3\xB4me");
  EXPECT_EQ(*DecodeDicomString("plain", ""), "plain");
  // Declared UTF-8, holding Latin-1: refused, so the caller escapes it.
  EXPECT_FALSE(DecodeDicomString("Buc^J\xE9r\xF4me", "ISO_IR 192").ok());
  EXPECT_FALSE(DecodeDicomString("x\xE9", "NOT A CHARSET").ok());
}

std::unique_ptr<DcmFileFormat> Load(const std::string& name) {
  auto file = std::make_unique<DcmFileFormat>();
  EXPECT_TRUE(file->loadFile((kCharsetFiles + "/" + name).c_str()).good()) << name;
  return file;
}

struct CharsetCase {
  const char* file;
  const char* patient_name;  // as pydicom decodes it
};

class DicomTextCharsets : public ::testing::TestWithParam<CharsetCase> {};

TEST_P(DicomTextCharsets, DecodesPatientNameAsPydicomDoes) {
  std::unique_ptr<DcmFileFormat> file = Load(GetParam().file);
  DcmDataset& ds = *file->getDataset();
  EXPECT_EQ(DicomText(ds, DCM_PatientName), GetParam().patient_name) << GetParam().file;
}

INSTANTIATE_TEST_SUITE_P(
    PydicomFiles, DicomTextCharsets,
    ::testing::Values(
        CharsetCase{"chrFren.dcm", "Buc^J\xC3\xA9r\xC3\xB4me"},  // ISO_IR 100
        CharsetCase{"chrGerm.dcm",
                    "\xC3\x84neas^R\xC3\xBC"
                    "diger"},  // ISO_IR 100
        CharsetCase{"chrX1.dcm", "Wang^XiaoDong=\xE7\x8E\x8B^\xE5\xB0\x8F\xE6\x9D\xB1="},  // 192
        CharsetCase{"chrX2.dcm",
                    "Wang^XiaoDong=\xE7\x8E\x8B^\xE5\xB0\x8F\xE4\xB8\x9C="},  // GB18030
        CharsetCase{"chrGreek.dcm",
                    "\xCE\x94\xCE\xB9\xCE\xBF\xCE\xBD\xCF\x85\xCF\x83\xCE\xB9\xCE\xBF\xCF\x82"},
        CharsetCase{"chrH31.dcm",  // ISO 2022 IR 87 (Japanese)
                    "Yamada^Tarou=\xE5\xB1\xB1\xE7\x94\xB0^\xE5\xA4\xAA\xE9\x83\x8E="
                    "\xE3\x82\x84\xE3\x81\xBE\xE3\x81\xA0^\xE3\x81\x9F\xE3\x82\x8D\xE3\x81\x86"},
        CharsetCase{"chrI2.dcm",  // ISO 2022 IR 149 (Korean)
                    "Hong^Gildong=\xE6\xB4\xAA^\xE5\x90\x89\xE6\xB4\x9E="
                    "\xED\x99\x8D^\xEA\xB8\xB8\xEB\x8F\x99"},
        CharsetCase{"chrH32.dcm",  // ISO 2022 IR 13 + 87 (half-width katakana)
                    "\xEF\xBE\x94\xEF\xBE\x8F\xEF\xBE\x80\xEF\xBE\x9E^"
                    "\xEF\xBE\x80\xEF\xBE\x9B\xEF\xBD\xB3="
                    "\xE5\xB1\xB1\xE7\x94\xB0^\xE5\xA4\xAA\xE9\x83\x8E="
                    "\xE3\x82\x84\xE3\x81\xBE\xE3\x81\xA0^\xE3\x81\x9F\xE3\x82\x8D\xE3\x81\x86"}));

TEST(DicomText, DeclaredOneCharsetHoldingAnotherIsEscaped) {
  // chrFren holds Latin-1 bytes; declare UTF-8 instead.
  std::unique_ptr<DcmFileFormat> file = Load("chrFren.dcm");
  DcmDataset& ds = *file->getDataset();
  ASSERT_TRUE(ds.putAndInsertString(DCM_SpecificCharacterSet, "ISO_IR 192").good());
  const std::string name = DicomText(ds, DCM_PatientName);
  EXPECT_EQ(name, "Buc^J\\xE9r\\xF4me");
  // No character set at all (the default repertoire), with bytes above 0x7F: escaped too.
  ASSERT_TRUE(ds.findAndDeleteElement(DCM_SpecificCharacterSet).good());
  EXPECT_EQ(DicomText(ds, DCM_PatientName), "Buc^J\\xE9r\\xF4me");
}

TEST(DicomText, DicomUidNamesTheAttribute) {
  DcmDataset ds;
  ASSERT_TRUE(ds.putAndInsertString(DCM_StudyInstanceUID, "1.2.3").good());
  ASSERT_TRUE(ds.putAndInsertString(DCM_SeriesInstanceUID, "1.2.\xFF\x01").good());
  EXPECT_EQ(*DicomUid(ds, DCM_StudyInstanceUID, true), "1.2.3");
  absl::StatusOr<std::string> bad = DicomUid(ds, DCM_SeriesInstanceUID, true);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("SeriesInstanceUID is not a valid UID: '1.2.\\xFF\\x01'"));
  EXPECT_TRUE(IsValidUtf8(bad.status().message()));
  EXPECT_EQ(*DicomUid(ds, DCM_FrameOfReferenceUID, false), "");
  EXPECT_THAT(std::string(DicomUid(ds, DCM_SOPInstanceUID, true).status().message()),
              HasSubstr("SOPInstanceUID is missing"));
}

}  // namespace
}  // namespace miseg

// Tests of server/utf8_check: the walk finds a non-UTF-8 string at any depth (nested
// messages, repeated fields), ignores bytes fields, and the debug check aborts on one.
#include "server/edge/utf8_check.h"

#include "gtest/gtest.h"
#include "miseg/v1/miseg.pb.h"

namespace miseg {
namespace {

TEST(Utf8Check, FindsInvalidStringsAtAnyDepth) {
  v1::UploadResponse response;
  response.add_stored()->set_study_instance_uid("1.2.3");
  v1::InstanceResult* result = response.add_results();
  result->set_reason("J\xC3\xA9r\xC3\xB4me is fine");
  EXPECT_EQ(FindInvalidUtf8Field(response), std::nullopt);

  response.add_stored()->set_study_instance_uid("1.2.\xFF");
  EXPECT_EQ(FindInvalidUtf8Field(response), "stored[1].study_instance_uid");
  response.mutable_stored(1)->set_study_instance_uid("1.2.4");
  response.add_results()->set_reason("J\xE9r\xF4me");
  EXPECT_EQ(FindInvalidUtf8Field(response), "results[1].reason");
}

TEST(Utf8Check, IgnoresBytesFields) {
  v1::SegmentResponse response;
  response.set_segmentation_chunk(std::string("\xFF\xFE\x00\x80", 4));
  EXPECT_EQ(FindInvalidUtf8Field(response), std::nullopt);
  response.mutable_summary()->add_classes()->set_class_name("\xC0\xAF");
  EXPECT_EQ(FindInvalidUtf8Field(response), "summary.classes[0].class_name");
}

#ifndef NDEBUG
TEST(Utf8CheckDeathTest, DebugBuildsAbortOnInvalidUtf8) {
  v1::Study study;
  study.set_modality("M\xFFR");
  EXPECT_DEATH(DebugCheckUtf8(study, "GetStudy"), "modality is not valid UTF-8");
}
#endif

}  // namespace
}  // namespace miseg

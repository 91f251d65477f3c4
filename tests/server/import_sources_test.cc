// The import sources file (--import_sources), import queries and WADO-RS multipart replies,
// in process: every malformed input is refused with a message naming the problem.
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/dicom/net/http_client.h"
#include "server/import/import_sources.h"
#include "server/import/source_client.h"
#include "tests/server/child_process.h"

namespace miseg {
namespace {

using ::testing::HasSubstr;

TEST(ImportSources, ParsesDicomWebAndDicomSourcesWithTheirCredentials) {
  testing::TempDir dir;
  const std::string token = dir.path() + "/token", basic = dir.path() + "/basic";
  std::ofstream(token) << "s3cret\n";
  std::ofstream(basic) << "user:pw\n";
  absl::StatusOr<std::vector<ImportSourceSpec>> sources = ParseImportSources(
      R"({"sources": [
        {"name": "orthanc", "dicomweb": {"url": "http://h:8042/dicom-web/",
                                         "bearerTokenFile": ")" + token + R"("}},
        {"name": "basic", "dicomweb": {"url": "https://h/dw", "basicAuthFile": ")" + basic +
          R"("}, "timeoutSeconds": 5},
        {"name": "pacs", "dicom": {"aeTitle": "PACS", "host": "10.0.0.1", "port": 104}}],
       "callingAeTitle": "MISEG2"})",
      "sources.json");
  ASSERT_TRUE(sources.ok()) << sources.status();
  ASSERT_EQ(sources->size(), 3u);
  EXPECT_TRUE((*sources)[0].is_dicomweb);
  EXPECT_EQ((*sources)[0].dicomweb.url, "http://h:8042/dicom-web");
  EXPECT_EQ((*sources)[0].dicomweb.bearer_token, "s3cret");
  EXPECT_EQ((*sources)[1].dicomweb.basic_auth, "user:pw");
  EXPECT_EQ((*sources)[1].timeout.count(), 5);
  EXPECT_FALSE((*sources)[2].is_dicomweb);
  EXPECT_EQ((*sources)[2].Address(), "PACS@10.0.0.1:104");
  EXPECT_EQ((*sources)[2].dicom.calling_ae_title, "MISEG2");
}

TEST(ImportSources, RefusesBadFilesNamingTheProblem) {
  testing::TempDir dir;
  const std::string empty = dir.path() + "/empty";
  std::ofstream(empty) << "\n";
  const std::pair<std::string, std::string> cases[] = {
      {"not json", "sources.json"},
      {R"({"sources": []})", "no sources"},
      {R"({"sourcez": []})", "sourcez"},
      {R"({"sources": [{"name": "a"}]})", "neither dicomweb nor dicom"},
      {R"({"sources": [{"name": "a", "dicomweb": {"url": "x"}}, {"name": "a", "dicomweb": {"url": "http://x"}}]})",
       "needs an http(s) url"},
      {R"({"sources": [{"name": "a", "dicomweb": {"url": "http://x"}}, {"name": "a", "dicomweb": {"url": "http://x"}}]})",
       "unique ('a')"},
      {R"({"sources": [{"name": "a", "dicomweb": {"url": "http://x", "bearerTokenFile": "/nonexistent"}}]})",
       "bearer token file"},
      {R"({"sources": [{"name": "a", "dicomweb": {"url": "http://x", "bearerTokenFile": ")" + empty + R"("}}]})",
       "is empty"},
      {R"({"sources": [{"name": "a", "dicom": {"aeTitle": "THIS_TITLE_IS_TOO_LONG", "host": "h", "port": 1}}]})",
       "1 to 16 characters"},
      {R"({"sources": [{"name": "a", "dicom": {"aeTitle": "P", "host": "h", "port": 70000}}]})",
       "host and a port"},
      {R"({"sources": [{"name": "a", "dicomweb": {"url": "http://x"}, "timeoutSeconds": -1}]})",
       "timeoutSeconds"},
  };
  for (const auto& [text, expected] : cases) {
    absl::StatusOr<std::vector<ImportSourceSpec>> sources = ParseImportSources(text, "sources.json");
    ASSERT_FALSE(sources.ok()) << text;
    EXPECT_EQ(sources.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(sources.status().message(), HasSubstr(expected)) << text;
    EXPECT_THAT(sources.status().message(), HasSubstr("sources.json")) << text;
  }
}

TEST(ImportQuery, ParsesKnownKeysAndRefusesOthers) {
  auto keys = ParseImportQuery("Modality=MR&StudyDate=20260101-");
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_EQ((*keys)[0], std::make_pair(std::string("Modality"), std::string("MR")));
  EXPECT_EQ((*keys)[1].second, "20260101-");
  for (const char* bad : {"", "Modality", "Modality=", "Foo=1", "PatientID=a\nb"}) {
    EXPECT_EQ(ParseImportQuery(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(Multipart, SplitsPartsAndRefusesTruncatedBodies) {
  const std::string body =
      "--b1\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--b1\r\n"
      "Content-Type: application/dicom\r\nContent-Length: 5\r\n\r\nTW\r\nO\r\n--b1--\r\n";
  auto parts = SplitMultipart("multipart/related; type=\"application/dicom\"; boundary=b1", body);
  ASSERT_TRUE(parts.ok()) << parts.status();
  ASSERT_EQ(parts->size(), 2u);
  EXPECT_EQ((*parts)[0], "ONE");
  EXPECT_EQ((*parts)[1], "TW\r\nO");
  EXPECT_FALSE(SplitMultipart("multipart/related; boundary=\"b1\"",
                              body.substr(0, body.size() - 8)).ok());
  EXPECT_FALSE(SplitMultipart("application/dicom", body).ok());
  EXPECT_FALSE(SplitMultipart("multipart/related", body).ok());
}

}  // namespace
}  // namespace miseg

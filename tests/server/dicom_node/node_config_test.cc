// The DICOM node's configuration: defaults filled, and each kind of mistake refused with a
// message that names it, before the server starts.
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/dicom_node/dicom_node.h"

namespace miseg {
namespace {

using ::testing::HasSubstr;

class NodeConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "miseg-config-XXXXXX").string();
    dir_ = mkdtemp(pattern.data());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  absl::StatusOr<server::DicomNodeConfig> Load(const std::string& json) {
    const std::string path = dir_ + "/node.json";
    std::ofstream(path) << json;
    return LoadDicomNodeConfig(path);
  }
  std::string dir_;
};

constexpr char kPeers[] = R"("peers": [{"aeTitle": "PACS", "host": "10.0.0.5"}])";
constexpr char kDestinations[] =
    R"("destinations": [{"name": "pacs", "dicom": {"aeTitle": "PACS", "host": "10.0.0.5", "port": 104}}])";
constexpr char kRoutes[] =
    R"("routes": [{"segmentDataset": "cardiac", "deliverTo": ["pacs"]}])";

TEST_F(NodeConfigTest, DefaultsAreFilledIn) {
  absl::StatusOr<server::DicomNodeConfig> config =
      Load(absl::StrCat("{", kPeers, ",", kDestinations, ",", kRoutes, "}"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->ae_title(), "MISEG");
  EXPECT_EQ(config->port(), 11112);
  EXPECT_EQ(config->bind_address(), "0.0.0.0");
  EXPECT_EQ(config->quiet_period_seconds(), 10);
  EXPECT_EQ(config->max_associations(), 8);
  EXPECT_EQ(config->max_retry_interval_seconds(), 300);
  // Port 0, written out, asks for any free port.
  config = Load(absl::StrCat(R"({"port": 0,)", kPeers, ",", kDestinations, ",", kRoutes, "}"));
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->port(), 0);
}

TEST_F(NodeConfigTest, EachMistakeIsRefusedByName) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", ""},
      {absl::StrCat(R"({"unknownKey": 1,)", kPeers, ",", kDestinations, ",", kRoutes, "}"), ""},
      {absl::StrCat("{", kDestinations, ",", kRoutes, "}"), "no peers"},
      {absl::StrCat(R"({"aeTitle": "A_TITLE_LONGER_THAN_16",)", kPeers, ",", kDestinations, ",", kRoutes, "}"),
       "AE title"},
      {absl::StrCat(R"({"peers": [{"aeTitle": "PACS"}],)", kDestinations, ",", kRoutes, "}"), "no host"},
      {absl::StrCat(R"({"port": 70000,)", kPeers, ",", kDestinations, ",", kRoutes, "}"), "port"},
      {absl::StrCat("{", kPeers, ",", kDestinations, R"(, "routes": [])", "}"), "no routes"},
      {absl::StrCat("{", kPeers, ",", kDestinations, R"(, "routes": [{"deliverTo": ["pacs"]}])", "}"),
       "must store or segment"},
      {absl::StrCat("{", kPeers, ",", kDestinations,
                    R"(, "routes": [{"storeDataset": "d", "deliverTo": ["pacs"]}])", "}"),
       "only when it segments"},
      {absl::StrCat("{", kPeers, ",", kDestinations,
                    R"(, "routes": [{"segmentDataset": "d", "deliverTo": ["nowhere"]}])", "}"),
       "unknown destination 'nowhere'"},
      {absl::StrCat("{", kPeers, R"(, "destinations": [{"name": "x"}],)", kRoutes, "}"),
       "neither dicom nor stowRs"},
      {absl::StrCat("{", kPeers,
                    R"(, "destinations": [{"name": "pacs", "dicom": {"aeTitle": "P", "host": "h"}}],)",
                    kRoutes, "}"),
       "needs a host and a port"},
      {absl::StrCat("{", kPeers,
                    R"(, "destinations": [{"name": "pacs", "stowRs": {"url": "ftp://x"}}],)", kRoutes, "}"),
       "http(s) URL"},
      {absl::StrCat("{", kPeers,
                    R"(, "destinations": [{"name": "pacs", "stowRs": {"url": "http://x", "bearerTokenFile": "/nonexistent/token"}}],)",
                    kRoutes, "}"),
       "/nonexistent/token"},
      {absl::StrCat("{", kPeers,
                    R"(, "destinations": [{"name": "pacs", "dicom": {"aeTitle": "P", "host": "h", "port": 1}},
                                          {"name": "pacs", "dicom": {"aeTitle": "P", "host": "h", "port": 1}}],)",
                    kRoutes, "}"),
       "unique"},
  };
  for (const auto& [json, message] : cases) {
    absl::StatusOr<server::DicomNodeConfig> config = Load(json);
    EXPECT_FALSE(config.ok()) << json;
    if (config.ok()) continue;
    EXPECT_NE(config.status().code(), absl::StatusCode::kOk);
    EXPECT_THAT(std::string(config.status().message()), HasSubstr(message)) << json;
  }
  EXPECT_EQ(LoadDicomNodeConfig(dir_ + "/missing.json").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace miseg

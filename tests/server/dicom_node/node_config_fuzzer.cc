// libFuzzer target for the DICOM node's configuration (server/dicom_node/node_config.h,
// ParseDicomNodeConfig, which LoadDicomNodeConfig runs on the file's text): any bytes must
// give a checked configuration or InvalidArgument naming the file, never a crash. A
// configuration that is accepted must be one the node can run with as it is: every value in
// the range the parser promises, the numbers the node derives from it defined (UBSan checks
// the conversions below, written as the node writes them), and printing it back to JSON
// and parsing that must give the same configuration.
//
// The seeds (tests/server/dicom_node/node_config_fuzzer_seeds) name
// /tmp/miseg-fuzz-node-config/token.txt as a STOW-RS bearer token file; the fuzzer writes it
// at start. Built with clang's -fsanitize=fuzzer,address,undefined by
// tests/server/CMakeLists.txt (miseg-fuzz-node-config).
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/dicom_node/node_config.h"

namespace {

constexpr char kSource[] = "fuzz-node.json";
constexpr char kScratch[] = "/tmp/miseg-fuzz-node-config";

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

bool ValidAeTitle(const std::string& title) {
  if (title.empty() || title.size() > 16) return false;
  for (char c : title) {
    if (c < 0x20 || c > 0x7e || c == '\\') return false;
  }
  return true;
}

void CheckUsable(const miseg::server::DicomNodeConfig& config) {
  Check(ValidAeTitle(config.ae_title()));
  Check(config.has_port() && config.port() >= 0 && config.port() <= 65535);
  Check(config.max_associations() > 0);
  Check(!config.bind_address().empty());
  // What DicomNode does with the two durations (RoutingLoop, DeliveryLoop): with NaN,
  // infinity or a huge value these conversions are undefined, which UBSan reports.
  Check(config.quiet_period_seconds() > 0 && config.quiet_period_seconds() <= 86400);
  Check(config.max_retry_interval_seconds() > 0 && config.max_retry_interval_seconds() <= 86400);
  const int64_t quiet_ms = static_cast<int64_t>(config.quiet_period_seconds() * 1000);
  Check(quiet_ms >= 0);
  for (int attempts : {0, 1, 20}) {
    const double backoff =
        std::min(config.max_retry_interval_seconds(), std::ldexp(1.0, std::min(attempts, 20)));
    const int64_t now_ms = int64_t{1} << 41;  // about now, in Unix ms
    const int64_t retry_at = now_ms + static_cast<int64_t>(backoff * 1000);
    Check(retry_at > 0);
  }
  Check(!config.peers().empty());
  for (const miseg::server::AllowedPeer& peer : config.peers()) {
    Check(ValidAeTitle(peer.ae_title()) && !peer.host().empty());
  }
  std::set<std::string> names;
  for (const miseg::server::Destination& d : config.destinations()) {
    Check(!d.name().empty() && names.insert(d.name()).second);
    if (d.has_dicom()) {
      Check(ValidAeTitle(d.dicom().ae_title()) && !d.dicom().host().empty());
      Check(d.dicom().port() > 0 && d.dicom().port() <= 65535);
    } else {
      Check(d.has_stow_rs());
      Check(absl::StartsWith(d.stow_rs().url(), "http://") ||
            absl::StartsWith(d.stow_rs().url(), "https://"));
    }
  }
  Check(!config.routes().empty());
  for (const miseg::server::Route& r : config.routes()) {
    Check(!r.store_dataset().empty() || !r.segment_dataset().empty());
    Check(r.deliver_to().empty() || !r.segment_dataset().empty());
    for (const std::string& to : r.deliver_to()) Check(names.count(to) == 1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // A fixed path (the seeds name it); every run writes the same bytes there.
  mkdir(kScratch, 0755);
  std::ofstream(std::string(kScratch) + "/token.txt") << "stow-bearer-token\n";
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<miseg::server::DicomNodeConfig> config =
      miseg::ParseDicomNodeConfig(text, kSource);
  if (!config.ok()) {
    // Bad input is InvalidArgument naming the file, nothing else.
    Check(absl::IsInvalidArgument(config.status()));
    Check(absl::StartsWith(config.status().message(), kSource));
    return 0;
  }
  CheckUsable(*config);

  // The accepted configuration, printed and parsed again, is the same one.
  std::string printed;
  Check(google::protobuf::util::MessageToJsonString(*config, &printed).ok());
  absl::StatusOr<miseg::server::DicomNodeConfig> again =
      miseg::ParseDicomNodeConfig(printed, kSource);
  Check(again.ok());
  Check(google::protobuf::util::MessageDifferencer::Equals(*config, *again));
  return 0;
}

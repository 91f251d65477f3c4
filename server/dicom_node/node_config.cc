// The DICOM node's configuration: JSON (the proto3 mapping of node_config.proto) to a
// checked DicomNodeConfig with its defaults filled.
#include "server/dicom_node/node_config.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "server/store/file_store.h"

namespace miseg {
namespace {

// The longest quiet period and retry interval: a day.
constexpr double kMaxSeconds = 86400;

absl::Status ValidateAeTitle(const std::string& title, const std::string& what) {
  if (title.empty() || title.size() > 16) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": an AE title has 1 to 16 characters"));
  }
  for (char c : title) {
    if (c < 0x20 || c > 0x7e || c == '\\') {
      return absl::InvalidArgumentError(absl::StrCat(what, ": AE title '", title,
                                                     "' holds a character DICOM does not allow"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<server::DicomNodeConfig> LoadDicomNodeConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseDicomNodeConfig(text, path);
}

namespace {

// Defaults for what the file leaves out, then the node's own settings checked.
absl::Status ApplyDefaultsAndCheckNode(server::DicomNodeConfig& config, const std::string& path) {
  if (config.ae_title().empty()) config.set_ae_title("MISEG");
  if (!config.has_port()) config.set_port(11112);
  if (config.quiet_period_seconds() <= 0) config.set_quiet_period_seconds(10);
  if (config.max_associations() <= 0) config.set_max_associations(8);
  if (config.max_retry_interval_seconds() <= 0) config.set_max_retry_interval_seconds(300);
  if (config.bind_address().empty()) config.set_bind_address("0.0.0.0");
  // NaN, infinities and huge values would pass the defaults above and make the node's
  // millisecond conversions undefined.
  if (!(config.quiet_period_seconds() <= kMaxSeconds)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": quietPeriodSeconds must be a number of seconds up to ", kMaxSeconds));
  }
  if (!(config.max_retry_interval_seconds() <= kMaxSeconds)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": maxRetryIntervalSeconds must be a number of seconds up to ", kMaxSeconds));
  }
  RETURN_IF_ERROR(ValidateAeTitle(config.ae_title(), path));
  if (config.port() < 0 || config.port() > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": port out of range"));
  }
  return absl::OkStatus();
}

absl::Status CheckPeers(const server::DicomNodeConfig& config, const std::string& path) {
  if (config.peers().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no peers: nobody could connect"));
  }
  for (const server::AllowedPeer& peer : config.peers()) {
    RETURN_IF_ERROR(ValidateAeTitle(peer.ae_title(), absl::StrCat(path, ": peer")));
    if (peer.host().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": peer ", peer.ae_title(), " has no host"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckDestination(const server::Destination& d, const std::string& path) {
  if (d.has_dicom()) {
    RETURN_IF_ERROR(ValidateAeTitle(d.dicom().ae_title(), absl::StrCat(path, ": destination ", d.name())));
    if (d.dicom().host().empty() || d.dicom().port() <= 0 || d.dicom().port() > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": destination ", d.name(), " needs a host and a port"));
    }
  } else if (d.has_stow_rs()) {
    if (d.stow_rs().url().rfind("http://", 0) != 0 && d.stow_rs().url().rfind("https://", 0) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": destination ", d.name(), " needs an http(s) URL"));
    }
    if (!d.stow_rs().bearer_token_file().empty()) {
      // Read once at load, so a missing file stops the server rather than every delivery.
      absl::StatusOr<std::string> token = ReadFileToString(d.stow_rs().bearer_token_file());
      if (!token.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": destination ", d.name(),
                                                       ": bearer token file: ",
                                                       token.status().message()));
      }
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": destination ", d.name(), " is neither dicom nor stowRs"));
  }
  return absl::OkStatus();
}

// Destination names are unique; every route stores or segments and delivers to known ones.
absl::Status CheckDestinationsAndRoutes(const server::DicomNodeConfig& config,
                                        const std::string& path) {
  std::set<std::string> names;
  for (const server::Destination& d : config.destinations()) {
    if (d.name().empty() || !names.insert(d.name()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": destination names must be present and unique ('", d.name(), "')"));
    }
    RETURN_IF_ERROR(CheckDestination(d, path));
  }
  if (config.routes().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no routes: nothing would happen"));
  }
  for (const server::Route& r : config.routes()) {
    if (r.store_dataset().empty() && r.segment_dataset().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": a route must store or segment (storeDataset, segmentDataset)"));
    }
    if (!r.deliver_to().empty() && r.segment_dataset().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": a route delivers SEGs only when it segments (segmentDataset)"));
    }
    for (const std::string& to : r.deliver_to()) {
      if (!names.count(to)) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": route delivers to unknown destination '", to, "'"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<server::DicomNodeConfig> ParseDicomNodeConfig(const std::string& text,
                                                            const std::string& path) {
  server::DicomNodeConfig config;
  google::protobuf::util::JsonParseOptions options;
  const auto parsed = google::protobuf::util::JsonStringToMessage(text, &config, options);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", parsed.message().as_string()));
  }
  RETURN_IF_ERROR(ApplyDefaultsAndCheckNode(config, path));
  RETURN_IF_ERROR(CheckPeers(config, path));
  RETURN_IF_ERROR(CheckDestinationsAndRoutes(config, path));
  return config;
}

}  // namespace miseg

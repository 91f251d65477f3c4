// The import sources file: JSON (the proto3 mapping of import_sources.proto) to checked
// source specifications with their credentials read.
#include "server/import/import_sources.h"

#include <cmath>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "server/import/import_sources.pb.h"
#include "server/store/file_store.h"

namespace miseg {
namespace {

constexpr double kMaxTimeoutSeconds = 3600;

absl::Status Bad(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::Status CheckAeTitle(const std::string& title, const std::string& path,
                          const std::string& what) {
  if (title.empty() || title.size() > 16) {
    return Bad(path, absl::StrCat(what, ": an AE title has 1 to 16 characters"));
  }
  for (char c : title) {
    if (c < 0x20 || c > 0x7e || c == '\\') {
      return Bad(path, absl::StrCat(what, ": AE title '", title,
                                    "' holds a character DICOM does not allow"));
    }
  }
  return absl::OkStatus();
}

// A credentials file's text without surrounding white space: one line, not empty.
absl::StatusOr<std::string> ReadSecret(const std::string& file, const std::string& path,
                                       const std::string& what) {
  absl::StatusOr<std::string> text = ReadFileToString(file);
  if (!text.ok()) {
    return Bad(path, absl::StrCat(what, ": ", text.status().message()));
  }
  std::string secret(absl::StripAsciiWhitespace(*text));
  if (secret.empty()) return Bad(path, absl::StrCat(what, ": ", file, " is empty"));
  if (secret.find_first_of("\r\n") != std::string::npos) {
    return Bad(path, absl::StrCat(what, ": ", file, " must hold one line"));
  }
  return secret;
}

absl::StatusOr<DicomWebSourceSpec> CheckDicomWeb(const server::DicomWebSource& in,
                                                 const std::string& path,
                                                 const std::string& what) {
  DicomWebSourceSpec out;
  out.url = std::string(absl::StripSuffix(in.url(), "/"));
  if (!absl::StartsWith(out.url, "http://") && !absl::StartsWith(out.url, "https://")) {
    return Bad(path, absl::StrCat(what, " needs an http(s) url (the DICOMweb root)"));
  }
  if (!in.bearer_token_file().empty() && !in.basic_auth_file().empty()) {
    return Bad(path, absl::StrCat(what, ": bearerTokenFile or basicAuthFile, not both"));
  }
  if (!in.bearer_token_file().empty()) {
    ASSIGN_OR_RETURN(out.bearer_token, ReadSecret(in.bearer_token_file(), path,
                                                  absl::StrCat(what, ": bearer token file")));
  }
  if (!in.basic_auth_file().empty()) {
    ASSIGN_OR_RETURN(out.basic_auth, ReadSecret(in.basic_auth_file(), path,
                                                absl::StrCat(what, ": basic auth file")));
    if (out.basic_auth.find(':') == std::string::npos) {
      return Bad(path, absl::StrCat(what, ": the basic auth file must hold user:password"));
    }
  }
  return out;
}

absl::StatusOr<ImportSourceSpec> CheckSource(const server::ImportSourceConfig& in,
                                             const std::string& calling_ae,
                                             const std::string& path) {
  ImportSourceSpec out;
  out.name = in.name();
  const std::string what = absl::StrCat("source '", in.name(), "'");
  const double timeout = in.timeout_seconds() == 0 ? 60 : in.timeout_seconds();
  if (!(timeout >= 1 && timeout <= kMaxTimeoutSeconds)) {
    return Bad(path, absl::StrCat(what, ": timeoutSeconds must be 1 to ", kMaxTimeoutSeconds));
  }
  out.timeout = std::chrono::seconds(static_cast<int64_t>(std::ceil(timeout)));
  if (in.has_dicomweb()) {
    out.is_dicomweb = true;
    ASSIGN_OR_RETURN(out.dicomweb, CheckDicomWeb(in.dicomweb(), path, what));
    return out;
  }
  if (!in.has_dicom()) return Bad(path, absl::StrCat(what, " is neither dicomweb nor dicom"));
  RETURN_IF_ERROR(CheckAeTitle(in.dicom().ae_title(), path, what));
  if (in.dicom().host().empty() || in.dicom().port() <= 0 || in.dicom().port() > 65535) {
    return Bad(path, absl::StrCat(what, " needs a host and a port (1 to 65535)"));
  }
  out.dicom = {in.dicom().ae_title(), in.dicom().host(), in.dicom().port(), calling_ae};
  return out;
}

}  // namespace

std::string ImportSourceSpec::Address() const {
  if (is_dicomweb) return dicomweb.url;
  return absl::StrCat(dicom.ae_title, "@", dicom.host, ":", dicom.port);
}

absl::StatusOr<std::vector<ImportSourceSpec>> LoadImportSources(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseImportSources(text, path);
}

absl::StatusOr<std::vector<ImportSourceSpec>> ParseImportSources(const std::string& text,
                                                                 const std::string& path) {
  server::ImportSourcesConfig config;
  const auto parsed =
      google::protobuf::util::JsonStringToMessage(text, &config, {});
  if (!parsed.ok()) return Bad(path, parsed.message().as_string());
  const std::string calling_ae =
      config.calling_ae_title().empty() ? "MISEG" : config.calling_ae_title();
  RETURN_IF_ERROR(CheckAeTitle(calling_ae, path, "callingAeTitle"));
  if (config.sources().empty()) return Bad(path, "no sources");
  std::vector<ImportSourceSpec> out;
  std::set<std::string> names;
  for (const server::ImportSourceConfig& source : config.sources()) {
    if (source.name().empty() || !names.insert(source.name()).second) {
      return Bad(path, absl::StrCat("source names must be present and unique ('", source.name(),
                                    "')"));
    }
    ASSIGN_OR_RETURN(ImportSourceSpec spec, CheckSource(source, calling_ae, path));
    out.push_back(std::move(spec));
  }
  return out;
}

}  // namespace miseg

// The import sources file (--import_sources): JSON in the proto3 mapping of
// import_sources.proto, read and checked before the server starts, in the manner of the
// DICOM node's file. Credentials are read from their files here, once, so that a missing or
// malformed file stops the server instead of failing every import.
#ifndef MISEG_SERVER_IMPORT_IMPORT_SOURCES_H_
#define MISEG_SERVER_IMPORT_IMPORT_SOURCES_H_

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace miseg {

struct DicomWebSourceSpec {
  std::string url;  // the DICOMweb root, without a trailing slash
  std::string bearer_token;  // empty: none
  std::string basic_auth;    // "user:password"; empty: none
};

struct DicomPeerSourceSpec {
  std::string ae_title, host;
  int port = 104;
  std::string calling_ae_title = "MISEG";
};

struct ImportSourceSpec {
  std::string name;
  bool is_dicomweb = false;  // else a DICOM peer
  DicomWebSourceSpec dicomweb;
  DicomPeerSourceSpec dicom;
  std::chrono::seconds timeout{60};
  // Where it is, for listings and messages: the URL, or AE@host:port. No credentials.
  std::string Address() const;
};

// InvalidArgument naming the file and the problem (unknown key, no sources, a name twice,
// a source that is neither dicomweb nor dicom, a URL that is not http(s), a bad AE title or
// port, an unreadable or empty credentials file, basic auth without "user:password").
absl::StatusOr<std::vector<ImportSourceSpec>> LoadImportSources(const std::string& path);
// The same from the file's text; `path` names it in messages.
absl::StatusOr<std::vector<ImportSourceSpec>> ParseImportSources(const std::string& text,
                                                                 const std::string& path);

}  // namespace miseg

#endif  // MISEG_SERVER_IMPORT_IMPORT_SOURCES_H_

// The DICOM node's configuration (--dicom_node_config): JSON in the proto3 mapping of
// node_config.proto, read and checked before the server starts. Protobuf and Abseil only,
// so the parser is fuzzed on its own (tests/server/dicom_node/node_config_fuzzer.cc).
#ifndef MISEG_SERVER_DICOM_NODE_NODE_CONFIG_H_
#define MISEG_SERVER_DICOM_NODE_NODE_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "server/dicom_node/node_config.pb.h"

namespace miseg {

// Reads and checks a JSON configuration; fills the defaults. InvalidArgument naming the
// problem (unknown destination in a route, bad AE title, unreadable token file).
absl::StatusOr<server::DicomNodeConfig> LoadDicomNodeConfig(const std::string& path);
// The same from the file's text; `path` names it in messages.
absl::StatusOr<server::DicomNodeConfig> ParseDicomNodeConfig(const std::string& text,
                                                            const std::string& path);

}  // namespace miseg

#endif  // MISEG_SERVER_DICOM_NODE_NODE_CONFIG_H_

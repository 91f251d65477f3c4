// Server credentials from PEM files, checked before gRPC sees them, so a wrong file stops
// the server with a message naming it (gRPC itself would only fail to listen).
#ifndef MISEG_SERVER_EDGE_TLS_H_
#define MISEG_SERVER_EDGE_TLS_H_

#include <memory>
#include <string>

#include <grpcpp/security/server_credentials.h>

#include "absl/status/statusor.h"

namespace miseg {

// All empty: insecure credentials. cert and key together enable TLS; client_ca requires
// clients to present a certificate it signed. InvalidArgument for a missing half, a file
// that holds no PEM certificate (or key), or a key that does not match the certificate.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> LoadServerCredentials(
    const std::string& cert_file, const std::string& key_file, const std::string& client_ca_file);

// host:port with a literal loopback host: 127.0.0.0/8, [::1] or localhost.
bool IsLoopbackAddress(const std::string& address);

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_TLS_H_

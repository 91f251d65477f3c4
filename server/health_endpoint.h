// A second, plain-text gRPC listener that serves grpc.health.v1.Health alone (no miseg
// service, no reflection), for probes that cannot speak TLS: Kubernetes' grpc probes, or a
// load balancer's health check. miseg-server's --health_listen starts it; its status
// follows the main server's (SERVING while it serves, NOT_SERVING once it shuts down).
// It tells nothing but "serving or not", so it may listen beyond loopback without TLS.
#ifndef MISEG_SERVER_HEALTH_ENDPOINT_H_
#define MISEG_SERVER_HEALTH_ENDPOINT_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace miseg {

class HealthEndpoint {
 public:
  // Listens on address (host:port; port 0 = any free), NOT_SERVING until SetServing(true).
  static absl::StatusOr<std::unique_ptr<HealthEndpoint>> Start(const std::string& address);
  ~HealthEndpoint();

  void SetServing(bool serving);
  void Shutdown();
  int port() const { return port_; }

 private:
  HealthEndpoint() = default;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace miseg

#endif  // MISEG_SERVER_HEALTH_ENDPOINT_H_

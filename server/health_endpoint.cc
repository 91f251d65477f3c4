#include "server/health_endpoint.h"

#include <chrono>

#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"

namespace miseg {

absl::StatusOr<std::unique_ptr<HealthEndpoint>> HealthEndpoint::Start(const std::string& address) {
  // The default health service is process-wide configuration, enabled by the main server
  // too; each grpc::Server gets its own instance of it.
  grpc::EnableDefaultHealthCheckService(true);
  std::unique_ptr<HealthEndpoint> endpoint(new HealthEndpoint());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &endpoint->port_);
  endpoint->server_ = builder.BuildAndStart();
  if (!endpoint->server_ || endpoint->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, " (--health_listen)"));
  }
  endpoint->SetServing(false);
  return endpoint;
}

HealthEndpoint::~HealthEndpoint() { Shutdown(); }

void HealthEndpoint::SetServing(bool serving) {
  if (server_) server_->GetHealthCheckService()->SetServingStatus(serving);
}

void HealthEndpoint::Shutdown() {
  if (!server_) return;
  SetServing(false);
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  server_.reset();
}

}  // namespace miseg

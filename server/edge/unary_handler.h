// The one way a unary RPC is handled at the edge (every service uses it).
#ifndef MISEG_SERVER_EDGE_UNARY_HANDLER_H_
#define MISEG_SERVER_EDGE_UNARY_HANDLER_H_

#include <grpcpp/grpcpp.h>

#include "server/edge/rpc_edge.h"
#include "server/edge/services.h"
#include "server/edge/utf8_check.h"

namespace miseg {

// Authorises, runs the body on this gRPC thread (these are short store reads and writes),
// records the metrics and converts the status, all through RpcCall.
// In debug builds, a response whose string fields are not all UTF-8 aborts (utf8_check.h).
template <typename Body>
grpc::ServerUnaryReactor* HandleUnary(const ServiceDeps& deps, grpc::CallbackServerContext* context,
                                      const google::protobuf::Message* response,
                                      const char* method, Permission permission, Body&& body) {
  RpcCall call(deps, context, method, permission);
  const absl::Status status = call.authorization().ok() ? body() : call.authorization();
  if (status.ok()) DebugCheckUtf8(*response, method);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(call.Complete(status));
  return reactor;
}

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_UNARY_HANDLER_H_

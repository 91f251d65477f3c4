// The gRPC services of miseg.v1 over the domain: authentication and authorisation, request
// validation, and the translation of absl::Status into grpc::Status (only here, at the
// edge). Every RPC is counted and timed in the metrics by method and code.
#ifndef MISEG_SERVER_SERVICES_H_
#define MISEG_SERVER_SERVICES_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "core/dicom/series_reader.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "server/auth.h"
#include "server/node/node_store.h"
#include "server/event_hub.h"
#include "server/job_runner.h"
#include "server/metrics.h"
#include "server/segmentation_engine.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {

struct ServiceDeps {
  Store* store = nullptr;
  FileStore* files = nullptr;
  JobRunner* runner = nullptr;
  SegmentationEngine* engine = nullptr;
  ServerMetrics* metrics = nullptr;
  const Authenticator* auth = nullptr;
  EventHub* hub = nullptr;
  NodeStore* node_store = nullptr;  // null when the DICOM node is not configured
  const std::atomic<bool>* stopping = nullptr;  // set at SIGTERM: streams end
  int64_t max_request_bytes = int64_t{2} << 30;  // one Upload or Segment stream
  int64_t max_files = 100000;
  SeriesReaderLimits reader_limits;
};

// All the services of miseg.v1; register each with the builder.
std::vector<std::unique_ptr<grpc::Service>> MakeServices(const ServiceDeps& deps);

}  // namespace miseg

#endif  // MISEG_SERVER_SERVICES_H_

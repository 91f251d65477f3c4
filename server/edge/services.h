// The gRPC services of miseg.v1 over the domain, on gRPC's callback API: authentication and
// authorisation, request validation, and the translation of absl::Status into grpc::Status
// (only at this edge, in rpc_edge.h). Every RPC is counted and timed in the metrics by
// method and code. No handler blocks a gRPC thread on long work: uploads are checked and
// committed on the ingest pool, segmentations run on the engine's threads, and watchers
// are pushed events by the event hub.
#ifndef MISEG_SERVER_EDGE_SERVICES_H_
#define MISEG_SERVER_EDGE_SERVICES_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "core/dicom/series_reader.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "server/edge/auth.h"
#include "server/dicom_node/node_store.h"
#include "server/jobs/event_hub.h"
#include "server/jobs/job_runner.h"
#include "server/metrics/metrics.h"
#include "server/edge/rpc_edge.h"
#include "server/domain/work_pool.h"
#include "server/domain/segmentation_engine.h"
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
  WorkPool* ingest_pool = nullptr;      // checks and commits finished uploads
  StreamSlots* stream_slots = nullptr;  // limits concurrent Upload and Segment streams
  IdleWatchdog* watchdog = nullptr;     // cuts streams whose client stalls
  int64_t max_request_bytes = int64_t{2} << 30;  // one Upload or Segment stream
  int64_t max_files = 100000;
  SeriesReaderLimits reader_limits;
  std::string version;  // miseg's, written into exported models' model.json
};

// The dataset a request names: InvalidArgument when the name is empty, NotFound when unknown.
absl::StatusOr<DatasetRecord> FindDataset(const ServiceDeps& deps, const std::string& name);

// The WorkerService (server/edge/worker_service.cc).
std::unique_ptr<grpc::Service> MakeWorkerService(const ServiceDeps& deps);

// All the services of miseg.v1 (callback services); register each with the builder.
std::vector<std::unique_ptr<grpc::Service>> MakeServices(const ServiceDeps& deps);

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_SERVICES_H_

// The streaming RPCs as callback reactors: Upload (chunks to staged files, checked and
// committed on the ingest pool), Segment (input staged the same way, the engine's threads
// segment it, the SEG streams back from its file one chunk at a time) and WatchJob
// (stored events replayed page by page, then live events pushed by the event hub).
// Memory per stream is bounded by a constant: one request message, one 1 MiB chunk, one
// page of events or a bounded queue of live ones.
#ifndef MISEG_SERVER_EDGE_STREAM_REACTORS_H_
#define MISEG_SERVER_EDGE_STREAM_REACTORS_H_

#include <grpcpp/grpcpp.h>

#include "miseg/v1/miseg.grpc.pb.h"
#include "server/edge/services.h"

namespace miseg {

grpc::ServerReadReactor<v1::UploadRequest>* StartUpload(const ServiceDeps& deps,
                                                        grpc::CallbackServerContext* context,
                                                        v1::UploadResponse* response);
grpc::ServerBidiReactor<v1::SegmentRequest, v1::SegmentResponse>* StartSegment(
    const ServiceDeps& deps, grpc::CallbackServerContext* context);
grpc::ServerWriteReactor<v1::JobEvent>* StartWatchJob(const ServiceDeps& deps,
                                                      grpc::CallbackServerContext* context,
                                                      const v1::WatchJobRequest* request);

// Live events a watcher may hold before it falls back to reading the store.
inline constexpr size_t kMaxQueuedLiveEvents = 256;

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_STREAM_REACTORS_H_

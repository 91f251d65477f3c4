// The gRPC edge shared by every service: authentication, the per-call metrics and the one
// absl::Status -> grpc::Status mapping (RpcCall), the limit on concurrent upload and
// segment streams (StreamSlots), the cut of streams whose client stops making progress
// (IdleWatchdog), and the base of every streaming reactor (EdgeReactor), which ends a call
// exactly once whichever thread gets there first and deletes itself only when gRPC and
// any work it handed to the server's threads are both done with it.
#ifndef MISEG_SERVER_EDGE_RPC_EDGE_H_
#define MISEG_SERVER_EDGE_RPC_EDGE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/edge/auth.h"
#include "server/metrics/metrics.h"

namespace miseg {

struct ServiceDeps;

grpc::Status ToGrpcStatus(const absl::Status& status);

// One call at the edge: authorised at construction; Complete records the call's metrics
// (method, code, seconds) and converts its status. Unary handlers and reactors share it.
class RpcCall {
 public:
  RpcCall(const ServiceDeps& deps, const grpc::CallbackServerContext* context, const char* method,
          Permission permission);
  const absl::Status& authorization() const { return authorization_; }
  grpc::Status Complete(const absl::Status& status) const;
  const char* method() const { return method_; }

 private:
  ServerMetrics* metrics_;
  const char* method_;
  std::chrono::steady_clock::time_point start_;
  absl::Status authorization_;
};

// At most `limit` upload and segment streams at once; beyond it RESOURCE_EXHAUSTED, so a
// crowd of clients queues on its side instead of in the server's memory.
class StreamSlots {
 public:
  explicit StreamSlots(int limit) : limit_(limit) {}
  absl::Status Acquire(const char* method);
  void Release();
  int in_use();

 private:
  const int limit_;
  absl::Mutex mutex_;
  int in_use_ ABSL_GUARDED_BY(mutex_) = 0;
};

// Something the watchdog can cut: a stream waiting on its client.
class IdleCuttable {
 public:
  virtual ~IdleCuttable() = default;
  // Ends the call with the given status; may run on the watchdog's thread.
  virtual void CutIdle(const absl::Status& status) = 0;
};

// Cuts a stream whose client makes no progress: counting only the time the server waits on
// the client (a read, or a write the client does not take), at least `min_progress_bytes`
// must arrive (or a write be taken) within every `timeout` of waiting, so a client sending
// one byte a second cannot hold a slot forever, while time the server spends working (a
// commit, a segmentation) or a quiet job's watcher waiting for events never counts.
//
// Thread safety: all methods may be called from any thread. A watched stream calls Forget
// (in OnDone) before it is deleted; after Forget returns the watchdog never touches it.
class IdleWatchdog {
 public:
  struct Entry;
  IdleWatchdog(std::chrono::milliseconds timeout, int64_t min_progress_bytes);
  ~IdleWatchdog();

  std::shared_ptr<Entry> Watch(IdleCuttable* stream);
  // The server starts (true) or stops (false) waiting on the client.
  void WaitingOnClient(Entry& entry, bool waiting);
  // Bytes the client sent.
  void Progress(Entry& entry, int64_t bytes);
  // A new window: the client took a write, or the server finished work of its own.
  void Rearm(Entry& entry);
  void Forget(Entry& entry);

 private:
  void Loop();
  void CutIdleStreams();

  const std::chrono::milliseconds timeout_;
  const int64_t min_progress_bytes_;
  absl::Mutex mutex_;
  std::vector<std::weak_ptr<Entry>> entries_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_RPC_EDGE_H_

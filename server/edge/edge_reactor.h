// The base of every streaming reactor (Upload, Segment, WatchJob). It authorises the call,
// takes a stream slot where the method needs one, registers with the idle watchdog and the
// active-streams gauge, and ends the call exactly once (End) from whichever thread gets
// there first: a reaction, a server thread finishing work, the watchdog, the event hub.
// The reactor deletes itself when gRPC is done with it (OnDone) and every hold taken for
// work on the server's threads is released, so that work never touches a deleted reactor.
//
// Thread safety: End, Hold/Unhold and the watchdog hooks may be called from any thread.
#ifndef MISEG_SERVER_EDGE_EDGE_REACTOR_H_
#define MISEG_SERVER_EDGE_EDGE_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/edge/rpc_edge.h"
#include "miseg/v1/miseg.pb.h"
#include "server/edge/services.h"

namespace miseg {

template <typename GrpcReactor>
class EdgeReactor : public GrpcReactor, public IdleCuttable {
 public:
  struct Options {
    const char* method;
    Permission permission;
    bool needs_slot;  // counts against --max_streams
  };

  EdgeReactor(const ServiceDeps& deps, grpc::CallbackServerContext* context, Options options)
      : deps_(deps), context_(context), call_(deps, context, options.method, options.permission) {
    deps_.metrics->AddActiveStreams(options.method, 1);
    if (!call_.authorization().ok()) {
      start_status_ = call_.authorization();
      return;
    }
    if (options.needs_slot) {
      start_status_ = deps_.stream_slots->Acquire(options.method);
      has_slot_ = start_status_.ok();
    }
    if (start_status_.ok()) watch_ = deps_.watchdog->Watch(this);
  }

  // Ends the call with `status` unless it has ended already; true if this call ended it.
  bool End(const absl::Status& status) {
    absl::MutexLock lock(&end_mutex_);
    if (ended_) return false;
    ended_ = true;
    this->Finish(call_.Complete(status));
    return true;
  }
  bool ended() {
    absl::MutexLock lock(&end_mutex_);
    return ended_;
  }

  void OnCancel() override { End(absl::CancelledError("the client cancelled the call")); }
  // A read or write in flight then completes with ok = false.
  void CutIdle(const absl::Status& status) override { End(status); }

  void OnDone() override {
    if (watch_) deps_.watchdog->Forget(*watch_);
    if (has_slot_) deps_.stream_slots->Release();
    deps_.metrics->AddActiveStreams(call_.method(), -1);
    BeforeRelease();
    Unhold();
  }

 protected:
  // Keeps the reactor alive for work on another thread; each Hold needs one Unhold.
  void Hold() { holds_.fetch_add(1); }
  void Unhold() {
    if (holds_.fetch_sub(1) == 1) delete this;
  }
  // Runs in OnDone before the reactor may be deleted: undo subscriptions here.
  virtual void BeforeRelease() {}

  // Not OK when authorisation or the stream limit refused the call: End with it.
  const absl::Status& start_status() const { return start_status_; }

  void WaitingOnClient(bool waiting) {
    if (watch_) deps_.watchdog->WaitingOnClient(*watch_, waiting);
  }
  void Progress(int64_t bytes) {
    if (watch_) deps_.watchdog->Progress(*watch_, bytes);
  }
  void Rearm() {
    if (watch_) deps_.watchdog->Rearm(*watch_);
  }

  const ServiceDeps deps_;
  grpc::CallbackServerContext* const context_;

 private:
  RpcCall call_;
  absl::Status start_status_;
  bool has_slot_ = false;
  std::shared_ptr<IdleWatchdog::Entry> watch_;
  std::atomic<int> holds_{1};  // gRPC's, released in OnDone
  absl::Mutex end_mutex_;
  bool ended_ ABSL_GUARDED_BY(end_mutex_) = false;
};

// The reading side shared by Upload and Segment: a header message, then file chunks, one
// read in flight at a time (so gRPC's flow control holds the client back while a chunk is
// written to disk), then the end of the stream.
template <typename GrpcReactor, typename Request>
class ChunkedInputReactor : public EdgeReactor<GrpcReactor> {
 public:
  using Base = EdgeReactor<GrpcReactor>;
  using Base::Base;

  void OnReadDone(bool ok) override {
    this->WaitingOnClient(false);
    if (this->ended()) return;
    if (!ok) {
      EndOfStream();
      return;
    }
    absl::Status taken = header_seen_ ? TakeChunkMessage() : TakeHeader(request_);
    header_seen_ = true;
    if (!taken.ok()) {
      this->End(taken);  // staged files go with the reactor
      return;
    }
    ReadNext();
  }

 protected:
  // Call last in the derived constructor: reads may complete on another thread at once.
  void Begin() {
    if (!this->start_status().ok()) {
      this->End(this->start_status());
      return;
    }
    ReadNext();
  }
  virtual absl::Status TakeHeader(const Request& first) = 0;
  virtual absl::Status TakeChunk(const v1::FileChunk& chunk) = 0;
  // The client half-closed the stream (or cancelled it).
  virtual void EndOfStream() = 0;

 private:
  void ReadNext() {
    this->WaitingOnClient(true);
    this->StartRead(&request_);
  }
  absl::Status TakeChunkMessage() {
    if (!request_.has_chunk()) {
      return absl::InvalidArgumentError("only the first message may carry the header");
    }
    this->Progress(static_cast<int64_t>(request_.chunk().data().size()));
    return TakeChunk(request_.chunk());
  }

  Request request_;  // the one message in flight
  bool header_seen_ = false;
};

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_EDGE_REACTOR_H_

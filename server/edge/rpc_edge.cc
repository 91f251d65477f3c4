#include "server/edge/rpc_edge.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "server/edge/services.h"

namespace miseg {
namespace {

using Clock = std::chrono::steady_clock;

std::string AuthorizationOf(const grpc::CallbackServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share their numbering (both are the canonical
  // codes of google.rpc.Code).
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

RpcCall::RpcCall(const ServiceDeps& deps, const grpc::CallbackServerContext* context,
                 const char* method, Permission permission)
    : metrics_(deps.metrics), method_(method), start_(Clock::now()) {
  absl::StatusOr<Principal> principal = deps.auth->Authorize(AuthorizationOf(context), permission);
  authorization_ = principal.status();
}

grpc::Status RpcCall::Complete(const absl::Status& status) const {
  metrics_->ObserveRpc(method_, absl::StatusCodeToString(status.code()),
                       std::chrono::duration<double>(Clock::now() - start_).count());
  return ToGrpcStatus(status);
}

absl::Status StreamSlots::Acquire(const char* method) {
  absl::MutexLock lock(&mutex_);
  if (in_use_ >= limit_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server is at its limit of ", limit_,
        " concurrent upload and segment streams (--max_streams); retry ", method, " later"));
  }
  ++in_use_;
  return absl::OkStatus();
}

void StreamSlots::Release() {
  absl::MutexLock lock(&mutex_);
  --in_use_;
}

int StreamSlots::in_use() {
  absl::MutexLock lock(&mutex_);
  return in_use_;
}

// ------------------------------------------------------------------------------------------

struct IdleWatchdog::Entry {
  absl::Mutex mutex;
  IdleCuttable* stream ABSL_GUARDED_BY(mutex);
  // The current window: time spent waiting on the client and bytes moved since the last
  // progress. Atomics: the stream's threads write them, the watchdog reads them.
  std::atomic<int64_t> waiting_since_ms{-1};  // -1: the server is not waiting on the client
  std::atomic<int64_t> waited_ms{0};
  std::atomic<int64_t> window_bytes{0};
};

IdleWatchdog::IdleWatchdog(std::chrono::milliseconds timeout, int64_t min_progress_bytes)
    : timeout_(timeout), min_progress_bytes_(min_progress_bytes), thread_([this] { Loop(); }) {}

IdleWatchdog::~IdleWatchdog() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  thread_.join();
}

std::shared_ptr<IdleWatchdog::Entry> IdleWatchdog::Watch(IdleCuttable* stream) {
  auto entry = std::make_shared<Entry>();
  {
    absl::MutexLock lock(&entry->mutex);
    entry->stream = stream;
  }
  absl::MutexLock lock(&mutex_);
  entries_.push_back(entry);
  return entry;
}

void IdleWatchdog::WaitingOnClient(Entry& entry, bool waiting) {
  const int64_t now = NowMs();
  if (waiting) {
    entry.waiting_since_ms.store(now);
    return;
  }
  const int64_t since = entry.waiting_since_ms.exchange(-1);
  if (since >= 0) entry.waited_ms.fetch_add(now - since);
}

void IdleWatchdog::Progress(Entry& entry, int64_t bytes) {
  if (entry.window_bytes.fetch_add(bytes) + bytes >= min_progress_bytes_) Rearm(entry);
}

void IdleWatchdog::Rearm(Entry& entry) {
  entry.window_bytes.store(0);
  entry.waited_ms.store(0);
  if (entry.waiting_since_ms.load() >= 0) entry.waiting_since_ms.store(NowMs());
}

void IdleWatchdog::Forget(Entry& entry) {
  absl::MutexLock lock(&entry.mutex);
  entry.stream = nullptr;
}

void IdleWatchdog::Loop() {
  const auto period = std::max(std::chrono::milliseconds(20), timeout_ / 10);
  while (true) {
    {
      absl::MutexLock lock(&mutex_);
      // Wakes at once on shutdown, else after one period.
      mutex_.AwaitWithTimeout(absl::Condition(&stopping_), absl::FromChrono(period));
      if (stopping_) return;
    }
    CutIdleStreams();
  }
}

void IdleWatchdog::CutIdleStreams() {
  std::vector<std::shared_ptr<Entry>> live;
  {
    absl::MutexLock lock(&mutex_);
    std::vector<std::weak_ptr<Entry>> kept;
    for (std::weak_ptr<Entry>& weak : entries_) {
      if (std::shared_ptr<Entry> entry = weak.lock()) {
        live.push_back(entry);
        kept.push_back(std::move(weak));
      }
    }
    entries_ = std::move(kept);
  }
  const int64_t now = NowMs();
  for (const std::shared_ptr<Entry>& entry : live) {
    const int64_t since = entry->waiting_since_ms.load();
    if (since < 0 || entry->waited_ms.load() + (now - since) < timeout_.count()) continue;
    absl::MutexLock lock(&entry->mutex);
    if (entry->stream == nullptr) continue;
    entry->stream->CutIdle(absl::DeadlineExceededError(
        absl::StrCat("the client made no progress for ", timeout_.count() / 1000.0, " s (under ",
                     min_progress_bytes_ / 1024,
                     " KiB moved; --stream_idle_timeout_seconds): the server "
                     "closed the stream and kept nothing of it")));
    entry->stream = nullptr;  // cut once
  }
}

}  // namespace miseg

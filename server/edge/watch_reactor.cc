// WatchJob: replays the job's stored events page by page, then follows it with the events
// the event hub pushes, with no gap and no duplicate across the switch. The reactor
// subscribes before its first read of the store, so an event stored after that read is
// among the pushed ones; pushed events it already sent (by sequence) are skipped. A watcher
// that falls behind (its queue of pushed events full, or a sequence missing) drops the
// queue and reads the store again from its last sequence: memory stays bounded whatever
// the reader's speed.
#include <deque>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "server/edge/convert.h"
#include "server/edge/edge_reactor.h"
#include "server/edge/enum_maps.h"
#include "server/jobs/event_hub.h"
#include "server/edge/stream_reactors.h"
#include "server/edge/utf8_check.h"

namespace miseg {
namespace {

constexpr int64_t kPage = 200;

bool IsTerminalEvent(const v1::JobEvent& event) {
  return event.has_state() && IsTerminal(event.state().state());
}

class WatchReactor final : public EdgeReactor<grpc::ServerWriteReactor<v1::JobEvent>>,
                           public EventSubscriber {
 public:
  WatchReactor(const ServiceDeps& deps, grpc::CallbackServerContext* context,
               const v1::WatchJobRequest& request)
      : EdgeReactor(deps, context, {"WatchJob", Permission::kRead, /*needs_slot=*/false}),
        request_(request),
        last_sequence_(request.after_sequence()) {
    absl::Status begun = Begin();
    if (!begun.ok()) {
      End(begun);
      return;
    }
    Pump(/*may_read_store=*/true);
  }

  void OnWriteDone(bool ok) override {
    WaitingOnClient(false);
    Rearm();  // the client took the event
    if (!ok) {
      End(absl::CancelledError("the client went away"));
      return;
    }
    bool finish = false;
    {
      absl::MutexLock lock(&mutex_);
      busy_ = false;
      finish = finish_after_write_;
    }
    if (finish) {
      End(absl::OkStatus());
      return;
    }
    Pump(/*may_read_store=*/true);
  }

  // On the publishing thread, with the hub's lock held: queue and start a write, never read
  // the store here.
  void OnJobEvent(int64_t step, const v1::JobEvent& event) override {
    {
      absl::MutexLock lock(&mutex_);
      if (live_.size() >= kMaxQueuedLiveEvents) {
        live_.clear();
        behind_ = true;
      } else {
        live_.emplace_back(step, event);
      }
    }
    Pump(/*may_read_store=*/false);
  }

  void OnHubClosed() override {
    End(absl::UnavailableError("the server is shutting down; reconnect to follow"));
  }

 private:
  enum class Action { kIdle, kWrite, kReadStore, kEnd };

  absl::Status Begin() {
    RETURN_IF_ERROR(start_status());
    RETURN_IF_ERROR(deps_.store->GetJob(request_.id()).status());
    if (request_.after_sequence() < 0 || request_.from_step() < 0) {
      return absl::InvalidArgumentError("after_sequence and from_step must not be negative");
    }
    if (!deps_.hub->Subscribe(request_.id(), this)) {
      return absl::UnavailableError("the server is shutting down; reconnect to follow");
    }
    subscribed_ = true;
    return absl::OkStatus();
  }

  void BeforeRelease() override {
    if (subscribed_) deps_.hub->Unsubscribe(request_.id(), this);
  }

  // Drives the stream until a write is in flight, nothing is left to send, or it ends.
  void Pump(bool may_read_store) {
    while (!ended()) {
      Action action;
      {
        absl::MutexLock lock(&mutex_);
        if (busy_) return;
        action = Choose();
        if (action == Action::kReadStore && !may_read_store) {
          ScheduleStoreRead();
          return;
        }
        if (action == Action::kWrite || action == Action::kReadStore) busy_ = true;
      }
      switch (action) {
        case Action::kIdle:
          return;
        case Action::kEnd:
          End(absl::OkStatus());
          return;
        case Action::kWrite:
          DebugCheckUtf8(writing_, "WatchJob");
          WaitingOnClient(true);
          StartWrite(&writing_);
          return;
        case Action::kReadStore:
          if (absl::Status read = ReadStorePage(); !read.ok()) {
            End(read);
            return;
          }
          break;
      }
    }
  }

  // A store read needed while on the hub's thread: done on the ingest pool instead.
  void ScheduleStoreRead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    busy_ = true;  // nobody else pumps until the pool has
    Hold();
    deps_.ingest_pool->Schedule([this] {
      {
        absl::MutexLock lock(&mutex_);
        busy_ = false;
      }
      Pump(/*may_read_store=*/true);
      Unhold();
    });
  }

  Action Choose() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (from_store_) return ChooseFromStore();
    if (behind_) return FallBehind();
    while (!live_.empty()) {
      auto [step, event] = std::move(live_.front());
      live_.pop_front();
      if (event.sequence() <= last_sequence_) continue;  // already sent from the store
      if (event.sequence() != last_sequence_ + 1) return FallBehind();
      last_sequence_ = event.sequence();
      if (step < request_.from_step()) continue;
      return Write(std::move(event));
    }
    return Action::kIdle;
  }

  Action ChooseFromStore() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (!page_.empty()) {
      v1::JobEvent event = std::move(page_.front());
      page_.pop_front();
      return Write(std::move(event));
    }
    if (!store_caught_up_) return Action::kReadStore;
    if (request_.no_follow()) return Action::kEnd;
    if (job_terminal_) {
      // Terminal, but its state event is not stored (or was filtered by from_step).
      return Write(std::move(*job_terminal_), /*last=*/true);
    }
    if (behind_) return FallBehind();
    from_store_ = false;  // caught up: follow the pushed events from here
    return Choose();
  }

  Action FallBehind() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    live_.clear();
    behind_ = false;
    from_store_ = true;
    store_caught_up_ = false;
    return Action::kReadStore;
  }

  Action Write(v1::JobEvent event, bool last = false) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    finish_after_write_ = last || IsTerminalEvent(event);
    writing_ = std::move(event);
    return Action::kWrite;
  }

  // One page of stored events after last_sequence_ (busy_ is held, the mutex is not).
  absl::Status ReadStorePage() {
    int64_t after;
    {
      absl::MutexLock lock(&mutex_);
      after = last_sequence_;
    }
    // The job's state is read before its events: an event stored before a terminal state
    // is then always among those listed.
    ASSIGN_OR_RETURN(JobRecord job, deps_.store->GetJob(request_.id()));
    ASSIGN_OR_RETURN(std::vector<JobEventRecord> records,
                     deps_.store->ListJobEvents(job.id, after, /*from_step=*/0, kPage));
    std::deque<v1::JobEvent> page;
    for (const JobEventRecord& record : records) {
      after = record.sequence;
      if (record.step < request_.from_step()) continue;
      v1::JobEvent& event = page.emplace_back();
      if (!event.ParseFromString(record.payload)) {
        return absl::DataLossError(absl::StrCat("event ", record.sequence, " is corrupt"));
      }
      event.set_sequence(record.sequence);
    }
    absl::MutexLock lock(&mutex_);
    page_ = std::move(page);
    last_sequence_ = after;
    store_caught_up_ = static_cast<int64_t>(records.size()) < kPage;
    job_terminal_.reset();
    if (store_caught_up_ && IsTerminal(ToProto(job.state))) {
      job_terminal_ = TerminalEventOf(job);
      for (const v1::JobEvent& event : page_) {
        if (IsTerminalEvent(event)) job_terminal_.reset();
      }
    }
    busy_ = false;
    return absl::OkStatus();
  }

  static v1::JobEvent TerminalEventOf(const JobRecord& job) {
    v1::JobEvent event;
    event.set_job_id(job.id);
    event.set_unix_ms(job.finished_unix_ms);
    event.mutable_state()->set_state(ToProto(job.state));
    event.mutable_state()->set_step(job.step);
    event.mutable_state()->set_message(job.error);
    return event;
  }

  const v1::WatchJobRequest request_;
  bool subscribed_ = false;  // constant after construction

  absl::Mutex mutex_;
  // A write or a store read in flight: only its owner touches writing_ and drives the stream.
  bool busy_ ABSL_GUARDED_BY(mutex_) = false;
  v1::JobEvent writing_;
  int64_t last_sequence_ ABSL_GUARDED_BY(mutex_);  // the last event sent or skipped
  bool from_store_ ABSL_GUARDED_BY(mutex_) = true;
  bool store_caught_up_ ABSL_GUARDED_BY(mutex_) = false;
  std::deque<v1::JobEvent> page_ ABSL_GUARDED_BY(mutex_);
  std::optional<v1::JobEvent> job_terminal_ ABSL_GUARDED_BY(mutex_);
  std::deque<std::pair<int64_t, v1::JobEvent>> live_ ABSL_GUARDED_BY(mutex_);
  bool behind_ ABSL_GUARDED_BY(mutex_) = false;
  bool finish_after_write_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace

grpc::ServerWriteReactor<v1::JobEvent>* StartWatchJob(const ServiceDeps& deps,
                                                      grpc::CallbackServerContext* context,
                                                      const v1::WatchJobRequest* request) {
  return new WatchReactor(deps, context, *request);
}

}  // namespace miseg

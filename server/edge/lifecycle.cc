// Dataset and model deletes, and the files they free.
#include "server/edge/lifecycle.h"

#include <filesystem>
#include <set>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/common/status_macros.h"
#include "server/edge/convert.h"
#include "server/jobs/event_hub.h"
#include "server/log.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;

int64_t RemoveCounted(const std::string& path) {
  std::error_code ec;
  const std::uintmax_t size = fs::file_size(path, ec);
  if (ec) return 0;
  if (!fs::remove(path, ec) || ec) return 0;
  return static_cast<int64_t>(size);
}

// Follows jobs until each has published its terminal state event (the hub pushes events
// after they are stored, so one missed here is one that came before Follow: the caller
// learns that from RequestCancel and calls Done itself).
class TerminalWaiter final : public EventSubscriber {
 public:
  explicit TerminalWaiter(EventHub* hub) : hub_(hub) {}
  ~TerminalWaiter() override {
    for (int64_t job_id : followed_) hub_->Unsubscribe(job_id, this);
  }

  void Follow(int64_t job_id) {
    {
      absl::MutexLock lock(&mutex_);
      pending_.insert(job_id);
    }
    if (hub_->Subscribe(job_id, this)) {
      followed_.push_back(job_id);
    } else {
      OnHubClosed();
    }
  }
  void Done(int64_t job_id) {
    absl::MutexLock lock(&mutex_);
    pending_.erase(job_id);
  }
  // True when every followed job ended within timeout.
  bool Wait(absl::Duration timeout) {
    absl::MutexLock lock(&mutex_);
    mutex_.AwaitWithTimeout(absl::Condition(this, &TerminalWaiter::Settled), timeout);
    return pending_.empty();
  }

  void OnJobEvent(int64_t, const v1::JobEvent& event) override {
    if (event.has_state() && IsTerminal(event.state().state())) Done(event.job_id());
  }
  void OnHubClosed() override {
    absl::MutexLock lock(&mutex_);
    closed_ = true;
  }

 private:
  bool Settled() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return pending_.empty() || closed_; }

  EventHub* const hub_;
  std::vector<int64_t> followed_;  // this thread's only
  absl::Mutex mutex_;
  std::set<int64_t> pending_ ABSL_GUARDED_BY(mutex_);
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
};

// Cancels the dataset's queued and running jobs and waits for them to stop. Returns how
// many it cancelled.
absl::StatusOr<int64_t> CancelJobsOf(const ServiceDeps& deps, const DatasetRecord& dataset,
                                     absl::Duration wait) {
  ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, deps.store->ListJobs(dataset.id));
  TerminalWaiter waiter(deps.hub);
  int64_t cancelled = 0;
  for (const JobRecord& job : jobs) {
    if (job.state != StoredJobState::kQueued && job.state != StoredJobState::kRunning) continue;
    waiter.Follow(job.id);
    absl::StatusOr<JobRecord> requested = deps.store->RequestCancel(job.id);
    if (!requested.ok()) {  // it finished meanwhile
      waiter.Done(job.id);
      continue;
    }
    ++cancelled;
    if (requested->state == StoredJobState::kCancelled) {
      v1::JobEvent event;
      event.mutable_state()->set_state(v1::JOB_STATE_CANCELLED);
      event.mutable_state()->set_step(requested->step);
      event.mutable_state()->set_message("cancelled: its dataset is being deleted");
      (void)deps.runner->AppendEvent(job.id, requested->step, event);
      waiter.Done(job.id);
    } else {
      deps.runner->CancelRunning(job.id);
    }
  }
  if (!waiter.Wait(wait)) {
    return absl::DeadlineExceededError(
        absl::StrCat("the jobs of dataset '", dataset.name, "' did not stop within ",
                     absl::FormatDuration(wait), "; nothing was deleted: try again"));
  }
  deps.runner->RefreshJobGauges();
  return cancelled;
}

}  // namespace

std::pair<int64_t, int64_t> RemoveUnreferencedObjects(Store& store, FileStore& files,
                                                      const std::vector<std::string>& hashes,
                                                      NodeStore* node_store) {
  if (hashes.empty()) return {0, 0};
  absl::WriterMutexLock no_writers(&ObjectReferenceMutex());
  absl::StatusOr<std::vector<std::string>> referenced = store.ReferencedObjects();
  if (!referenced.ok()) return {0, 0};  // unsure: keep them (the startup sweep decides)
  std::set<std::string> keep(referenced->begin(), referenced->end());
  if (node_store != nullptr) {
    absl::StatusOr<std::vector<std::string>> node_objects = node_store->ReferencedObjects();
    if (!node_objects.ok()) return {0, 0};
    keep.insert(node_objects->begin(), node_objects->end());
  }
  int64_t objects = 0, bytes = 0;
  for (const std::string& hash : hashes) {
    if (keep.count(hash)) continue;
    absl::StatusOr<std::string> path = files.ObjectPath(hash);
    std::error_code ec;
    const int64_t size = path.ok() ? static_cast<int64_t>(fs::file_size(*path, ec)) : 0;
    if (files.Remove(hash).ok()) {
      ++objects;
      bytes += ec ? 0 : size;
    }
  }
  return {objects, bytes};
}

absl::StatusOr<v1::DeleteDatasetResponse> DeleteDatasetAndFiles(const ServiceDeps& deps,
                                                                const std::string& name, bool force,
                                                                absl::Duration wait) {
  ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps, name));
  v1::DeleteDatasetResponse response;
  if (force) {
    ASSIGN_OR_RETURN(int64_t cancelled, CancelJobsOf(deps, dataset, wait));
    response.set_cancelled_jobs(cancelled);
  }
  ASSIGN_OR_RETURN(DeletedDataset deleted, deps.store->DeleteDataset(dataset.id));
  response.set_deleted_studies(deleted.studies);
  response.set_deleted_jobs(deleted.jobs);
  response.set_deleted_models(deleted.models);
  // After the commit: a crash from here on leaves only unreferenced files behind.
  int64_t freed = 0;
  for (const std::string& path : deleted.model_paths) freed += RemoveCounted(path);
  freed += deps.runner->host().RemoveCheckpointsOf(deleted.job_ids);
  const auto [objects, object_bytes] =
      RemoveUnreferencedObjects(*deps.store, *deps.files, deleted.orphan_objects, deps.node_store);
  response.set_freed_objects(objects);
  response.set_freed_bytes(freed + object_bytes);
  deps.runner->RefreshJobGauges();
  Log(absl::StrCat("dataset '", dataset.name, "' deleted: ", deleted.studies, " studies, ",
                   deleted.jobs, " jobs, ", deleted.models, " models, ", objects,
                   " objects freed"));
  return response;
}

absl::StatusOr<int64_t> DeleteModelAndFile(const ServiceDeps& deps, int64_t model_id) {
  ASSIGN_OR_RETURN(ModelRecord model, deps.store->DeleteModel(model_id));
  // Another version may share the file (never as miseg names them; be sure anyway).
  ASSIGN_OR_RETURN(std::vector<std::string> paths, deps.store->ModelPaths());
  for (const std::string& path : paths) {
    if (path == model.path) return 0;
  }
  return RemoveCounted(model.path);
}

void SweepModelFiles(Store& store, const std::string& models_dir) {
  absl::StatusOr<std::vector<std::string>> paths = store.ModelPaths();
  if (!paths.ok()) return;
  std::set<std::string> keep;
  for (const std::string& path : *paths) keep.insert(fs::path(path).filename().string());
  std::error_code ec;
  int removed = 0;
  for (fs::directory_iterator it(models_dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file() || keep.count(it->path().filename().string())) continue;
    if (RemoveCounted(it->path().string()) > 0) ++removed;
  }
  if (removed > 0) Log(absl::StrCat("removed ", removed, " unreferenced model files"));
}

}  // namespace miseg

#include "server/job_runner.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <numeric>
#include <optional>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/common/status_macros.h"
#include "core/train/blas.h"
#include "core/train/trainer.h"
#include "server/convert.h"
#include "server/ingest.h"
#include "server/log.h"

namespace miseg {
namespace {

v1::JobEvent StateChange(v1::JobState state, int64_t step, const std::string& message) {
  v1::JobEvent event;
  event.mutable_state()->set_state(state);
  event.mutable_state()->set_step(step);
  event.mutable_state()->set_message(message);
  return event;
}

}  // namespace

JobRunner::JobRunner(Store* store, FileStore* files, ServerMetrics* metrics, EventHub* hub,
                     JobRunnerOptions options)
    : store_(store), files_(files), metrics_(metrics), hub_(hub), options_(std::move(options)) {}

JobRunner::~JobRunner() { Shutdown(); }

absl::Status JobRunner::Start() {
  std::error_code ec;
  std::filesystem::create_directories(options_.work_dir + "/checkpoints", ec);
  std::filesystem::create_directories(options_.work_dir + "/models", ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", options_.work_dir, ": ", ec.message()));
  }
  const int cpu_workers = static_cast<int>(
      std::count_if(options_.devices.begin(), options_.devices.end(),
                    [](const std::string& d) { return absl::StartsWith(d, "cpu"); }));
  if (cpu_workers > 1) {
    if (const BlasInfo blas = DescribeBlas(); !BlasSafeForThreads(blas)) {
      Log(absl::StrCat("warning: ", cpu_workers, " CPU training workers share a BLAS that is "
                       "not thread safe (", blas.config, "): jobs running at once may change "
                       "each other's results; see core/train/blas.h"));
    }
  }
  ASSIGN_OR_RETURN(int requeued, store_->RequeueRunningJobs());
  (void)requeued;
  RefreshJobGauges();
  metrics_->SetTrainingActive(false);
  absl::MutexLock lock(&workers_mutex_);
  for (const std::string& device : options_.devices) {
    workers_.emplace_back([this, device] { WorkerLoop(device); });
  }
  return absl::OkStatus();
}

void JobRunner::Wake() {
  absl::MutexLock lock(&mutex_);
  ++wake_generation_;  // waiting workers' conditions become true on unlock
}

void JobRunner::CancelRunning(int64_t job_id) {
  absl::MutexLock lock(&mutex_);
  auto it = running_.find(job_id);
  if (it == running_.end()) return;
  it->second.by_user = true;
  it->second.cancel->store(true);
}

void JobRunner::RequestStop() {
  absl::MutexLock lock(&mutex_);
  stopping_ = true;
  for (auto& [id, running] : running_) running.cancel->store(true);
}

void JobRunner::Shutdown() {
  absl::MutexLock lock(&workers_mutex_);
  RequestStop();
  for (std::thread& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
  workers_.clear();
}

bool JobRunner::CancelledByUser(int64_t job_id) {
  absl::MutexLock lock(&mutex_);
  auto it = running_.find(job_id);
  return it != running_.end() && it->second.by_user;
}

absl::Status JobRunner::AppendEvent(int64_t job_id, int64_t step, v1::JobEvent event) {
  JobEventRecord record;
  record.job_id = job_id;
  record.step = step;
  record.unix_ms = NowUnixMs();
  event.set_job_id(job_id);
  event.set_unix_ms(record.unix_ms);
  // The sequence is the store's; the payload carries 0 and readers fill it in.
  record.payload = event.SerializeAsString();
  absl::StatusOr<std::vector<JobEventRecord>> stored =
      store_->AppendJobEvents(job_id, {std::move(record)});
  if (!stored.ok()) return stored.status();
  // Stored first, then pushed: a watcher that misses the push finds it in the store.
  if (!stored->empty()) event.set_sequence(stored->front().sequence);
  hub_->Publish(job_id, step, event);
  return absl::OkStatus();
}

void JobRunner::RefreshJobGauges() {
  absl::StatusOr<std::vector<std::pair<StoredJobState, int64_t>>> counts =
      store_->CountJobsByState();
  if (!counts.ok()) return;
  std::vector<std::pair<int, int64_t>> by_state;
  for (const auto& [state, count] : *counts) by_state.emplace_back(static_cast<int>(state), count);
  metrics_->SetJobsByState(by_state);
}

void JobRunner::WorkerLoop(const std::string& device) {
  while (true) {
    int64_t seen;
    {
      absl::MutexLock lock(&mutex_);
      if (stopping_) return;
      seen = wake_generation_;
    }
    absl::StatusOr<std::optional<JobRecord>> next = store_->ClaimNextJob(device);
    if (next.ok() && next->has_value()) {
      RunJob(**next, device);
      continue;
    }
    absl::MutexLock lock(&mutex_);
    const auto woken = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return stopping_ || wake_generation_ != seen;
    };
    // Bounded wait: a failed claim (disk trouble) is retried rather than stalling forever.
    mutex_.AwaitWithTimeout(absl::Condition(&woken), absl::Seconds(5));
  }
}

void JobRunner::RunJob(const JobRecord& job, const std::string& device) {
  std::atomic<bool> cancel{false};
  {
    absl::MutexLock lock(&mutex_);
    running_[job.id] = RunningJob{&cancel, /*by_user=*/false};
    if (stopping_) cancel.store(true);
  }
  // A cancel requested while the job was being claimed (or before a crash).
  absl::StatusOr<JobRecord> fresh = store_->GetJob(job.id);
  if (fresh.ok() && fresh->cancel_requested) {
    absl::MutexLock lock(&mutex_);
    running_[job.id].by_user = true;
    cancel.store(true);
  }
  RefreshJobGauges();
  metrics_->SetTrainingActive(true);

  Log(absl::StrCat("job ", job.id, " claimed on ", device,
                   job.checkpoint_path.empty() ? "" : absl::StrCat(" (checkpoint at step ", job.step, ")")));
  absl::StatusOr<JobEnd> end = TrainJob(job, device, &cancel);
  {
    absl::MutexLock lock(&mutex_);
    running_.erase(job.id);
  }
  metrics_->SetTrainingActive(false);
  absl::StatusOr<JobRecord> after = store_->GetJob(job.id);
  const int64_t step = after.ok() ? after->step : 0;
  if (!end.ok()) {
    Log(absl::StrCat("job ", job.id, " left the worker: ", end.status().ToString()));
    const std::string error(end.status().message());
    if (store_->FailJob(job.id, error).ok()) {
      (void)AppendEvent(job.id, step, StateChange(v1::JOB_STATE_FAILED, step, error));
    }
  } else if (*end == JobEnd::kSucceeded) {
    // TrainJob committed the model and the event.
    Log(absl::StrCat("job ", job.id, " left the worker: succeeded"));
  } else if (*end == JobEnd::kInterrupted) {
    Log(absl::StrCat("job ", job.id, " left the worker: interrupted at step ", step));
    if (store_->RequeueJob(job.id).ok()) {
      (void)AppendEvent(job.id, step,
                        StateChange(v1::JOB_STATE_QUEUED, step,
                                    absl::StrCat("server shutting down: resumes from step ",
                                                 step, " at the next start")));
    }
  } else {
    Log(absl::StrCat("job ", job.id, " left the worker: cancelled"));
    if (store_->CancelJob(job.id).ok()) {
      (void)AppendEvent(job.id, step, StateChange(v1::JOB_STATE_CANCELLED, step, "cancelled"));
    }
  }
  RefreshJobGauges();
}

absl::StatusOr<JobRunner::JobEnd> JobRunner::TrainJob(const JobRecord& job,
                                                      const std::string& device,
                                                      std::atomic<bool>* cancel) {
  v1::Hyperparameters h;
  if (!h.ParseFromString(job.hyperparameters)) {
    return absl::DataLossError("stored hyperparameters are corrupt");
  }
  ASSIGN_OR_RETURN(DatasetRecord dataset, store_->GetDatasetById(job.dataset_id));
  const int64_t classes = static_cast<int64_t>(dataset.class_names.size());
  TrainerConfig config = ToTrainerConfig(h, classes);
  config.device = device;
  config.threads = options_.training_threads;

  ASSIGN_OR_RETURN(std::vector<StudyRecord> labeled,
                   store_->ListStudies(dataset.id, StoredRole::kLabeled));
  ASSIGN_OR_RETURN(std::vector<StudyRecord> unlabeled,
                   store_->ListStudies(dataset.id, StoredRole::kUnlabeled));
  ASSIGN_OR_RETURN(std::vector<StudyRecord> validation,
                   store_->ListStudies(dataset.id, StoredRole::kValidation));
  if (labeled.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("dataset '", dataset.name, "' has no labeled studies"));
  }
  // No validation studies: hold out a fraction of the labeled ones, chosen by the seed so
  // a resumed job holds out the same ones.
  if (validation.empty() && labeled.size() >= 2 && h.validation_fraction() > 0) {
    std::vector<size_t> order(labeled.size());
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(h.seed());
    std::shuffle(order.begin(), order.end(), rng);
    size_t held = std::max<size_t>(
        1, static_cast<size_t>(h.validation_fraction() * static_cast<double>(labeled.size())));
    held = std::min(held, labeled.size() - 1);
    std::vector<StudyRecord> kept;
    std::vector<bool> is_held(labeled.size(), false);
    for (size_t i = 0; i < held; ++i) is_held[order[i]] = true;
    for (size_t i = 0; i < labeled.size(); ++i) {
      (is_held[i] ? validation : kept).push_back(labeled[i]);
    }
    labeled = std::move(kept);
  }
  RETURN_IF_ERROR(store_->SetJobStudyCounts(job.id, static_cast<int32_t>(labeled.size()),
                                            static_cast<int32_t>(unlabeled.size()),
                                            static_cast<int32_t>(validation.size())));

  TrainingData data;
  auto load = [&](const std::vector<StudyRecord>& studies, bool with_labels,
                  std::vector<TrainingVolume>* out) -> absl::Status {
    for (const StudyRecord& study : studies) {
      if (cancel->load()) return absl::OkStatus();
      ASSIGN_OR_RETURN(LoadedStudy loaded,
                       LoadStoredStudy(*files_, study, with_labels ? dataset.class_names
                                                                   : std::vector<std::string>{}));
      TrainingVolume volume;
      volume.id = study.series_instance_uid;
      volume.image = std::move(loaded.series.image);
      if (with_labels) volume.labels = std::move(loaded.labels);
      out->push_back(std::move(volume));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(load(labeled, true, &data.labeled));
  RETURN_IF_ERROR(load(unlabeled, false, &data.unlabeled));
  RETURN_IF_ERROR(load(validation, true, &data.validation));
  if (cancel->load()) return CancelledByUser(job.id) ? JobEnd::kCancelled : JobEnd::kInterrupted;

  ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(config, data));
  const std::string checkpoint_path =
      absl::StrCat(options_.work_dir, "/checkpoints/job-", job.id, ".ckpt");
  if (!job.checkpoint_path.empty()) {
    RETURN_IF_ERROR(trainer->LoadCheckpoint(job.checkpoint_path));
  }
  // Events of steps beyond the checkpoint will be produced again.
  RETURN_IF_ERROR(store_->TruncateJobEventsAfter(job.id, trainer->step()));
  RETURN_IF_ERROR(AppendEvent(
      job.id, trainer->step(),
      StateChange(v1::JOB_STATE_RUNNING, trainer->step(),
                  trainer->step() > 0 ? absl::StrCat("resumed from step ", trainer->step(),
                                                     " on ", device)
                                      : absl::StrCat("started on ", device))));

  std::optional<ValidationMetrics> last_validation;
  absl::Status event_error;
  auto last_step_time = std::chrono::steady_clock::now();
  TrainerCallbacks callbacks;
  callbacks.on_step = [&](const StepMetrics& m) {
    const auto now = std::chrono::steady_clock::now();
    metrics_->ObserveTrainingStep(std::chrono::duration<double>(now - last_step_time).count());
    last_step_time = now;
    metrics_->SetTrainingProgress(m.step, m.total_steps, m.learning_rate);
    metrics_->SetTrainingLosses(m.loss, m.supervised, m.consistency, m.mutual_information);
    v1::JobEvent event;
    v1::StepEvent* s = event.mutable_step();
    s->set_step(m.step);
    s->set_total_steps(m.total_steps);
    s->set_loss(m.loss);
    s->set_supervised(m.supervised);
    s->set_consistency(m.consistency);
    s->set_mutual_information(m.mutual_information);
    s->set_unsupervised_weight(m.unsupervised_weight);
    s->set_learning_rate(m.learning_rate);
    s->set_steps_per_second(m.steps_per_second);
    s->set_slices_per_second(m.slices_per_second);
    absl::Status stored = AppendEvent(job.id, m.step, std::move(event));
    if (!stored.ok() && event_error.ok()) event_error = stored;
    if (options_.after_step_event) options_.after_step_event(job.id, m.step);
  };
  callbacks.on_validation = [&](const ValidationMetrics& v) {
    last_validation = v;
    metrics_->SetValidationDice(v.dice_per_class);
    v1::JobEvent event;
    v1::ValidationEvent* e = event.mutable_validation();
    e->set_step(v.step);
    for (double d : v.dice_per_class) e->add_dice_per_class(d);
    e->set_mean_dice(v.mean_dice);
    absl::Status stored = AppendEvent(job.id, v.step, std::move(event));
    if (!stored.ok() && event_error.ok()) event_error = stored;
    last_step_time = std::chrono::steady_clock::now();  // validation is not a step
  };

  const int64_t every = h.checkpoint_every();
  while (true) {
    const int64_t next_checkpoint = (trainer->step() / every + 1) * every;
    ASSIGN_OR_RETURN(RunOutcome outcome,
                     trainer->Run(callbacks, cancel, next_checkpoint - trainer->step()));
    RETURN_IF_ERROR(event_error);
    if (outcome == RunOutcome::kCancelled && CancelledByUser(job.id)) return JobEnd::kCancelled;
    if (trainer->step() > job.step || job.checkpoint_path.empty()) {
      RETURN_IF_ERROR(trainer->SaveCheckpoint(checkpoint_path));
      RETURN_IF_ERROR(store_->RecordCheckpoint(job.id, trainer->step(), checkpoint_path));
    }
    if (outcome == RunOutcome::kCancelled) return JobEnd::kInterrupted;
    if (outcome == RunOutcome::kFinished) break;
  }

  if (!last_validation && !data.validation.empty()) {
    ASSIGN_OR_RETURN(ValidationMetrics v, trainer->Validate());
    last_validation = v;
  }
  const std::string model_path =
      absl::StrCat(options_.work_dir, "/models/job-", job.id, ".model");
  RETURN_IF_ERROR(trainer->ExportModel(model_path));
  ModelRecord model;
  model.dataset_id = dataset.id;
  model.job_id = job.id;
  model.path = model_path;
  model.steps = trainer->step();
  if (last_validation) {
    model.dice_per_class = last_validation->dice_per_class;
    model.mean_dice = last_validation->mean_dice;
  }
  std::error_code ec;
  model.size_bytes = static_cast<int64_t>(std::filesystem::file_size(model_path, ec));
  // The first model of a dataset becomes its active model; later ones wait for a promote.
  ASSIGN_OR_RETURN(ModelRecord stored,
                   store_->FinishJobWithModel(job.id, model, dataset.active_model_id == 0));
  std::error_code ignored;
  std::filesystem::remove(checkpoint_path, ignored);  // the model file supersedes it
  RETURN_IF_ERROR(AppendEvent(
      job.id, trainer->step(),
      StateChange(v1::JOB_STATE_SUCCEEDED, trainer->step(),
                  absl::StrCat("model ", stored.id, " (version ", stored.version, ")"))));
  return JobEnd::kSucceeded;
}

}  // namespace miseg

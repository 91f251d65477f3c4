#include "server/cluster/job_host.h"

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"

namespace miseg {
namespace {

v1::RankStudy ToRankStudy(const StudyRecord& study, std::set<std::string>* allowed) {
  v1::RankStudy out;
  out.set_series_instance_uid(study.series_instance_uid);
  for (const InstanceRecord& instance : study.instances) {
    v1::RankFile* file = out.add_files();
    file->set_sha256(instance.object_hash);
    file->set_size_bytes(instance.size_bytes);
    file->set_is_segmentation(instance.is_segmentation);
    allowed->insert(instance.object_hash);
  }
  return out;
}

// With no validation studies, a fraction of the labeled ones is held out, chosen by the
// seed: every attempt of a job holds out the same ones.
void HoldOutValidation(const v1::Hyperparameters& h, std::vector<StudyRecord>* labeled,
                       std::vector<StudyRecord>* validation) {
  if (!validation->empty() || labeled->size() < 2 || h.validation_fraction() <= 0) return;
  std::vector<size_t> order(labeled->size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(h.seed());
  std::shuffle(order.begin(), order.end(), rng);
  size_t held = std::max<size_t>(
      1, static_cast<size_t>(h.validation_fraction() * static_cast<double>(labeled->size())));
  held = std::min(held, labeled->size() - 1);
  std::vector<bool> is_held(labeled->size(), false);
  for (size_t i = 0; i < held; ++i) is_held[order[i]] = true;
  std::vector<StudyRecord> kept;
  for (size_t i = 0; i < labeled->size(); ++i) {
    ((is_held[i]) ? *validation : kept).push_back((*labeled)[i]);
  }
  *labeled = std::move(kept);
}

}  // namespace

JobHost::JobHost(Store* store, FileStore* files, Scheduler* scheduler, ServerMetrics* metrics,
                 AppendEvent append, JobHostOptions options)
    : store_(store), files_(files), scheduler_(scheduler), metrics_(metrics),
      append_(std::move(append)), options_(std::move(options)) {}

std::string JobHost::IncomingDir() const { return options_.work_dir + "/incoming"; }

absl::Status JobHost::RequireLeader(const v1::RankAssignment& rank) const {
  if (rank.rank() != 0) return absl::PermissionDeniedError("only rank 0 writes a job's results");
  return absl::OkStatus();
}

absl::StatusOr<v1::RankSpec> JobHost::Spec(const v1::RankAssignment& rank) {
  v1::RankSpec spec;
  std::set<std::string> allowed;
  RETURN_IF_ERROR(scheduler_->WithCurrentAttempt(rank, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(JobRecord job, store_->GetJob(rank.job_id()));
    if (!spec.mutable_hyperparameters()->ParseFromString(job.hyperparameters)) {
      return absl::DataLossError("stored hyperparameters are corrupt");
    }
    ASSIGN_OR_RETURN(DatasetRecord dataset, store_->GetDatasetById(job.dataset_id));
    for (const std::string& name : dataset.class_names) spec.add_class_names(name);
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
    HoldOutValidation(spec.hyperparameters(), &labeled, &validation);
    if (rank.rank() == 0) {
      RETURN_IF_ERROR(store_->SetJobStudyCounts(job.id, static_cast<int32_t>(labeled.size()),
                                                static_cast<int32_t>(unlabeled.size()),
                                                static_cast<int32_t>(validation.size())));
    }
    for (const StudyRecord& s : labeled) *spec.add_labeled() = ToRankStudy(s, &allowed);
    for (const StudyRecord& s : unlabeled) *spec.add_unlabeled() = ToRankStudy(s, &allowed);
    for (const StudyRecord& s : validation) *spec.add_validation() = ToRankStudy(s, &allowed);
    spec.set_checkpoint_step(job.checkpoint_path.empty() ? 0 : job.step);
    return absl::OkStatus();
  }));
  spec.set_collective_timeout_ms(absl::ToInt64Milliseconds(options_.collective_timeout));
  spec.set_verify_replicas(options_.verify_replicas);
  absl::MutexLock lock(&mutex_);
  allowed_objects_[rank.job_id()] = {rank.attempt(), std::move(allowed)};
  return spec;
}

absl::Status JobHost::CheckAllowed(const v1::RankAssignment& rank, const std::string& sha256) {
  absl::MutexLock lock(&mutex_);
  auto it = allowed_objects_.find(rank.job_id());
  if (it == allowed_objects_.end() || it->second.first != rank.attempt() ||
      it->second.second.count(sha256) == 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("object ", sha256.substr(0, 64), " is not a file of job ", rank.job_id(),
                     " (attempt ", rank.attempt(), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> JobHost::ObjectBytes(const v1::RankAssignment& rank,
                                                 const std::string& sha256) {
  RETURN_IF_ERROR(CheckAllowed(rank, sha256));
  return files_->Get(sha256);
}

absl::StatusOr<std::string> JobHost::ObjectPath(const v1::RankAssignment& rank,
                                                const std::string& sha256) {
  RETURN_IF_ERROR(CheckAllowed(rank, sha256));
  return files_->ObjectPath(sha256);
}

absl::StatusOr<std::string> JobHost::CheckpointPath(const v1::RankAssignment& rank) {
  std::string path;
  RETURN_IF_ERROR(scheduler_->WithCurrentAttempt(rank, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(JobRecord job, store_->GetJob(rank.job_id()));
    if (job.checkpoint_path.empty()) {
      return absl::NotFoundError(absl::StrCat("job ", job.id, " has no checkpoint"));
    }
    path = job.checkpoint_path;
    return absl::OkStatus();
  }));
  return path;
}

absl::StatusOr<bool> JobHost::AppendEvents(const v1::RankAssignment& rank,
                                           std::vector<v1::JobEvent> events) {
  RETURN_IF_ERROR(RequireLeader(rank));
  RETURN_IF_ERROR(scheduler_->WithCurrentAttempt(rank, [&]() -> absl::Status {
    for (v1::JobEvent& event : events) {
      int64_t step = 0;
      if (event.has_step()) {
        step = event.step().step();
        ObserveStep(event.step());
      } else if (event.has_validation()) {
        step = event.validation().step();
        metrics_->SetValidationDice({event.validation().dice_per_class().begin(),
                                     event.validation().dice_per_class().end()});
      } else {
        return absl::InvalidArgumentError("a rank sends step and validation events only");
      }
      RETURN_IF_ERROR(append_(rank.job_id(), step, std::move(event)));
    }
    return absl::OkStatus();
  }));
  return scheduler_->StopRequested(rank);
}

void JobHost::ObserveStep(const v1::StepEvent& step) {
  if (step.steps_per_second() > 0) metrics_->ObserveTrainingStep(1.0 / step.steps_per_second());
  if (step.ranks() > 1) metrics_->ObserveAllReduce(step.allreduce_seconds());
  metrics_->SetRankComputeSeconds({step.rank_compute_seconds().begin(),
                                   step.rank_compute_seconds().end()});
  metrics_->SetTrainingProgress(step.step(), step.total_steps(), step.learning_rate());
  metrics_->SetTrainingLosses(step.loss(), step.supervised(), step.consistency(),
                              step.mutual_information());
}

absl::Status JobHost::CommitCheckpoint(const v1::RankAssignment& rank, int64_t step,
                                       const std::string& path) {
  RETURN_IF_ERROR(RequireLeader(rank));
  const std::string target =
      absl::StrCat(options_.work_dir, "/checkpoints/job-", rank.job_id(), ".ckpt");
  return scheduler_->WithCurrentAttempt(rank, [&]() -> absl::Status {
    std::error_code ec;
    std::filesystem::rename(path, target, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("cannot move checkpoint into place: ", ec.message()));
    }
    return store_->RecordCheckpoint(rank.job_id(), step, target);
  });
}

absl::StatusOr<int64_t> JobHost::CommitModel(const v1::RankAssignment& rank, int64_t step,
                                             const std::string& path,
                                             const v1::ValidationEvent& validation) {
  RETURN_IF_ERROR(RequireLeader(rank));
  const std::string target =
      absl::StrCat(options_.work_dir, "/models/job-", rank.job_id(), ".model");
  ModelRecord stored;
  RETURN_IF_ERROR(scheduler_->WithCurrentAttempt(rank, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(JobRecord job, store_->GetJob(rank.job_id()));
    ASSIGN_OR_RETURN(DatasetRecord dataset, store_->GetDatasetById(job.dataset_id));
    std::error_code ec;
    std::filesystem::rename(path, target, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot move model into place: ", ec.message()));
    ModelRecord model;
    model.dataset_id = dataset.id;
    model.job_id = job.id;
    model.path = target;
    model.steps = step;
    model.dice_per_class.assign(validation.dice_per_class().begin(),
                                validation.dice_per_class().end());
    model.mean_dice = validation.mean_dice();
    model.size_bytes = static_cast<int64_t>(std::filesystem::file_size(target, ec));
    // The first model of a dataset becomes its active model; later ones wait for a promote.
    ASSIGN_OR_RETURN(stored, store_->FinishJobWithModel(job.id, model, dataset.active_model_id == 0));
    std::filesystem::remove(job.checkpoint_path, ec);  // the model supersedes it
    v1::JobEvent event;
    event.mutable_state()->set_state(v1::JOB_STATE_SUCCEEDED);
    event.mutable_state()->set_step(step);
    event.mutable_state()->set_message(
        absl::StrCat("model ", stored.id, " (version ", stored.version, ")"));
    return append_(job.id, step, std::move(event));
  }));
  absl::MutexLock lock(&mutex_);
  allowed_objects_.erase(rank.job_id());
  return stored.id;
}

}  // namespace miseg

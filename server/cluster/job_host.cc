#include "server/cluster/job_host.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <numeric>
#include <optional>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"
#include "server/log.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;

// A committed checkpoint's file name: job-<id>-step-<step>-<sha256>.ckpt, so that a resume
// can check its bytes, and the previous one is still there when the last proves damaged.
struct CheckpointName {
  int64_t job_id = 0;
  int64_t step = 0;
  std::string sha256;
};

std::string CheckpointFileName(int64_t job_id, int64_t step, const std::string& sha256) {
  return absl::StrCat("job-", job_id, "-step-", step, "-", sha256, ".ckpt");
}

std::optional<CheckpointName> ParseCheckpointName(const std::string& name) {
  if (!absl::StartsWith(name, "job-") || !absl::EndsWith(name, ".ckpt")) return std::nullopt;
  std::vector<std::string> parts =
      absl::StrSplit(name.substr(4, name.size() - 4 - 5), '-');  // id, "step", step, hash
  CheckpointName parsed;
  if (parts.size() != 4 || parts[1] != "step" || !IsObjectHash(parts[3]) ||
      !absl::SimpleAtoi(parts[0], &parsed.job_id) || !absl::SimpleAtoi(parts[2], &parsed.step)) {
    return std::nullopt;
  }
  parsed.sha256 = parts[3];
  return parsed;
}

// OK when the file's bytes hash to the name it was committed under (files of an older
// miseg, named without a hash, cannot be checked and pass); DataLoss or NotFound else.
absl::Status VerifyNamedFile(const std::string& path, const std::string& sha256) {
  if (sha256.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> actual = Sha256OfFile(path);
  if (absl::IsNotFound(actual.status())) {
    return absl::DataLossError(absl::StrCat(path, " is missing"));
  }
  if (!actual.ok()) return actual.status();
  if (*actual != sha256) {
    return absl::DataLossError(
        absl::StrCat(path, " is corrupt: its bytes no longer match its SHA-256"));
  }
  return absl::OkStatus();
}

std::string NamedHash(const std::string& path) {
  std::optional<CheckpointName> parsed = ParseCheckpointName(fs::path(path).filename().string());
  return parsed ? parsed->sha256 : "";
}

absl::Status FsyncPath(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  const int rc = ::fsync(fd);
  const int fsync_errno = errno;
  ::close(fd);
  if (rc != 0) return absl::ErrnoToStatus(fsync_errno, absl::StrCat("cannot fsync ", path));
  return absl::OkStatus();
}

// Moves a written file into place under its final name, durably (its bytes, then the
// directory entry). A full disk is ResourceExhausted.
absl::Status MoveIntoPlace(const std::string& from, const std::string& to) {
  RETURN_IF_ERROR(FsyncPath(from, /*directory=*/false));
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot move ", from, " to ", to));
  }
  return FsyncPath(fs::path(to).parent_path().string(), /*directory=*/true);
}

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
                 AppendEvent append, PublishEvent publish, JobHostOptions options)
    : store_(store), files_(files), scheduler_(scheduler), metrics_(metrics),
      append_(std::move(append)), publish_(std::move(publish)), options_(std::move(options)) {}

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
    for (const auto* studies : {&labeled, &unlabeled, &validation}) {
      for (const StudyRecord& s : *studies) {
        if (s.damage.empty()) continue;
        return absl::DataLossError(absl::StrCat(
            "study ", s.series_instance_uid, " of dataset '", dataset.name, "' is damaged: ",
            s.damage, "; delete it and upload it again"));
      }
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
    ASSIGN_OR_RETURN(const int64_t resume_step, VerifiedResumeStep(job));
    spec.set_checkpoint_step(resume_step);
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
  absl::StatusOr<std::string> bytes = files_->Get(sha256);  // DataLoss when damaged
  if (absl::IsNotFound(bytes.status())) {
    return absl::DataLossError(bytes.status().message());  // a study's file is gone
  }
  return bytes;
}

absl::StatusOr<std::string> JobHost::ObjectPath(const v1::RankAssignment& rank,
                                                const std::string& sha256) {
  RETURN_IF_ERROR(CheckAllowed(rank, sha256));
  // Checked before the first byte goes out: a damaged object is DATA_LOSS naming it, not a
  // stream the worker must reject at its end.
  absl::Status intact = files_->Verify(sha256);
  if (!intact.ok()) {
    return absl::DataLossError(intact.message());
  }
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

std::string JobHost::CheckpointDir() const { return options_.work_dir + "/checkpoints"; }

absl::StatusOr<CheckpointRetention> ParseCheckpointRetention(const std::string& text) {
  if (text == "all") return CheckpointRetention::kAll;
  if (text == "last") return CheckpointRetention::kLast;
  if (text == "none") return CheckpointRetention::kNone;
  return absl::InvalidArgumentError(
      absl::StrCat("checkpoint retention '", text, "': expected all, last or none"));
}

namespace {

int64_t RemoveCounted(const std::string& path) {
  std::error_code ec;
  const std::uintmax_t size = fs::file_size(path, ec);
  if (!fs::remove(path, ec) || ec) return 0;
  return static_cast<int64_t>(size);
}

}  // namespace

int64_t JobHost::RemoveCheckpointsOf(const std::vector<int64_t>& job_ids) {
  int64_t freed = 0;
  for (int64_t job_id : job_ids) {
    for (const auto& [file, path] : CheckpointsOf(job_id)) freed += RemoveCounted(path);
  }
  return freed;
}

int64_t JobHost::ApplyCheckpointRetention() {
  std::set<int64_t> job_ids;
  std::error_code ec;
  for (fs::directory_iterator it(CheckpointDir(), ec), end; !ec && it != end; it.increment(ec)) {
    std::optional<CheckpointName> name = ParseCheckpointName(it->path().filename().string());
    if (name) job_ids.insert(name->job_id);
  }
  int64_t freed = 0;
  for (int64_t job_id : job_ids) {
    absl::StatusOr<JobRecord> job = store_->GetJob(job_id);
    if (absl::IsNotFound(job.status())) {
      freed += RemoveCheckpointsOf({job_id});  // its dataset was deleted
      continue;
    }
    const bool finished = job.ok() && (job->state == StoredJobState::kSucceeded ||
                                       job->state == StoredJobState::kFailed ||
                                       job->state == StoredJobState::kCancelled);
    if (!finished || options_.checkpoint_retention == CheckpointRetention::kAll) continue;
    std::vector<std::pair<CheckpointFile, std::string>> files = CheckpointsOf(job_id);
    // kLast keeps the job's recorded checkpoint (the newest when it records none).
    std::string keep;
    if (options_.checkpoint_retention == CheckpointRetention::kLast && !files.empty()) {
      keep = files.front().second;
      for (const auto& [file, path] : files) {
        if (path == job->checkpoint_path) keep = path;
      }
    }
    for (const auto& [file, path] : files) {
      if (path != keep) freed += RemoveCounted(path);
    }
    if (keep.empty() && !job->checkpoint_path.empty()) (void)store_->ForgetCheckpoint(job_id);
  }
  return freed;
}

std::vector<std::pair<CheckpointFile, std::string>> JobHost::CheckpointsOf(int64_t job_id) const {
  std::vector<std::pair<CheckpointFile, std::string>> found;
  std::error_code ec;
  for (fs::directory_iterator it(CheckpointDir(), ec), end; !ec && it != end; it.increment(ec)) {
    std::optional<CheckpointName> name = ParseCheckpointName(it->path().filename().string());
    if (name && name->job_id == job_id) {
      found.push_back({CheckpointFile{name->step, name->sha256}, it->path().string()});
    }
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return a.first.step > b.first.step;  // newest first
  });
  return found;
}

absl::Status JobHost::CommitCheckpoint(const v1::RankAssignment& rank, int64_t step,
                                       const std::string& path) {
  RETURN_IF_ERROR(RequireLeader(rank));
  ASSIGN_OR_RETURN(std::string sha256, Sha256OfFile(path));
  const std::string target =
      absl::StrCat(CheckpointDir(), "/", CheckpointFileName(rank.job_id(), step, sha256));
  return scheduler_->WithCurrentAttempt(rank, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(JobRecord job, store_->GetJob(rank.job_id()));
    RETURN_IF_ERROR(MoveIntoPlace(path, target));
    RETURN_IF_ERROR(store_->RecordCheckpoint(rank.job_id(), step, target));
    // Kept: this one and the one before (a resume falls back to it if this one proves
    // damaged). Files of failed commits and older steps go.
    for (const auto& [file, other] : CheckpointsOf(rank.job_id())) {
      if (other == target || other == job.checkpoint_path) continue;
      std::error_code ignored;
      fs::remove(other, ignored);
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<int64_t> JobHost::VerifiedResumeStep(const JobRecord& job) {
  if (job.checkpoint_path.empty()) return 0;
  absl::Status intact = VerifyNamedFile(job.checkpoint_path, NamedHash(job.checkpoint_path));
  if (intact.ok()) return job.step;
  Log(absl::StrCat("job ", job.id, ": checkpoint of step ", job.step, ": ", intact.ToString()));
  QuarantineFile(job.checkpoint_path);
  int64_t step = 0;
  std::string path;
  for (const auto& [file, candidate] : CheckpointsOf(job.id)) {
    if (file.step >= job.step) continue;
    absl::Status ok = VerifyNamedFile(candidate, file.sha256);
    if (ok.ok()) {
      step = file.step;
      path = candidate;
      break;
    }
    Log(absl::StrCat("job ", job.id, ": checkpoint of step ", file.step, ": ", ok.ToString()));
    QuarantineFile(candidate);
  }
  RETURN_IF_ERROR(store_->FallBackToCheckpoint(job.id, step, path));
  v1::JobEvent event;
  event.mutable_state()->set_state(v1::JOB_STATE_RUNNING);
  event.mutable_state()->set_step(step);
  event.mutable_state()->set_message(absl::StrCat(
      "the checkpoint of step ", job.step, " is damaged (", intact.ToString(), "): ",
      step > 0 ? absl::StrCat("resumed from step ", step, " instead") : "starts over"));
  RETURN_IF_ERROR(append_(job.id, step, std::move(event)));
  return step;
}

void JobHost::QuarantineFile(const std::string& path) {
  const std::string dir = options_.work_dir + "/quarantine";
  std::error_code ec;
  fs::create_directories(dir, ec);
  fs::rename(path, fs::path(dir) / fs::path(path).filename(), ec);
  if (ec) fs::remove(path, ec);
}

absl::StatusOr<int64_t> JobHost::CommitModel(const v1::RankAssignment& rank, int64_t step,
                                             const std::string& path,
                                             const v1::ValidationEvent& validation) {
  RETURN_IF_ERROR(RequireLeader(rank));
  // Named by its SHA-256 too: serving checks the bytes before it loads them.
  ASSIGN_OR_RETURN(std::string sha256, Sha256OfFile(path));
  const std::string target =
      absl::StrCat(options_.work_dir, "/models/job-", rank.job_id(), "-", sha256, ".model");
  ModelRecord stored;
  RETURN_IF_ERROR(scheduler_->WithCurrentAttempt(rank, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(JobRecord job, store_->GetJob(rank.job_id()));
    ASSIGN_OR_RETURN(DatasetRecord dataset, store_->GetDatasetById(job.dataset_id));
    std::error_code ec;
    RETURN_IF_ERROR(MoveIntoPlace(path, target));
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
    // The SUCCEEDED event commits with it: a crash cannot leave a job succeeded without it.
    v1::JobEvent event;
    JobEventRecord record;
    const auto succeeded = [&](const ModelRecord& m) {
      event.set_job_id(job.id);
      event.set_unix_ms(absl::ToUnixMillis(absl::Now()));
      event.mutable_state()->set_state(v1::JOB_STATE_SUCCEEDED);
      event.mutable_state()->set_step(step);
      event.mutable_state()->set_message(
          absl::StrCat("model ", m.id, " (version ", m.version, ")"));
      return JobEventRecord{job.id, 0, step, event.unix_ms(), event.SerializeAsString()};
    };
    ASSIGN_OR_RETURN(stored, store_->FinishJobWithModel(job.id, model, dataset.active_model_id == 0,
                                                        succeeded, &record));
    for (const auto& [file, checkpoint] : CheckpointsOf(job.id)) {
      fs::remove(checkpoint, ec);  // the model supersedes them
    }
    fs::remove(job.checkpoint_path, ec);  // one of an older miseg, named without hash
    event.set_sequence(record.sequence);
    publish_(job.id, step, event);
    return absl::OkStatus();
  }));
  absl::MutexLock lock(&mutex_);
  allowed_objects_.erase(rank.job_id());
  return stored.id;
}

}  // namespace miseg

#include "server/rank/rank_runner.h"

#include <filesystem>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/dicom/segmentation.h"
#include "core/dicom/series_reader.h"
#include "core/dist/process_group.h"
#include "core/train/trainer.h"
#include "server/rank/hyperparameters.h"

namespace miseg {
namespace {

// Rank 0 may still be fetching studies when the others are ready: they wait this long for
// its rendezvous before giving up (the collectives' own timeout starts after it).
constexpr absl::Duration kRendezvousWait = absl::Minutes(30);

// The directory of one attempt's files on this machine: its checkpoints and model are
// written there before they are committed, and the directory goes when the rank ends.
std::string AttemptDir(const v1::RankAssignment& rank, const RankRunnerOptions& options) {
  return absl::StrCat(options.scratch_dir, "/job-", rank.job_id(), "-attempt-", rank.attempt(),
                      "-rank-", rank.rank());
}

// One study from the job's files: the series, and its labels when class_names is given.
absl::StatusOr<TrainingVolume> LoadStudy(const v1::RankAssignment& rank, RankIo& io,
                                         const v1::RankStudy& study,
                                         const std::vector<std::string>& class_names,
                                         bool with_labels) {
  std::vector<DicomBuffer> images;
  std::optional<DicomBuffer> seg;
  for (const v1::RankFile& file : study.files()) {
    if (file.is_segmentation() && !with_labels) continue;
    absl::StatusOr<std::string> bytes = io.ReadObject(rank, file);
    if (!bytes.ok()) {
      return absl::Status(bytes.status().code(),
                          absl::StrCat("series ", study.series_instance_uid(), ": ",
                                       bytes.status().message()));
    }
    DicomBuffer buffer{file.sha256(), *std::move(bytes)};
    if (file.is_segmentation()) {
      seg = std::move(buffer);
    } else {
      images.push_back(std::move(buffer));
    }
  }
  if (with_labels && !seg) {
    return absl::DataLossError(
        absl::StrCat("series ", study.series_instance_uid(), " has no segmentation"));
  }
  ASSIGN_OR_RETURN(LabeledSeries read,
                   ReadLabeledSeries(images, seg, class_names, study.series_instance_uid()));
  TrainingVolume volume;
  volume.id = study.series_instance_uid();
  volume.image = std::move(read.series.image);
  volume.labels = std::move(read.labels);
  return volume;
}

absl::Status LoadStudies(const v1::RankAssignment& rank, RankIo& io, const v1::RankSpec& spec,
                         std::atomic<bool>* stop, TrainingData* data) {
  const std::vector<std::string> classes(spec.class_names().begin(), spec.class_names().end());
  const auto load = [&](const auto& studies, bool with_labels,
                        std::vector<TrainingVolume>* out) -> absl::Status {
    for (const v1::RankStudy& study : studies) {
      if (stop->load()) return absl::CancelledError("stopped while loading studies");
      ASSIGN_OR_RETURN(TrainingVolume volume, LoadStudy(rank, io, study, classes, with_labels));
      out->push_back(std::move(volume));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(load(spec.labeled(), true, &data->labeled));
  RETURN_IF_ERROR(load(spec.unlabeled(), false, &data->unlabeled));
  return load(spec.validation(), true, &data->validation);
}

// The job's process group: rank 0 hosts the store and publishes where; the others wait.
// Holds the host for the life of the group.
struct Group {
  std::unique_ptr<RendezvousHost> host;
  std::shared_ptr<Collectives> collectives;
};

absl::StatusOr<Group> JoinGroup(const v1::RankAssignment& rank, RankIo& io,
                                const v1::RankSpec& spec, const RankRunnerOptions& options,
                                std::atomic<bool>* stop) {
  Group group;
  ProcessGroupOptions pg;
  pg.rank = rank.rank();
  pg.world_size = rank.world_size();
  pg.prefix = absl::StrCat("job-", rank.job_id(), "/attempt-", rank.attempt(), "/");
  pg.device = rank.device();
  pg.bind_host = options.rendezvous_host;
  pg.timeout = absl::Milliseconds(spec.collective_timeout_ms() > 0 ? spec.collective_timeout_ms()
                                                                   : 60'000);
  if (rank.rank() == 0) {
    ASSIGN_OR_RETURN(group.host, RendezvousHost::Listen(options.rendezvous_host, 0));
    pg.store_host = options.rendezvous_host;
    pg.store_port = group.host->port();
    RETURN_IF_ERROR(io.PublishRendezvous(rank, {pg.store_host, pg.store_port}));
  } else {
    ASSIGN_OR_RETURN(RendezvousAddress address, io.AwaitRendezvous(rank, kRendezvousWait, stop));
    pg.store_host = address.host;
    pg.store_port = address.port;
  }
  ASSIGN_OR_RETURN(group.collectives, JoinProcessGroup(pg, group.host.get()));
  return group;
}

v1::JobEvent StepEventOf(const StepMetrics& m, int32_t ranks) {
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
  s->set_slices_per_second(m.slices_per_second * ranks);  // the whole job's throughput
  s->set_allreduce_seconds(m.allreduce_seconds);
  s->set_allreduce_bytes(m.allreduce_bytes);
  s->set_ranks(ranks);
  for (double seconds : m.rank_compute_seconds) s->add_rank_compute_seconds(seconds);
  s->set_entropy(m.entropy);
  return event;
}

v1::ValidationEvent ValidationEventOf(const ValidationMetrics& v) {
  v1::ValidationEvent e;
  e.set_step(v.step);
  for (double d : v.dice_per_class) e.add_dice_per_class(d);
  e.set_mean_dice(v.mean_dice);
  return e;
}

// A rank's training loop after setup: checkpoint every checkpoint_every steps (rank 0
// commits it), stop together when asked, rank 0 commits the model at the end.
class RankTraining {
 public:
  RankTraining(const v1::RankAssignment& rank, RankIo& io, const RankRunnerOptions& options,
               std::atomic<bool>* stop, Trainer& trainer, int64_t checkpoint_every)
      : rank_(rank), io_(io), options_(options), stop_(stop), trainer_(trainer),
        checkpoint_every_(checkpoint_every), leader_(rank.rank() == 0) {}

  absl::StatusOr<RankResult> Run(int64_t resumed_step, bool has_validation) {
    const TrainerCallbacks callbacks = Callbacks();
    while (true) {
      const int64_t next_checkpoint = (trainer_.step() / checkpoint_every_ + 1) * checkpoint_every_;
      ASSIGN_OR_RETURN(RunOutcome outcome,
                       trainer_.Run(callbacks, stop_, next_checkpoint - trainer_.step()));
      RETURN_IF_ERROR(event_error_);
      if (leader_ && trainer_.step() > resumed_step) RETURN_IF_ERROR(CommitCheckpoint());
      if (outcome == RunOutcome::kCancelled) {
        return RankResult{v1::RANK_OUTCOME_STOPPED, "stopped", trainer_.step()};
      }
      if (outcome == RunOutcome::kFinished) break;
    }
    if (!last_validation_ && has_validation) {
      ASSIGN_OR_RETURN(ValidationMetrics v, trainer_.Validate());
      last_validation_ = ValidationEventOf(v);
    }
    if (leader_) RETURN_IF_ERROR(CommitModel());
    return RankResult{v1::RANK_OUTCOME_FINISHED, "", trainer_.step()};
  }

 private:
  std::string ScratchPath(const char* kind) const {
    return absl::StrCat(AttemptDir(rank_, options_), "/", kind);
  }

  TrainerCallbacks Callbacks() {
    TrainerCallbacks callbacks;
    callbacks.on_step = [this](const StepMetrics& m) {
      if (leader_) Report(StepEventOf(m, rank_.world_size()), m.step);
      if (options_.after_step) options_.after_step(rank_, m.step);
    };
    callbacks.on_validation = [this](const ValidationMetrics& v) {
      last_validation_ = ValidationEventOf(v);
      if (!leader_) return;
      v1::JobEvent event;
      *event.mutable_validation() = *last_validation_;
      Report(std::move(event), -1);
    };
    return callbacks;
  }

  // Rank 0: stores an event; the coordinator's "stop" reaches every rank through the
  // trainer's agreement on *stop before the next step.
  void Report(v1::JobEvent event, int64_t step) {
    std::vector<v1::JobEvent> events;
    events.push_back(std::move(event));
    absl::StatusOr<bool> must_stop = io_.AppendEvents(rank_, std::move(events));
    if (!must_stop.ok()) {
      if (event_error_.ok()) event_error_ = must_stop.status();
      stop_->store(true);
      return;
    }
    if (*must_stop) stop_->store(true);
    if (step >= 0 && options_.after_step_event) options_.after_step_event(rank_.job_id(), step);
  }

  // A checkpoint that cannot be written (a full disk: ResourceExhausted) fails this
  // attempt cleanly: the committed checkpoint stays the job's, and RETRY_LATER resumes
  // from it.
  absl::Status CommitCheckpoint() {
    const std::string path = ScratchPath("checkpoint");
    RETURN_IF_ERROR(trainer_.SaveCheckpoint(path));
    absl::Status committed = io_.CommitCheckpoint(rank_, trainer_.step(), path);
    std::error_code ignored;
    std::filesystem::remove(path, ignored);  // gone already when the commit moved it
    return committed;
  }

  absl::Status CommitModel() {
    const std::string path = ScratchPath("model");
    RETURN_IF_ERROR(trainer_.ExportModel(path));
    absl::StatusOr<int64_t> model =
        io_.CommitModel(rank_, trainer_.step(), path,
                        last_validation_ ? *last_validation_ : v1::ValidationEvent());
    std::error_code ignored;
    std::filesystem::remove(path, ignored);
    return model.status();
  }

  const v1::RankAssignment& rank_;
  RankIo& io_;
  const RankRunnerOptions& options_;
  std::atomic<bool>* const stop_;
  Trainer& trainer_;
  const int64_t checkpoint_every_;
  const bool leader_;
  std::optional<v1::ValidationEvent> last_validation_;
  absl::Status event_error_;
};

absl::StatusOr<RankResult> RunRankOrError(const v1::RankAssignment& rank, RankIo& io,
                                          const RankRunnerOptions& options,
                                          std::atomic<bool>* stop) {
  ASSIGN_OR_RETURN(v1::RankSpec spec, io.GetSpec(rank));
  TrainingData data;
  RETURN_IF_ERROR(LoadStudies(rank, io, spec, stop, &data));
  TrainerConfig config =
      ToTrainerConfig(spec.hyperparameters(), static_cast<int64_t>(spec.class_names_size()));
  config.device = rank.device();
  config.threads = options.training_threads;
  config.cuda_graphs = options.cuda_graphs;

  Group group;
  if (rank.world_size() > 1) {
    ASSIGN_OR_RETURN(group, JoinGroup(rank, io, spec, options, stop));
  }
  DataParallel parallel;
  parallel.rank = rank.rank();
  parallel.world_size = rank.world_size();
  parallel.collectives = group.collectives;
  parallel.verify_replicas = spec.verify_replicas();
  ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(config, data, parallel));
  if (spec.checkpoint_step() > 0) {
    const std::string path = absl::StrCat(AttemptDir(rank, options), "/resume");
    RETURN_IF_ERROR(io.FetchCheckpoint(rank, path));
    absl::Status loaded = trainer->LoadCheckpoint(path);
    std::error_code ignored;
    std::filesystem::remove(path, ignored);
    RETURN_IF_ERROR(loaded);
  }
  RankTraining training(rank, io, options, stop, *trainer,
                        spec.hyperparameters().checkpoint_every());
  return training.Run(spec.checkpoint_step(), !data.validation.empty());
}

// What a failure means for the job: a new attempt may cure a lost peer, a lost
// coordinator or a superseded attempt (at once), and a full disk (after a pause: a
// checkpoint or event that could not be written). Everything else (bad data, a bad
// config) fails the same way again.
v1::RankOutcome OutcomeOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kCancelled: return v1::RANK_OUTCOME_STOPPED;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted: return v1::RANK_OUTCOME_INTERRUPTED;
    case absl::StatusCode::kResourceExhausted: return v1::RANK_OUTCOME_RETRY_LATER;
    default: return v1::RANK_OUTCOME_FAILED;
  }
}

}  // namespace

RankResult RunRank(const v1::RankAssignment& rank, RankIo& io, const RankRunnerOptions& options,
                   std::atomic<bool>* stop) {
  const std::string dir = AttemptDir(rank, options);
  std::error_code ignored;
  std::filesystem::create_directories(dir, ignored);
  absl::StatusOr<RankResult> result = RunRankOrError(rank, io, options, stop);
  std::filesystem::remove_all(dir, ignored);
  if (result.ok()) return *result;
  const absl::Status& error = result.status();
  // Damaged data names its code, so the job's error says DATA_LOSS and which object.
  std::string message(error.message());
  if (absl::IsDataLoss(error) || absl::IsResourceExhausted(error)) {
    message = absl::StrCat(absl::StatusCodeToString(error.code()), ": ", message);
  }
  return RankResult{OutcomeOf(error.code()), std::move(message), 0};
}

}  // namespace miseg

// The semi-supervised trainer: the objective of docs/method.md on labeled and
// unlabeled slice streams drawn from 3D volumes, Adam with warm-up and cosine decay,
// validation by 3D Dice, checkpoint and resume. A training job is a resumable step machine
// (as Orthanc's jobs): Run advances it, SaveCheckpoint / LoadCheckpoint persist everything
// that determines the next step, so a resumed run continues exactly as if never stopped.
//
// Torch-free header. Thread safety: one thread drives a Trainer (during Run a loader thread
// of its own draws the next steps' batches ahead, config.prefetch_batches); `cancel` may be
// set from any thread and is honoured between steps. Trainers on different threads are independent:
// every random draw (initial weights, sampling, augmentation, perturbations, noise) comes
// from generators the trainer owns, seeded from config.seed and saved in checkpoints, never
// from LibTorch's global generator. (config.threads still sets LibTorch's intra-op thread
// count, which is per calling thread under OpenMP but process-wide for other backends; and
// the BLAS underneath must itself be thread safe, see core/train/blas.h.)
//
// Data parallel (DataParallel::world_size > 1): every rank runs a Trainer with the same config
// and data and a Collectives of one group (core/dist/process_group.h); the ranks then train
// one model on a global batch of world_size times the configured batches.
// - Replicas: rank 0's parameters and buffers are broadcast after Create and LoadCheckpoint.
//   Gradients are averaged over the ranks after each backward pass (flattened into buckets
//   of at most 25 MiB, summed, divided by world_size) before the optimizer step, so every
//   rank's optimizer takes the same step. Batch-norm statistics are per rank within a step
//   (each normalises its own batch), and so are the MI term's joint distributions J_t (the
//   gradient is the mean of the ranks' L_mi gradients, not that of L_mi over the global
//   batch). The running batch-norm statistics are then replaced by rank 0's (what DDP's
//   broadcast_buffers does, here after the step rather than before the next forward), so
//   replicas are identical at every step boundary: validation, checkpoints and exported
//   models agree whichever rank makes them.
// - Random state is a function of the step: the global batch (world_size x labeled_batch
//   labeled and likewise unlabeled slices, without replacement within a step as far as the
//   data allows, rank r taking the r-th chunk, so the ranks' slices are disjoint) comes from
//   a generator seeded from (seed, step) shared by all ranks; augmentation, perturbations
//   and noise from one seeded from (seed, step, rank). Checkpoints hold no per-rank state,
//   only rank 0 needs to write them, and a resumed run of the same world size continues
//   exactly. (The seed is config.seed, or the seed stored in a loaded checkpoint.)
// - Collectives, which every rank must call in the same order: Create, LoadCheckpoint,
//   Run (every step, and validation) and Validate. SaveCheckpoint and ExportModel are local.
// - Stopping: before each step the ranks agree whether any was cancelled, so all stop at the
//   same step boundary. max_steps must be equal on all ranks.
// - Logged losses are means over the ranks; slices_per_second is this rank's. Validation
//   volumes are split round-robin over the ranks and the Dice gathered: every rank gets the
//   full ValidationMetrics.
// - A failed collective (a rank gone, a timeout) makes Run, Validate, LoadCheckpoint or
//   Create return Unavailable: retryable, by rebuilding the group under a new prefix and
//   every rank's trainer from the last checkpoint; this trainer is then unusable.
// world_size == 1 trains exactly as a trainer without DataParallel, collective-free.
#ifndef MISEG_CORE_TRAIN_TRAINER_H_
#define MISEG_CORE_TRAIN_TRAINER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/train/config.h"
#include "core/volume/volume.h"

namespace miseg {

class Collectives;  // core/train/collectives.h; built by core/dist/process_group.h

struct TrainingVolume {
  std::string id;  // e.g. a series UID; only used in messages
  ImageVolume image;
  std::optional<LabelVolume> labels;  // required for labeled and validation volumes
};

struct TrainingData {
  std::vector<TrainingVolume> labeled;
  std::vector<TrainingVolume> unlabeled;
  std::vector<TrainingVolume> validation;
};

// One optimisation step, as the server streams it.
struct StepMetrics {
  int64_t step = 0;  // steps completed, 1-based after the first step
  int64_t total_steps = 0;
  double loss = 0;                // the full objective
  double supervised = 0;          // L_sup
  double consistency = 0;         // L_cons (0 when its weight and w_mi are 0)
  double mutual_information = 0;  // L_mi (negative: -mean_t I_t)
  double entropy = 0;             // entropy minimisation's term (that objective only)
  double unsupervised_weight = 0; // ramp-up w(step)
  double learning_rate = 0;
  double steps_per_second = 0;    // over the last log window
  double slices_per_second = 0;   // forward-pass slices (labeled + unlabeled + perturbed)
  // Data parallel: wall time of the gradient all-reduce (flattening, communication, copying
  // back, and waiting for the slowest rank to get there), per step over the last log window,
  // and the gradient bytes all-reduced per step.
  double allreduce_seconds = 0;
  int64_t allreduce_bytes = 0;
  // With verify_replicas: FNV-1a 64 of the parameters' and buffers' bytes after the step.
  uint64_t parameter_hash = 0;
  // Seconds per step each rank spent computing (its step's wall time less the all-reduce,
  // which includes waiting for the slowest rank), over the last log window, by rank: a
  // straggler shows here. One entry with one rank.
  std::vector<double> rank_compute_seconds;
};

struct ValidationMetrics {
  int64_t step = 0;
  std::vector<double> dice_per_class;  // foreground classes 1..K-1, mean over volumes
  double mean_dice = 0;                // mean of dice_per_class
  std::vector<std::vector<double>> dice_per_volume;  // [volume][class - 1]
};

struct TrainerCallbacks {
  std::function<void(const StepMetrics&)> on_step;
  std::function<void(const ValidationMetrics&)> on_validation;
};

enum class RunOutcome {
  kFinished,   // reached total_steps
  kCancelled,  // cancel was set
  kStepLimit,  // ran max_steps steps in this call
};

// This trainer's place in a data-parallel group (see the top of this file).
struct DataParallel {
  int rank = 0;
  int world_size = 1;
  std::shared_ptr<Collectives> collectives;  // required when world_size > 1
  // Debug: after every step all ranks hash their parameters and buffers and compare; Run
  // returns Internal "replicas diverged at step N" on a mismatch. Sets
  // StepMetrics::parameter_hash (also with one rank).
  bool verify_replicas = false;
};

class Trainer {
 public:
  // Validates the config, the data (InvalidArgument naming the volume) and `parallel`
  // (InvalidArgument unless world_size > 1 comes with collectives of that rank and size),
  // prepares every volume onto the model grid and builds the model with the config's seed.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const TrainerConfig& config,
                                                         const TrainingData& data,
                                                         DataParallel parallel = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Trains until total_steps, cancellation, or max_steps steps (< 0: no limit). Validates
  // every validate_every steps and at the end.
  absl::StatusOr<RunOutcome> Run(const TrainerCallbacks& callbacks,
                                 const std::atomic<bool>* cancel = nullptr,
                                 int64_t max_steps = -1);

  absl::StatusOr<ValidationMetrics> Validate();

  // Checkpoint: model, optimizer, step, random state (atomic write). Loading one made with
  // another model spec is FailedPrecondition; a corrupt file DataLoss. Data parallel: every
  // rank loads the same file; FailedPrecondition when another rank could not, or loaded
  // another step.
  absl::Status SaveCheckpoint(const std::string& path);
  absl::Status LoadCheckpoint(const std::string& path);
  // The model alone, for serving (readable by Segmenter::Load).
  absl::Status ExportModel(const std::string& path);

  int64_t step() const;
  const TrainerConfig& config() const;

 private:
  struct State;
  explicit Trainer(std::unique_ptr<State> state);
  static absl::Status LoadCheckpointLocally(State& s, const std::string& path);
  std::unique_ptr<State> state_;
};

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_TRAINER_H_

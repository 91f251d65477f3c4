// The semi-supervised trainer: the objective of docs/method.md on labeled and
// unlabeled slice streams drawn from 3D volumes, Adam with warm-up and cosine decay,
// validation by 3D Dice, checkpoint and resume. A training job is a resumable step machine
// (as Orthanc's jobs): Run advances it, SaveCheckpoint / LoadCheckpoint persist everything
// that determines the next step, so a resumed run continues exactly as if never stopped.
//
// Torch-free header. Thread safety: one thread drives a Trainer; `cancel` may be set from
// any thread and is honoured between steps. Trainers on different threads are independent:
// every random draw (initial weights, sampling, augmentation, perturbations, noise) comes
// from generators the trainer owns, seeded from config.seed and saved in checkpoints, never
// from LibTorch's global generator. (config.threads still sets LibTorch's intra-op thread
// count, which is per calling thread under OpenMP but process-wide for other backends; and
// the BLAS underneath must itself be thread safe, see core/train/blas.h.)
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
  double unsupervised_weight = 0; // ramp-up w(step)
  double learning_rate = 0;
  double steps_per_second = 0;    // over the last log window
  double slices_per_second = 0;   // forward-pass slices (labeled + unlabeled + perturbed)
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

class Trainer {
 public:
  // Validates the config and the data (InvalidArgument naming the volume), prepares every
  // volume onto the model grid and builds the model with the config's seed.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const TrainerConfig& config,
                                                         const TrainingData& data);
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
  // another model spec is FailedPrecondition; a corrupt file DataLoss.
  absl::Status SaveCheckpoint(const std::string& path);
  absl::Status LoadCheckpoint(const std::string& path);
  // The model alone, for serving (readable by Segmenter::Load).
  absl::Status ExportModel(const std::string& path);

  int64_t step() const;
  const TrainerConfig& config() const;

 private:
  struct State;
  explicit Trainer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_TRAINER_H_

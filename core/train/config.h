// Plain configuration structs of the training core. Torch-free on purpose: the server
// and the CLI fill these from requests and flags without compiling LibTorch headers.
// Defaults follow docs/method.md (the authors' re-implementation) unless noted.
#ifndef MISEG_CORE_TRAIN_CONFIG_H_
#define MISEG_CORE_TRAIN_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace miseg {

// The network, and the grid it sees. Everything needed to rebuild a model for inference,
// so it is stored inside every checkpoint and exported model.
struct ModelSpec {
  int64_t classes = 4;  // including background
  std::vector<int64_t> widths = {16, 32, 64, 128, 256};  // one per U-Net level
  // In-plane model grid: every slice is resampled to grid_size x grid_size.
  int64_t grid_size = 128;
  // In-plane spacing of the model grid in mm. 0 fits each slice's whole field of view into
  // the grid (aspect kept); > 0 resamples to this spacing and centre-crops or pads.
  double target_spacing_mm = 0.0;
  // Robust intensity normalisation: clip to these percentiles, then zero mean, unit variance.
  double clip_low_percentile = 0.5;
  double clip_high_percentile = 99.5;
};

enum class ConsistencyKind { kMeanSquaredError, kKullbackLeibler };

// What the unlabeled slices add to the supervised loss (each term times the ramp-up w(t)).
// The method and its ablations, and the rivals it is measured against (bench/RESULTS.md).
enum class Objective {
  // The method (docs/method.md): w_cons L_cons(p(T x), T p(x)) + w_mi L_mi.
  kMutualInformation,
  // The supervised loss alone; unlabeled slices are not drawn.
  kLabeledOnly,
  // Entropy minimisation (Grandvalet and Bengio 2005): w_entropy times the mean over
  // unlabeled pixels of -sum_k p_k log p_k.
  kEntropyMinimization,
  // Mean teacher (Tarvainen and Valpola 2017): w_cons L_cons(p_student(T x),
  // T p_teacher(x)), the teacher's weights an exponential moving average (ema_decay) of the
  // student's, updated after every step; the student is the model trained and exported.
  kMeanTeacher,
  // The method without its MI term (w_mi taken as 0).
  kConsistencyOnly,
  // The method without its consistency term (w_cons taken as 0).
  kMutualInformationOnly,
};

// "mi" (the method), "labeled_only", "entropy", "mean_teacher", "consistency_only",
// "mi_only"; InvalidArgument for another name.
absl::StatusOr<Objective> ParseObjective(const std::string& name);
const char* ObjectiveName(Objective objective);

struct TrainerConfig {
  ModelSpec model;
  std::string device = "cpu";  // any torch device string: "cpu", "cuda", "cuda:1"
  int threads = 0;             // intra-op CPU threads; 0 leaves LibTorch's default
  uint64_t seed = 1;

  // Batches and crops.
  int64_t labeled_batch = 4;
  int64_t unlabeled_batch = 8;
  int64_t crop_size = 0;  // random training crops from the model grid; 0 = no crop
  // Draw unlabeled slices from labeled studies too (their labels unused there).
  bool unlabeled_includes_labeled = true;

  // Schedule: Adam, linear warm-up, then cosine decay to min_learning_rate.
  int64_t total_steps = 2000;
  int64_t warmup_steps = 100;
  double learning_rate = 1e-3;
  double min_learning_rate = 1e-5;
  double weight_decay = 1e-5;

  // Objective: L_sup + w(step) * (w_cons * L_cons + w_mi * L_mi).
  double w_mi = 0.1;
  double w_cons = 5.0;
  double dice_weight = 0.0;  // soft Dice added to cross-entropy; 0 = CE alone, as the authors
  int64_t rampup_steps = 500;
  int64_t mi_window = 1;  // d: displacements |dy|, |dx| <= d
  double mi_lambda = 1.0;
  double mi_epsilon = 1e-8;
  ConsistencyKind consistency = ConsistencyKind::kMeanSquaredError;
  Objective objective = Objective::kMutualInformation;
  double w_entropy = 0.1;   // entropy minimisation's weight
  double ema_decay = 0.99;  // mean teacher's EMA decay (alpha), as Tarvainen and Valpola

  // Perturbation T of the unlabeled branch (exact inverse on the pixel grid).
  double perturb_flip_probability = 0.8;  // each of the two flips, as the authors
  bool perturb_rotate90 = true;           // dihedral rotations (square crops only)
  // Intensity perturbation of T x only (needs no inverse).
  double perturb_contrast = 0.2;    // factor drawn from [1 - c, 1 + c]
  double perturb_gamma = 0.3;       // exponent drawn from [1 - g, 1 + g]
  double perturb_noise_std = 0.05;  // in units of the normalised intensity

  // Training augmentation of every sampled slice.
  double augment_rotation_deg = 45.0;
  double augment_flip_probability = 0.5;
  double augment_intensity_min = 0.5;
  double augment_intensity_max = 1.5;

  // Validation by 3D Dice per class per volume.
  int64_t validate_every = 200;  // 0 = only at the end
  bool validation_flip_tta = false;
  int64_t inference_batch = 16;  // slices per forward pass in validation
  int64_t log_every = 1;         // step metrics every n steps

  // Speed only, never values (issue 15): the network's weights and activations in
  // channels-last memory format where the device prefers it (CUDA; see
  // core/train/memory_layout.h for why not the CPU).
  bool channels_last = true;
  // CUDA only: forward passes in bfloat16 autocast, losses in float32
  // (core/train/mixed_precision.h). Ignored on the CPU.
  bool cuda_bf16 = true;
  // Steps whose batches a loader thread prepares ahead of the step being trained (sampling,
  // augmentation, perturbation; core/train/prefetcher.h): the same batches in the same
  // order from the same generators, only earlier. 0 prepares each on the training thread.
  int prefetch_batches = 2;
  // CUDA only: the step's forward passes, losses and backward pass captured once as a CUDA
  // graph and replayed (core/train/step_graph.h); a capture that fails falls back to eager
  // steps. Off by default until measured on a GPU (bench/gpu.sh). Ignored on the CPU.
  bool cuda_graphs = false;

  // Checks ranges and combinations; InvalidArgument naming the first bad field.
  absl::Status Validate() const;
};

// Text form "key=value" per line, stored in checkpoints so a model file describes itself.
std::string SerializeModelSpec(const ModelSpec& spec);
absl::StatusOr<ModelSpec> ParseModelSpec(const std::string& text);
absl::Status ValidateModelSpec(const ModelSpec& spec);

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_CONFIG_H_

// Trainer: sampling, the full objective, the schedule, validation and checkpoints.
#include "core/train/trainer.h"

#include <chrono>
#include <sstream>
#include <utility>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/nn/functional/activation.h>
#include <torch/optim/adam.h>

#include "absl/strings/str_cat.h"
#include "core/train/dice.h"
#include "core/train/losses.h"
#include "core/train/model_io.h"
#include "core/train/perturbation.h"
#include "core/train/preprocess.h"
#include "core/train/torch_status.h"

namespace miseg {
namespace {

struct SliceRef {
  int32_t volume;
  int32_t slice;
};

struct Batch {
  torch::Tensor images;  // B x 1 x G x G
  torch::Tensor labels;  // B x G x G, or undefined
};

}  // namespace

struct Trainer::State {
  TrainerConfig config;
  torch::Device device{torch::kCPU};
  UNet model{nullptr};
  std::unique_ptr<torch::optim::Adam> optimizer;
  int64_t step = 0;
  std::mt19937_64 rng;
  at::Generator noise_generator;

  std::vector<PreparedVolume> labeled;    // images + labels
  std::vector<PreparedVolume> unlabeled;  // images only
  std::vector<PreparedVolume> validation;
  std::vector<LabelVolume> validation_truth;  // on the original grid, for 3D Dice
  std::vector<SliceRef> labeled_slices;
  std::vector<SliceRef> unlabeled_slices;
  // Derived from config once, in Create.
  AugmentationOptions augmentation;
  IntensityPerturbation intensity_perturbation;

  bool UnsupervisedActive() const {
    return (config.w_mi > 0 || config.w_cons > 0) && config.unlabeled_batch > 0 &&
           !unlabeled_slices.empty();
  }

  Batch Sample(const std::vector<SliceRef>& slices, const std::vector<PreparedVolume>& volumes,
               int64_t count, bool with_labels) {
    std::vector<torch::Tensor> images, labels;
    for (int64_t i = 0; i < count; ++i) {
      const SliceRef ref = slices[static_cast<size_t>(UniformInt(rng, static_cast<int64_t>(slices.size())))];
      const PreparedVolume& v = volumes[static_cast<size_t>(ref.volume)];
      images.push_back(v.images.select(0, ref.slice));
      if (with_labels) labels.push_back(v.labels.select(0, ref.slice));
    }
    Batch batch{torch::stack(images), with_labels ? torch::stack(labels) : torch::Tensor()};
    Augment(augmentation, rng, batch.images, batch.labels);
    return batch;
  }

  StepMetrics TrainStep() {
    const TrainerConfig& c = config;
    Batch labeled_batch = Sample(labeled_slices, labeled, c.labeled_batch, /*with_labels=*/true);
    const bool unsupervised = UnsupervisedActive();
    const int64_t nl = c.labeled_batch;
    const int64_t nu = unsupervised ? c.unlabeled_batch : 0;
    const torch::Tensor labeled_input = labeled_batch.images.to(device);
    torch::Tensor unlabeled_input;  // x and T x, one pass: both branches share statistics
    std::vector<DihedralTransform> transforms;
    if (unsupervised) {
      Batch unlabeled_batch = Sample(unlabeled_slices, unlabeled, nu, /*with_labels=*/false);
      const bool square = unlabeled_batch.images.size(-1) == unlabeled_batch.images.size(-2);
      for (int64_t i = 0; i < nu; ++i) {
        transforms.push_back(
            SampleDihedral(rng, c.perturb_flip_probability, c.perturb_rotate90 && square));
      }
      const torch::Tensor x = unlabeled_batch.images.to(device);
      const torch::Tensor perturbed = PerturbIntensity(ApplyDihedral(transforms, x),
                                                       intensity_perturbation, rng, noise_generator);
      unlabeled_input = torch::cat({x, perturbed}, 0);
    }
    model->train();
    // Labeled slices get a forward pass of their own, so the batch-norm statistics the
    // supervised loss trains under are those of labeled data alone; concatenating them with
    // the unlabeled slices was measured to wreck eval-mode Dice on the phantom (bench/RESULTS.md).
    torch::Tensor logits = model->forward(labeled_input);
    if (unsupervised) logits = torch::cat({logits, model->forward(unlabeled_input)}, 0);
    const torch::Tensor supervised =
        SupervisedLoss(logits.narrow(0, 0, nl), labeled_batch.labels.to(device), c.dice_weight);
    torch::Tensor loss = supervised;
    StepMetrics m;
    m.unsupervised_weight = RampUpWeight(step, c.rampup_steps);
    if (unsupervised) {
      const torch::Tensor probs = torch::softmax(logits.narrow(0, nl, 2 * nu), 1);
      const torch::Tensor a = ApplyDihedral(transforms, probs.narrow(0, 0, nu));
      const torch::Tensor cp = probs.narrow(0, nu, nu);
      const torch::Tensor mi = MutualInformationLoss(a, cp, {c.mi_window, c.mi_lambda, c.mi_epsilon});
      const torch::Tensor cons = ConsistencyLoss(cp, a, c.consistency);
      loss = loss + m.unsupervised_weight * (c.w_cons * cons + c.w_mi * mi);
      m.mutual_information = mi.item<double>();
      m.consistency = cons.item<double>();
    }
    m.learning_rate =
        LearningRateAt(step, c.total_steps, c.warmup_steps, c.learning_rate, c.min_learning_rate);
    for (auto& group : optimizer->param_groups()) {
      static_cast<torch::optim::AdamOptions&>(group.options()).lr(m.learning_rate);
    }
    optimizer->zero_grad();
    loss.backward();
    optimizer->step();
    ++step;
    m.step = step;
    m.total_steps = c.total_steps;
    m.loss = loss.item<double>();
    m.supervised = supervised.item<double>();
    m.slices_per_second = static_cast<double>(nl + 2 * nu);  // per step; scaled by caller
    return m;
  }

  ValidationMetrics ValidateNow() {
    ValidationMetrics v;
    v.step = step;
    const int64_t foreground = config.model.classes - 1;
    v.dice_per_class.assign(static_cast<size_t>(foreground), 0.0);
    model->eval();
    for (size_t i = 0; i < validation.size(); ++i) {
      const LabelVolume predicted = SegmentPrepared(model, validation[i], device,
                                                    config.inference_batch, config.validation_flip_tta);
      // Grids and classes were checked when the data was prepared.
      std::vector<double> dice = *DicePerClass(predicted, validation_truth[i], config.model.classes);
      for (int64_t k = 0; k < foreground; ++k) v.dice_per_class[k] += dice[k] / validation.size();
      v.dice_per_volume.push_back(std::move(dice));
    }
    model->train();
    double sum = 0;
    for (double d : v.dice_per_class) sum += d;
    v.mean_dice = foreground > 0 ? sum / static_cast<double>(foreground) : 0;
    return v;
  }
};

Trainer::Trainer(std::unique_ptr<State> state) : state_(std::move(state)) {}
Trainer::~Trainer() = default;
int64_t Trainer::step() const { return state_->step; }
const TrainerConfig& Trainer::config() const { return state_->config; }

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainerConfig& config,
                                                         const TrainingData& data) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (data.labeled.empty()) return absl::InvalidArgumentError("training needs at least one labeled volume");
  auto state = std::make_unique<State>();
  state->config = config;
  state->augmentation = {config.augment_rotation_deg, config.augment_flip_probability,
                         config.augment_intensity_min, config.augment_intensity_max,
                         config.crop_size};
  state->intensity_perturbation = {config.perturb_contrast, config.perturb_gamma,
                                   config.perturb_noise_std};
  auto device = ResolveDevice(config.device);
  if (!device.ok()) return device.status();
  state->device = *device;

  const auto prepare = [&](const std::vector<TrainingVolume>& volumes, const char* role,
                           bool needs_labels, std::vector<PreparedVolume>& out) -> absl::Status {
    for (const TrainingVolume& v : volumes) {
      if (needs_labels && !v.labels.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(role, " volume '", v.id, "' has no labels"));
      }
      auto prepared = PrepareVolume(v.image, needs_labels ? &*v.labels : nullptr, config.model);
      if (!prepared.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(role, " volume '", v.id, "': ", prepared.status().message()));
      }
      out.push_back(std::move(*prepared));
    }
    return absl::OkStatus();
  };
  absl::Status status = GuardTorch("preparing training data", absl::StatusCode::kInternal, [&] {
    if (absl::Status s = prepare(data.labeled, "labeled", true, state->labeled); !s.ok()) return s;
    if (absl::Status s = prepare(data.unlabeled, "unlabeled", false, state->unlabeled); !s.ok()) return s;
    if (absl::Status s = prepare(data.validation, "validation", true, state->validation); !s.ok()) return s;
    for (const TrainingVolume& v : data.validation) state->validation_truth.push_back(*v.labels);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;

  for (size_t v = 0; v < state->labeled.size(); ++v) {
    for (int64_t s = 0; s < state->labeled[v].images.size(0); ++s) {
      state->labeled_slices.push_back({static_cast<int32_t>(v), static_cast<int32_t>(s)});
    }
  }
  if (config.unlabeled_includes_labeled) {
    // Labeled images join the unlabeled stream: the regulariser sees every training slice.
    for (PreparedVolume v : state->labeled) {
      v.labels = torch::Tensor();
      state->unlabeled.push_back(std::move(v));
    }
  }
  for (size_t v = 0; v < state->unlabeled.size(); ++v) {
    for (int64_t s = 0; s < state->unlabeled[v].images.size(0); ++s) {
      state->unlabeled_slices.push_back({static_cast<int32_t>(v), static_cast<int32_t>(s)});
    }
  }

  status = GuardTorch("building the model", absl::StatusCode::kInternal, [&] {
    if (config.threads > 0) at::set_num_threads(config.threads);
    // Every random draw of a trainer comes from generators it owns, all seeded from
    // config.seed; LibTorch's global generator would be shared with every other trainer
    // of the process. The construction's own draws from it are overwritten at once.
    state->rng.seed(config.seed);
    state->noise_generator = at::make_generator<at::CPUGeneratorImpl>(config.seed ^ 0x9E3779B97F4A7C15ULL);
    at::Generator init_generator = at::make_generator<at::CPUGeneratorImpl>(config.seed);
    state->model = UNet(UNetOptionsFor(config.model));
    state->model->InitializeParameters(init_generator);
    state->model->to(state->device);
    state->optimizer = std::make_unique<torch::optim::Adam>(
        state->model->parameters(),
        torch::optim::AdamOptions(config.learning_rate).weight_decay(config.weight_decay));
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return std::unique_ptr<Trainer>(new Trainer(std::move(state)));
}

absl::StatusOr<RunOutcome> Trainer::Run(const TrainerCallbacks& callbacks,
                                        const std::atomic<bool>* cancel, int64_t max_steps) {
  State& s = *state_;
  const TrainerConfig& c = s.config;
  RunOutcome outcome = RunOutcome::kFinished;
  absl::Status status = GuardTorch("training step", absl::StatusCode::kInternal, [&] {
    using Clock = std::chrono::steady_clock;
    Clock::time_point window_start = Clock::now();
    int64_t window_steps = 0;
    int64_t steps_run = 0;
    while (s.step < c.total_steps) {
      if (cancel != nullptr && cancel->load(std::memory_order_relaxed)) {
        outcome = RunOutcome::kCancelled;
        return absl::OkStatus();
      }
      if (max_steps >= 0 && steps_run >= max_steps) {
        outcome = RunOutcome::kStepLimit;
        return absl::OkStatus();
      }
      StepMetrics m = s.TrainStep();
      ++steps_run;
      ++window_steps;
      const bool last = s.step == c.total_steps;
      if (s.step % c.log_every == 0 || last) {
        const double seconds =
            std::chrono::duration<double>(Clock::now() - window_start).count();
        m.steps_per_second = seconds > 0 ? window_steps / seconds : 0;
        m.slices_per_second *= m.steps_per_second;
        if (callbacks.on_step) callbacks.on_step(m);
        window_start = Clock::now();
        window_steps = 0;
      }
      if (!s.validation.empty() &&
          ((c.validate_every > 0 && s.step % c.validate_every == 0) || last)) {
        ValidationMetrics v = s.ValidateNow();
        if (callbacks.on_validation) callbacks.on_validation(v);
        window_start = Clock::now();  // validation time is not training throughput
      }
    }
    outcome = RunOutcome::kFinished;
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return outcome;
}

absl::StatusOr<ValidationMetrics> Trainer::Validate() {
  if (state_->validation.empty()) return absl::FailedPreconditionError("no validation volumes");
  ValidationMetrics v;
  absl::Status status = GuardTorch("validation", absl::StatusCode::kInternal, [&] {
    v = state_->ValidateNow();
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return v;
}

absl::Status Trainer::SaveCheckpoint(const std::string& path) {
  State& s = *state_;
  torch::serialize::OutputArchive archive;
  absl::Status status = GuardTorch("checkpoint", absl::StatusCode::kInternal, [&] {
    WriteModel(archive, s.config.model, s.model);
    torch::serialize::OutputArchive optimizer;
    s.optimizer->save(optimizer);
    archive.write("optimizer", optimizer);
    archive.write("miseg/step", c10::IValue(s.step));
    std::ostringstream rng;
    rng << s.rng;
    archive.write("miseg/rng", c10::IValue(rng.str()));
    archive.write("miseg/noise_generator", s.noise_generator.get_state());
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return SaveArchiveAtomically(archive, path);
}

absl::Status Trainer::LoadCheckpoint(const std::string& path) {
  State& s = *state_;
  auto archive = OpenArchive(path);
  if (!archive.ok()) return archive.status();
  auto spec = ReadSpec(*archive);
  if (!spec.ok()) return spec.status();
  if (SerializeModelSpec(*spec) != SerializeModelSpec(s.config.model)) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", path, " was made for another model spec"));
  }
  return GuardTorch(absl::StrCat("restoring checkpoint ", path), absl::StatusCode::kDataLoss, [&] {
    c10::IValue step, rng_text;
    torch::serialize::InputArchive weights, optimizer;
    if (!archive->try_read("model", weights) || !archive->try_read("optimizer", optimizer) ||
        !archive->try_read("miseg/step", step) || !archive->try_read("miseg/rng", rng_text) ||
        !step.isInt() || !rng_text.isString()) {
      return absl::DataLossError(absl::StrCat(path, " is not a complete training checkpoint"));
    }
    torch::Tensor noise_state;
    archive->read("miseg/noise_generator", noise_state);
    std::istringstream rng_in(rng_text.toStringRef());
    std::mt19937_64 rng;
    rng_in >> rng;
    if (rng_in.fail()) return absl::DataLossError(absl::StrCat(path, ": corrupt random state"));
    // Everything parsed: only now touch the live state.
    s.model->load(weights);
    s.model->to(s.device);
    s.optimizer->load(optimizer);
    // Optimizer state was read on the CPU; it must live where the parameters are.
    for (auto& entry : s.optimizer->state()) {
      auto& adam = static_cast<torch::optim::AdamParamState&>(*entry.second);
      adam.exp_avg(adam.exp_avg().to(s.device));
      adam.exp_avg_sq(adam.exp_avg_sq().to(s.device));
      if (adam.max_exp_avg_sq().defined()) adam.max_exp_avg_sq(adam.max_exp_avg_sq().to(s.device));
    }
    s.noise_generator.set_state(noise_state);
    s.rng = rng;
    s.step = step.toInt();
    return absl::OkStatus();
  });
}

absl::Status Trainer::ExportModel(const std::string& path) {
  torch::serialize::OutputArchive archive;
  absl::Status status = GuardTorch("exporting model", absl::StatusCode::kInternal, [&] {
    WriteModel(archive, state_->config.model, state_->model);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return SaveArchiveAtomically(archive, path);
}

}  // namespace miseg

// Trainer: sampling, the full objective, the schedule, validation and checkpoints.
#include "core/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <utility>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/nn/functional/activation.h>
#include <torch/optim/adam.h>

#include "absl/strings/str_cat.h"
#include "core/train/collectives.h"
#include "core/train/cuda_graph.h"
#include "core/train/dice.h"
#include "core/train/losses.h"
#include "core/train/memory_layout.h"
#include "core/train/mixed_precision.h"
#include "core/train/model_io.h"
#include "core/train/segment_prepared.h"
#include "core/train/perturbation.h"
#include "core/train/prefetcher.h"
#include "core/train/preprocess.h"
#include "core/train/step_graph.h"
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

using Clock = std::chrono::steady_clock;

// The generators one step draws from. One rank: the trainer's own, carried from step to step
// and saved in checkpoints. Data parallel: fresh ones derived from the step (see trainer.h).
struct StepRandom {
  std::mt19937_64* sampling;  // which slices
  std::mt19937_64* local;     // augmentation, perturbations
  at::Generator* noise;
};

// Gradients of consecutive parameters of one dtype, flattened for one all-reduce.
struct GradientBucket {
  std::vector<size_t> parameters;  // indices into model->parameters()
  torch::Tensor flat;
};

// DDP's default bucket size: large enough that per-operation latency does not dominate.
constexpr int64_t kBucketBytes = int64_t{25} << 20;

// Carries a status out of a training step through GuardTorch: a failed collective
// (Unavailable, retryable) or diverged replicas (Internal) keep their own code and message.
class StepFailure : public std::runtime_error {
 public:
  explicit StepFailure(absl::Status status)
      : std::runtime_error(std::string(status.message())), status_(std::move(status)) {}
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
};

void ThrowIfFailed(absl::Status status) {
  if (!status.ok()) throw StepFailure(std::move(status));
}

// GuardTorch for code that may throw StepFailure.
template <typename Fn>
absl::Status GuardStep(absl::string_view context, Fn&& fn) {
  return GuardTorch(context, absl::StatusCode::kInternal, [&]() -> absl::Status {
    try {
      return fn();
    } catch (const StepFailure& failure) {
      return failure.status();
    }
  });
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Seeds of the data-parallel streams: stream 0 is shared by the ranks, 1 + r is rank r's.
uint64_t StreamSeed(uint64_t seed, int64_t step, uint64_t stream) {
  return SplitMix64(SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(step)) ^ stream);
}

// FNV-1a 64 over the bytes of a CPU contiguous copy.
uint64_t HashBytes(uint64_t hash, const torch::Tensor& t) {
  const torch::Tensor cpu = t.detach().to(torch::kCPU).contiguous();
  const auto* bytes = static_cast<const unsigned char*>(cpu.data_ptr());
  const size_t size = static_cast<size_t>(cpu.numel()) * cpu.element_size();
  for (size_t i = 0; i < size; ++i) hash = (hash ^ bytes[i]) * 0x100000001B3ULL;
  return hash;
}

absl::Status ValidateParallel(const DataParallel& p) {
  if (p.world_size < 1) return absl::InvalidArgumentError("world_size must be at least 1");
  if (p.rank < 0 || p.rank >= p.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", p.rank, " is outside [0, ", p.world_size, ")"));
  }
  if (p.world_size > 1 && p.collectives == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("world_size ", p.world_size, " needs collectives"));
  }
  if (p.collectives != nullptr &&
      (p.collectives->rank() != p.rank || p.collectives->world_size() != p.world_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", p.rank, " of ", p.world_size, " given the collectives of rank ",
        p.collectives->rank(), " of ", p.collectives->world_size()));
  }
  return absl::OkStatus();
}

// The volumes of one role on the model grid, appended to out; InvalidArgument naming the
// volume that has no labels where they are needed, or cannot be prepared.
absl::Status PrepareVolumes(const std::vector<TrainingVolume>& volumes, const char* role,
                            bool needs_labels, const ModelSpec& spec,
                            std::vector<PreparedVolume>& out) {
  for (const TrainingVolume& v : volumes) {
    if (needs_labels && !v.labels.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(role, " volume '", v.id, "' has no labels"));
    }
    auto prepared = PrepareVolume(v.image, needs_labels ? &*v.labels : nullptr, spec);
    if (!prepared.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(role, " volume '", v.id, "': ", prepared.status().message()));
    }
    out.push_back(std::move(*prepared));
  }
  return absl::OkStatus();
}

// Every slice of the volumes, volume by volume.
std::vector<SliceRef> SliceRefs(const std::vector<PreparedVolume>& volumes) {
  std::vector<SliceRef> slices;
  for (size_t v = 0; v < volumes.size(); ++v) {
    for (int64_t s = 0; s < volumes[v].images.size(0); ++s) {
      slices.push_back({static_cast<int32_t>(v), static_cast<int32_t>(s)});
    }
  }
  return slices;
}

}  // namespace

struct Trainer::State {
  TrainerConfig config;
  torch::Device device{torch::kCPU};
  UNet model{nullptr};
  UNet teacher{nullptr};  // mean teacher only: the EMA of the model's weights
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

  DataParallel parallel;
  uint64_t stream_seed = 0;  // seeds the data-parallel streams; config.seed or a checkpoint's
  std::vector<GradientBucket> buckets;  // data parallel only
  // config.cuda_graphs on CUDA: the step's graph, captured at the first step of a Run.
  std::unique_ptr<StepGraph> step_graph;
  bool step_graph_failed = false;
  int64_t allreduce_bytes = 0;

  bool distributed() const { return parallel.world_size > 1; }

  // The method's two weights as the objective takes them: (w_cons, w_mi).
  std::pair<double, double> MethodWeights() const {
    switch (config.objective) {
      case Objective::kConsistencyOnly: return {config.w_cons, 0.0};
      case Objective::kMutualInformationOnly: return {0.0, config.w_mi};
      default: return {config.w_cons, config.w_mi};
    }
  }

  bool UnsupervisedActive() const {
    if (config.unlabeled_batch == 0 || unlabeled_slices.empty()) return false;
    switch (config.objective) {
      case Objective::kLabeledOnly: return false;
      case Objective::kEntropyMinimization: return config.w_entropy > 0;
      case Objective::kMeanTeacher: return config.w_cons > 0;
      default: {
        const auto [w_cons, w_mi] = MethodWeights();
        return w_cons > 0 || w_mi > 0;
      }
    }
  }

  // This rank's `count` slices of the step. One rank: independent uniform draws. Data
  // parallel: the global batch of world_size x count slices without replacement (whole
  // permutations one after the other where it exceeds the slices), rank r taking chunk r.
  std::vector<SliceRef> PickSlices(const std::vector<SliceRef>& slices, int64_t count,
                                   std::mt19937_64& gen) const {
    const int64_t n = static_cast<int64_t>(slices.size());
    std::vector<SliceRef> picked;
    if (!distributed()) {
      for (int64_t i = 0; i < count; ++i) {
        picked.push_back(slices[static_cast<size_t>(UniformInt(gen, n))]);
      }
      return picked;
    }
    const int64_t global = count * parallel.world_size;
    std::vector<int64_t> order, pool(static_cast<size_t>(n));
    while (static_cast<int64_t>(order.size()) < global) {
      std::iota(pool.begin(), pool.end(), int64_t{0});
      const int64_t take = std::min(n, global - static_cast<int64_t>(order.size()));
      for (int64_t i = 0; i < take; ++i) {  // partial Fisher-Yates
        const int64_t j = i + UniformInt(gen, n - i);
        std::swap(pool[static_cast<size_t>(i)], pool[static_cast<size_t>(j)]);
        order.push_back(pool[static_cast<size_t>(i)]);
      }
    }
    for (int64_t i = parallel.rank * count; i < (parallel.rank + 1) * count; ++i) {
      picked.push_back(slices[static_cast<size_t>(order[static_cast<size_t>(i)])]);
    }
    return picked;
  }

  Batch Sample(const std::vector<SliceRef>& slices, const std::vector<PreparedVolume>& volumes,
               int64_t count, bool with_labels, const StepRandom& random) {
    std::vector<torch::Tensor> images, labels;
    for (const SliceRef& ref : PickSlices(slices, count, *random.sampling)) {
      const PreparedVolume& v = volumes[static_cast<size_t>(ref.volume)];
      images.push_back(v.images.select(0, ref.slice));
      if (with_labels) labels.push_back(v.labels.select(0, ref.slice));
    }
    Batch batch{torch::stack(images), with_labels ? torch::stack(labels) : torch::Tensor()};
    Augment(augmentation, *random.local, batch.images, batch.labels);
    return batch;
  }

  // The generators of the step about to run; `shared` and `local` are the caller's storage
  // for the data-parallel ones.
  StepRandom RandomForStep(int64_t at_step, std::mt19937_64& shared, std::mt19937_64& local) {
    if (!distributed()) return {&rng, &rng, &noise_generator};
    shared.seed(StreamSeed(stream_seed, at_step, 0));
    local.seed(StreamSeed(stream_seed, at_step, 1 + static_cast<uint64_t>(parallel.rank)));
    std::lock_guard<std::mutex> lock(noise_generator.mutex());
    noise_generator.set_current_seed(local());
    return {&shared, &local, &noise_generator};
  }

  // This step's unlabeled slices x, and T x: each slice's dihedral transform T (its exact
  // inverse exists on the pixel grid), then the intensity perturbation of T x.
  struct UnlabeledBatch {
    torch::Tensor x, perturbed;
    std::vector<DihedralTransform> transforms;
  };

  UnlabeledBatch SampleUnlabeled(int64_t count, const StepRandom& random) {
    UnlabeledBatch u;
    Batch batch = Sample(unlabeled_slices, unlabeled, count, /*with_labels=*/false, random);
    const bool square = batch.images.size(-1) == batch.images.size(-2);
    for (int64_t i = 0; i < count; ++i) {
      u.transforms.push_back(SampleDihedral(*random.local, config.perturb_flip_probability,
                                            config.perturb_rotate90 && square));
    }
    u.x = ToDevice(batch.images, device);
    u.perturbed = PerturbIntensity(ApplyDihedral(u.transforms, u.x), intensity_perturbation,
                                   *random.local, *random.noise);
    return u;
  }

  // One step's batches, drawn before the step runs (on the loader thread when
  // config.prefetch_batches > 0), with the state of the trainer's generators before the draws.
  struct StepBatches {
    Batch labeled;
    torch::Tensor labeled_input;  // labeled.images on the device
    UnlabeledBatch unlabeled;     // empty when the unsupervised branch is off
    std::mt19937_64 rng_before;
    torch::Tensor noise_before;
  };

  // The draws of step `at_step` (0-based), in the order the step always made them. During Run
  // only the thread calling this touches rng and noise_generator.
  StepBatches PrepareStep(int64_t at_step) {
    StepBatches b;
    b.rng_before = rng;
    b.noise_before = noise_generator.get_state();
    std::mt19937_64 shared_rng, local_rng;
    const StepRandom random = RandomForStep(at_step, shared_rng, local_rng);
    b.labeled = Sample(labeled_slices, labeled, config.labeled_batch, /*with_labels=*/true, random);
    b.labeled_input = ToDevice(b.labeled.images, device);
    if (UnsupervisedActive()) b.unlabeled = SampleUnlabeled(config.unlabeled_batch, random);
    return b;
  }

  // The batches of the next `count` steps from a loader thread, config.prefetch_batches
  // ahead of the training thread; null (prepare each step in place) when prefetching is off.
  std::unique_ptr<Prefetcher<StepBatches>> StartLoader(int64_t count) {
    if (config.prefetch_batches == 0 || count <= 0) return nullptr;
    return std::make_unique<Prefetcher<StepBatches>>(
        [this, first = step](int64_t i) { return PrepareStep(first + i); }, count,
        static_cast<size_t>(config.prefetch_batches));
  }

  // Stops the loader. Batches drawn for steps that did not run (cancelled, failed) give
  // their draws back: the generators return to their state before the first of them, so a
  // later Run or checkpoint continues exactly as without prefetching.
  void StopLoader(std::unique_ptr<Prefetcher<StepBatches>>& loader) {
    if (!loader) return;
    std::deque<StepBatches> unused = loader->Stop();
    loader.reset();
    if (unused.empty()) return;
    rng = unused.front().rng_before;
    noise_generator.set_state(unused.front().noise_before);
  }

  // A forward pass of net (the model or the teacher): the network in bf16 autocast on CUDA
  // when configured, float32 logits either way, so the losses are float32.
  torch::Tensor Forward(UNet& net, const torch::Tensor& x) {
    return ForwardMixed(net, x, device, config.cuda_bf16);
  }

  // T applied to each unlabeled slice: by the step's gather index in a CUDA graph, by the
  // drawn transforms otherwise (the same values exactly: perturbation.h).
  static torch::Tensor Dihedral(const StepTensors& in,
                                const std::vector<DihedralTransform>& transforms,
                                const torch::Tensor& x) {
    return in.dihedral_index.defined() ? ApplyDihedralByIndex(x, in.dihedral_index)
                                       : ApplyDihedral(transforms, x);
  }

  // The objective's unsupervised term, before the ramp-up weight; `losses` gets its parts.
  torch::Tensor UnsupervisedTerm(const StepTensors& in,
                                 const std::vector<DihedralTransform>& transforms,
                                 StepLosses& losses) {
    const TrainerConfig& c = config;
    if (c.objective == Objective::kEntropyMinimization) {
      losses.entropy = EntropyLoss(torch::softmax(Forward(model, in.unlabeled), 1));
      return c.w_entropy * losses.entropy;
    }
    if (c.objective == Objective::kMeanTeacher) {
      torch::Tensor target;
      {
        torch::NoGradGuard no_grad;
        target = Dihedral(in, transforms, torch::softmax(Forward(teacher, in.unlabeled), 1));
      }
      const torch::Tensor student = torch::softmax(Forward(model, in.perturbed), 1);
      losses.consistency = ConsistencyLoss(student, target, c.consistency);
      return c.w_cons * losses.consistency;
    }
    // The method: x and T x in one pass, so both branches share batch statistics.
    const int64_t n = in.unlabeled.size(0);
    const torch::Tensor probs =
        torch::softmax(Forward(model, torch::cat({in.unlabeled, in.perturbed}, 0)), 1);
    const torch::Tensor a = Dihedral(in, transforms, probs.narrow(0, 0, n));
    const torch::Tensor cp = probs.narrow(0, n, n);
    // Only the terms the objective weighs are computed (and reported): the MI's joint
    // distributions cost as much as a forward pass.
    const auto [w_cons, w_mi] = MethodWeights();
    torch::Tensor term = torch::zeros({}, probs.options());
    if (w_mi > 0) {
      losses.mutual_information =
          MutualInformationLoss(a, cp, {c.mi_window, c.mi_lambda, c.mi_epsilon});
      term = term + w_mi * losses.mutual_information;
    }
    if (w_cons > 0) {
      losses.consistency = ConsistencyLoss(cp, a, c.consistency);
      term = term + w_cons * losses.consistency;
    }
    return term;
  }

  // The step's losses. Labeled slices get a forward pass of their own, so the batch-norm
  // statistics the supervised loss trains under are those of labeled data alone;
  // concatenating them with the unlabeled slices was measured to wreck eval-mode Dice on the
  // phantom (bench/RESULTS.md).
  StepLosses Losses(const StepTensors& in, const std::vector<DihedralTransform>& transforms) {
    StepLosses losses;
    losses.supervised =
        SupervisedLoss(Forward(model, in.labeled_input), in.labels, config.dice_weight);
    losses.loss = losses.supervised;
    if (in.unlabeled.defined()) {
      losses.loss = losses.loss + in.unsupervised_weight * UnsupervisedTerm(in, transforms, losses);
    }
    return losses;
  }

  // The step's batches as the losses take them, on the device; with_index: the dihedral
  // transforms as a gather index (for the CUDA graph).
  StepTensors Inputs(const StepBatches& b, double unsupervised_weight, bool with_index) {
    StepTensors in;
    in.labeled_input = b.labeled_input;
    in.labels = ToDevice(b.labeled.labels, device);
    in.unsupervised_weight = torch::full(
        {}, unsupervised_weight, torch::TensorOptions().dtype(torch::kFloat32).device(device));
    if (!UnsupervisedActive()) return in;
    in.unlabeled = b.unlabeled.x;
    in.perturbed = b.unlabeled.perturbed;
    if (with_index) {
      in.dihedral_index = ToDevice(
          DihedralIndex(b.unlabeled.transforms, in.unlabeled.size(-2), in.unlabeled.size(-1)),
          device);
    }
    return in;
  }

  // Forward and backward of the step: replaying the CUDA graph where configured (captured
  // at the first step; a failed capture falls back to eager steps for good).
  StepLosses ForwardBackward(const StepBatches& b, double unsupervised_weight) {
    if (config.cuda_graphs && device.is_cuda() && CudaGraphsCompiledIn() && !step_graph_failed) {
      const StepTensors in = Inputs(b, unsupervised_weight, /*with_index=*/true);
      if (!step_graph) {
        StepGraph::Options options;
        options.device_index = device.has_index() ? device.index() : 0;
        auto captured = StepGraph::Capture(
            in, [this](const StepTensors& t) { return Losses(t, {}); }, model->parameters(),
            AllBuffers(), options);
        if (captured.ok()) step_graph = std::move(*captured);
        step_graph_failed = !captured.ok();
      }
      if (step_graph) {
        auto losses = step_graph->Run(in);
        ThrowIfFailed(losses.status());
        return *losses;
      }
    }
    const StepTensors in = Inputs(b, unsupervised_weight, /*with_index=*/false);
    StepLosses losses = Losses(in, b.unlabeled.transforms);
    // Gradients set to none rather than zero-filled: the first accumulation then takes the
    // gradient as is (0 + g is g exactly), saving a fill and an add per parameter.
    for (torch::Tensor& p : model->parameters()) p.mutable_grad() = torch::Tensor();
    losses.loss.backward();
    return losses;
  }

  // The batch-norm statistics the step updates: the model's, and the teacher's.
  std::vector<torch::Tensor> AllBuffers() {
    std::vector<torch::Tensor> buffers = model->buffers();
    if (teacher) {
      for (const torch::Tensor& t : teacher->buffers()) buffers.push_back(t);
    }
    return buffers;
  }

  // Mean teacher: the teacher's weights follow the model's; alpha ramps up from 0 as in
  // the authors' code (min(1 - 1/(step + 1), ema_decay)), so early teachers are not stuck
  // at the random initialisation. Its batch-norm statistics are its own (it runs in train
  // mode on x); with data parallelism rank 0's replace the others', as the model's do.
  void UpdateTeacher() {
    const double alpha =
        std::min(1.0 - 1.0 / static_cast<double>(step + 1), config.ema_decay);
    UpdateMovingAverage(teacher->parameters(), model->parameters(), alpha);
    if (distributed()) BroadcastFromRankZero(teacher->buffers());
  }

  StepMetrics TrainStep(const StepBatches& batches) {
    const TrainerConfig& c = config;
    const int64_t nl = c.labeled_batch;
    const int64_t nu = UnsupervisedActive() ? c.unlabeled_batch : 0;
    model->train();
    StepMetrics m;
    m.unsupervised_weight = RampUpWeight(step, c.rampup_steps);
    m.learning_rate =
        LearningRateAt(step, c.total_steps, c.warmup_steps, c.learning_rate, c.min_learning_rate);
    for (auto& group : optimizer->param_groups()) {
      static_cast<torch::optim::AdamOptions&>(group.options()).lr(m.learning_rate);
    }
    const StepLosses losses = ForwardBackward(batches, m.unsupervised_weight);
    if (distributed()) {
      AverageGradients(m);
      BroadcastFromRankZero(model->buffers());  // see trainer.h: replicas equal between steps
    }
    optimizer->step();
    ++step;
    if (teacher) UpdateTeacher();
    if (parallel.verify_replicas) m.parameter_hash = VerifyReplicas();
    m.step = step;
    m.total_steps = c.total_steps;
    m.loss = losses.loss.item<double>();
    m.supervised = losses.supervised.item<double>();
    if (losses.consistency.defined()) m.consistency = losses.consistency.item<double>();
    if (losses.mutual_information.defined()) {
      m.mutual_information = losses.mutual_information.item<double>();
    }
    if (losses.entropy.defined()) m.entropy = losses.entropy.item<double>();
    m.slices_per_second = static_cast<double>(nl + 2 * nu);  // per step; scaled by caller
    return m;
  }

  // ---- Building (Create) ----

  absl::Status PrepareData(const TrainingData& data) {
    const ModelSpec& spec = config.model;
    if (absl::Status s = PrepareVolumes(data.labeled, "labeled", true, spec, labeled); !s.ok()) return s;
    if (absl::Status s = PrepareVolumes(data.unlabeled, "unlabeled", false, spec, unlabeled); !s.ok()) return s;
    if (absl::Status s = PrepareVolumes(data.validation, "validation", true, spec, validation); !s.ok()) return s;
    for (const TrainingVolume& v : data.validation) validation_truth.push_back(*v.labels);
    return absl::OkStatus();
  }

  void IndexSlices() {
    labeled_slices = SliceRefs(labeled);
    if (config.unlabeled_includes_labeled) {
      // Labeled images join the unlabeled stream: the regulariser sees every training slice.
      for (PreparedVolume v : labeled) {
        v.labels = torch::Tensor();
        unlabeled.push_back(std::move(v));
      }
    }
    unlabeled_slices = SliceRefs(unlabeled);
  }

  void BuildModel() {
    if (config.threads > 0) at::set_num_threads(config.threads);
    // Every random draw of a trainer comes from generators it owns, all seeded from
    // config.seed; LibTorch's global generator would be shared with every other trainer
    // of the process. The construction's own draws from it are overwritten at once.
    rng.seed(config.seed);
    noise_generator = at::make_generator<at::CPUGeneratorImpl>(config.seed ^ 0x9E3779B97F4A7C15ULL);
    at::Generator init_generator = at::make_generator<at::CPUGeneratorImpl>(config.seed);
    model = UNet(UNetOptionsFor(config.model));
    model->InitializeParameters(init_generator);
    model->to(device);
    if (config.objective == Objective::kMeanTeacher) teacher = CopyOfModel();
    ApplyMemoryLayout();
    optimizer = std::make_unique<torch::optim::Adam>(
        model->parameters(),
        torch::optim::AdamOptions(config.learning_rate).weight_decay(config.weight_decay));
  }

  // ---- Data parallel (every method below is a collective when distributed()) ----

  // Groups the parameters into buckets of one dtype and at most kBucketBytes (a larger
  // parameter gets a bucket of its own), each with its flat buffer, once.
  void BuildBuckets() {
    const std::vector<torch::Tensor> parameters = model->parameters();
    int64_t bucket_bytes = 0;
    for (size_t i = 0; i < parameters.size(); ++i) {
      const torch::Tensor& p = parameters[i];
      const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
      const bool fits = !buckets.empty() && bucket_bytes + bytes <= kBucketBytes &&
                        parameters[buckets.back().parameters.front()].dtype() == p.dtype();
      if (!fits) {
        buckets.emplace_back();
        bucket_bytes = 0;
      }
      buckets.back().parameters.push_back(i);
      bucket_bytes += bytes;
      allreduce_bytes += bytes;
    }
    for (GradientBucket& bucket : buckets) {
      int64_t numel = 0;
      for (size_t i : bucket.parameters) numel += parameters[i].numel();
      bucket.flat = torch::empty({numel}, parameters[bucket.parameters.front()].options());
    }
  }

  // Gradients become their mean over the ranks. The all-reduce follows the whole backward
  // pass (DDP overlaps it with backward; on the CPU the two would compete for the cores).
  void AverageGradients(StepMetrics& m) {
    const Clock::time_point start = Clock::now();
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> parameters = model->parameters();
    std::vector<torch::Tensor> flats;
    for (GradientBucket& bucket : buckets) {
      int64_t offset = 0;
      for (size_t i : bucket.parameters) {
        torch::Tensor& p = parameters[i];
        // A parameter without a gradient takes part as zeros, so that every rank's buckets
        // line up and every rank's optimizer sees the same gradients.
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
        bucket.flat.narrow(0, offset, p.numel()).copy_(p.grad().reshape(-1));
        offset += p.numel();
      }
      flats.push_back(bucket.flat);
    }
    ThrowIfFailed(parallel.collectives->AllReduceSum(flats));
    for (GradientBucket& bucket : buckets) {
      bucket.flat.div_(parallel.world_size);
      int64_t offset = 0;
      for (size_t i : bucket.parameters) {
        torch::Tensor& p = parameters[i];
        p.grad().copy_(bucket.flat.narrow(0, offset, p.numel()).view(p.sizes()));
        offset += p.numel();
      }
    }
    m.allreduce_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    m.allreduce_bytes = allreduce_bytes;
  }

  void BroadcastFromRankZero(const std::vector<torch::Tensor>& tensors) {
    std::vector<torch::Tensor> detached;  // written in place, outside autograd
    for (const torch::Tensor& t : tensors) detached.push_back(t.detach());
    ThrowIfFailed(parallel.collectives->Broadcast(detached, 0));
  }

  void BroadcastModel() {
    BroadcastFromRankZero(model->parameters());
    BroadcastFromRankZero(model->buffers());
    if (teacher) {
      BroadcastFromRankZero(teacher->parameters());
      BroadcastFromRankZero(teacher->buffers());
    }
  }

  // The layout of the model's weights (and so of every activation), after building or
  // loading them: loading replaces a parameter's strides with the file's.
  void ApplyMemoryLayout() {
    if (!config.channels_last || !PrefersChannelsLast(device)) return;
    ToChannelsLast(*model);
    if (teacher) ToChannelsLast(*teacher);
  }

  // A new network with the model's weights and buffers (the mean teacher's start).
  UNet CopyOfModel() const {
    UNet copy(UNetOptionsFor(config.model));
    copy->to(device);
    torch::NoGradGuard no_grad;
    const std::vector<torch::Tensor> from = model->parameters(), to = copy->parameters();
    for (size_t i = 0; i < from.size(); ++i) to[i].copy_(from[i]);
    const std::vector<torch::Tensor> from_b = model->buffers(), to_b = copy->buffers();
    for (size_t i = 0; i < from_b.size(); ++i) to_b[i].copy_(from_b[i]);
    return copy;
  }

  // Once the model is built. The ranks built the same weights from the same seed; the
  // broadcast makes it so whatever the arithmetic of each rank's device.
  absl::Status JoinReplicas() {
    if (!distributed()) return absl::OkStatus();
    return GuardStep("joining the replicas", [&] {
      BuildBuckets();
      BroadcastModel();
      return absl::OkStatus();
    });
  }

  uint64_t VerifyReplicas() {
    uint64_t hash = 0xCBF29CE484222325ULL;
    for (const torch::Tensor& t : model->parameters()) hash = HashBytes(hash, t);
    for (const torch::Tensor& t : model->buffers()) hash = HashBytes(hash, t);
    if (!distributed()) return hash;
    std::vector<torch::Tensor> hashes;
    ThrowIfFailed(parallel.collectives->AllGather(
        torch::full({1}, static_cast<int64_t>(hash), torch::kInt64), &hashes));
    for (size_t r = 0; r < hashes.size(); ++r) {
      const auto theirs = static_cast<uint64_t>(hashes[r].item<int64_t>());
      if (theirs != hash) {
        throw StepFailure(absl::InternalError(
            absl::StrCat("replicas diverged at step ", step, ": rank ", r, " has hash ", theirs,
                         ", rank ", parallel.rank, " has ", hash)));
      }
    }
    return hash;
  }

  // True when any rank was cancelled: all ranks stop at the same step boundary.
  bool AgreeToStop(bool cancelled) {
    if (!distributed()) return cancelled;
    std::vector<torch::Tensor> flag = {torch::full({1}, cancelled ? 1.0f : 0.0f)};
    ThrowIfFailed(parallel.collectives->AllReduceSum(flag));
    return flag[0].item<float>() > 0;
  }

  // The losses become their means over the ranks; each rank's compute time per step is
  // gathered in the same all-reduce (one slot per rank, zeros elsewhere).
  void AverageLossesOverRanks(StepMetrics& m) {
    const size_t ranks = static_cast<size_t>(parallel.world_size);
    std::vector<double> values(4 + ranks, 0.0);
    values[0] = m.loss;
    values[1] = m.supervised;
    values[2] = m.consistency;
    values[3] = m.mutual_information;
    values[4 + static_cast<size_t>(parallel.rank)] = m.rank_compute_seconds.empty()
                                                         ? 0.0
                                                         : m.rank_compute_seconds.front();
    std::vector<torch::Tensor> sums = {
        torch::from_blob(values.data(), {static_cast<int64_t>(values.size())}, torch::kFloat64)
            .clone()};
    ThrowIfFailed(parallel.collectives->AllReduceSum(sums));
    const auto sum = sums[0].accessor<double, 1>();
    const double n = parallel.world_size;
    m.loss = sum[0] / n;
    m.supervised = sum[1] / n;
    m.consistency = sum[2] / n;
    m.mutual_information = sum[3] / n;
    m.rank_compute_seconds.assign(ranks, 0.0);
    for (size_t r = 0; r < ranks; ++r) m.rank_compute_seconds[r] = sum[4 + static_cast<int64_t>(r)];
  }

  // After every rank tried to load the same checkpoint: all succeeded at the same step, or
  // all fail (no rank is left waiting in a broadcast another skipped).
  absl::Status AgreeOnCheckpoint(const absl::Status& local) {
    std::vector<torch::Tensor> outcomes;
    ThrowIfFailed(parallel.collectives->AllGather(
        torch::tensor(std::vector<int64_t>{local.ok() ? 1 : 0, step}, torch::kInt64), &outcomes));
    if (!local.ok()) return local;
    for (size_t r = 0; r < outcomes.size(); ++r) {
      const auto outcome = outcomes[r].accessor<int64_t, 1>();
      if (outcome[0] == 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("rank ", r, " could not load the checkpoint"));
      }
      if (outcome[1] != step) {
        return absl::FailedPreconditionError(absl::StrCat(
            "rank ", r, " loaded a checkpoint of step ", outcome[1], ", this rank of step ", step));
      }
    }
    BroadcastModel();
    return absl::OkStatus();
  }

  // Dice per validation volume; data parallel, rank r segments volumes r, r + W, ... and the
  // others' results come from a sum in which each volume has one non-zero term, so every rank
  // gets exactly the numbers one rank would.
  std::vector<std::vector<double>> DicePerVolume() {
    const int64_t foreground = config.model.classes - 1;
    const int rank = parallel.rank, world = parallel.world_size;
    std::vector<std::vector<double>> dice(validation.size(),
                                          std::vector<double>(foreground, 0.0));
    model->eval();
    for (size_t i = 0; i < validation.size(); ++i) {
      if (static_cast<int>(i % world) != rank) continue;
      const LabelVolume predicted = SegmentPrepared(model, validation[i], device,
                                                    config.inference_batch, config.validation_flip_tta);
      // Grids and classes were checked when the data was prepared.
      dice[i] = *DicePerClass(predicted, validation_truth[i], config.model.classes);
    }
    model->train();
    if (!distributed() || foreground == 0) return dice;
    std::vector<torch::Tensor> sums = {
        torch::zeros({static_cast<int64_t>(validation.size()), foreground}, torch::kFloat64)};
    auto mine = sums[0].accessor<double, 2>();
    for (size_t i = 0; i < dice.size(); ++i) {
      for (int64_t k = 0; k < foreground; ++k) mine[i][k] = dice[i][k];
    }
    ThrowIfFailed(parallel.collectives->AllReduceSum(sums));
    const auto sum = sums[0].accessor<double, 2>();
    for (size_t i = 0; i < dice.size(); ++i) {
      for (int64_t k = 0; k < foreground; ++k) dice[i][k] = sum[i][k];
    }
    return dice;
  }

  ValidationMetrics ValidateNow() {
    ValidationMetrics v;
    v.step = step;
    const int64_t foreground = config.model.classes - 1;
    v.dice_per_class.assign(static_cast<size_t>(foreground), 0.0);
    v.dice_per_volume = DicePerVolume();
    for (const std::vector<double>& dice : v.dice_per_volume) {
      for (int64_t k = 0; k < foreground; ++k) v.dice_per_class[k] += dice[k] / validation.size();
    }
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
                                                         const TrainingData& data,
                                                         DataParallel parallel) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (absl::Status s = ValidateParallel(parallel); !s.ok()) return s;
  if (data.labeled.empty()) return absl::InvalidArgumentError("training needs at least one labeled volume");
  auto state = std::make_unique<State>();
  state->config = config;
  state->parallel = std::move(parallel);
  state->stream_seed = config.seed;
  state->augmentation = {config.augment_rotation_deg, config.augment_flip_probability,
                         config.augment_intensity_min, config.augment_intensity_max,
                         config.crop_size};
  state->intensity_perturbation = {config.perturb_contrast, config.perturb_gamma,
                                   config.perturb_noise_std};
  auto device = ResolveDevice(config.device);
  if (!device.ok()) return device.status();
  state->device = *device;

  absl::Status status = GuardTorch("preparing training data", absl::StatusCode::kInternal,
                                   [&] { return state->PrepareData(data); });
  if (!status.ok()) return status;
  state->IndexSlices();
  status = GuardTorch("building the model", absl::StatusCode::kInternal, [&] {
    state->BuildModel();
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  if (absl::Status s = state->JoinReplicas(); !s.ok()) return s;
  return std::unique_ptr<Trainer>(new Trainer(std::move(state)));
}

absl::StatusOr<RunOutcome> Trainer::Run(const TrainerCallbacks& callbacks,
                                        const std::atomic<bool>* cancel, int64_t max_steps) {
  State& s = *state_;
  const TrainerConfig& c = s.config;
  RunOutcome outcome = RunOutcome::kFinished;
  std::unique_ptr<Prefetcher<State::StepBatches>> loader;
  absl::Status status = GuardStep("training step", [&] {
    const int64_t remaining = c.total_steps - s.step;
    loader = s.StartLoader(max_steps >= 0 ? std::min(max_steps, remaining) : remaining);
    Clock::time_point window_start = Clock::now();
    int64_t window_steps = 0;
    double window_allreduce_seconds = 0;
    int64_t steps_run = 0;
    while (s.step < c.total_steps) {
      if (s.AgreeToStop(cancel != nullptr && cancel->load(std::memory_order_relaxed))) {
        outcome = RunOutcome::kCancelled;
        return absl::OkStatus();
      }
      if (max_steps >= 0 && steps_run >= max_steps) {
        outcome = RunOutcome::kStepLimit;
        return absl::OkStatus();
      }
      StepMetrics m = s.TrainStep(loader ? loader->Next() : s.PrepareStep(s.step));
      ++steps_run;
      ++window_steps;
      window_allreduce_seconds += m.allreduce_seconds;
      const bool last = s.step == c.total_steps;
      if (s.step % c.log_every == 0 || last) {
        const double seconds =
            std::chrono::duration<double>(Clock::now() - window_start).count();
        m.steps_per_second = seconds > 0 ? window_steps / seconds : 0;
        m.slices_per_second *= m.steps_per_second;
        m.allreduce_seconds = window_allreduce_seconds / static_cast<double>(window_steps);
        // Compute time: the step's wall time less the all-reduce (which includes waiting for
        // the slowest rank, so the wall time alone is the same on every rank).
        m.rank_compute_seconds = {std::max(
            0.0, seconds / static_cast<double>(window_steps) - m.allreduce_seconds)};
        if (s.distributed()) s.AverageLossesOverRanks(m);
        if (callbacks.on_step) callbacks.on_step(m);
        window_start = Clock::now();
        window_steps = 0;
        window_allreduce_seconds = 0;
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
  const absl::Status stopped = GuardTorch("stopping the loader", absl::StatusCode::kInternal, [&] {
    s.StopLoader(loader);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  if (!stopped.ok()) return stopped;
  return outcome;
}

absl::StatusOr<ValidationMetrics> Trainer::Validate() {
  if (state_->validation.empty()) return absl::FailedPreconditionError("no validation volumes");
  ValidationMetrics v;
  absl::Status status = GuardStep("validation", [&] {
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
    archive.write("miseg/stream_seed", c10::IValue(static_cast<int64_t>(s.stream_seed)));
    if (s.teacher) {
      torch::serialize::OutputArchive teacher;
      s.teacher->save(teacher);
      archive.write("teacher", teacher);
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return SaveArchiveAtomically(archive, path);
}

absl::Status Trainer::LoadCheckpoint(const std::string& path) {
  State& s = *state_;
  absl::Status loaded = LoadCheckpointLocally(s, path);
  if (!s.distributed()) return loaded;
  return GuardStep("synchronising the replicas after loading a checkpoint",
                   [&] { return s.AgreeOnCheckpoint(loaded); });
}

absl::Status Trainer::LoadCheckpointLocally(State& s, const std::string& path) {
  auto archive = OpenArchive(path);
  if (!archive.ok()) return archive.status();
  auto spec = ReadSpec(*archive);
  if (!spec.ok()) return spec.status();
  if (SerializeModelSpec(*spec) != SerializeModelSpec(s.config.model)) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", path, " was made for another model spec"));
  }
  return GuardTorch(absl::StrCat("restoring checkpoint ", path), absl::StatusCode::kDataLoss, [&] {
    c10::IValue step, rng_text, stream_seed;
    torch::serialize::InputArchive weights, optimizer;
    if (!archive->try_read("model", weights) || !archive->try_read("optimizer", optimizer) ||
        !archive->try_read("miseg/step", step) || !archive->try_read("miseg/rng", rng_text) ||
        !step.isInt() || !rng_text.isString()) {
      return absl::DataLossError(absl::StrCat(path, " is not a complete training checkpoint"));
    }
    torch::serialize::InputArchive teacher;
    if (s.teacher && !archive->try_read("teacher", teacher)) {
      return absl::DataLossError(absl::StrCat(path, " has no mean teacher"));
    }
    torch::Tensor noise_state;
    archive->read("miseg/noise_generator", noise_state);
    std::istringstream rng_in(rng_text.toStringRef());
    std::mt19937_64 rng;
    rng_in >> rng;
    if (rng_in.fail()) return absl::DataLossError(absl::StrCat(path, ": corrupt random state"));
    // Everything parsed: only now touch the live state. A captured step graph refers to the
    // parameters' old storage: it is captured again at the next step.
    s.step_graph.reset();
    s.step_graph_failed = false;
    s.model->load(weights);
    s.model->to(s.device);
    if (s.teacher) {
      s.teacher->load(teacher);
      s.teacher->to(s.device);
    }
    s.ApplyMemoryLayout();
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
    // Checkpoints from before data parallelism have none: the config's seed stays.
    if (archive->try_read("miseg/stream_seed", stream_seed) && stream_seed.isInt()) {
      s.stream_seed = static_cast<uint64_t>(stream_seed.toInt());
    }
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

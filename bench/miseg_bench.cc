// miseg-bench: speed and memory of the training core, each figure beside a baseline
// measured in the same run so that ratios survive a change of machine.
//   miseg-bench train  full semi-supervised steps vs labeled-only steps
//   miseg-bench mi     the MI loss (forward + backward) vs a per-displacement formulation
//   miseg-bench infer  segmenting one volume vs the bare network forward passes
//   miseg-bench profile  the train step's operators under LibTorch's profiler, by self time
// train and infer also run the Python reference (bench/reference/) on the same shapes and
// threads and print its figures and the ratios: PyTorch eager on the same libtorch.
// Prints one JSON object with --json, a readable table otherwise.
#include <sys/resource.h>

#include <cstdlib>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/profiler.h>
#include <torch/nn/functional/activation.h>
#include <torch/utils.h>

#include "bench/bench_figures.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "core/common/allocator_tuning.h"
#include "core/common/status_macros.h"
#include "core/phantom/phantom.h"
#include "core/train/frozen_unet.h"
#include "core/train/graphed_forward.h"
#include "core/train/inference.h"
#include "core/train/losses.h"
#include "core/train/memory_layout.h"
#include "core/train/model_io.h"
#include "core/train/preprocess.h"
#include "core/train/trainer.h"

ABSL_FLAG(int64_t, size, 128, "model grid (and training crop) size in pixels");
ABSL_FLAG(int64_t, labeled_batch, 4, "train: labeled slices per step");
ABSL_FLAG(int64_t, unlabeled_batch, 8, "train: unlabeled slices per step");
ABSL_FLAG(int64_t, classes, 4, "number of classes K, background included");
ABSL_FLAG(int, threads, 2, "intra-op CPU threads");
ABSL_FLAG(int64_t, steps, 10, "train: timed steps; mi/infer: timed repetitions");
ABSL_FLAG(int64_t, warmup, 3, "untimed warm-up steps or repetitions");
ABSL_FLAG(int64_t, window, 1, "MI window d");
ABSL_FLAG(int64_t, batch, 8, "mi: batch size B");
ABSL_FLAG(int64_t, slices, 20, "infer: slices of the volume");
ABSL_FLAG(int64_t, matrix, 256, "infer: in-plane size of the volume");
ABSL_FLAG(bool, tta, false, "infer: flip test-time augmentation");
ABSL_FLAG(std::string, device, "cpu", "torch device");
ABSL_FLAG(bool, json, false, "print one JSON object");
ABSL_FLAG(std::string, reference, MISEG_REFERENCE_SCRIPT,
          "train/infer: the Python reference (bench/reference/unet_reference.py), run by --python "
          "in the same run with the same threads and shapes; empty: none");
ABSL_FLAG(std::string, python, "/usr/bin/python3", "the Python that runs --reference");
ABSL_FLAG(std::string, reference_args, "",
          "more arguments for the reference, e.g. \"--amp=bf16 --compile\" (bench/gpu.sh)");
ABSL_FLAG(int64_t, rounds, 1,
          "train/infer: miseg and the reference alternate this many times (each round times "
          "--steps); medians over all rounds, so a shared machine's load hits both alike");
ABSL_FLAG(int64_t, top, 20, "profile: operators listed");
ABSL_FLAG(bool, channels_last, true,
          "train/profile: TrainerConfig::channels_last (false: the NCHW layout of before issue 15)");
ABSL_FLAG(int, prefetch_batches, 2,
          "train/profile: TrainerConfig::prefetch_batches (0: batches drawn on the training "
          "thread; profile records that thread only, so 0 shows the preparation too)");
ABSL_FLAG(bool, cuda_graphs, false,
          "train/infer on CUDA: TrainerConfig::cuda_graphs / InferenceOptions::cuda_graphs "
          "(the step and the network replayed from CUDA graphs); ignored on the CPU");
ABSL_FLAG(bool, prefetch_baseline, false,
          "train: also time each round with prefetch_batches 0, for the loader thread's gain");
ABSL_FLAG(bool, keep_freed_memory, true,
          "tune glibc malloc to keep freed memory (core/common/allocator_tuning.h); false "
          "measures glibc's defaults");

namespace miseg {
namespace {

using Clock = std::chrono::steady_clock;
using Figures = std::vector<std::pair<std::string, std::string>>;

double PeakRssMb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

void Print(const std::string& benchmark, const Figures& figures) {
  if (absl::GetFlag(FLAGS_json)) {
    std::string out = absl::StrCat("{\"benchmark\": \"", benchmark, "\"");
    for (const auto& [key, value] : figures) {
      const bool number = !value.empty() && (std::isdigit(value[0]) || value[0] == '-');
      absl::StrAppend(&out, ", \"", key, "\": ", number ? value : absl::StrCat("\"", value, "\""));
    }
    std::cout << out << "}" << std::endl;
  } else {
    std::cout << "miseg-bench " << benchmark << "\n";
    for (const auto& [key, value] : figures) std::printf("  %-34s %s\n", key.c_str(), value.c_str());
  }
}

Figures CommonFigures() {
  return {{"device", absl::GetFlag(FLAGS_device)},
          {"channels_last", absl::GetFlag(FLAGS_channels_last) ? "true" : "false"},
          {"cuda_graphs", absl::GetFlag(FLAGS_cuda_graphs) ? "true" : "false"},
          {"keep_freed_memory", absl::GetFlag(FLAGS_keep_freed_memory) ? "true" : "false"},
          {"threads", std::to_string(absl::GetFlag(FLAGS_threads))},
          {"torch_threads", std::to_string(at::get_num_threads())}};
}

TrainingData PhantomData(int labeled, int unlabeled) {
  TrainingData data;
  for (int i = 0; i < labeled + unlabeled; ++i) {
    PhantomSubject s = GeneratePhantomSubject(/*population_seed=*/2026, i);
    TrainingVolume v{"phantom-" + std::to_string(i), std::move(s.image), std::nullopt};
    if (i < labeled) v.labels = std::move(s.labels);
    (i < labeled ? data.labeled : data.unlabeled).push_back(std::move(v));
  }
  return data;
}

TrainerConfig BenchConfig() {
  TrainerConfig c;
  c.model.classes = absl::GetFlag(FLAGS_classes);
  c.model.grid_size = absl::GetFlag(FLAGS_size);
  c.labeled_batch = absl::GetFlag(FLAGS_labeled_batch);
  c.unlabeled_batch = absl::GetFlag(FLAGS_unlabeled_batch);
  c.mi_window = absl::GetFlag(FLAGS_window);
  c.threads = absl::GetFlag(FLAGS_threads);
  c.device = absl::GetFlag(FLAGS_device);
  c.total_steps = absl::GetFlag(FLAGS_warmup) + absl::GetFlag(FLAGS_steps);
  c.validate_every = 0;
  c.channels_last = absl::GetFlag(FLAGS_channels_last);
  c.prefetch_batches = absl::GetFlag(FLAGS_prefetch_batches);
  c.cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs);
  return c;
}

// The Python reference (bench/reference/unet_reference.py) run as `python script command
// args...` with this run's threads; the numbers of the JSON object it prints, by key.
// Unavailable when it cannot run or prints no JSON.
absl::StatusOr<std::map<std::string, double>> RunReference(const std::string& command,
                                                           const std::vector<std::string>& args) {
  std::string line = absl::StrCat("'", absl::GetFlag(FLAGS_python), "' '",
                                  absl::GetFlag(FLAGS_reference), "' ", command,
                                  " --threads=", absl::GetFlag(FLAGS_threads),
                                  " --device=", absl::GetFlag(FLAGS_device), " ",
                                  absl::GetFlag(FLAGS_reference_args));
  for (const std::string& a : args) absl::StrAppend(&line, " ", a);
  FILE* pipe = ::popen(line.c_str(), "r");
  if (pipe == nullptr) return absl::UnavailableError("cannot start " + line);
  std::string out;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) out.append(buffer, n);
  const int rc = ::pclose(pipe);
  if (rc != 0 || out.find('{') == std::string::npos) {
    return absl::UnavailableError(absl::StrCat("reference failed (", rc, "): ", line));
  }
  // The reference prints one flat object: "key": value pairs, numbers unquoted.
  std::map<std::string, double> values;
  for (size_t key = out.find('"'); key != std::string::npos; key = out.find('"', key)) {
    const size_t end = out.find('"', key + 1);
    if (end == std::string::npos) break;
    const std::string name = out.substr(key + 1, end - key - 1);
    size_t value = end + 1;
    while (value < out.size() && (out[value] == ':' || out[value] == ' ')) ++value;
    char* parsed_end = nullptr;
    const double v = std::strtod(out.c_str() + value, &parsed_end);
    if (parsed_end != out.c_str() + value && out[end + 1] == ':') values[name] = v;
    key = end + 1;
  }
  return values;
}

bool ReferenceWanted() { return !absl::GetFlag(FLAGS_reference).empty(); }

std::string WidthsFlag(const std::vector<int64_t>& widths) {
  std::string out = "--widths=";
  for (size_t i = 0; i < widths.size(); ++i) absl::StrAppend(&out, i ? "," : "", widths[i]);
  return out;
}

// Milliseconds of each timed step (after warm-up) of one training run.
absl::StatusOr<std::vector<double>> TimeTraining(const TrainerConfig& config,
                                                 const TrainingData& data) {
  auto trainer = Trainer::Create(config, data);
  if (!trainer.ok()) return trainer.status();
  std::vector<double> ms;
  const int64_t warmup = absl::GetFlag(FLAGS_warmup);
  auto outcome = (*trainer)->Run({[&](const StepMetrics& m) {
    if (m.step > warmup) ms.push_back(1000.0 / m.steps_per_second);
  }});
  if (!outcome.ok()) return outcome.status();
  return ms;
}

// The step times of --rounds rounds: miseg's full step (and, with --prefetch_baseline, the
// same step with batches drawn on the training thread), alternating with the reference's
// two forms on the same shapes.
struct TrainRounds {
  std::vector<double> semi, no_prefetch, python_two_pass, python_three_forward;
  double reference_params = 0;
};

std::vector<std::string> ReferenceTrainShapes(const TrainerConfig& c) {
  return {absl::StrCat("--size=", c.model.grid_size), absl::StrCat("--labeled-batch=", c.labeled_batch),
          absl::StrCat("--unlabeled-batch=", c.unlabeled_batch), absl::StrCat("--classes=", c.model.classes),
          absl::StrCat("--window=", c.mi_window), WidthsFlag(c.model.widths),
          absl::StrCat("--steps=", absl::GetFlag(FLAGS_steps)), absl::StrCat("--warmup=", absl::GetFlag(FLAGS_warmup))};
}

absl::StatusOr<TrainRounds> TimeTrainRounds(const TrainerConfig& full, const TrainingData& data) {
  TrainRounds r;
  TrainerConfig no_prefetch = full;
  no_prefetch.prefetch_batches = 0;
  const auto time_into = [&](const TrainerConfig& config, std::vector<double>& ms) -> absl::Status {
    auto steps = TimeTraining(config, data);
    if (!steps.ok()) return steps.status();
    ms.insert(ms.end(), steps->begin(), steps->end());
    return absl::OkStatus();
  };
  const bool baseline = absl::GetFlag(FLAGS_prefetch_baseline);
  for (int64_t round = 0; round < std::max<int64_t>(1, absl::GetFlag(FLAGS_rounds)); ++round) {
    // The baseline goes first in odd rounds, so that neither always runs after the other.
    if (baseline && round % 2 == 1) RETURN_IF_ERROR(time_into(no_prefetch, r.no_prefetch));
    RETURN_IF_ERROR(time_into(full, r.semi));
    if (baseline && round % 2 == 0) RETURN_IF_ERROR(time_into(no_prefetch, r.no_prefetch));
    if (!ReferenceWanted()) continue;
    for (const char* form : {"two_pass", "three_forward"}) {
      std::vector<std::string> args = ReferenceTrainShapes(full);
      args.push_back(absl::StrCat("--form=", form));
      auto ref = RunReference("train", args);
      if (!ref.ok()) return ref.status();
      r.reference_params = (*ref)["params"];
      (std::string(form) == "two_pass" ? r.python_two_pass : r.python_three_forward)
          .push_back((*ref)["step_ms_median"]);
    }
  }
  return r;
}

Figures TrainFigures(const TrainerConfig& full, const TrainRounds& r, double baseline_ms,
                     double rss_after_semi) {
  const std::vector<double>& semi = r.semi;
  const double step_ms = Median(semi);
  Figures f = CommonFigures();
  const int64_t slices = full.labeled_batch + 2 * full.unlabeled_batch;
  f.insert(f.end(), {{"size", std::to_string(full.model.grid_size)},
                     {"labeled_batch", std::to_string(full.labeled_batch)},
                     {"unlabeled_batch", std::to_string(full.unlabeled_batch)},
                     {"window", std::to_string(full.mi_window)},
                     {"prefetch_batches", std::to_string(full.prefetch_batches)},
                     {"timed_steps", std::to_string(semi.size())},
                     {"steps_per_second", Num(1000.0 / step_ms)},
                     {"step_ms_median", Num(step_ms)},
                     {"step_ms_min", Num(*std::min_element(semi.begin(), semi.end()))},
                     {"step_ms_max", Num(*std::max_element(semi.begin(), semi.end()))},
                     {"slices_per_second", Num(slices * 1000.0 / step_ms)},
                     {"labeled_only_step_ms_median", Num(baseline_ms)},
                     {"semi_over_labeled_only", Num(step_ms / baseline_ms)},
                     {"peak_rss_mb", Num(rss_after_semi)}});
  if (!r.no_prefetch.empty()) {
    // Batches drawn on the training thread over the loader thread's: above 1, it gains.
    const double inline_ms = Median(r.no_prefetch);
    f.insert(f.end(), {{"no_prefetch_step_ms_median", Num(inline_ms)},
                       {"no_prefetch_step_ms_min", Num(*std::min_element(r.no_prefetch.begin(), r.no_prefetch.end()))},
                       {"no_prefetch_over_prefetch", Num(inline_ms / step_ms)}});
  }
  if (ReferenceWanted()) {
    // Python's figure over miseg's: above 1, miseg is that many times faster.
    const double two_pass = Median(r.python_two_pass), three_forward = Median(r.python_three_forward);
    f.insert(f.end(), {{"rounds", std::to_string(r.python_two_pass.size())},
                       {"python_params", std::to_string(static_cast<int64_t>(r.reference_params))},
                       {"python_two_pass_step_ms_median", Num(two_pass)},
                       {"python_three_forward_step_ms_median", Num(three_forward)},
                       {"python_two_pass_over_miseg", Num(two_pass / step_ms)},
                       {"python_three_forward_over_miseg", Num(three_forward / step_ms)}});
  }
  return f;
}

int RunTrain() {
  // The phantom has exactly 4 classes; other K would need another data source.
  const TrainingData data = PhantomData(/*labeled=*/2, /*unlabeled=*/2);
  const TrainerConfig full = BenchConfig();
  if (full.model.classes != 4) {
    std::cerr << "train: the phantom has 4 classes; use --classes 4\n";
    return 2;
  }
  auto rounds = TimeTrainRounds(full, data);
  if (!rounds.ok()) {
    std::cerr << rounds.status() << "\n";
    return 1;
  }
  const double rss_after_semi = PeakRssMb();
  TrainerConfig labeled_only = full;
  labeled_only.w_mi = 0;
  labeled_only.w_cons = 0;
  auto baseline = TimeTraining(labeled_only, data);
  if (!baseline.ok()) {
    std::cerr << baseline.status() << "\n";
    return 1;
  }
  Print("train", TrainFigures(full, *rounds, Median(*baseline), rss_after_semi));
  return 0;
}

// Per-operator CPU time of a profile: self time (less the operators called inside it) and
// inclusive time, summed over calls.
struct OperatorTime {
  int64_t calls = 0;
  double self_us = 0;
  double total_us = 0;
};

// Pairs each thread's push and pop events (LIFO on one thread) and sums them by name.
std::map<std::string, OperatorTime> AggregateProfile(
    const torch::autograd::profiler::thread_event_lists& lists) {
  using torch::autograd::profiler::EventKind;
  using torch::autograd::profiler::LegacyEvent;
  std::map<std::string, OperatorTime> ops;
  for (const auto& events : lists) {
    struct Open {
      const LegacyEvent* push;
      double children_us;
    };
    std::vector<Open> stack;
    for (const LegacyEvent& e : events) {
      if (e.kind() == EventKind::PushRange) {
        stack.push_back({&e, 0});
      } else if (e.kind() == EventKind::PopRange && !stack.empty()) {
        const Open open = stack.back();
        stack.pop_back();
        const double us = open.push->cpuElapsedUs(e);
        OperatorTime& op = ops[open.push->name()];
        ++op.calls;
        op.total_us += us;
        op.self_us += us - open.children_us;
        if (!stack.empty()) stack.back().children_us += us;
      }
    }
  }
  return ops;
}

// The semi-supervised step under LibTorch's (legacy, CPU) profiler: --steps steps after
// --warmup, the --top operators by self time.
int RunProfile() {
  const TrainingData data = PhantomData(/*labeled=*/2, /*unlabeled=*/2);
  const TrainerConfig config = BenchConfig();
  auto trainer = Trainer::Create(config, data);
  if (!trainer.ok()) {
    std::cerr << trainer.status() << "\n";
    return 1;
  }
  namespace profiler = torch::autograd::profiler;
  const int64_t warmup = absl::GetFlag(FLAGS_warmup), steps = absl::GetFlag(FLAGS_steps);
  profiler::thread_event_lists events;
  Clock::time_point start;
  double wall_ms = 0;
  // The profiler is per thread: on_step runs on the thread that trains.
  auto outcome = (*trainer)->Run({[&](const StepMetrics& m) {
    if (m.step == warmup) {
      profiler::enableProfilerLegacy(
          torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::CPU));
      start = Clock::now();
    } else if (m.step == warmup + steps) {
      wall_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      events = profiler::disableProfilerLegacy();
    }
  }});
  if (!outcome.ok()) {
    std::cerr << outcome.status() << "\n";
    return 1;
  }
  std::vector<std::pair<std::string, OperatorTime>> ops;
  double self_total = 0;
  for (const auto& [name, op] : AggregateProfile(events)) {
    ops.emplace_back(name, op);
    self_total += op.self_us;
  }
  std::sort(ops.begin(), ops.end(),
            [](const auto& a, const auto& b) { return a.second.self_us > b.second.self_us; });
  std::printf("miseg-bench profile: %lld steps, %.1f ms per step (wall), %.1f ms per step in "
              "operators\n", static_cast<long long>(steps), wall_ms / steps, self_total / 1000 / steps);
  std::printf("  %-44s %8s %10s %7s %10s\n", "operator", "calls", "self ms", "self %", "total ms");
  for (size_t i = 0; i < ops.size() && i < static_cast<size_t>(absl::GetFlag(FLAGS_top)); ++i) {
    const OperatorTime& op = ops[i].second;
    std::printf("  %-44s %8lld %10.1f %6.1f%% %10.1f\n", ops[i].first.c_str(),
                static_cast<long long>(op.calls / steps), op.self_us / 1000 / steps,
                100 * op.self_us / self_total, op.total_us / 1000 / steps);
  }
  return 0;
}

// The same loss written the direct way: one shifted product per displacement.
torch::Tensor PerDisplacementMi(const torch::Tensor& a, const torch::Tensor& c, int64_t d) {
  const int64_t H = a.size(2), W = a.size(3);
  std::vector<torch::Tensor> joints;
  for (int64_t dy = -d; dy <= d; ++dy)
    for (int64_t dx = -d; dx <= d; ++dx) {
      const int64_t h = H - std::abs(dy), w = W - std::abs(dx);
      const torch::Tensor as = a.narrow(2, std::max<int64_t>(0, -dy), h).narrow(3, std::max<int64_t>(0, -dx), w);
      const torch::Tensor cs = c.narrow(2, std::max<int64_t>(0, dy), h).narrow(3, std::max<int64_t>(0, dx), w);
      joints.push_back(torch::einsum("bihw,bjhw->ij", {as, cs}));
    }
  torch::Tensor joint = torch::stack(joints);
  joint = joint / joint.sum({1, 2}, true);
  joint = (joint + joint.transpose(1, 2)) / 2;
  const torch::Tensor r = joint.sum(2, true), s = joint.sum(1, true);
  const torch::Tensor info = (joint * (torch::log(torch::clamp_min(joint, 1e-8)) -
                                       torch::log(torch::clamp_min(r, 1e-8)) -
                                       torch::log(torch::clamp_min(s, 1e-8)))).sum({1, 2});
  return -info.mean();
}

template <typename Fn>
std::vector<double> TimeRepeated(Fn fn) {
  for (int64_t i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) fn();
  std::vector<double> ms;
  for (int64_t i = 0; i < absl::GetFlag(FLAGS_steps); ++i) {
    const auto start = Clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return ms;
}

int RunMi() {
  auto device = ResolveDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    std::cerr << device.status() << "\n";
    return 1;
  }
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  const int64_t B = absl::GetFlag(FLAGS_batch), K = absl::GetFlag(FLAGS_classes);
  const int64_t S = absl::GetFlag(FLAGS_size), d = absl::GetFlag(FLAGS_window);
  torch::manual_seed(1);
  const auto opts = torch::TensorOptions().device(*device);
  const torch::Tensor la = torch::randn({B, K, S, S}, opts).requires_grad_(true);
  const torch::Tensor lc = torch::randn({B, K, S, S}, opts).requires_grad_(true);
  const auto sync = [&] {
    if (device->is_cuda()) la.grad().sum().item<float>();  // waits for the stream
  };
  const auto run = [&](bool direct) {
    const torch::Tensor a = torch::softmax(la, 1), c = torch::softmax(lc, 1);
    torch::Tensor loss = direct ? PerDisplacementMi(a, c, d) : MutualInformationLoss(a, c, {d, 1.0, 1e-8});
    loss.backward();
    sync();
  };
  const double conv_ms = Median(TimeRepeated([&] { run(false); }));
  const double direct_ms = Median(TimeRepeated([&] { run(true); }));
  Figures f = CommonFigures();
  f.insert(f.end(), {{"B", std::to_string(B)}, {"K", std::to_string(K)}, {"H", std::to_string(S)},
                     {"W", std::to_string(S)}, {"window", std::to_string(d)},
                     {"ms_median", Num(conv_ms)},
                     {"per_displacement_ms_median", Num(direct_ms)},
                     {"conv_over_per_displacement", Num(conv_ms / direct_ms)},
                     {"peak_rss_mb", Num(PeakRssMb())}});
  Print("mi", f);
  return 0;
}

// A segmenter of a model with the requested grid, trained for one step: speed does not
// depend on weights.
absl::StatusOr<std::unique_ptr<Segmenter>> OneStepSegmenter(TrainerConfig config) {
  config.total_steps = 1;
  auto trainer = Trainer::Create(config, PhantomData(1, 0));
  const std::string model_path =
      (std::filesystem::temp_directory_path() / ("miseg-bench-" + std::to_string(::getpid()) + ".model")).string();
  if (!trainer.ok() || !(*trainer)->Run({}).ok() || !(*trainer)->ExportModel(model_path).ok()) {
    return absl::InternalError("infer: could not build a model");
  }
  InferenceOptions inference;
  inference.device = absl::GetFlag(FLAGS_device);
  inference.batch_slices = 16;
  inference.flip_tta = absl::GetFlag(FLAGS_tta);
  inference.cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs);
  auto segmenter = Segmenter::Load(model_path, inference);
  std::filesystem::remove(model_path);
  return segmenter;
}

// Rounds alternate miseg's segmentation with the reference's inference on the same slices.
struct InferRounds {
  std::vector<double> segment, python;
  double reference_params = 0;
};

absl::StatusOr<InferRounds> TimeInferRounds(const TrainerConfig& config, const Segmenter& segmenter,
                                            const PhantomSubject& subject) {
  InferRounds r;
  for (int64_t round = 0; round < std::max<int64_t>(1, absl::GetFlag(FLAGS_rounds)); ++round) {
    const std::vector<double> ms = TimeRepeated([&] { (void)segmenter.Segment(subject.image); });
    r.segment.insert(r.segment.end(), ms.begin(), ms.end());
    if (!ReferenceWanted()) continue;
    auto ref = RunReference(
        "infer", {absl::StrCat("--size=", config.model.grid_size),
                  absl::StrCat("--slices=", absl::GetFlag(FLAGS_slices)), "--batch-slices=16",
                  absl::StrCat("--classes=", config.model.classes), WidthsFlag(config.model.widths),
                  absl::StrCat("--steps=", absl::GetFlag(FLAGS_steps)),
                  absl::StrCat("--warmup=", absl::GetFlag(FLAGS_warmup))});
    if (!ref.ok()) return ref.status();
    r.reference_params = (*ref)["params"];
    r.python.push_back((*ref)["ms_median"]);
  }
  return r;
}

// Baselines on the already-prepared slices (weights do not matter): the eval-mode U-Net
// forward alone, and what the segmenter runs, the frozen network (batch norm folded,
// inference mode) with softmax and argmax as the reference does, in the device's preferred
// layout and in NCHW.
struct NetworkTimes {
  double forward_ms = 0, frozen_ms = 0, frozen_nchw_ms = 0;
};

NetworkTimes TimeBareNetworks(const TrainerConfig& config, const PhantomSubject& subject) {
  auto device = ResolveDevice(absl::GetFlag(FLAGS_device));
  auto prepared = PrepareVolume(subject.image, nullptr, config.model);
  UNet net(UNetOptionsFor(config.model));
  net->to(*device);
  net->eval();
  NetworkTimes t;
  t.forward_ms = Median(TimeRepeated([&] {
    torch::NoGradGuard no_grad;
    for (int64_t s = 0; s < prepared->images.size(0); s += 16) {
      torch::Tensor out = net->forward(prepared->images.narrow(0, s, std::min<int64_t>(16, prepared->images.size(0) - s)).to(*device));
      out.sum().item<float>();
    }
  }));
  const auto time_frozen = [&](bool channels_last) {
    const FrozenUNet frozen = FrozenUNet::Fold(net, channels_last);
    // --cuda_graphs on CUDA: the forwards replay a graph (as the segmenter's); else eager.
    GraphedForward graphed([&frozen](const torch::Tensor& x) { return frozen.forward(x); }, *device,
                           GraphedForward::Options{});
    const bool use_graphs = absl::GetFlag(FLAGS_cuda_graphs);
    return Median(TimeRepeated([&] {
      for (int64_t s = 0; s < prepared->images.size(0); s += 16) {
        const torch::Tensor batch =
            prepared->images.narrow(0, s, std::min<int64_t>(16, prepared->images.size(0) - s)).to(*device);
        const torch::Tensor logits = use_graphs ? graphed(batch) : frozen.forward(batch);
        torch::softmax(logits, 1).argmax(1).sum().item<int64_t>();
      }
    }));
  };
  t.frozen_ms = time_frozen(PrefersChannelsLast(*device));
  t.frozen_nchw_ms = time_frozen(false);
  return t;
}

Figures InferFigures(const TrainerConfig& config, const InferRounds& r, const NetworkTimes& t) {
  const double segment_ms = Median(r.segment);
  Figures f = CommonFigures();
  f.insert(f.end(), {{"slices", std::to_string(absl::GetFlag(FLAGS_slices))},
                     {"matrix", std::to_string(absl::GetFlag(FLAGS_matrix))},
                     {"grid", std::to_string(config.model.grid_size)},
                     {"tta", absl::GetFlag(FLAGS_tta) ? "true" : "false"},
                     {"ms_median", Num(segment_ms)},
                     {"slices_per_second", Num(absl::GetFlag(FLAGS_slices) * 1000.0 / segment_ms)},
                     {"network_only_ms_median", Num(t.forward_ms)},
                     {"segment_over_network_only", Num(segment_ms / t.forward_ms)},
                     {"frozen_network_ms_median", Num(t.frozen_ms)},
                     {"network_only_over_frozen", Num(t.forward_ms / t.frozen_ms)},
                     {"frozen_nchw_ms_median", Num(t.frozen_nchw_ms)},
                     {"peak_rss_mb", Num(PeakRssMb())}});
  if (ReferenceWanted()) {
    // The reference runs the network on the grid (no resampling): with --matrix equal to
    // --size both do the same work. Above 1, miseg is that many times faster.
    const double python_ms = Median(r.python);
    f.insert(f.end(), {{"python_params", std::to_string(static_cast<int64_t>(r.reference_params))},
                       {"python_ms_median", Num(python_ms)},
                       {"python_over_segment", Num(python_ms / segment_ms)},
                       {"python_over_network_only", Num(python_ms / t.forward_ms)},
                       {"python_over_frozen_network", Num(python_ms / t.frozen_ms)}});
  }
  return f;
}

int RunInfer() {
  const TrainerConfig config = BenchConfig();
  auto segmenter = OneStepSegmenter(config);
  if (!segmenter.ok()) {
    std::cerr << segmenter.status() << "\n";
    return 1;
  }
  PhantomOptions options;
  options.min_slices = options.max_slices = static_cast<int>(absl::GetFlag(FLAGS_slices));
  options.min_matrix = options.max_matrix = static_cast<int>(absl::GetFlag(FLAGS_matrix));
  const PhantomSubject subject = GeneratePhantomSubject(7, 0, options);
  auto rounds = TimeInferRounds(config, **segmenter, subject);
  if (!rounds.ok()) {
    std::cerr << rounds.status() << "\n";
    return 1;
  }
  const NetworkTimes networks = TimeBareNetworks(config, subject);
  Print("infer", InferFigures(config, *rounds, networks));
  return 0;
}

}  // namespace
}  // namespace miseg

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "miseg-bench train|mi|infer|profile [flags]\n"
      "  e.g. miseg-bench train --size 128 --labeled_batch 4 --unlabeled_batch 8 --classes 4 "
      "--threads 2 --steps 10 --json");
  // Accept --labeled-batch as well as --labeled_batch.
  std::vector<std::string> storage;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) == 0) {
      for (size_t j = 2; j < std::min(eq, arg.size()); ++j)
        if (arg[j] == '-') arg[j] = '_';
    }
    storage.push_back(arg);
  }
  std::vector<char*> args = {argv[0]};
  for (std::string& s : storage) args.push_back(s.data());
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() != 2) {
    std::cerr << absl::ProgramUsageMessage() << "\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_keep_freed_memory)) miseg::KeepFreedMemoryForReuse();
  const std::string command = positional[1];
  if (command == "train") return miseg::RunTrain();
  if (command == "mi") return miseg::RunMi();
  if (command == "infer") return miseg::RunInfer();
  if (command == "profile") return miseg::RunProfile();
  std::cerr << "unknown benchmark '" << command << "'\n" << absl::ProgramUsageMessage() << "\n";
  return 2;
}

// miseg-experiment: reproduces the paper's claim on the synthetic phantom. For one fixed
// split of a phantom population (a few labeled subjects, many unlabeled, a held-out test
// set) and several seeds it trains
//   (a) labeled_only  the labeled subjects alone (w_mi = w_cons = 0),
//   (b) full          the full objective with the unlabeled subjects,
//   (c) all_labeled   every training subject labeled (the upper bound),
// and prints held-out 3D Dice per class: mean and spread over seeds. Nothing is tuned on
// the held-out subjects: they are only scored once, after the last step.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/common/allocator_tuning.h"
#include "core/phantom/phantom.h"
#include "core/train/dice.h"
#include "core/train/inference.h"
#include "core/train/trainer.h"

ABSL_FLAG(int, labeled, 4, "labeled training subjects");
ABSL_FLAG(int, unlabeled, 40, "unlabeled training subjects");
ABSL_FLAG(int, heldout, 20, "held-out test subjects");
ABSL_FLAG(std::string, seeds, "1,2,3", "training seeds, comma separated");
ABSL_FLAG(std::string, configs, "labeled_only,full,all_labeled", "which runs");
ABSL_FLAG(int64_t, steps, 1500, "training steps per run");
ABSL_FLAG(int64_t, size, 64, "model grid");
ABSL_FLAG(std::string, widths, "16,32,64,128", "U-Net widths");
ABSL_FLAG(int64_t, labeled_batch, 4, "labeled slices per step");
ABSL_FLAG(int64_t, unlabeled_batch, 8, "unlabeled slices per step");
ABSL_FLAG(double, learning_rate, 1e-3, "peak learning rate");
ABSL_FLAG(double, w_mi, 0.1, "MI weight for the full run");
ABSL_FLAG(double, w_cons, 5.0, "consistency weight for the full run");
ABSL_FLAG(int64_t, rampup, 0, "ramp-up steps (0: a third of the run)");
ABSL_FLAG(int, threads, 2, "CPU threads");
ABSL_FLAG(std::string, device, "cpu", "torch device");
ABSL_FLAG(uint64_t, population, 2026, "phantom population seed");
ABSL_FLAG(int64_t, log_every, 100, "progress line every n steps (stderr)");

namespace miseg {
namespace {

struct Subject {
  std::string id;
  ImageVolume image;
  LabelVolume labels;
};

std::vector<Subject> MakeSubjects(int first, int count) {
  std::vector<Subject> out;
  for (int i = first; i < first + count; ++i) {
    PhantomSubject s = GeneratePhantomSubject(absl::GetFlag(FLAGS_population), i);
    out.push_back({absl::StrCat("subject-", i), std::move(s.image), std::move(s.labels)});
  }
  return out;
}

TrainingVolume ToVolume(const Subject& s, bool labeled) {
  TrainingVolume v{s.id, s.image, std::nullopt};
  if (labeled) v.labels = s.labels;
  return v;
}

struct Stats {
  double mean = 0, stddev = 0;
};

Stats Summarise(const std::vector<double>& v) {
  Stats s;
  for (double x : v) s.mean += x / v.size();
  for (double x : v) s.stddev += (x - s.mean) * (x - s.mean);
  s.stddev = v.size() > 1 ? std::sqrt(s.stddev / (v.size() - 1)) : 0;
  return s;
}

int Main() {
  std::vector<uint64_t> seeds;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_seeds), ',', absl::SkipEmpty())) {
    uint64_t seed;
    if (!absl::SimpleAtoi(s, &seed)) {
      std::cerr << "bad --seeds\n";
      return 2;
    }
    seeds.push_back(seed);
  }
  std::vector<int64_t> widths;
  for (absl::string_view w : absl::StrSplit(absl::GetFlag(FLAGS_widths), ',')) {
    int64_t width;
    if (!absl::SimpleAtoi(w, &width)) {
      std::cerr << "bad --widths\n";
      return 2;
    }
    widths.push_back(width);
  }
  const int nl = absl::GetFlag(FLAGS_labeled), nu = absl::GetFlag(FLAGS_unlabeled);
  const std::vector<Subject> labeled = MakeSubjects(0, nl);
  const std::vector<Subject> unlabeled = MakeSubjects(nl, nu);
  const std::vector<Subject> heldout = MakeSubjects(nl + nu, absl::GetFlag(FLAGS_heldout));
  const std::vector<std::string> configs = absl::StrSplit(absl::GetFlag(FLAGS_configs), ',');
  const std::vector<std::string>& classes = PhantomClassNames();

  // results[config][class - 1] = one mean-over-held-out Dice per seed
  std::map<std::string, std::vector<std::vector<double>>> results;
  const absl::Time started = absl::Now();
  for (const std::string& name : configs) {
    if (name != "labeled_only" && name != "full" && name != "all_labeled") {
      std::cerr << "unknown config '" << name << "'\n";
      return 2;
    }
    results[name].assign(classes.size() - 1, {});
    for (uint64_t seed : seeds) {
      TrainerConfig c;
      c.model.widths = widths;
      c.model.grid_size = absl::GetFlag(FLAGS_size);
      c.total_steps = absl::GetFlag(FLAGS_steps);
      c.warmup_steps = c.total_steps / 20;
      c.rampup_steps = absl::GetFlag(FLAGS_rampup) > 0 ? absl::GetFlag(FLAGS_rampup) : c.total_steps / 3;
      c.learning_rate = absl::GetFlag(FLAGS_learning_rate);
      c.labeled_batch = absl::GetFlag(FLAGS_labeled_batch);
      c.unlabeled_batch = absl::GetFlag(FLAGS_unlabeled_batch);
      c.threads = absl::GetFlag(FLAGS_threads);
      c.device = absl::GetFlag(FLAGS_device);
      c.seed = seed;
      c.validate_every = 0;
      c.w_mi = name == "full" ? absl::GetFlag(FLAGS_w_mi) : 0;
      c.w_cons = name == "full" ? absl::GetFlag(FLAGS_w_cons) : 0;
      TrainingData data;
      for (const Subject& s : labeled) data.labeled.push_back(ToVolume(s, true));
      for (const Subject& s : unlabeled) {
        if (name == "all_labeled") data.labeled.push_back(ToVolume(s, true));
        if (name == "full") data.unlabeled.push_back(ToVolume(s, false));
      }
      auto trainer = Trainer::Create(c, data);
      if (!trainer.ok()) {
        std::cerr << trainer.status() << "\n";
        return 1;
      }
      const int64_t log_every = absl::GetFlag(FLAGS_log_every);
      double window_sup = 0, window_cons = 0, window_mi = 0;
      auto outcome = (*trainer)->Run({[&](const StepMetrics& m) {
        window_sup += m.supervised;
        window_cons += m.consistency;
        window_mi += m.mutual_information;
        if (m.step % log_every == 0) {
          std::fprintf(stderr, "[%s seed %llu] step %lld/%lld sup %.4f cons %.5f mi %.4f w %.3f lr %.2e %.2f steps/s\n",
                       name.c_str(), static_cast<unsigned long long>(seed),
                       static_cast<long long>(m.step), static_cast<long long>(m.total_steps),
                       window_sup / log_every, window_cons / log_every, window_mi / log_every,
                       m.unsupervised_weight, m.learning_rate, m.steps_per_second);
          window_sup = window_cons = window_mi = 0;
        }
      }});
      if (!outcome.ok()) {
        std::cerr << outcome.status() << "\n";
        return 1;
      }
      const std::string model = absl::StrCat("/tmp/miseg-experiment-", ::getpid(), ".model");
      if (absl::Status s = (*trainer)->ExportModel(model); !s.ok()) {
        std::cerr << s << "\n";
        return 1;
      }
      auto segmenter = Segmenter::Load(model, {c.device, 16, false});
      std::remove(model.c_str());
      if (!segmenter.ok()) {
        std::cerr << segmenter.status() << "\n";
        return 1;
      }
      std::vector<double> mean_per_class(classes.size() - 1, 0.0);
      for (const Subject& s : heldout) {
        auto predicted = (*segmenter)->Segment(s.image);
        auto dice = predicted.ok() ? DicePerClass(*predicted, s.labels, 4) : predicted.status();
        if (!dice.ok()) {
          std::cerr << dice.status() << "\n";
          return 1;
        }
        for (size_t k = 0; k < dice->size(); ++k) mean_per_class[k] += (*dice)[k] / heldout.size();
      }
      for (size_t k = 0; k < mean_per_class.size(); ++k) results[name][k].push_back(mean_per_class[k]);
      std::fprintf(stderr, "[%s seed %llu] held-out Dice %s (%.1f min so far)\n", name.c_str(),
                   static_cast<unsigned long long>(seed),
                   absl::StrJoin(mean_per_class, " ", [](std::string* out, double d) {
                     absl::StrAppend(out, absl::StrFormat("%.3f", d));
                   }).c_str(),
                   absl::ToDoubleMinutes(absl::Now() - started));
    }
  }

  std::printf("\nHeld-out 3D Dice (mean +- sd over %zu seeds; %d labeled, %d unlabeled, %d held-out subjects; %lld steps, grid %lld)\n\n",
              seeds.size(), nl, nu, absl::GetFlag(FLAGS_heldout),
              static_cast<long long>(absl::GetFlag(FLAGS_steps)),
              static_cast<long long>(absl::GetFlag(FLAGS_size)));
  std::printf("| run | %s | mean |\n|---|", absl::StrJoin(std::vector<std::string>(classes.begin() + 1, classes.end()), " | ").c_str());
  for (size_t k = 1; k < classes.size(); ++k) std::printf("---|");
  std::printf("---|\n");
  for (const std::string& name : configs) {
    std::printf("| %s |", name.c_str());
    std::vector<double> per_seed_mean(seeds.size(), 0.0);
    for (const std::vector<double>& per_seed : results[name]) {
      const Stats s = Summarise(per_seed);
      std::printf(" %.3f +- %.3f |", s.mean, s.stddev);
      for (size_t i = 0; i < per_seed.size(); ++i) per_seed_mean[i] += per_seed[i] / results[name].size();
    }
    const Stats m = Summarise(per_seed_mean);
    std::printf(" %.3f +- %.3f |\n", m.mean, m.stddev);
  }
  std::printf("\nwall time %.1f min\n", absl::ToDoubleMinutes(absl::Now() - started));
  return 0;
}

}  // namespace
}  // namespace miseg

int main(int argc, char** argv) {
  miseg::KeepFreedMemoryForReuse();
  absl::SetProgramUsageMessage("miseg-experiment [flags]: labeled-only vs full objective vs all labeled on the phantom");
  absl::ParseCommandLine(argc, argv);
  return miseg::Main();
}

// miseg-experiment: the method's claim measured as the paper measures it, on the
// synthetic phantom. One population is split once: a pool of training subjects (the first
// k of them labeled, the rest unlabeled), and held-out subjects that are scored once, after
// the last step, and never used for any choice. For every labeled count k, every objective
// and every seed it trains a model, and once per seed the all-labeled upper bound; then it
// prints a Markdown table of held-out 3D Dice (mean +- sd over seeds, per class and mean),
// the fraction of the labeled-only to all-labeled gap each objective closes, and draws Dice
// against k per objective (--plot).
//
// Runs are appended to --results as they finish (one line each); a later invocation with
// the same file skips what is there, so a grid too long for one sitting resumes, and the
// table can be made from a partial grid.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
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
#include "bench/active_learning_experiment.h"
#include "bench/paired_test.h"
#include "bench/phantom_subjects.h"
#include "core/common/allocator_tuning.h"
#include "core/phantom/phantom.h"
#include "core/train/dice.h"
#include "core/train/inference.h"
#include "core/train/trainer.h"
#ifdef MISEG_EXPERIMENT_PLOT
#include "client/render/plot.h"
#include "client/render/png.h"
#endif

ABSL_FLAG(std::string, labeled_counts, "4", "labeled training subjects, comma separated");
ABSL_FLAG(int, train_subjects, 44, "training subjects: the first k labeled, the rest unlabeled");
ABSL_FLAG(int, heldout, 20, "held-out test subjects");
ABSL_FLAG(int, validation, 0,
          "validation subjects (after the pool, before the held-out ones): the only data "
          "--search scores on");
ABSL_FLAG(std::string, search, "",
          "hyperparameters searched per objective on the validation subjects, e.g. "
          "'w_mi=0.03,0.1,0.3;w_cons=1,5,20;w_entropy=0.01,0.1;ema_decay=0.99,0.999': each "
          "objective tries every combination of the ones it uses, the rest at their flags");
ABSL_FLAG(int, search_labeled, 4, "labeled subjects during the search");
ABSL_FLAG(uint64_t, search_seed, 1000, "training seed of the search runs (not an evaluation seed)");
ABSL_FLAG(std::string, seeds, "1,2,3", "training seeds, comma separated");
ABSL_FLAG(std::string, objectives, "labeled_only,mi",
          "objectives: mi (the method), labeled_only, entropy, mean_teacher, consistency_only, "
          "mi_only; all_labeled (the upper bound) is added once per seed");
ABSL_FLAG(bool, all_labeled, true, "train the all-labeled upper bound per seed");
ABSL_FLAG(int64_t, steps, 1500, "training steps per run");
ABSL_FLAG(int64_t, size, 64, "model grid");
ABSL_FLAG(std::string, widths, "16,32,64,128", "U-Net widths");
ABSL_FLAG(int64_t, labeled_batch, 4, "labeled slices per step");
ABSL_FLAG(int64_t, unlabeled_batch, 8, "unlabeled slices per step");
ABSL_FLAG(double, learning_rate, 1e-3, "peak learning rate");
ABSL_FLAG(double, w_mi, 0.1, "MI weight");
ABSL_FLAG(double, w_cons, 5.0, "consistency weight (the method's and mean teacher's)");
ABSL_FLAG(double, w_entropy, 0.1, "entropy minimisation's weight");
ABSL_FLAG(double, ema_decay, 0.99, "mean teacher's EMA decay");
ABSL_FLAG(int64_t, rampup, 0, "ramp-up steps (0: a third of the run)");
ABSL_FLAG(int, threads, 2, "CPU threads");
ABSL_FLAG(std::string, device, "cpu", "torch device");
ABSL_FLAG(uint64_t, population, 2026, "phantom population seed");
ABSL_FLAG(int64_t, log_every, 250, "progress line every n steps (stderr)");
ABSL_FLAG(std::string, results, "", "file of finished runs: appended to, and read to skip them");
ABSL_FLAG(std::string, plot, "", "PNG of held-out mean Dice against the labeled count");

namespace miseg {
namespace {

constexpr char kAllLabeled[] = "all_labeled";

// One finished run: held-out Dice per foreground class, mean over held-out subjects.
struct RunKey {
  std::string objective;
  int labeled = 0;  // the pool size for all_labeled
  uint64_t seed = 0;
  bool operator<(const RunKey& o) const {
    return std::tie(objective, labeled, seed) < std::tie(o.objective, o.labeled, o.seed);
  }
};
using Results = std::map<RunKey, std::vector<double>>;

template <typename T>
std::optional<std::vector<T>> ParseList(const std::string& text) {
  std::vector<T> out;
  for (absl::string_view s : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    T value;
    if (!absl::SimpleAtoi(s, &value)) return std::nullopt;
    out.push_back(value);
  }
  return out;
}

// Hyperparameter values by name (w_mi, w_cons, w_entropy, ema_decay); a name not set keeps
// its flag's value.
using Setting = std::map<std::string, double>;

std::string SettingName(const Setting& setting) {
  return absl::StrJoin(setting, ",", [](std::string* out, const auto& kv) {
    absl::StrAppend(out, kv.first, "=", absl::StrFormat("%g", kv.second));
  });
}

// The hyperparameters each objective's loss actually reads.
std::vector<std::string> HyperparametersOf(const std::string& objective) {
  if (objective == "mi") return {"w_cons", "w_mi"};
  if (objective == "mi_only") return {"w_mi"};
  if (objective == "consistency_only") return {"w_cons"};
  if (objective == "mean_teacher") return {"ema_decay", "w_cons"};
  if (objective == "entropy") return {"w_entropy"};
  return {};
}

TrainerConfig ConfigFor(const std::string& objective, uint64_t seed, const Setting& setting) {
  TrainerConfig c;
  c.model.widths = *ParseList<int64_t>(absl::GetFlag(FLAGS_widths));
  c.model.grid_size = absl::GetFlag(FLAGS_size);
  c.total_steps = absl::GetFlag(FLAGS_steps);
  c.warmup_steps = c.total_steps / 20;
  const int64_t rampup = absl::GetFlag(FLAGS_rampup);
  c.rampup_steps = rampup > 0 ? rampup : c.total_steps / 3;
  c.learning_rate = absl::GetFlag(FLAGS_learning_rate);
  c.labeled_batch = absl::GetFlag(FLAGS_labeled_batch);
  c.unlabeled_batch = absl::GetFlag(FLAGS_unlabeled_batch);
  c.threads = absl::GetFlag(FLAGS_threads);
  c.device = absl::GetFlag(FLAGS_device);
  c.seed = seed;
  c.validate_every = 0;
  c.log_every = absl::GetFlag(FLAGS_log_every);
  const auto value = [&](const char* name, double flag) {
    auto it = setting.find(name);
    return it == setting.end() ? flag : it->second;
  };
  c.w_mi = value("w_mi", absl::GetFlag(FLAGS_w_mi));
  c.w_cons = value("w_cons", absl::GetFlag(FLAGS_w_cons));
  c.w_entropy = value("w_entropy", absl::GetFlag(FLAGS_w_entropy));
  c.ema_decay = value("ema_decay", absl::GetFlag(FLAGS_ema_decay));
  c.objective = objective == kAllLabeled ? Objective::kLabeledOnly : *ParseObjective(objective);
  return c;
}

// Mean Dice per foreground class of `segmenter` over `subjects`.
absl::StatusOr<std::vector<double>> ScoreOn(Segmenter& segmenter,
                                            const std::vector<Subject>& subjects) {
  std::vector<double> mean_per_class(PhantomClassNames().size() - 1, 0.0);
  for (const Subject& s : subjects) {
    auto predicted = segmenter.Segment(s.image);
    if (!predicted.ok()) return predicted.status();
    auto dice = DicePerClass(*predicted, s.labels, static_cast<int64_t>(PhantomClassNames().size()));
    if (!dice.ok()) return dice.status();
    for (size_t k = 0; k < dice->size(); ++k) mean_per_class[k] += (*dice)[k] / subjects.size();
  }
  return mean_per_class;
}

// Trains on the pool (its first `labeled` subjects labeled) and scores on `scored`: the
// held-out subjects for the table, the validation subjects for the search.
absl::StatusOr<std::vector<double>> TrainAndScore(const TrainerConfig& c, int labeled,
                                                  const std::string& tag,
                                                  const std::vector<Subject>& pool,
                                                  const std::vector<Subject>& scored) {
  TrainingData data;
  for (size_t i = 0; i < pool.size(); ++i) {
    const bool is_labeled = static_cast<int>(i) < labeled;
    TrainingVolume v{pool[i].id, pool[i].image, std::nullopt};
    if (is_labeled) v.labels = pool[i].labels;
    (is_labeled ? data.labeled : data.unlabeled).push_back(std::move(v));
  }
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(c, data);
  if (!trainer.ok()) return trainer.status();
  absl::StatusOr<RunOutcome> outcome = (*trainer)->Run({[&](const StepMetrics& m) {
    std::fprintf(stderr, "[%s] step %lld/%lld sup %.4f cons %.5f mi %.4f ent %.4f %.2f steps/s\n",
                 tag.c_str(), static_cast<long long>(m.step), static_cast<long long>(m.total_steps),
                 m.supervised, m.consistency, m.mutual_information, m.entropy, m.steps_per_second);
  }});
  if (!outcome.ok()) return outcome.status();
  const std::string model = absl::StrCat("/tmp/miseg-experiment-", ::getpid(), ".model");
  if (absl::Status s = (*trainer)->ExportModel(model); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<Segmenter>> segmenter = Segmenter::Load(model, {c.device, 16, false});
  std::remove(model.c_str());
  if (!segmenter.ok()) return segmenter.status();
  return ScoreOn(**segmenter, scored);
}

// --results lines: "objective<TAB>labeled<TAB>seed<TAB>dice1,dice2,...".
Results ReadResults(const std::string& path) {
  Results results;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const std::vector<std::string> f = absl::StrSplit(line, '\t');
    RunKey key;
    if (f.size() != 4 || !absl::SimpleAtoi(f[1], &key.labeled) || !absl::SimpleAtoi(f[2], &key.seed)) {
      continue;
    }
    key.objective = f[0];
    std::vector<double> dice;
    for (absl::string_view d : absl::StrSplit(f[3], ',')) {
      double value;
      if (absl::SimpleAtod(d, &value)) dice.push_back(value);
    }
    if (dice.size() == PhantomClassNames().size() - 1) results[key] = dice;
  }
  return results;
}

void AppendResult(const std::string& path, const RunKey& key, const std::vector<double>& dice) {
  if (path.empty()) return;
  std::ofstream out(path, std::ios::app);
  out << key.objective << '\t' << key.labeled << '\t' << key.seed << '\t'
      << absl::StrJoin(dice, ",", [](std::string* o, double d) { absl::StrAppend(o, absl::StrFormat("%.17g", d)); })
      << '\n';
}

struct Stats {
  double mean = 0, stddev = 0;
  size_t n = 0;
};

Stats Summarise(const std::vector<double>& v) {
  Stats s;
  s.n = v.size();
  for (double x : v) s.mean += x / static_cast<double>(v.size());
  for (double x : v) s.stddev += (x - s.mean) * (x - s.mean);
  s.stddev = v.size() > 1 ? std::sqrt(s.stddev / static_cast<double>(v.size() - 1)) : 0;
  return s;
}

double MeanOf(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m += x / static_cast<double>(v.size());
  return m;
}

// Per seed: the mean over classes of one (objective, k)'s runs.
std::vector<double> SeedMeans(const Results& results, const std::string& objective, int labeled,
                              size_t cls = SIZE_MAX) {
  std::vector<double> out;
  for (const auto& [key, dice] : results) {
    if (key.objective != objective || key.labeled != labeled) continue;
    out.push_back(cls == SIZE_MAX ? MeanOf(dice) : dice[cls]);
  }
  return out;
}

void PrintTable(const Results& results, const std::vector<int>& counts,
                const std::vector<std::string>& objectives, int pool) {
  const std::vector<std::string>& classes = PhantomClassNames();
  std::printf("| labeled | objective | runs | %s | mean | gap closed |\n|---|---|---|",
              absl::StrJoin(std::vector<std::string>(classes.begin() + 1, classes.end()), " | ").c_str());
  for (size_t k = 1; k < classes.size(); ++k) std::printf("---|");
  std::printf("---|---|\n");
  const double upper = MeanOf(SeedMeans(results, kAllLabeled, pool));
  for (int k : counts) {
    const double lower = MeanOf(SeedMeans(results, "labeled_only", k));
    for (const std::string& objective : objectives) {
      const std::vector<double> means = SeedMeans(results, objective, k);
      if (means.empty()) continue;
      std::printf("| %d | %s | %zu |", k, objective.c_str(), means.size());
      for (size_t c = 0; c + 1 < classes.size(); ++c) {
        const Stats s = Summarise(SeedMeans(results, objective, k, c));
        std::printf(" %.3f +- %.3f |", s.mean, s.stddev);
      }
      const Stats m = Summarise(means);
      const bool gap = upper > lower && !SeedMeans(results, "labeled_only", k).empty();
      std::printf(" %.3f +- %.3f | %s |\n", m.mean, m.stddev,
                  gap ? absl::StrFormat("%.0f %%", 100 * (m.mean - lower) / (upper - lower)).c_str()
                      : "-");
    }
  }
  const Stats u = Summarise(SeedMeans(results, kAllLabeled, pool));
  if (u.n > 0) std::printf("| %d (all) | all_labeled | %zu | | | | %.3f +- %.3f | 100 %% |\n", pool, u.n, u.mean, u.stddev);
}

// The gap each objective closes per class: where the mean's gap fraction comes from.
void PrintClassGaps(const Results& results, const std::vector<int>& counts,
                    const std::vector<std::string>& objectives, int pool) {
  const std::vector<std::string>& classes = PhantomClassNames();
  if (SeedMeans(results, kAllLabeled, pool).empty()) return;
  std::printf("\nGap closed per class (labeled-only = 0 %%, all-labeled = 100 %%)\n\n"
              "| labeled | objective | %s |\n|---|---|",
              absl::StrJoin(std::vector<std::string>(classes.begin() + 1, classes.end()), " | ").c_str());
  for (size_t k = 1; k < classes.size(); ++k) std::printf("---|");
  std::printf("\n");
  for (int k : counts) {
    for (const std::string& objective : objectives) {
      if (objective == "labeled_only" || SeedMeans(results, objective, k).empty()) continue;
      std::printf("| %d | %s |", k, objective.c_str());
      for (size_t c = 0; c + 1 < classes.size(); ++c) {
        const double upper = MeanOf(SeedMeans(results, kAllLabeled, pool, c));
        const double lower = MeanOf(SeedMeans(results, "labeled_only", k, c));
        const double value = MeanOf(SeedMeans(results, objective, k, c));
        if (upper > lower && !SeedMeans(results, "labeled_only", k, c).empty()) {
          std::printf(" %.0f %% |", 100 * (value - lower) / (upper - lower));
        } else {
          std::printf(" - |");
        }
      }
      std::printf("\n");
    }
  }
}

// The method against each other objective at each count, paired by seed (the same labeled
// subjects, initialisation and batches): mean difference of held-out mean Dice, paired t
// and exact Wilcoxon signed-rank p-values (bench/paired_test.h). Seeds either lacks are left out.
void PrintPairedTests(const Results& results, const std::vector<int>& counts,
                      const std::vector<std::string>& objectives) {
  const std::string method = "mi";
  if (std::find(objectives.begin(), objectives.end(), method) == objectives.end()) return;
  std::printf("\nThe method against each objective, paired by seed (held-out mean Dice)\n\n"
              "| labeled | against | seeds | method - it | paired t p | Wilcoxon p |\n"
              "|---|---|---|---|---|---|\n");
  for (int k : counts) {
    for (const std::string& other : objectives) {
      if (other == method) continue;
      std::vector<double> mine, theirs;
      for (const auto& [key, dice] : results) {
        if (key.objective != method || key.labeled != k) continue;
        auto found = results.find({other, k, key.seed});
        if (found == results.end()) continue;
        mine.push_back(MeanOf(dice));
        theirs.push_back(MeanOf(found->second));
      }
      if (mine.size() < 2) continue;
      const PairedTestResult t = PairedTest(mine, theirs);
      std::printf("| %d | %s | %zu | %+.3f | %.3f | %.3f |\n", k, other.c_str(), t.n,
                  t.mean_difference, t.t_p_value, t.wilcoxon_p_value);
    }
  }
}

void Plot(const Results& results, const std::vector<int>& counts,
          const std::vector<std::string>& objectives, const std::string& path) {
#ifdef MISEG_EXPERIMENT_PLOT
  render::PlotPanel panel{"held-out mean Dice", "Dice", {}, std::nullopt};
  for (const std::string& objective : objectives) {
    render::Series series{objective, {}, std::nullopt};
    for (int k : counts) {
      const std::vector<double> means = SeedMeans(results, objective, k);
      if (!means.empty()) series.points.emplace_back(k, MeanOf(means));
    }
    panel.series.push_back(std::move(series));
  }
  render::PlotSpec spec;
  spec.title = "phantom: Dice against labeled subjects";
  spec.x_label = "labeled subjects";
  spec.panels = {panel};
  absl::StatusOr<render::RgbImage> image = render::RenderPlot(spec);
  absl::StatusOr<std::string> png = image.ok() ? render::EncodePng(*image) : image.status();
  if (!png.ok()) {
    std::cerr << "plot: " << png.status() << "\n";
    return;
  }
  std::ofstream(path, std::ios::binary) << *png;
#else
  std::cerr << "plot: this build has no plotting (client/render)\n";
#endif
}

using SearchSpace = std::map<std::string, std::vector<double>>;

absl::StatusOr<SearchSpace> ParseSearch(const std::string& text) {
  SearchSpace space;
  for (absl::string_view part : absl::StrSplit(text, ';', absl::SkipEmpty())) {
    const std::vector<std::string> name_values = absl::StrSplit(part, absl::MaxSplits('=', 1));
    const std::set<std::string> known = {"w_mi", "w_cons", "w_entropy", "ema_decay"};
    if (name_values.size() != 2 || !known.count(name_values[0])) {
      return absl::InvalidArgumentError(absl::StrCat("--search: bad part '", part, "'"));
    }
    for (absl::string_view v : absl::StrSplit(name_values[1], ',', absl::SkipEmpty())) {
      double value;
      if (!absl::SimpleAtod(v, &value)) {
        return absl::InvalidArgumentError(absl::StrCat("--search: bad value '", v, "'"));
      }
      space[name_values[0]].push_back(value);
    }
  }
  return space;
}

// Every combination of the searched values of the hyperparameters `objective` uses.
std::vector<Setting> CandidatesFor(const std::string& objective, const SearchSpace& space) {
  std::vector<Setting> candidates = {{}};
  for (const std::string& name : HyperparametersOf(objective)) {
    auto it = space.find(name);
    if (it == space.end()) continue;
    std::vector<Setting> extended;
    for (const Setting& base : candidates) {
      for (double value : it->second) {
        Setting s = base;
        s[name] = value;
        extended.push_back(std::move(s));
      }
    }
    candidates = std::move(extended);
  }
  return candidates;
}

// Runs `key` unless the results file has it; false (after printing why) on an error.
bool EnsureRun(const RunKey& key, const TrainerConfig& config, int labeled,
               const std::vector<Subject>& pool, const std::vector<Subject>& scored,
               const std::string& results_path, Results& results, absl::Time started) {
  if (results.count(key)) return true;
  const std::string tag = absl::StrCat(key.objective, " k=", key.labeled, " seed ", key.seed);
  absl::StatusOr<std::vector<double>> dice = TrainAndScore(config, labeled, tag, pool, scored);
  if (!dice.ok()) {
    std::cerr << dice.status() << "\n";
    return false;
  }
  results[key] = *dice;
  AppendResult(results_path, key, *dice);
  std::fprintf(stderr, "[%s] mean Dice %.3f (%.1f min so far)\n", tag.c_str(), MeanOf(*dice),
               absl::ToDoubleMinutes(absl::Now() - started));
  return true;
}

// The search: for each objective, every candidate trained once (--search_seed, at
// --search_labeled) and scored on the validation subjects only; the best mean Dice wins (the
// first on a tie, so the choice is reproducible). Held-out subjects play no part.
std::optional<std::map<std::string, Setting>> Search(
    const std::vector<std::string>& objectives, const SearchSpace& space,
    const std::vector<Subject>& pool, const std::vector<Subject>& validation,
    const std::string& results_path, Results& results, absl::Time started) {
  std::map<std::string, Setting> chosen;
  const int labeled = absl::GetFlag(FLAGS_search_labeled);
  const uint64_t seed = absl::GetFlag(FLAGS_search_seed);
  bool printed_header = false;
  for (const std::string& objective : objectives) {
    const std::vector<Setting> candidates = CandidatesFor(objective, space);
    if (candidates.size() < 2) continue;
    double best = -1;
    for (const Setting& setting : candidates) {
      const RunKey key{absl::StrCat("search:", objective, ":", SettingName(setting)), labeled, seed};
      if (!EnsureRun(key, ConfigFor(objective, seed, setting), labeled, pool, validation,
                     results_path, results, started)) {
        return std::nullopt;
      }
      const double dice = MeanOf(results[key]);
      if (!printed_header) {
        std::printf("Search on %zu validation subjects (%d labeled, seed %llu):\n\n"
                    "| objective | setting | validation mean Dice |\n|---|---|---|\n",
                    validation.size(), labeled, static_cast<unsigned long long>(seed));
        printed_header = true;
      }
      std::printf("| %s | %s | %.3f |\n", objective.c_str(), SettingName(setting).c_str(), dice);
      if (dice > best) {
        best = dice;
        chosen[objective] = setting;
      }
    }
  }
  for (const auto& [objective, setting] : chosen) {
    std::printf("chosen for %s: %s\n", objective.c_str(), SettingName(setting).c_str());
  }
  return chosen;
}

struct Plan {
  std::vector<int> counts;
  std::vector<uint64_t> seeds;
  std::vector<std::string> objectives;
  SearchSpace space;
};

std::optional<Plan> ReadPlan() {
  Plan plan;
  const auto counts = ParseList<int>(absl::GetFlag(FLAGS_labeled_counts));
  const auto seeds = ParseList<uint64_t>(absl::GetFlag(FLAGS_seeds));
  if (!counts || !seeds || !ParseList<int64_t>(absl::GetFlag(FLAGS_widths))) {
    std::cerr << "bad --labeled_counts, --seeds or --widths\n";
    return std::nullopt;
  }
  plan.counts = *counts;
  plan.seeds = *seeds;
  plan.objectives = absl::StrSplit(absl::GetFlag(FLAGS_objectives), ',');
  for (const std::string& o : plan.objectives) {
    if (!ParseObjective(o).ok()) {
      std::cerr << "unknown objective '" << o << "'\n";
      return std::nullopt;
    }
  }
  absl::StatusOr<SearchSpace> space = ParseSearch(absl::GetFlag(FLAGS_search));
  if (!space.ok()) {
    std::cerr << space.status().message() << "\n";
    return std::nullopt;
  }
  if (!space->empty() && absl::GetFlag(FLAGS_validation) <= 0) {
    std::cerr << "--search scores on validation subjects: give --validation\n";
    return std::nullopt;
  }
  plan.space = *std::move(space);
  return plan;
}

int Main() {
  const std::optional<Plan> plan = ReadPlan();
  if (!plan) return 2;
  const int pool_size = absl::GetFlag(FLAGS_train_subjects);
  const int validation_size = absl::GetFlag(FLAGS_validation);
  const uint64_t population = absl::GetFlag(FLAGS_population);
  const std::vector<Subject> pool = MakeSubjects(population, 0, pool_size);
  const std::vector<Subject> validation = MakeSubjects(population, pool_size, validation_size);
  const std::vector<Subject> heldout =
      MakeSubjects(population, pool_size + validation_size, absl::GetFlag(FLAGS_heldout));
  const std::string results_path = absl::GetFlag(FLAGS_results);
  Results results = ReadResults(results_path);
  const absl::Time started = absl::Now();
  const std::optional<std::map<std::string, Setting>> chosen =
      Search(plan->objectives, plan->space, pool, validation, results_path, results, started);
  if (!chosen) return 1;
  for (uint64_t seed : plan->seeds) {
    std::vector<RunKey> runs;
    if (absl::GetFlag(FLAGS_all_labeled)) runs.push_back({kAllLabeled, pool_size, seed});
    for (int k : plan->counts) {
      for (const std::string& o : plan->objectives) runs.push_back({o, k, seed});
    }
    for (const RunKey& key : runs) {
      auto setting = chosen->find(key.objective);
      const TrainerConfig config =
          ConfigFor(key.objective, seed, setting == chosen->end() ? Setting{} : setting->second);
      if (!EnsureRun(key, config, key.labeled, pool, heldout, results_path, results, started)) {
        return 1;
      }
    }
  }
  std::printf("\nHeld-out 3D Dice (mean +- sd over seeds; %d training subjects, %d held out; "
              "%lld steps, grid %lld)\n\n", pool_size, absl::GetFlag(FLAGS_heldout),
              static_cast<long long>(absl::GetFlag(FLAGS_steps)),
              static_cast<long long>(absl::GetFlag(FLAGS_size)));
  PrintTable(results, plan->counts, plan->objectives, pool_size);
  PrintClassGaps(results, plan->counts, plan->objectives, pool_size);
  PrintPairedTests(results, plan->counts, plan->objectives);
  if (!absl::GetFlag(FLAGS_plot).empty()) {
    Plot(results, plan->counts, plan->objectives, absl::GetFlag(FLAGS_plot));
  }
  std::printf("\nwall time %.1f min\n", absl::ToDoubleMinutes(absl::Now() - started));
  return 0;
}

}  // namespace

TrainerConfig ExperimentConfigFromFlags(const std::string& objective, uint64_t seed) {
  return ConfigFor(objective, seed, Setting{});
}

}  // namespace miseg

int main(int argc, char** argv) {
  miseg::KeepFreedMemoryForReuse();
  absl::SetProgramUsageMessage(
      "miseg-experiment [flags]: every objective at several labeled counts on the phantom, "
      "against the all-labeled upper bound");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_active_learning)) return miseg::RunActiveLearningExperiment();
  return miseg::Main();
}

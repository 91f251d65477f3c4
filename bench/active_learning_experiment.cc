// miseg-experiment --active_learning (see active_learning_experiment.h).
#include "bench/active_learning_experiment.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/paired_test.h"
#include "core/common/status_macros.h"
#include "bench/phantom_subjects.h"
#include "core/phantom/phantom.h"
#include "core/train/dice.h"
#include "core/train/inference.h"
#include "core/train/labeling_priority.h"
#include "core/train/trainer.h"

ABSL_FLAG(bool, active_learning, false,
          "run the active-learning experiment (suggestion vs random vs entropy) instead of the "
          "objectives grid; uses --train_subjects, --heldout, --seeds, --steps, --size, --widths, "
          "--results and the training flags");
ABSL_FLAG(int, al_start, 2, "active learning: labeled subjects at the start");
ABSL_FLAG(int, al_add, 2, "active learning: subjects each strategy adds");
ABSL_FLAG(bool, al_report_only, false,
          "active learning: train nothing, print the tables of what --results holds");

// The objectives grid's flags (phantom_experiment.cc), shared so one command line sets both.
ABSL_DECLARE_FLAG(int, train_subjects);
ABSL_DECLARE_FLAG(int, heldout);
ABSL_DECLARE_FLAG(std::string, seeds);
ABSL_DECLARE_FLAG(int64_t, steps);
ABSL_DECLARE_FLAG(int64_t, size);
ABSL_DECLARE_FLAG(std::string, widths);
ABSL_DECLARE_FLAG(int64_t, labeled_batch);
ABSL_DECLARE_FLAG(int64_t, unlabeled_batch);
ABSL_DECLARE_FLAG(double, learning_rate);
ABSL_DECLARE_FLAG(double, w_mi);
ABSL_DECLARE_FLAG(double, w_cons);
ABSL_DECLARE_FLAG(int64_t, rampup);
ABSL_DECLARE_FLAG(int, threads);
ABSL_DECLARE_FLAG(std::string, device);
ABSL_DECLARE_FLAG(uint64_t, population);
ABSL_DECLARE_FLAG(int64_t, log_every);
ABSL_DECLARE_FLAG(std::string, results);

namespace miseg {
namespace {

constexpr char kBase[] = "base";
constexpr char kStart[] = "start";
const std::vector<std::string>& Arms() {
  static const auto* arms = new std::vector<std::string>{"suggestion", "random", "entropy"};
  return *arms;
}

// Held-out Dice: [subject][foreground class - 1].
using SubjectDice = std::vector<std::vector<double>>;

struct SeedState {
  std::map<std::string, std::vector<int>> chosen;  // "start" and each arm's added subjects
  std::map<std::string, SubjectDice> dice;         // "base" and each arm
};
using AllResults = std::map<uint64_t, SeedState>;

template <typename T>
bool ParseList(absl::string_view text, char sep, std::vector<T>* out) {
  for (absl::string_view s : absl::StrSplit(text, sep, absl::SkipEmpty())) {
    T value;
    if (!absl::SimpleAtoi(s, &value)) return false;
    out->push_back(value);
  }
  return true;
}


// Trains the method on the pool with `labeled` labeled (the rest unlabeled) and loads the
// result for inference.
absl::StatusOr<std::unique_ptr<Segmenter>> Train(const std::vector<Subject>& pool,
                                                 std::vector<int> labeled, uint64_t seed,
                                                 const std::string& tag) {
  std::sort(labeled.begin(), labeled.end());
  const TrainerConfig c = ExperimentConfigFromFlags("mi", seed);
  TrainingData data;
  for (size_t i = 0; i < pool.size(); ++i) {
    const bool is_labeled = std::binary_search(labeled.begin(), labeled.end(), static_cast<int>(i));
    TrainingVolume v{pool[i].id, pool[i].image, std::nullopt};
    if (is_labeled) v.labels = pool[i].labels;
    (is_labeled ? data.labeled : data.unlabeled).push_back(std::move(v));
  }
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(c, data);
  if (!trainer.ok()) return trainer.status();
  absl::StatusOr<RunOutcome> outcome = (*trainer)->Run({[&](const StepMetrics& m) {
    std::fprintf(stderr, "[al %s] step %lld/%lld sup %.4f cons %.5f mi %.4f %.2f steps/s\n",
                 tag.c_str(), static_cast<long long>(m.step), static_cast<long long>(m.total_steps),
                 m.supervised, m.consistency, m.mutual_information, m.steps_per_second);
  }});
  if (!outcome.ok()) return outcome.status();
  const std::string model = absl::StrCat("/tmp/miseg-al-experiment-", ::getpid(), ".model");
  if (absl::Status s = (*trainer)->ExportModel(model); !s.ok()) return s;
  InferenceOptions inference;
  inference.device = c.device;
  auto segmenter = Segmenter::Load(model, inference);
  std::remove(model.c_str());
  return segmenter;
}

absl::StatusOr<SubjectDice> HeldoutDice(const Segmenter& segmenter,
                                        const std::vector<Subject>& heldout) {
  SubjectDice out;
  const auto classes = static_cast<int64_t>(PhantomClassNames().size());
  for (const Subject& s : heldout) {
    auto predicted = segmenter.Segment(s.image);
    if (!predicted.ok()) return predicted.status();
    auto dice = DicePerClass(*predicted, s.labels, classes);
    if (!dice.ok()) return dice.status();
    out.push_back(*dice);
  }
  return out;
}

// In [0, n), from raw engine output (std distributions are implementation-defined).
int64_t UniformIndex(std::mt19937_64& rng, int64_t n) {
  return static_cast<int64_t>(static_cast<double>(rng() >> 11) * 0x1.0p-53 * static_cast<double>(n));
}

// k distinct indices of `from`, drawn with a generator of its own so the draw depends only
// on the seed and the purpose.
std::vector<int> RandomSubset(std::vector<int> from, int k, uint64_t seed, uint64_t purpose) {
  std::mt19937_64 rng(seed * 1000003 + purpose);
  for (int i = 0; i < k && i < static_cast<int>(from.size()); ++i) {
    const int64_t j = i + UniformIndex(rng, static_cast<int64_t>(from.size()) - i);
    std::swap(from[i], from[j]);
  }
  from.resize(std::min<size_t>(from.size(), static_cast<size_t>(k)));
  return from;
}

// The k candidates with the highest value, ties to the lower pool index.
std::vector<int> TopK(const std::vector<int>& candidates, const std::vector<double>& value, int k) {
  std::vector<size_t> order(candidates.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) { return value[i] > value[j]; });
  std::vector<int> out;
  for (size_t i = 0; i < order.size() && static_cast<int>(out.size()) < k; ++i) {
    out.push_back(candidates[order[i]]);
  }
  return out;
}

// --- the results file: one record per line, tab separated ---
//   choice <seed> <start|arm> <pool indices, comma separated>
//   score  <seed> <pool index> <disagreement> <mutual information> <entropy> <combined>
//   run    <seed> <base|arm> <per held-out subject: class Dice comma separated; subjects by ;>
std::string Num(double v) { return absl::StrFormat("%.17g", v); }

void Append(const std::string& path, const std::string& line) {
  if (path.empty()) return;
  std::ofstream(path, std::ios::app) << line << '\n';
}

void ParseLine(const std::vector<std::string>& f, AllResults& all) {
  uint64_t seed;
  if (f.size() < 4 || !absl::SimpleAtoi(f[1], &seed)) return;
  if (f[0] == "choice") {
    std::vector<int> ids;
    if (ParseList(f[3], ',', &ids)) all[seed].chosen[f[2]] = ids;
  } else if (f[0] == "run") {
    SubjectDice dice;
    for (absl::string_view subject : absl::StrSplit(f[3], ';')) {
      std::vector<double> per_class;
      for (absl::string_view d : absl::StrSplit(subject, ',')) {
        double v;
        if (absl::SimpleAtod(d, &v)) per_class.push_back(v);
      }
      if (per_class.size() != PhantomClassNames().size() - 1) return;
      dice.push_back(per_class);
    }
    all[seed].dice[f[2]] = dice;
  }
}

AllResults ReadAll(const std::string& path) {
  AllResults all;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) ParseLine(absl::StrSplit(line, '\t'), all);
  return all;
}

std::string DiceText(const SubjectDice& dice) {
  return absl::StrJoin(dice, ";", [](std::string* o, const std::vector<double>& c) {
    absl::StrAppend(o, absl::StrJoin(c, ",", [](std::string* o2, double d) { absl::StrAppend(o2, Num(d)); }));
  });
}

// Scores the start model's unlabeled pool subjects and records each strategy's choice.
absl::Status Choose(const Segmenter& model, const std::vector<Subject>& pool, uint64_t seed,
                    SeedState& state, const std::string& path) {
  const std::vector<int>& start = state.chosen[kStart];
  std::vector<int> candidates;
  for (int i = 0; i < static_cast<int>(pool.size()); ++i) {
    if (std::find(start.begin(), start.end(), i) == start.end()) candidates.push_back(i);
  }
  std::vector<LabelingScores> scores;
  for (int i : candidates) {  // one study at a time, as the server does
    absl::StatusOr<LabelingScores> s = model.ScoreForLabeling(pool[i].image);
    if (!s.ok()) return s.status();
    scores.push_back(*s);
  }
  const std::vector<double> combined = CombinedPriority(scores);
  std::vector<double> entropy;
  for (size_t j = 0; j < scores.size(); ++j) {
    entropy.push_back(scores[j].entropy);
    Append(path, absl::StrCat("score\t", seed, "\t", candidates[j], "\t", Num(scores[j].disagreement),
                              "\t", Num(scores[j].mutual_information), "\t", Num(scores[j].entropy),
                              "\t", Num(combined[j])));
  }
  const int k = absl::GetFlag(FLAGS_al_add);
  state.chosen["suggestion"] = TopK(candidates, combined, k);
  state.chosen["entropy"] = TopK(candidates, entropy, k);
  state.chosen["random"] = RandomSubset(candidates, k, seed, /*purpose=*/2);
  for (const std::string& arm : Arms()) {
    Append(path, absl::StrCat("choice\t", seed, "\t", arm, "\t", absl::StrJoin(state.chosen[arm], ",")));
  }
  return absl::OkStatus();
}

absl::Status RunSeed(const std::vector<Subject>& pool, const std::vector<Subject>& heldout,
                     uint64_t seed, SeedState& state, const std::string& path) {
  if (!state.chosen.count(kStart)) {
    std::vector<int> all(pool.size());
    std::iota(all.begin(), all.end(), 0);
    state.chosen[kStart] = RandomSubset(all, absl::GetFlag(FLAGS_al_start), seed, /*purpose=*/1);
    Append(path, absl::StrCat("choice\t", seed, "\t", kStart, "\t", absl::StrJoin(state.chosen[kStart], ",")));
  }
  bool chosen = true;
  for (const std::string& arm : Arms()) chosen = chosen && state.chosen.count(arm);
  if (!state.dice.count(kBase) || !chosen) {
    auto model = Train(pool, state.chosen[kStart], seed, absl::StrCat("base seed ", seed));
    if (!model.ok()) return model.status();
    if (!state.dice.count(kBase)) {
      auto dice = HeldoutDice(**model, heldout);
      if (!dice.ok()) return dice.status();
      state.dice[kBase] = *dice;
      Append(path, absl::StrCat("run\t", seed, "\t", kBase, "\t", DiceText(*dice)));
    }
    if (!chosen) RETURN_IF_ERROR(Choose(**model, pool, seed, state, path));
  }
  for (const std::string& arm : Arms()) {
    if (state.dice.count(arm)) continue;
    std::vector<int> labeled = state.chosen[kStart];
    labeled.insert(labeled.end(), state.chosen[arm].begin(), state.chosen[arm].end());
    auto model = Train(pool, labeled, seed, absl::StrCat(arm, " seed ", seed));
    if (!model.ok()) return model.status();
    auto dice = HeldoutDice(**model, heldout);
    if (!dice.ok()) return dice.status();
    state.dice[arm] = *dice;
    Append(path, absl::StrCat("run\t", seed, "\t", arm, "\t", DiceText(*dice)));
    std::fprintf(stderr, "[al %s seed %llu] done\n", arm.c_str(), static_cast<unsigned long long>(seed));
  }
  return absl::OkStatus();
}

double Mean(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m += x / static_cast<double>(v.size());
  return m;
}

double Sd(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = Mean(v);
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return std::sqrt(ss / static_cast<double>(v.size() - 1));
}

// Per seed with that arm: the mean over held-out subjects of class `cls` (SIZE_MAX: of the
// mean over classes).
std::vector<double> SeedValues(const AllResults& all, const std::string& arm, size_t cls) {
  std::vector<double> out;
  for (const auto& [seed, state] : all) {
    auto it = state.dice.find(arm);
    if (it == state.dice.end()) continue;
    std::vector<double> per_subject;
    for (const std::vector<double>& d : it->second) per_subject.push_back(cls == SIZE_MAX ? Mean(d) : d[cls]);
    out.push_back(Mean(per_subject));
  }
  return out;
}

void PrintDiceTable(const AllResults& all) {
  const std::vector<std::string>& classes = PhantomClassNames();
  std::printf("| selection | labeled | runs | %s | mean |\n|---|---|---|",
              absl::StrJoin(std::vector<std::string>(classes.begin() + 1, classes.end()), " | ").c_str());
  for (size_t k = 1; k < classes.size(); ++k) std::printf("---|");
  std::printf("---|\n");
  const int start = absl::GetFlag(FLAGS_al_start), add = absl::GetFlag(FLAGS_al_add);
  std::vector<std::string> rows = {kBase};
  rows.insert(rows.end(), Arms().begin(), Arms().end());
  for (const std::string& arm : rows) {
    const std::vector<double> means = SeedValues(all, arm, SIZE_MAX);
    if (means.empty()) continue;
    std::printf("| %s | %d | %zu |", arm == kBase ? "start only" : arm.c_str(),
                arm == kBase ? start : start + add, means.size());
    for (size_t c = 0; c + 1 < classes.size(); ++c) {
      const std::vector<double> v = SeedValues(all, arm, c);
      std::printf(" %.3f +- %.3f |", Mean(v), Sd(v));
    }
    std::printf(" %.3f +- %.3f |\n", Mean(means), Sd(means));
  }
}

// Paired samples of arms a and b over the seeds that have both: per (seed, held-out subject)
// the mean Dice over classes, and per seed the mean of those.
void Pairs(const AllResults& all, const std::string& a, const std::string& b,
           std::vector<double> pairs[2], std::vector<double> seeds[2]) {
  for (const auto& [seed, state] : all) {
    auto ia = state.dice.find(a), ib = state.dice.find(b);
    if (ia == state.dice.end() || ib == state.dice.end() || ia->second.size() != ib->second.size()) continue;
    std::vector<double> sa, sb;
    for (size_t j = 0; j < ia->second.size(); ++j) {
      sa.push_back(Mean(ia->second[j]));
      sb.push_back(Mean(ib->second[j]));
    }
    pairs[0].insert(pairs[0].end(), sa.begin(), sa.end());
    pairs[1].insert(pairs[1].end(), sb.begin(), sb.end());
    seeds[0].push_back(Mean(sa));
    seeds[1].push_back(Mean(sb));
  }
}

void PrintComparisons(const AllResults& all) {
  std::printf("\n| comparison (A - B) | pairs (seeds x held-out) | mean Dice gain | paired t p | "
              "Wilcoxon p | seeds | per-seed gains | per-seed t p | per-seed Wilcoxon p |\n"
              "|---|---|---|---|---|---|---|---|---|\n");
  const std::vector<std::pair<std::string, std::string>> comparisons = {
      {"suggestion", "random"}, {"suggestion", "entropy"}, {"entropy", "random"},
      {"suggestion", kBase},    {"random", kBase},         {"entropy", kBase}};
  for (const auto& [a, b] : comparisons) {
    std::vector<double> pairs[2], seeds[2];
    Pairs(all, a, b, pairs, seeds);
    if (seeds[0].empty()) continue;
    const PairedTestResult p = PairedTest(pairs[0], pairs[1]);
    const PairedTestResult s = PairedTest(seeds[0], seeds[1]);
    std::vector<std::string> gains;
    for (size_t i = 0; i < seeds[0].size(); ++i) gains.push_back(absl::StrFormat("%+.3f", seeds[0][i] - seeds[1][i]));
    std::printf("| %s - %s | %zu | %+.4f | %.3g | %.3g | %zu | %s | %.3g | %.3g |\n", a.c_str(),
                b == kBase ? "start only" : b.c_str(), p.n, p.mean_difference, p.t_p_value,
                p.wilcoxon_p_value, s.n, absl::StrJoin(gains, " ").c_str(), s.t_p_value,
                s.wilcoxon_p_value);
  }
}

void PrintChoices(const AllResults& all) {
  std::printf("\nSubjects chosen (pool indices):\n\n| seed | start | suggestion | random | entropy |\n|---|---|---|---|---|\n");
  for (const auto& [seed, state] : all) {
    std::printf("| %llu |", static_cast<unsigned long long>(seed));
    for (const char* arm : {kStart, "suggestion", "random", "entropy"}) {
      auto it = state.chosen.find(arm);
      std::printf(" %s |", it == state.chosen.end() ? "-" : absl::StrJoin(it->second, ",").c_str());
    }
    std::printf("\n");
  }
}

}  // namespace

int RunActiveLearningExperiment() {
  std::vector<uint64_t> seeds;
  std::vector<int64_t> widths;
  if (!ParseList(absl::GetFlag(FLAGS_seeds), ',', &seeds) ||
      !ParseList(absl::GetFlag(FLAGS_widths), ',', &widths) || seeds.empty()) {
    std::cerr << "bad --seeds or --widths\n";
    return 2;
  }
  const int pool_size = absl::GetFlag(FLAGS_train_subjects);
  const int start = absl::GetFlag(FLAGS_al_start), add = absl::GetFlag(FLAGS_al_add);
  if (start < 1 || add < 1 || start + add >= pool_size) {
    std::cerr << "need 1 <= --al_start, 1 <= --al_add and --al_start + --al_add < --train_subjects\n";
    return 2;
  }
  const uint64_t population = absl::GetFlag(FLAGS_population);
  const std::vector<Subject> pool = MakeSubjects(population, 0, pool_size);
  const std::vector<Subject> heldout =
      MakeSubjects(population, pool_size, absl::GetFlag(FLAGS_heldout));
  const std::string path = absl::GetFlag(FLAGS_results);
  AllResults all = ReadAll(path);
  for (uint64_t seed : seeds) {
    if (absl::GetFlag(FLAGS_al_report_only)) break;
    if (absl::Status s = RunSeed(pool, heldout, seed, all[seed], path); !s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
  }
  for (auto it = all.begin(); it != all.end();) {  // the table covers --seeds only
    it = std::find(seeds.begin(), seeds.end(), it->first) == seeds.end() ? all.erase(it) : std::next(it);
  }
  std::printf("\nActive learning on the phantom: %d training subjects (%d labeled at the start, "
              "%d added), %d held out; the method's objective, %lld steps, grid %lld, widths %s\n\n",
              pool_size, start, add, absl::GetFlag(FLAGS_heldout),
              static_cast<long long>(absl::GetFlag(FLAGS_steps)),
              static_cast<long long>(absl::GetFlag(FLAGS_size)), absl::GetFlag(FLAGS_widths).c_str());
  PrintDiceTable(all);
  PrintComparisons(all);
  PrintChoices(all);
  return 0;
}

}  // namespace miseg

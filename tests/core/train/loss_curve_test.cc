// The numerics of a short training run pinned down: the per-step losses of a small run of
// the full objective (every term, the default U-Net widths) must match a curve recorded
// before the speed work of issue 15 (channels-last, the loader thread, ...), to float
// tolerance. Speed changes may reorder floating-point sums, never change what is computed.
// MISEG_RECORD_LOSS_CURVE=<file> writes the curve instead of checking it (how
// testdata/loss_curve.tsv was made, on the code before issue 15).
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/train/trainer.h"
#include "tests/core/train/trainer_fixtures.h"

namespace miseg {
namespace {

using testing::PhantomVolume;

constexpr int kColumns = 4;  // loss, supervised, consistency, mutual_information

TrainerConfig CurveConfig() {
  TrainerConfig config;  // the default widths 16..256: every layer of the real network
  config.model.grid_size = 48;
  config.labeled_batch = 4;
  config.unlabeled_batch = 4;
  config.total_steps = 15;
  config.warmup_steps = 2;
  config.rampup_steps = 4;  // the unsupervised terms weigh in from the first steps
  config.validate_every = 0;
  config.threads = 2;
  config.seed = 7;
  return config;
}

// MISEG_LOSS_CURVE_THREADS and MISEG_LOSS_CURVE_CHANNELS_LAST (0/1) override the run's
// threads and layout when recording: how the tolerances below were measured.
std::vector<std::vector<double>> RunCurve(bool channels_last) {
  TrainingData data;
  data.labeled = {PhantomVolume(0, true), PhantomVolume(1, true)};
  data.unlabeled = {PhantomVolume(2, false), PhantomVolume(3, false)};
  data.validation = {PhantomVolume(4, true)};
  TrainerConfig config = CurveConfig();
  config.channels_last = channels_last;
  if (std::getenv("MISEG_RECORD_LOSS_CURVE") != nullptr) {
    if (const char* t = std::getenv("MISEG_LOSS_CURVE_THREADS")) config.threads = std::atoi(t);
    if (const char* c = std::getenv("MISEG_LOSS_CURVE_CHANNELS_LAST")) config.channels_last = std::atoi(c);
  }
  auto trainer = Trainer::Create(config, data);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  std::vector<std::vector<double>> curve;
  if (!trainer.ok()) return curve;
  auto outcome = (*trainer)->Run({[&](const StepMetrics& m) {
    curve.push_back({m.loss, m.supervised, m.consistency, m.mutual_information});
  }});
  EXPECT_TRUE(outcome.ok()) << outcome.status();
  return curve;
}

std::vector<std::vector<double>> ReadCurve(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::vector<double>> curve;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::vector<double> row(kColumns);
    for (double& v : row) fields >> v;
    if (fields) curve.push_back(row);
  }
  return curve;
}

// Each value of curve within rel * |recorded| + abs of the recorded curve.
void ExpectMatchesRecorded(const std::vector<std::vector<double>>& curve, double rel, double abs) {
  const auto recorded = ReadCurve(MISEG_SOURCE_DIR "/tests/core/train/testdata/loss_curve.tsv");
  ASSERT_EQ(recorded.size(), curve.size());
  for (size_t step = 0; step < curve.size(); ++step) {
    for (int k = 0; k < kColumns; ++k) {
      const double want = recorded[step][k], got = curve[step][k];
      EXPECT_NEAR(got, want, rel * std::abs(want) + abs) << "step " << step + 1 << " column " << k;
    }
  }
}

TEST(LossCurve, ShortRunMatchesTheRecordedCurve) {
  const std::vector<std::vector<double>> curve = RunCurve(/*channels_last=*/true);
  ASSERT_EQ(curve.size(), 15u);
  if (const char* record = std::getenv("MISEG_RECORD_LOSS_CURVE")) {
    std::ofstream out(record);
    out << "# loss\tsupervised\tconsistency\tmutual_information (tests/core/train/loss_curve_test.cc)\n";
    out.precision(9);
    for (const auto& row : curve) out << row[0] << '\t' << row[1] << '\t' << row[2] << '\t' << row[3] << '\n';
    GTEST_SKIP() << "recorded " << record;
  }
  // Float tolerance. Another memory layout reorders the convolutions' sums: a few ulps per
  // operation, which Adam amplifies (it normalises each gradient, so a rounding-sized change
  // in a near-zero gradient moves its weight by up to the learning rate). Measured: the old
  // code (NCHW) with 1 thread instead of 2, a pure change of summation order, moves this
  // curve by up to 2.6e-4 on the loss and 1.6e-5 on the MI term; channels-last by 3.4e-4
  // and 4.1e-5. A change of what is computed (a term, a weight, a sample) moves it by far more.
  ExpectMatchesRecorded(curve, /*rel=*/1e-3, /*abs=*/1e-4);
}

// Without channels-last the arithmetic is the recorded run's, operation for operation
// (gradients set to none instead of zeroed add to exactly the same values).
TEST(LossCurve, NchwRunReproducesTheRecordedCurve) {
  const std::vector<std::vector<double>> curve = RunCurve(/*channels_last=*/false);
  ASSERT_EQ(curve.size(), 15u);
  if (std::getenv("MISEG_RECORD_LOSS_CURVE")) GTEST_SKIP() << "recording";
  ExpectMatchesRecorded(curve, /*rel=*/1e-6, /*abs=*/1e-9);
}

}  // namespace
}  // namespace miseg

// The experiments' paired tests against SciPy 1.10's values (scipy.stats.ttest_rel and
// wilcoxon(method="exact")) and, for ties, against enumerating all 2^n sign patterns.
#include "bench/paired_test.h"

#include <vector>

#include <gtest/gtest.h>

namespace miseg {
namespace {

TEST(PairedTest, MatchesScipyWithoutTies) {
  const std::vector<double> d = {0.5, 1.5, -0.25, 2.5, 0.75, 3.5, -1.25, 4.5};
  const PairedTestResult r = PairedTest(d, std::vector<double>(d.size(), 0.0));
  EXPECT_EQ(r.n, 8u);
  EXPECT_NEAR(r.t, 2.1481255665618115, 1e-12);
  EXPECT_NEAR(r.t_p_value, 0.06880379949470769, 1e-10);
  EXPECT_EQ(r.wilcoxon_n, 8u);
  EXPECT_EQ(r.wilcoxon_w_plus, 31.0);  // W- = 5, SciPy's statistic
  EXPECT_NEAR(r.wilcoxon_p_value, 0.078125, 1e-12);
}

TEST(PairedTest, TiesGetMeanRanksAndTheExactConditionalDistribution) {
  // Differences 1, 2, 1, 2, -1, 3: |d| ranks 2, 4.5, 2, 4.5, 2, 6; W+ = 19. Of the 64 sign
  // patterns, 4 give a sum >= 19, so p = 2 * 4 / 64.
  const PairedTestResult r = PairedTest({1, 2, 3, 4, 5, 6}, {0, 0, 2, 2, 6, 3});
  EXPECT_EQ(r.wilcoxon_w_plus, 19.0);
  EXPECT_NEAR(r.wilcoxon_p_value, 0.125, 1e-12);
  EXPECT_NEAR(r.t, 2.3904572186687876, 1e-12);
  EXPECT_NEAR(r.t_p_value, 0.06235241600215034, 1e-10);
}

TEST(PairedTest, ZeroDifferencesAreDroppedAndEqualSamplesGiveOne) {
  const PairedTestResult same = PairedTest({1, 2, 3}, {1, 2, 3});
  EXPECT_EQ(same.mean_difference, 0.0);
  EXPECT_EQ(same.t_p_value, 1.0);
  EXPECT_EQ(same.wilcoxon_n, 0u);
  EXPECT_EQ(same.wilcoxon_p_value, 1.0);
  const PairedTestResult one = PairedTest({1, 2, 5}, {1, 2, 3});
  EXPECT_EQ(one.wilcoxon_n, 1u);
  EXPECT_EQ(one.wilcoxon_p_value, 1.0);
}

TEST(PairedTest, StudentTailMatchesScipy) {
  EXPECT_NEAR(StudentTwoSidedP(2.5, 7), 0.040992218585752874, 1e-12);
  EXPECT_NEAR(StudentTwoSidedP(-2.5, 7), 0.040992218585752874, 1e-12);
  EXPECT_NEAR(RegularizedIncompleteBeta(2.5, 0.5, 0.3), 0.018927124071945658, 1e-12);
  EXPECT_EQ(StudentTwoSidedP(0, 4), 1.0);
}

TEST(PairedTest, LargeSamplesStayFinite) {
  std::vector<double> a, b;
  for (int i = 0; i < 100; ++i) {
    a.push_back(0.8 + 0.001 * ((i * 37) % 11));
    b.push_back(0.8 + 0.001 * ((i * 17) % 7));
  }
  const PairedTestResult r = PairedTest(a, b);
  EXPECT_GT(r.wilcoxon_p_value, 0.0);
  EXPECT_LE(r.wilcoxon_p_value, 1.0);
  EXPECT_GT(r.t_p_value, 0.0);
  EXPECT_LE(r.t_p_value, 1.0);
}

}  // namespace
}  // namespace miseg

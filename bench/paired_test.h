// Paired two-sample tests for the experiments: the paired t-test and the Wilcoxon
// signed-rank test, both two-sided, on differences a[i] - b[i]. Plain C++; small on purpose
// (no statistics library on the machine), checked against SciPy's values in
// tests/bench/paired_test_test.cc.
#ifndef MISEG_BENCH_PAIRED_TEST_H_
#define MISEG_BENCH_PAIRED_TEST_H_

#include <cstddef>
#include <vector>

namespace miseg {

struct PairedTestResult {
  size_t n = 0;                 // pairs
  double mean_difference = 0;   // mean of a - b
  double t = 0;                 // paired t statistic (0 when every difference is equal)
  double t_p_value = 1;         // two-sided, Student t with n - 1 degrees of freedom
  double wilcoxon_w_plus = 0;   // sum of the ranks of |a - b| over positive differences
  size_t wilcoxon_n = 0;        // pairs with a nonzero difference
  double wilcoxon_p_value = 1;  // two-sided, exact (ties get mean ranks; zeros are dropped)
};

// a.size() must equal b.size(); fewer than 2 pairs give p-values of 1.
PairedTestResult PairedTest(const std::vector<double>& a, const std::vector<double>& b);

// The regularised incomplete beta function I_x(a, b), for the t distribution.
double RegularizedIncompleteBeta(double a, double b, double x);

// Two-sided p-value of Student's t with df degrees of freedom.
double StudentTwoSidedP(double t, double df);

}  // namespace miseg

#endif  // MISEG_BENCH_PAIRED_TEST_H_

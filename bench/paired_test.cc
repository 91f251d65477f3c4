// Paired t and Wilcoxon signed-rank tests (paired_test.h).
#include "bench/paired_test.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace miseg {
namespace {

// Lentz's continued fraction for I_x(a, b) (Numerical Recipes' betacf), valid for
// x < (a + 1) / (a + b + 2); the caller uses the symmetry otherwise.
double BetaContinuedFraction(double a, double b, double x) {
  constexpr double kTiny = 1e-300, kEps = 1e-15;
  double c = 1, d = 1 - (a + b) * x / (a + 1);
  d = 1 / (std::fabs(d) < kTiny ? kTiny : d);
  double h = d;
  for (int m = 1; m <= 500; ++m) {
    for (int half = 0; half < 2; ++half) {
      const double num = half == 0 ? m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
                                   : -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1));
      d = 1 + num * d;
      d = 1 / (std::fabs(d) < kTiny ? kTiny : d);
      c = 1 + num / c;
      if (std::fabs(c) < kTiny) c = kTiny;
      h *= d * c;
      if (half == 1 && std::fabs(d * c - 1) < kEps) return h;
    }
  }
  return h;
}

// Exact two-sided p of W+ = w_plus given the (possibly tied) ranks: the distribution of the
// sum of a random subset of the ranks, each in with probability 1/2. Ranks are multiples of
// 1/2, so doubled they are integers and the distribution is a table.
double WilcoxonExactP(const std::vector<double>& ranks, double w_plus) {
  std::vector<long> doubled;
  long total = 0;
  for (double r : ranks) {
    doubled.push_back(std::lround(2 * r));
    total += doubled.back();
  }
  std::vector<double> probability(static_cast<size_t>(total) + 1, 0.0);
  probability[0] = 1;
  for (long r : doubled) {
    for (long s = total; s >= 0; --s) {
      const double without = probability[s] * 0.5;
      probability[s] = without + (s >= r ? probability[s - r] * 0.5 : 0.0);
    }
  }
  const long w = std::lround(2 * w_plus);
  double lower = 0, upper = 0;
  for (long s = 0; s <= total; ++s) {
    if (s <= w) lower += probability[s];
    if (s >= w) upper += probability[s];
  }
  return std::min(1.0, 2 * std::min(lower, upper));
}

}  // namespace

double RegularizedIncompleteBeta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const double front = std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) +
                                a * std::log(x) + b * std::log1p(-x));
  if (x < (a + 1) / (a + b + 2)) return front * BetaContinuedFraction(a, b, x) / a;
  return 1 - front * BetaContinuedFraction(b, a, 1 - x) / b;
}

double StudentTwoSidedP(double t, double df) {
  if (!std::isfinite(t)) return 0;
  return RegularizedIncompleteBeta(df / 2, 0.5, df / (df + t * t));
}

PairedTestResult PairedTest(const std::vector<double>& a, const std::vector<double>& b) {
  PairedTestResult r;
  r.n = std::min(a.size(), b.size());
  if (r.n == 0) return r;
  std::vector<double> d(r.n);
  for (size_t i = 0; i < r.n; ++i) d[i] = a[i] - b[i];
  r.mean_difference = std::accumulate(d.begin(), d.end(), 0.0) / static_cast<double>(r.n);
  if (r.n < 2) return r;
  double ss = 0;
  for (double x : d) ss += (x - r.mean_difference) * (x - r.mean_difference);
  const double se = std::sqrt(ss / static_cast<double>(r.n - 1) / static_cast<double>(r.n));
  if (se > 0) {
    r.t = r.mean_difference / se;
    r.t_p_value = StudentTwoSidedP(r.t, static_cast<double>(r.n - 1));
  }
  std::vector<double> nonzero;
  for (double x : d) {
    if (x != 0) nonzero.push_back(x);
  }
  r.wilcoxon_n = nonzero.size();
  if (r.wilcoxon_n == 0) return r;
  std::vector<size_t> order(nonzero.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t i, size_t j) { return std::fabs(nonzero[i]) < std::fabs(nonzero[j]); });
  std::vector<double> ranks(nonzero.size());
  for (size_t first = 0; first < order.size();) {
    size_t last = first;
    while (last + 1 < order.size() &&
           std::fabs(nonzero[order[last + 1]]) == std::fabs(nonzero[order[first]])) {
      ++last;
    }
    for (size_t i = first; i <= last; ++i) ranks[order[i]] = 0.5 * (first + last) + 1;
    first = last + 1;
  }
  for (size_t i = 0; i < nonzero.size(); ++i) {
    if (nonzero[i] > 0) r.wilcoxon_w_plus += ranks[i];
  }
  r.wilcoxon_p_value = WilcoxonExactP(ranks, r.wilcoxon_w_plus);
  return r;
}

}  // namespace miseg

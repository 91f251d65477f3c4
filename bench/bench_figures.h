// Small helpers every benchmark program prints its figures with: medians of timed rounds
// and numbers in a fixed short form.
#ifndef MISEG_BENCH_BENCH_FIGURES_H_
#define MISEG_BENCH_BENCH_FIGURES_H_

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace miseg {

// The median of `v` (the mean of the middle two for an even count); 0 for none.
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
}

// The fastest round; 0 for none.
inline double Min(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
}

// Four significant digits, as the JSON and text outputs print every figure.
inline std::string Num(double v) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.4g", v);
  return buffer;
}

}  // namespace miseg

#endif  // MISEG_BENCH_BENCH_FIGURES_H_

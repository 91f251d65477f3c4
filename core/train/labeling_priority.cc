// Per-study active-learning scores and their combined ranking (labeling_priority.h).
#include "core/train/labeling_priority.h"

#include <algorithm>
#include <numeric>

#include "core/train/labeling_scores.h"
#include "core/train/perturbation.h"

namespace miseg {
namespace {

// D4, identity first: every flip combination with every quarter turn.
std::vector<DihedralTransform> DihedralGroup() {
  std::vector<DihedralTransform> group;
  for (int turns = 0; turns < 4; ++turns) {
    for (bool flip : {false, true}) group.push_back({flip, false, turns});
  }
  return group;
}

// Sums over one batch, accumulated across batches.
struct Sums {
  double kl = 0;       // per-slice KL means, summed over slices and non-identity transforms
  double entropy = 0;  // per-slice entropy means, summed over slices
  torch::Tensor joints;
};

void AddBatch(const ProbabilityFn& predict, const torch::Tensor& x, int64_t window, Sums& sums) {
  const auto count = static_cast<double>(x.size(0));
  const torch::Tensor p = predict(x).to(torch::kFloat64);
  sums.entropy += EntropyLoss(p).item<double>() * count;
  for (const DihedralTransform& t : DihedralGroup()) {
    const bool identity = t == DihedralTransform{};
    const torch::Tensor a = ApplyDihedral(t, p);
    const torch::Tensor c = identity ? p : predict(ApplyDihedral(t, x)).to(torch::kFloat64);
    if (!identity) {
      sums.kl += ConsistencyLoss(c, a, ConsistencyKind::kKullbackLeibler).item<double>() * count;
    }
    const torch::Tensor joints = NeighbourJoints(a, c, window);
    sums.joints = sums.joints.defined() ? sums.joints + joints : joints;
  }
}

}  // namespace

LabelingScores ScoreSlices(const ProbabilityFn& predict, const torch::Tensor& images,
                           int64_t batch_slices, const MutualInformationOptions& mi) {
  TORCH_CHECK(images.dim() == 4 && images.size(0) > 0 && images.size(2) == images.size(3),
              "ScoreSlices: images must be S x C x G x G with S > 0");
  TORCH_CHECK(batch_slices >= 1, "ScoreSlices: batch_slices must be >= 1");
  torch::NoGradGuard no_grad;
  Sums sums;
  const int64_t slices = images.size(0);
  for (int64_t start = 0; start < slices; start += batch_slices) {
    AddBatch(predict, images.narrow(0, start, std::min(batch_slices, slices - start)), mi.window,
             sums);
  }
  LabelingScores scores;
  scores.slices = slices;
  const int64_t transforms = static_cast<int64_t>(DihedralGroup().size()) - 1;
  scores.disagreement = sums.kl / static_cast<double>(slices * transforms);
  scores.entropy = sums.entropy / static_cast<double>(slices);
  scores.mutual_information = MeanInformation(sums.joints, mi).item<double>();
  return scores;
}

std::vector<double> NormalisedRanks(const std::vector<double>& values) {
  const size_t n = values.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t i, size_t j) { return values[i] < values[j]; });
  std::vector<double> ranks(n, 0.5);
  if (n < 2) return ranks;
  for (size_t first = 0; first < n;) {
    size_t last = first;
    while (last + 1 < n && values[order[last + 1]] == values[order[first]]) ++last;
    const double mean_rank = 0.5 * static_cast<double>(first + last) / static_cast<double>(n - 1);
    for (size_t i = first; i <= last; ++i) ranks[order[i]] = mean_rank;
    first = last + 1;
  }
  return ranks;
}

std::vector<double> CombinedPriority(const std::vector<LabelingScores>& scores) {
  std::vector<double> disagreement, information;
  for (const LabelingScores& s : scores) {
    disagreement.push_back(s.disagreement);
    information.push_back(s.mutual_information);
  }
  const std::vector<double> d = NormalisedRanks(disagreement);
  const std::vector<double> m = NormalisedRanks(information);
  std::vector<double> out(scores.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = d[i] + (1.0 - m[i]);
  return out;
}

}  // namespace miseg

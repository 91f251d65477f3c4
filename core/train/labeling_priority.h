// Active learning: how much labeling a study would help, from a trained model's own
// predictions on it (docs/method.md, "Choosing what to label next"). Three per-study
// measures, each over every slice of the study on the model grid:
// - disagreement: the mean over slices, pixels and the seven non-identity dihedral
//   transforms T of KL(T(p(x)) || p(T x)), the divergence the consistency term of the
//   objective penalises. The true segmentation is equivariant to T, so any disagreement is
//   the model being wrong on at least one of the two views.
// - mutual_information: mean over the displacement window of I_t between neighbouring
//   pixels' predictions, the quantity the MI term maximises, with the joints J_t summed over
//   the study's slices and all eight transforms (pairs a = T(p(x)), c = p(T x)). Low where
//   the model's label map is not locally coherent, or where it predicts one class everywhere.
// - entropy: mean predictive entropy of p(x) per pixel (the classic uncertainty baseline).
// Torch-free header: the server holds LabelingScores without LibTorch headers.
#ifndef MISEG_CORE_TRAIN_LABELING_PRIORITY_H_
#define MISEG_CORE_TRAIN_LABELING_PRIORITY_H_

#include <cstdint>
#include <vector>

namespace miseg {

struct LabelingScores {
  double disagreement = 0;        // nats per pixel, >= 0
  double mutual_information = 0;  // nats, in [0, ln K]
  double entropy = 0;             // nats per pixel, in [0, ln K]
  int64_t slices = 0;
};

// The combined ranking score of each study of one candidate set: rank(disagreement) +
// (1 - rank(mutual_information)), ranks normalised to [0, 1] (ties share their mean rank; a
// set of one gets 0.5 for both), so the score lies in [0, 2] and higher means label it
// sooner. Ranks rather than z-scores or a weighted sum: the two measures have different
// units and scales that change with the model and the data, and both are skewed (a few
// studies far out); ranks need no weight to tune, and one outlier cannot dominate the sum.
// The score is therefore relative to the set it was computed on.
std::vector<double> CombinedPriority(const std::vector<LabelingScores>& scores);

// Ranks of values normalised to [0, 1]: the smallest 0, the largest 1, ties their mean rank.
std::vector<double> NormalisedRanks(const std::vector<double>& values);

}  // namespace miseg

#endif  // MISEG_CORE_TRAIN_LABELING_PRIORITY_H_

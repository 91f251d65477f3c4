#include "server/rank/hyperparameters.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace miseg {
namespace {

Objective ObjectiveOf(v1::Objective objective) {
  switch (objective) {
    case v1::OBJECTIVE_LABELED_ONLY: return Objective::kLabeledOnly;
    case v1::OBJECTIVE_ENTROPY: return Objective::kEntropyMinimization;
    case v1::OBJECTIVE_MEAN_TEACHER: return Objective::kMeanTeacher;
    case v1::OBJECTIVE_CONSISTENCY_ONLY: return Objective::kConsistencyOnly;
    case v1::OBJECTIVE_MI_ONLY: return Objective::kMutualInformationOnly;
    default: return Objective::kMutualInformation;
  }
}

}  // namespace

absl::StatusOr<v1::Hyperparameters> ResolveHyperparameters(const v1::Hyperparameters& in,
                                                           int64_t classes) {
  const TrainerConfig d;
  v1::Hyperparameters h = in;
  if (!h.has_w_mi()) h.set_w_mi(d.w_mi);
  if (!h.has_w_cons()) h.set_w_cons(d.w_cons);
  if (!h.has_dice_weight()) h.set_dice_weight(d.dice_weight);
  if (!h.has_rampup_steps()) h.set_rampup_steps(d.rampup_steps);
  if (!h.has_mi_window()) h.set_mi_window(d.mi_window);
  if (!h.has_mi_lambda()) h.set_mi_lambda(d.mi_lambda);
  if (h.consistency() == v1::CONSISTENCY_LOSS_UNSPECIFIED) {
    h.set_consistency(v1::CONSISTENCY_LOSS_MSE);
  }
  if (!v1::ConsistencyLoss_IsValid(h.consistency())) {
    return absl::InvalidArgumentError("consistency: unknown loss");
  }
  if (!h.has_total_steps()) h.set_total_steps(d.total_steps);
  if (!h.has_warmup_steps()) h.set_warmup_steps(std::min(d.warmup_steps, h.total_steps() / 10));
  if (!h.has_learning_rate()) h.set_learning_rate(d.learning_rate);
  if (!h.has_min_learning_rate()) h.set_min_learning_rate(d.min_learning_rate);
  if (!h.has_weight_decay()) h.set_weight_decay(d.weight_decay);
  if (!h.has_labeled_batch()) h.set_labeled_batch(d.labeled_batch);
  if (!h.has_unlabeled_batch()) h.set_unlabeled_batch(d.unlabeled_batch);
  if (!h.has_crop_size()) h.set_crop_size(d.crop_size);
  if (!h.has_seed()) h.set_seed(d.seed);
  if (!h.has_grid_size()) h.set_grid_size(d.model.grid_size);
  if (h.widths().empty()) {
    for (int64_t w : d.model.widths) h.add_widths(w);
  }
  if (!h.has_validate_every()) h.set_validate_every(d.validate_every);
  if (!h.has_validation_fraction()) h.set_validation_fraction(0.2);
  if (!h.has_checkpoint_every()) h.set_checkpoint_every(100);
  if (!h.has_ranks()) h.set_ranks(1);
  if (h.objective() == v1::OBJECTIVE_UNSPECIFIED) h.set_objective(v1::OBJECTIVE_MI);
  if (!v1::Objective_IsValid(h.objective())) {
    return absl::InvalidArgumentError("objective: unknown objective");
  }
  if (!h.has_w_entropy()) h.set_w_entropy(d.w_entropy);
  if (!h.has_ema_decay()) h.set_ema_decay(d.ema_decay);
  if (h.ranks() < 1 || h.ranks() > kMaxRanks) {
    return absl::InvalidArgumentError(absl::StrCat("ranks must be in [1, ", kMaxRanks, "]"));
  }
  if (!(h.validation_fraction() >= 0 && h.validation_fraction() < 1)) {  // NaN too
    return absl::InvalidArgumentError("validation_fraction must be in [0, 1)");
  }
  if (h.checkpoint_every() < 1) {
    return absl::InvalidArgumentError("checkpoint_every must be at least 1");
  }
  if (h.total_steps() > 10'000'000) {
    return absl::InvalidArgumentError("total_steps must be at most 10000000");
  }
  absl::Status valid = ToTrainerConfig(h, classes).Validate();
  if (!valid.ok()) return absl::InvalidArgumentError(valid.message());
  return h;
}

TrainerConfig ToTrainerConfig(const v1::Hyperparameters& h, int64_t classes) {
  TrainerConfig c;
  c.model.classes = classes;
  c.model.grid_size = h.grid_size();
  c.model.widths.assign(h.widths().begin(), h.widths().end());
  c.seed = h.seed();
  c.labeled_batch = h.labeled_batch();
  c.unlabeled_batch = h.unlabeled_batch();
  c.crop_size = h.crop_size();
  c.total_steps = h.total_steps();
  c.warmup_steps = h.warmup_steps();
  c.learning_rate = h.learning_rate();
  c.min_learning_rate = h.min_learning_rate();
  c.weight_decay = h.weight_decay();
  c.w_mi = h.w_mi();
  c.w_cons = h.w_cons();
  c.dice_weight = h.dice_weight();
  c.rampup_steps = h.rampup_steps();
  c.mi_window = h.mi_window();
  c.mi_lambda = h.mi_lambda();
  c.consistency = h.consistency() == v1::CONSISTENCY_LOSS_KL ? ConsistencyKind::kKullbackLeibler
                                                             : ConsistencyKind::kMeanSquaredError;
  c.validate_every = h.validate_every();
  c.objective = ObjectiveOf(h.objective());
  c.w_entropy = h.w_entropy();
  c.ema_decay = h.ema_decay();
  return c;
}

}  // namespace miseg

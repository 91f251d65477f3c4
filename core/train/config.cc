// Validation and text (de)serialisation of the training configuration.
#include "core/train/config.h"

#include <cmath>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace miseg {
namespace {

absl::Status Bad(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("training config: ", field, " ", why));
}

bool InUnit(double v) { return std::isfinite(v) && v >= 0.0 && v <= 1.0; }

}  // namespace

absl::Status ValidateModelSpec(const ModelSpec& spec) {
  if (spec.classes < 2 || spec.classes > 255) return Bad("classes", "must be in [2, 255]");
  if (spec.widths.empty() || spec.widths.size() > 8) return Bad("widths", "needs 1 to 8 levels");
  for (int64_t w : spec.widths) {
    if (w < 1 || w > 4096) return Bad("widths", "each must be in [1, 4096]");
  }
  const int64_t divisor = int64_t{1} << (spec.widths.size() - 1);
  if (spec.grid_size < divisor || spec.grid_size > 2048 || spec.grid_size % divisor != 0) {
    return Bad("grid_size", absl::StrCat("must be a multiple of ", divisor,
                                         " (2^(levels-1)) in [", divisor, ", 2048]"));
  }
  if (!std::isfinite(spec.target_spacing_mm) || spec.target_spacing_mm < 0 ||
      spec.target_spacing_mm > 100) {
    return Bad("target_spacing_mm", "must be 0 (fit field of view) or in (0, 100]");
  }
  if (!(spec.clip_low_percentile >= 0 && spec.clip_low_percentile < spec.clip_high_percentile &&
        spec.clip_high_percentile <= 100)) {
    return Bad("clip percentiles", "need 0 <= low < high <= 100");
  }
  return absl::OkStatus();
}

absl::StatusOr<Objective> ParseObjective(const std::string& name) {
  for (Objective o : {Objective::kMutualInformation, Objective::kLabeledOnly,
                      Objective::kEntropyMinimization, Objective::kMeanTeacher,
                      Objective::kConsistencyOnly, Objective::kMutualInformationOnly}) {
    if (name == ObjectiveName(o)) return o;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown objective '", name,
      "' (one of mi, labeled_only, entropy, mean_teacher, consistency_only, mi_only)"));
}

const char* ObjectiveName(Objective objective) {
  switch (objective) {
    case Objective::kMutualInformation: return "mi";
    case Objective::kLabeledOnly: return "labeled_only";
    case Objective::kEntropyMinimization: return "entropy";
    case Objective::kMeanTeacher: return "mean_teacher";
    case Objective::kConsistencyOnly: return "consistency_only";
    case Objective::kMutualInformationOnly: return "mi_only";
  }
  return "unknown";
}

absl::Status TrainerConfig::Validate() const {
  if (absl::Status s = ValidateModelSpec(model); !s.ok()) return s;
  if (device.empty()) return Bad("device", "must not be empty");
  if (threads < 0 || threads > 1024) return Bad("threads", "must be in [0, 1024]");
  if (prefetch_batches < 0 || prefetch_batches > 64) {
    return Bad("prefetch_batches", "must be in [0, 64]");
  }
  if (labeled_batch < 1 || labeled_batch > 4096) return Bad("labeled_batch", "must be in [1, 4096]");
  if (unlabeled_batch < 0 || unlabeled_batch > 4096) {
    return Bad("unlabeled_batch", "must be in [0, 4096]");
  }
  if (crop_size < 0 || crop_size > model.grid_size) {
    return Bad("crop_size", "must be 0 (no crop) or at most grid_size");
  }
  const int64_t divisor = int64_t{1} << (model.widths.size() - 1);
  if (crop_size != 0 && crop_size % divisor != 0) {
    return Bad("crop_size", absl::StrCat("must be a multiple of ", divisor));
  }
  if (total_steps < 1) return Bad("total_steps", "must be at least 1");
  if (warmup_steps < 0 || rampup_steps < 0) return Bad("warmup_steps/rampup_steps", "must be >= 0");
  if (!(learning_rate > 0 && std::isfinite(learning_rate))) return Bad("learning_rate", "must be > 0");
  if (!(min_learning_rate >= 0 && min_learning_rate <= learning_rate)) {
    return Bad("min_learning_rate", "must be in [0, learning_rate]");
  }
  if (!(weight_decay >= 0 && std::isfinite(weight_decay))) return Bad("weight_decay", "must be >= 0");
  if (!(w_mi >= 0 && std::isfinite(w_mi))) return Bad("w_mi", "must be >= 0");
  if (!(w_cons >= 0 && std::isfinite(w_cons))) return Bad("w_cons", "must be >= 0");
  if (!(w_entropy >= 0 && std::isfinite(w_entropy))) return Bad("w_entropy", "must be >= 0");
  if (!(ema_decay >= 0 && ema_decay < 1)) return Bad("ema_decay", "must be in [0, 1)");
  if (!(dice_weight >= 0 && std::isfinite(dice_weight))) return Bad("dice_weight", "must be >= 0");
  if ((w_mi > 0 || w_cons > 0) && unlabeled_batch == 0) {
    return Bad("unlabeled_batch", "must be > 0 when w_mi or w_cons is > 0");
  }
  if (mi_window < 0 || mi_window > 16) return Bad("mi_window", "must be in [0, 16]");
  if (!(mi_lambda >= 0 && std::isfinite(mi_lambda))) return Bad("mi_lambda", "must be >= 0");
  if (!(mi_epsilon > 0 && mi_epsilon < 1e-2)) return Bad("mi_epsilon", "must be in (0, 0.01)");
  if (!InUnit(perturb_flip_probability)) return Bad("perturb_flip_probability", "must be in [0, 1]");
  if (!InUnit(perturb_contrast)) return Bad("perturb_contrast", "must be in [0, 1]");
  if (!(perturb_gamma >= 0 && perturb_gamma < 1)) return Bad("perturb_gamma", "must be in [0, 1)");
  if (!(perturb_noise_std >= 0 && perturb_noise_std <= 10)) {
    return Bad("perturb_noise_std", "must be in [0, 10]");
  }
  if (!(augment_rotation_deg >= 0 && augment_rotation_deg <= 180)) {
    return Bad("augment_rotation_deg", "must be in [0, 180]");
  }
  if (!InUnit(augment_flip_probability)) return Bad("augment_flip_probability", "must be in [0, 1]");
  if (!(augment_intensity_min > 0 && augment_intensity_min <= augment_intensity_max &&
        augment_intensity_max < 100)) {
    return Bad("augment_intensity_min/max", "need 0 < min <= max < 100");
  }
  if (validate_every < 0) return Bad("validate_every", "must be >= 0");
  if (inference_batch < 1 || inference_batch > 4096) return Bad("inference_batch", "must be in [1, 4096]");
  if (log_every < 1) return Bad("log_every", "must be >= 1");
  return absl::OkStatus();
}

std::string SerializeModelSpec(const ModelSpec& spec) {
  std::ostringstream out;
  out.precision(17);
  out << "format=miseg-model-spec-1\n"
      << "classes=" << spec.classes << "\n"
      << "widths=" << absl::StrJoin(spec.widths, ",") << "\n"
      << "grid_size=" << spec.grid_size << "\n"
      << "target_spacing_mm=" << spec.target_spacing_mm << "\n"
      << "clip_low_percentile=" << spec.clip_low_percentile << "\n"
      << "clip_high_percentile=" << spec.clip_high_percentile << "\n";
  return out.str();
}

absl::StatusOr<ModelSpec> ParseModelSpec(const std::string& text) {
  ModelSpec spec;
  spec.widths.clear();
  bool format_seen = false;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    const std::string& key = kv.first;
    const std::string& value = kv.second;
    bool ok = true;
    if (key == "format") {
      format_seen = value == "miseg-model-spec-1";
      ok = format_seen;
    } else if (key == "classes") {
      ok = absl::SimpleAtoi(value, &spec.classes);
    } else if (key == "widths") {
      for (absl::string_view w : absl::StrSplit(value, ',')) {
        int64_t width = 0;
        ok = ok && absl::SimpleAtoi(w, &width);
        spec.widths.push_back(width);
      }
    } else if (key == "grid_size") {
      ok = absl::SimpleAtoi(value, &spec.grid_size);
    } else if (key == "target_spacing_mm") {
      ok = absl::SimpleAtod(value, &spec.target_spacing_mm);
    } else if (key == "clip_low_percentile") {
      ok = absl::SimpleAtod(value, &spec.clip_low_percentile);
    } else if (key == "clip_high_percentile") {
      ok = absl::SimpleAtod(value, &spec.clip_high_percentile);
    }  // unknown keys are ignored so newer files stay readable
    if (!ok) {
      return absl::DataLossError(absl::StrCat("model spec: bad value for '", key, "'"));
    }
  }
  if (!format_seen) return absl::DataLossError("model spec: missing or unknown format line");
  if (absl::Status s = ValidateModelSpec(spec); !s.ok()) {
    return absl::DataLossError(absl::StrCat("model spec: ", s.message()));
  }
  return spec;
}

}  // namespace miseg

// libFuzzer target for the hyperparameter file of `miseg train start --config FILE.json`
// (client/cli/hyperparameters_json.h) and for what the server makes of what it parses
// (server/rank/hyperparameters.h, ResolveHyperparameters: every field defaulted and
// checked). Any bytes must give Hyperparameters or InvalidArgument, never a crash; parsed
// ones must survive printing to JSON and parsing again unchanged; resolving them must give
// InvalidArgument or a set that keeps every promise (in range, accepted by the trainer,
// stable when resolved again), and the numbers the job host derives from it must be
// defined (UBSan checks the conversions below, written as server/cluster/job_host.cc writes
// them). Built with clang's -fsanitize=fuzzer,address,undefined by tests/client/CMakeLists.txt
// (miseg-fuzz-hyperparameters-json).
#include <cmath>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <string>

#include "client/cli/hyperparameters_json.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/field_comparator.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/rank/hyperparameters.h"

namespace {

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

std::string Bytes(const miseg::v1::Hyperparameters& h) {
  std::string out;
  google::protobuf::io::StringOutputStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  h.SerializeToCodedStream(&coded);
  coded.Trim();
  return out;
}

// Equal field by field, as numbers: JSON keeps no sign of a zero ("-0" reads back as 0)
// and NaN equals NaN here.
bool SameValues(const miseg::v1::Hyperparameters& a, const miseg::v1::Hyperparameters& b) {
  google::protobuf::util::DefaultFieldComparator comparator;
  comparator.set_treat_nan_as_equal(true);
  google::protobuf::util::MessageDifferencer differencer;
  differencer.set_field_comparator(&comparator);
  return differencer.Compare(a, b);
}

void CheckResolved(const miseg::v1::Hyperparameters& r, int64_t classes) {
  // Every optional field is set.
  Check(r.has_w_mi() && r.has_w_cons() && r.has_dice_weight() && r.has_rampup_steps() &&
        r.has_mi_window() && r.has_mi_lambda() && r.has_total_steps() && r.has_warmup_steps() &&
        r.has_learning_rate() && r.has_min_learning_rate() && r.has_weight_decay() &&
        r.has_labeled_batch() && r.has_unlabeled_batch() && r.has_crop_size() && r.has_seed() &&
        r.has_grid_size() && r.has_validate_every() && r.has_validation_fraction() &&
        r.has_checkpoint_every() && r.has_ranks() && r.has_w_entropy() && r.has_ema_decay() &&
        !r.widths().empty());
  Check(r.objective() != miseg::v1::OBJECTIVE_UNSPECIFIED &&
        miseg::v1::Objective_IsValid(r.objective()));
  Check(r.consistency() == miseg::v1::CONSISTENCY_LOSS_MSE ||
        r.consistency() == miseg::v1::CONSISTENCY_LOSS_KL);
  // The ranges ResolveHyperparameters promises beyond the trainer's.
  Check(r.ranks() >= 1 && r.ranks() <= miseg::kMaxRanks);
  Check(r.validation_fraction() >= 0 && r.validation_fraction() < 1);
  Check(r.checkpoint_every() >= 1);
  Check(r.total_steps() >= 1 && r.total_steps() <= 10'000'000);
  Check(miseg::ToTrainerConfig(r, classes).Validate().ok());
  // What the job host does with the fraction when a dataset has no validation studies.
  for (size_t labeled : {size_t{2}, size_t{7}, size_t{100000}}) {
    const size_t held_out =
        static_cast<size_t>(r.validation_fraction() * static_cast<double>(labeled));
    Check(held_out <= labeled);
  }
  // Resolving a resolved set changes nothing.
  absl::StatusOr<miseg::v1::Hyperparameters> again = miseg::ResolveHyperparameters(r, classes);
  Check(again.ok() && Bytes(*again) == Bytes(r));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<miseg::v1::Hyperparameters> parsed = miseg::cli::ParseHyperparametersJson(text);
  if (!parsed.ok()) {
    Check(absl::IsInvalidArgument(parsed.status()));
    return 0;
  }
  // What was parsed, printed and parsed again, is the same.
  std::string printed;
  Check(google::protobuf::util::MessageToJsonString(*parsed, &printed).ok());
  absl::StatusOr<miseg::v1::Hyperparameters> reparsed = miseg::cli::ParseHyperparametersJson(printed);
  if (!reparsed.ok() || !SameValues(*reparsed, *parsed)) {
    fprintf(stderr, "printed %s\nreparsed %s\n", printed.c_str(),
            reparsed.ok() ? reparsed->ShortDebugString().c_str() : reparsed.status().ToString().c_str());
    __builtin_trap();
  }

  for (int64_t classes : {int64_t{2}, int64_t{4}}) {
    absl::StatusOr<miseg::v1::Hyperparameters> resolved =
        miseg::ResolveHyperparameters(*parsed, classes);
    if (!resolved.ok()) {
      Check(absl::IsInvalidArgument(resolved.status()));
      continue;
    }
    CheckResolved(*resolved, classes);
  }
  return 0;
}

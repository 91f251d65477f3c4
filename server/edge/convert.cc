#include "server/edge/convert.h"
#include "server/edge/enum_maps.h"


#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace miseg {

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

absl::Status ValidateDatasetName(const std::string& name) {
  bool ok = !name.empty() && name.size() <= 63;
  for (size_t i = 0; ok && i < name.size(); ++i) {
    const char c = name[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    ok = alnum || (i > 0 && (c == '_' || c == '.' || c == '-'));
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        "dataset name must be 1-63 characters of a-z, 0-9, '_', '.', '-', starting with a "
        "letter or digit");
  }
  return absl::OkStatus();
}

absl::Status ValidateClassNames(const std::vector<std::string>& names) {
  if (names.size() < 2) {
    return absl::InvalidArgumentError(
        "class_names needs the background and at least one class");
  }
  if (names.size() > 255) return absl::InvalidArgumentError("at most 255 classes");
  absl::flat_hash_set<std::string> seen;
  for (const std::string& name : names) {
    if (name.empty() || name.size() > 64) {
      return absl::InvalidArgumentError("each class name must be 1-64 characters");
    }
    for (char c : name) {
      if (static_cast<unsigned char>(c) < 0x20) {
        return absl::InvalidArgumentError("class names must not hold control characters");
      }
    }
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat("class name '", name, "' is repeated"));
    }
  }
  return absl::OkStatus();
}

v1::Dataset ToProto(const DatasetRecord& r) {
  v1::Dataset d;
  d.set_name(r.name);
  for (const std::string& c : r.class_names) d.add_class_names(c);
  d.set_modality(r.modality);
  d.set_labeled_studies(r.labeled_studies);
  d.set_unlabeled_studies(r.unlabeled_studies);
  d.set_validation_studies(r.validation_studies);
  d.set_instances(r.instances);
  d.set_stored_bytes(r.stored_bytes);
  d.set_active_model_id(r.active_model_id);
  d.set_created_unix_ms(r.created_unix_ms);
  return d;
}

v1::LabelingPriority ToProto(const LabelingPriorityRecord& record) {
  v1::LabelingPriority out;
  out.set_score(record.score);
  out.set_disagreement(record.disagreement);
  out.set_mutual_information(record.mutual_information);
  out.set_entropy(record.entropy);
  out.set_model_id(record.model_id);
  out.set_scored_unix_ms(record.scored_unix_ms);
  return out;
}

v1::Study ToProto(const StudyRecord& r, const std::string& dataset_name) {
  v1::Study s;
  s.set_dataset(dataset_name);
  s.set_role(ToProto(r.role));
  s.set_study_instance_uid(r.study_instance_uid);
  s.set_series_instance_uid(r.series_instance_uid);
  s.set_modality(r.modality);
  s.set_slices(r.slices);
  s.set_rows(r.rows);
  s.set_columns(r.columns);
  int32_t images = 0;
  for (const InstanceRecord& i : r.instances) images += i.is_segmentation ? 0 : 1;
  s.set_instances(images);
  s.set_segmentation_sop_instance_uid(r.segmentation_sop_instance_uid);
  s.set_created_unix_ms(r.created_unix_ms);
  s.set_series_description(r.series_description);
  s.set_damage(r.damage);
  s.set_lossy_compressed(r.lossy_compressed);
  s.set_lossy_compression_method(r.lossy_compression_method);
  return s;
}

v1::Job ToProto(const JobRecord& r) {
  v1::Job j;
  j.set_id(r.id);
  j.set_dataset(r.dataset_name);
  j.set_state(ToProto(r.state));
  j.mutable_hyperparameters()->ParseFromString(r.hyperparameters);
  j.set_step(r.step);
  j.set_total_steps(r.total_steps);
  j.set_device(r.device);
  j.set_error(r.error);
  j.set_model_id(r.model_id);
  j.set_created_unix_ms(r.created_unix_ms);
  j.set_started_unix_ms(r.started_unix_ms);
  j.set_finished_unix_ms(r.finished_unix_ms);
  j.set_resumes(r.resumes);
  j.set_labeled_studies(r.labeled_studies);
  j.set_unlabeled_studies(r.unlabeled_studies);
  j.set_validation_studies(r.validation_studies);
  return j;
}

v1::Model ToProto(const ModelRecord& r, const std::vector<std::string>& class_names) {
  v1::Model m;
  m.set_id(r.id);
  m.set_dataset(r.dataset_name);
  m.set_version(r.version);
  m.set_job_id(r.job_id);
  for (const std::string& c : class_names) m.add_class_names(c);
  for (double d : r.dice_per_class) m.add_validation_dice_per_class(d);
  m.set_validation_mean_dice(r.mean_dice);
  m.set_active(r.active);
  m.set_size_bytes(r.size_bytes);
  m.set_created_unix_ms(r.created_unix_ms);
  m.set_steps(r.steps);
  m.set_format(ToProto(r.format));
  return m;
}

}  // namespace miseg

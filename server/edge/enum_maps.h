// The domain's enums and the API's, mapped by tables rather than casts: a value added on
// one side and not the other fails to compile (the static_asserts count and check each
// table), and no number is assumed to mean the same on both sides.
#ifndef MISEG_SERVER_EDGE_ENUM_MAPS_H_
#define MISEG_SERVER_EDGE_ENUM_MAPS_H_

#include <cstddef>
#include <optional>
#include <utility>

#include "miseg/v1/miseg.pb.h"
#include "server/domain/ingest.h"
#include "server/dicom_node/node_store.h"
#include "server/store/store.h"

namespace miseg {
namespace enum_maps {

template <typename Domain, typename Api, size_t N>
using Table = std::pair<Domain, Api>[N];

// True when no value appears twice on either side.
template <typename Domain, typename Api, size_t N>
constexpr bool OneToOne(const Table<Domain, Api, N>& table) {
  for (size_t i = 0; i < N; ++i) {
    for (size_t j = i + 1; j < N; ++j) {
      if (table[i].first == table[j].first || table[i].second == table[j].second) return false;
    }
  }
  return true;
}

// The API's values bar UNSPECIFIED (0), all mapped.
template <typename Domain, typename Api, size_t N>
constexpr bool CoversApi(const Table<Domain, Api, N>& table, int api_max) {
  return OneToOne(table) && static_cast<int>(N) == api_max;
}

inline constexpr std::pair<StoredRole, v1::StudyRole> kRoles[] = {
    {StoredRole::kLabeled, v1::STUDY_ROLE_LABELED},
    {StoredRole::kUnlabeled, v1::STUDY_ROLE_UNLABELED},
    {StoredRole::kValidation, v1::STUDY_ROLE_VALIDATION},
};
static_assert(CoversApi(kRoles, v1::StudyRole_MAX));

inline constexpr std::pair<StoredJobState, v1::JobState> kJobStates[] = {
    {StoredJobState::kQueued, v1::JOB_STATE_QUEUED},
    {StoredJobState::kRunning, v1::JOB_STATE_RUNNING},
    {StoredJobState::kSucceeded, v1::JOB_STATE_SUCCEEDED},
    {StoredJobState::kFailed, v1::JOB_STATE_FAILED},
    {StoredJobState::kCancelled, v1::JOB_STATE_CANCELLED},
};
static_assert(CoversApi(kJobStates, v1::JobState_MAX));

inline constexpr std::pair<StoredImportState, v1::ImportState> kImportStates[] = {
    {StoredImportState::kQueued, v1::IMPORT_STATE_QUEUED},
    {StoredImportState::kRunning, v1::IMPORT_STATE_RUNNING},
    {StoredImportState::kSucceeded, v1::IMPORT_STATE_SUCCEEDED},
    {StoredImportState::kFailed, v1::IMPORT_STATE_FAILED},
    {StoredImportState::kCancelled, v1::IMPORT_STATE_CANCELLED},
};
static_assert(CoversApi(kImportStates, v1::ImportState_MAX));

inline constexpr std::pair<StoredModelFormat, v1::ModelFormat> kModelFormats[] = {
    {StoredModelFormat::kMiseg, v1::MODEL_FORMAT_MISEG},
    {StoredModelFormat::kTorchScript, v1::MODEL_FORMAT_TORCHSCRIPT},
};
static_assert(CoversApi(kModelFormats, v1::ModelFormat_MAX));

inline constexpr std::pair<IngestOutcome, v1::InstanceOutcome> kOutcomes[] = {
    {IngestOutcome::kStored, v1::INSTANCE_OUTCOME_STORED},
    {IngestOutcome::kDuplicate, v1::INSTANCE_OUTCOME_DUPLICATE},
    {IngestOutcome::kRefused, v1::INSTANCE_OUTCOME_REFUSED},
};
static_assert(CoversApi(kOutcomes, v1::InstanceOutcome_MAX));

inline constexpr std::pair<DeliveryStateCode, v1::DeliveryState> kDeliveryStates[] = {
    {DeliveryStateCode::kPending, v1::DELIVERY_STATE_PENDING},
    {DeliveryStateCode::kDelivered, v1::DELIVERY_STATE_DELIVERED},
    {DeliveryStateCode::kFailed, v1::DELIVERY_STATE_FAILED},
};
static_assert(CoversApi(kDeliveryStates, v1::DeliveryState_MAX));

template <typename Domain, typename Api, size_t N>
constexpr Api ToApi(const Table<Domain, Api, N>& table, Domain value) {
  for (const auto& [domain, api] : table) {
    if (domain == value) return api;
  }
  return Api{};  // unreachable for a value of the enum: every one is in the table
}

// Nothing for UNSPECIFIED or a number the API does not define (a client's bad request).
template <typename Domain, typename Api, size_t N>
constexpr std::optional<Domain> FromApi(const Table<Domain, Api, N>& table, Api value) {
  for (const auto& [domain, api] : table) {
    if (api == value) return domain;
  }
  return std::nullopt;
}

}  // namespace enum_maps

inline v1::StudyRole ToProto(StoredRole v) { return enum_maps::ToApi(enum_maps::kRoles, v); }
inline v1::JobState ToProto(StoredJobState v) { return enum_maps::ToApi(enum_maps::kJobStates, v); }
inline v1::ImportState ToProto(StoredImportState v) {
  return enum_maps::ToApi(enum_maps::kImportStates, v);
}
inline v1::ModelFormat ToProto(StoredModelFormat v) {
  return enum_maps::ToApi(enum_maps::kModelFormats, v);
}
inline v1::InstanceOutcome ToProto(IngestOutcome v) {
  return enum_maps::ToApi(enum_maps::kOutcomes, v);
}
inline v1::DeliveryState ToProto(DeliveryStateCode v) {
  return enum_maps::ToApi(enum_maps::kDeliveryStates, v);
}
inline std::optional<StoredRole> FromProto(v1::StudyRole v) {
  return enum_maps::FromApi(enum_maps::kRoles, v);
}
inline std::optional<DeliveryStateCode> FromProto(v1::DeliveryState v) {
  return enum_maps::FromApi(enum_maps::kDeliveryStates, v);
}

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_ENUM_MAPS_H_

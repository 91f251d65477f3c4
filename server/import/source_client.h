// What an import needs of a PACS, whichever way it is reached: list a study's instances,
// find studies by a query, fetch instances one at a time. Two implementations: DICOMweb
// (QIDO-RS, WADO-RS over http_client.h) and a DICOM peer (C-FIND, C-GET over
// dicom_retrieve.h).
#ifndef MISEG_SERVER_IMPORT_SOURCE_CLIENT_H_
#define MISEG_SERVER_IMPORT_SOURCE_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dicom/net/dicom_retrieve.h"
#include "server/import/import_sources.h"

namespace miseg {

// A query's keys in order: "Modality=MR&StudyDate=20260101-" -> {{"Modality", "MR"},
// {"StudyDate", "20260101-"}}. InvalidArgument for an empty query, a part without '=', an
// empty value, a key outside PatientID, StudyDate, Modality, AccessionNumber,
// StudyDescription, StudyInstanceUID, or a value with a control character.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseImportQuery(
    const std::string& query);

// Thread safety: one import uses a client at a time; a client holds no connection between
// calls.
class ImportSourceClient {
 public:
  virtual ~ImportSourceClient() = default;
  // Every instance of the study (NotFound when the source does not know it).
  virtual absl::StatusOr<std::vector<RemoteInstance>> ListStudy(const std::string& study_uid) = 0;
  // The studies with a series matching the query's keys.
  virtual absl::StatusOr<std::vector<std::string>> FindStudies(
      const std::vector<std::pair<std::string, std::string>>& keys) = 0;
  // Fetches the instances in order, each handed to on_instance (Part-10 bytes) before the
  // next is asked for; an error from it, or cancelled() turning true, stops the fetch.
  virtual absl::Status Fetch(
      const std::vector<RemoteInstance>& instances,
      const std::function<absl::Status(const RemoteInstance&, std::string)>& on_instance,
      const std::function<bool()>& cancelled) = 0;
};

std::unique_ptr<ImportSourceClient> MakeImportSourceClient(const ImportSourceSpec& spec);

}  // namespace miseg

#endif  // MISEG_SERVER_IMPORT_SOURCE_CLIENT_H_

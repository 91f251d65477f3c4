// Ingesting uploaded DICOM files into a dataset: identify every file, group images into
// series, pair each labeled series with its DICOM SEG, check that each series is one
// consistent volume (and its SEG maps onto it with the dataset's classes), then store the
// files by hash and commit the study in one transaction. Idempotent by SOP Instance UID.
// Proto-free: the gRPC edge and the DICOM node both call it.
#ifndef MISEG_SERVER_INGEST_H_
#define MISEG_SERVER_INGEST_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dicom/dicom_series.h"
#include "core/dicom/series_reader.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {

enum class IngestOutcome { kStored = 1, kDuplicate = 2, kRefused = 3 };

struct IngestFileResult {
  std::string file_name;
  std::string sop_instance_uid;
  std::string series_instance_uid;
  IngestOutcome outcome = IngestOutcome::kRefused;
  std::string reason;
};

struct IngestResult {
  std::vector<IngestFileResult> files;  // one per input file, same order
  std::vector<StudyRecord> stored;      // studies created
};

// Errors are only for failures of the server itself (store, disk): refusals of bad input
// are per file in the result.
absl::StatusOr<IngestResult> IngestFiles(Store& store, FileStore& files,
                                         const DatasetRecord& dataset, StoredRole role,
                                         const std::vector<DicomBuffer>& input,
                                         const SeriesReaderLimits& limits = {});

// Reads a stored study back: the image series as a volume, and for labeled and validation
// studies the labels from its SEG (mapped to the dataset's classes). Empty class_names:
// the images alone.
struct LoadedStudy {
  SeriesVolume series;
  std::optional<LabelVolume> labels;
};
absl::StatusOr<LoadedStudy> LoadStoredStudy(const FileStore& files, const StudyRecord& study,
                                            const std::vector<std::string>& class_names);

}  // namespace miseg

#endif  // MISEG_SERVER_INGEST_H_

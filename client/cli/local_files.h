// DICOM files on the user's disk: loaded from files and folders (recursively), and grouped
// into studies as the server stores them: one image series plus the SEGs that reference it.
#ifndef MISEG_CLIENT_CLI_LOCAL_FILES_H_
#define MISEG_CLIENT_CLI_LOCAL_FILES_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/volume/dicom_series.h"

namespace miseg::cli {

struct LocalStudy {
  std::string series_instance_uid;
  std::vector<DicomBuffer> files;  // images, then the SEGs referencing the series
  int images = 0;
  int segmentations = 0;
  int64_t bytes = 0;
};

struct LocalFiles {
  std::vector<LocalStudy> studies;   // in order of first appearance
  std::vector<DicomBuffer> others;   // not DICOM, or SEGs referencing no series here
  int64_t bytes = 0;
};

// NotFound for a path that does not exist; files are named by their path.
absl::StatusOr<std::vector<DicomBuffer>> LoadPaths(const std::vector<std::string>& paths);
LocalFiles GroupIntoStudies(std::vector<DicomBuffer> files);

// Writes bytes to path through a temporary name and a rename: no half-written output.
absl::Status WriteOutputFile(const std::string& path, const std::string& bytes);

}  // namespace miseg::cli

#endif  // MISEG_CLIENT_CLI_LOCAL_FILES_H_

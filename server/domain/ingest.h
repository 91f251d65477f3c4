// Ingesting uploaded DICOM files into a dataset: identify every file, group images into
// series, pair each labeled series with its DICOM SEG, check that each series is one
// consistent volume (and its SEG maps onto it with the dataset's classes), then store the
// files by hash and commit the study in one transaction. Idempotent by SOP Instance UID.
// Proto-free: the gRPC edge and the DICOM node both call it.
//
// Two entries share one checking path: IngestFiles for files already in memory (the DICOM
// node's series), and IngestSession for an upload streamed chunk by chunk, whose files go
// straight to the file store's staging directory and are checked from there one file at a
// time, so that an upload costs the server a few chunks and one decoded file of memory
// whatever the study's size (a labeled study also holds its SEG and one label volume).
#ifndef MISEG_SERVER_DOMAIN_INGEST_H_
#define MISEG_SERVER_DOMAIN_INGEST_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dicom/instance_info.h"
#include "core/dicom/segmentation.h"
#include "core/dicom/series_reader.h"
#include "core/volume/dicom_series.h"
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

// Files already in the file store (an import's fetched instances), checked from their
// object files one at a time like a streamed upload, and referenced as they are (no copy).
struct StoredObjectFile {
  std::string name;  // for messages: the SOP Instance UID
  std::string hash;
  int64_t size_bytes = 0;
};
absl::StatusOr<IngestResult> IngestStoredObjects(Store& store, FileStore& files,
                                                 const DatasetRecord& dataset, StoredRole role,
                                                 const std::vector<StoredObjectFile>& input,
                                                 const SeriesReaderLimits& limits = {});

// Limits of one upload stream; exceeding one is ResourceExhausted naming it.
struct ChunkLimits {
  int64_t max_bytes = 0;  // sum of the chunks' data
  int64_t max_files = 0;
};

// Receives a stream of file chunks (file_name on a file's first chunk, last_chunk closes
// it) into staged files. Errors: InvalidArgument for a bad sequence (a chunk naming another
// file inside an unfinished one, a chunk after EndOfStream, the stream ending inside a
// file), ResourceExhausted for the limits (the message names the limit), the disk's errors.
// After an error the receiver is spent: every later call returns that error. Destroying it
// removes every staged file not committed. Not thread safe: one call at a time.
class FileReceiver {
 public:
  FileReceiver(FileStore* files, ChunkLimits limits);

  absl::Status AddChunk(std::string_view file_name, std::string_view data, bool last_chunk);
  // The stream ended normally: InvalidArgument if it ended inside a file (naming it).
  absl::Status EndOfStream();
  int64_t bytes_received() const { return bytes_received_; }
  // Finished files, in order (the caller may commit them, or clear the vector to remove
  // them).
  std::vector<std::unique_ptr<StagedFile>>& files() { return staged_; }
  // Their names: the client's, cut to at most 256 bytes at a character boundary, or
  // "file #3" when it sent none.
  const std::vector<std::string>& names() const { return names_; }

 private:
  absl::Status Fail(absl::Status status);

  FileStore* const store_;
  const ChunkLimits limits_;
  std::vector<std::unique_ptr<StagedFile>> staged_;
  std::vector<std::string> names_;
  std::unique_ptr<StagedFile> current_;  // the file being received, if any
  std::string current_name_;
  std::string current_client_name_;  // as the client sent it (cut), to spot another file's
  int64_t bytes_received_ = 0;
  bool ended_ = false;
  absl::Status error_;  // sticky
};

// An upload in progress: chunks -> staged files, each identified (header only) when it is
// complete; Finish checks each series file by file and commits. Outcomes and messages are
// IngestFiles'. Memory: a few chunks (gRPC's), the identity of each file and, during
// Finish, one file's decoded pixels plus a few hundred bytes per slice; for a labeled
// study also its SEG (in memory; SEGs are small) and one LabelVolume of the series' size
// (what ReadSegmentation returns). Nothing is stored unless Finish commits it; destroying
// the session at any point removes every staged file not committed.
// Thread safety: AddChunk (gRPC threads) and Finish (a worker) may run on any threads, but
// never concurrently for one session.
class IngestSession {
 public:
  IngestSession(Store* store, FileStore* files, DatasetRecord dataset, StoredRole role,
                ChunkLimits limits, SeriesReaderLimits reader_limits);

  // Writes the chunk to its staged file; when last_chunk completes a file, parses its
  // header to identify it (an I/O failure there is Unavailable; a file that is not DICOM
  // is only refused, at Finish). Errors as FileReceiver::AddChunk's.
  absl::Status AddChunk(std::string_view file_name, std::string_view data, bool last_chunk);
  // After a normal end of stream: checks each series file by file and commits. Errors only
  // for server failures or stream-level errors (the stream ended inside a file, an upload
  // without files: InvalidArgument "the upload holds no files"); refusals are per file in
  // the result. No staged file is left afterwards. Call once.
  absl::StatusOr<IngestResult> Finish();
  int64_t bytes_received() const { return receiver_.bytes_received(); }

 private:
  Store* const store_;
  FileStore* const files_;
  const DatasetRecord dataset_;
  const StoredRole role_;
  const SeriesReaderLimits reader_limits_;
  FileReceiver receiver_;
  std::vector<absl::StatusOr<InstanceInfo>> identities_;  // one per finished file
  absl::Status error_;  // a server failure while receiving: sticky
  bool finished_ = false;
};

// Reads a stored study back: the image series as a volume, and for labeled and validation
// studies the labels from its SEG (mapped to the dataset's classes). Empty class_names:
// the images alone.
using LoadedStudy = LabeledSeries;
absl::StatusOr<LoadedStudy> LoadStoredStudy(const FileStore& files, const StudyRecord& study,
                                            const std::vector<std::string>& class_names);

}  // namespace miseg

#endif  // MISEG_SERVER_DOMAIN_INGEST_H_

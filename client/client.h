// The miseg client library: a C++ API over miseg.v1 for other software (a hospital's
// integration engine, a notebook's extension) and for the `miseg` command. It never links
// LibTorch. Errors are absl::Status with the server's code and message; no gRPC types in
// the signatures beyond the API's own messages.
#ifndef MISEG_CLIENT_CLIENT_H_
#define MISEG_CLIENT_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/volume/dicom_series.h"
#include "miseg/v1/miseg.pb.h"

namespace miseg::client {

struct ConnectionOptions {
  std::string address = "127.0.0.1:50051";
  std::string token;             // sent as "authorization: Bearer <token>"
  std::string tls_ca_file;       // set: TLS, trusting this CA bundle
  std::string tls_cert_file;     // with tls_key_file: a client certificate (mutual TLS)
  std::string tls_key_file;
  std::string tls_server_name;   // expected name in the server's certificate, if not the host
  int call_timeout_seconds = 120;  // unary calls; streams take their own
  // A TCP connection of this client's own. By default gRPC shares one connection among all
  // the clients of a process that connect to the same address with the same options.
  bool own_connection = false;
};

// Defaults overridden by MISEG_ADDRESS, MISEG_TOKEN, MISEG_TLS_CA, MISEG_TLS_CERT,
// MISEG_TLS_KEY and MISEG_TLS_SERVER_NAME where set.
ConnectionOptions OptionsFromEnvironment();

// Reports bytes sent of the total, at most every chunk.
using ProgressCallback = std::function<void(int64_t done, int64_t total)>;

// The files of one stream, produced one at a time so that a study larger than memory can be
// sent (read from disk file by file). Each call returns the next file, which must stay valid
// until the following call; nullptr when there are no more; an error cancels the stream,
// so the server stores nothing, and becomes the call's result.
using FileSource = std::function<absl::StatusOr<const DicomBuffer*>()>;

struct WatchOptions {
  int64_t from_step = 0;
  bool follow = true;  // false: the stored events only
  // After the server goes away: how long to keep reconnecting (0: do not).
  std::chrono::seconds reconnect_for{0};
  // Called when a reconnect attempt starts (for a "reconnecting..." line).
  std::function<void(const absl::Status& why)> on_reconnect;
  // The deadline of each stream (DEADLINE_EXCEEDED when it passes); 0: as long as the job
  // runs.
  std::chrono::seconds timeout{0};
};

struct SegmentResult {
  std::string seg_bytes;  // a DICOM Part-10 SEG
  v1::SegmentSummary summary;
};

// True for the states a job never leaves (succeeded, failed, cancelled).
bool IsTerminal(v1::JobState state);

class Client {
 public:
  // Connects lazily (the first call dials); InvalidArgument for unreadable TLS files.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ConnectionOptions& options);
  ~Client();

  // grpc.health.v1: OK when the server reports SERVING.
  absl::Status Health();

  absl::StatusOr<v1::Dataset> CreateDataset(const std::string& name,
                                            const std::vector<std::string>& class_names,
                                            const std::string& modality);
  absl::StatusOr<std::vector<v1::Dataset>> ListDatasets();
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& name);
  // One Upload stream of the files (chunked). The reply says what was stored, duplicate
  // or refused per file.
  absl::StatusOr<v1::UploadResponse> Upload(const std::string& dataset, v1::StudyRole role,
                                            const std::vector<DicomBuffer>& files,
                                            const ProgressCallback& progress = nullptr);
  // The same with the files produced one at a time (see FileSource): client memory is one
  // file, whatever the stream's size. total_bytes is the progress callback's total (-1:
  // unknown).
  absl::StatusOr<v1::UploadResponse> UploadFrom(const std::string& dataset, v1::StudyRole role,
                                                const FileSource& next_file,
                                                int64_t total_bytes = -1,
                                                const ProgressCallback& progress = nullptr);
  absl::StatusOr<std::vector<v1::Study>> ListStudies(const std::string& dataset,
                                                     v1::StudyRole role);
  absl::StatusOr<int64_t> DeleteStudy(const std::string& dataset, const std::string& series_uid);
  // Active learning: the dataset's unlabeled studies scored by its active model, the
  // `count` highest first (the scores are also stored and shown by ListStudies).
  absl::StatusOr<v1::SuggestStudiesResponse> SuggestStudies(const std::string& dataset, int count);

  absl::StatusOr<v1::Job> StartJob(const std::string& dataset,
                                   const v1::Hyperparameters& hyperparameters);
  absl::StatusOr<v1::Job> GetJob(int64_t id);
  absl::StatusOr<std::vector<v1::Job>> ListJobs(const std::string& dataset);
  absl::StatusOr<v1::Job> CancelJob(int64_t id);
  // Calls on_event for each event in order, each once, until the job ends (or, without
  // follow, until the stored events are replayed). Reconnects as options say.
  absl::Status WatchJob(int64_t id, const WatchOptions& options,
                        const std::function<void(const v1::JobEvent&)>& on_event);

  absl::StatusOr<std::vector<v1::Model>> ListModels(const std::string& dataset);
  absl::StatusOr<v1::Model> GetModel(int64_t id);
  absl::StatusOr<v1::Model> PromoteModel(int64_t id);
  // Writes the exported model (model.pt, model.json, README.md) into dir, which must not
  // exist or be empty: the files arrive in a temporary sibling directory that is renamed
  // to dir once complete. Returns the file names.
  absl::StatusOr<std::vector<std::string>> ExportModel(int64_t id, const std::string& dir);
  // Sends dir's model.pt and model.json; the server registers them as a new model version
  // of the dataset (not active).
  absl::StatusOr<v1::Model> ImportModel(const std::string& dataset, const std::string& dir);
  // Deletes a model version (not an active one); returns the bytes freed.
  absl::StatusOr<int64_t> DeleteModel(int64_t id);
  // Deletes a dataset and everything of it; force cancels its jobs first.
  absl::StatusOr<v1::DeleteDatasetResponse> DeleteDataset(const std::string& name, bool force);

  // The workers that train ranks of jobs (the server's own devices first).
  absl::StatusOr<std::vector<v1::Worker>> ListWorkers();

  // The DICOM node's outbox (FailedPrecondition when the server runs no DICOM node).
  absl::StatusOr<std::vector<v1::Delivery>> ListDeliveries(v1::DeliveryState state);

  // Imports from the PACS sources configured on the server (its --import_sources): one
  // import per study (a query may start several); see miseg.v1.ImportService.
  absl::StatusOr<std::vector<v1::Import>> StartImport(const v1::StartImportRequest& request);
  absl::StatusOr<v1::Import> GetImport(int64_t id);
  absl::StatusOr<std::vector<v1::Import>> ListImports(const std::string& dataset);
  absl::StatusOr<v1::Import> CancelImport(int64_t id);
  absl::StatusOr<std::vector<v1::ImportSource>> ListImportSources();

  // Files (one image series) or header.stored_series_instance_uid.
  absl::StatusOr<SegmentResult> Segment(const v1::SegmentHeader& header,
                                        const std::vector<DicomBuffer>& files,
                                        const ProgressCallback& progress = nullptr,
                                        std::chrono::seconds timeout = std::chrono::seconds(600));

 private:
  struct State;
  explicit Client(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace miseg::client

#endif  // MISEG_CLIENT_CLIENT_H_

// Test-side helpers over the generated miseg.v1 stubs: bearer tokens, chunked uploads,
// segmentation streams, watching jobs, scraping /metrics.
#ifndef MISEG_TESTS_SERVER_API_CLIENT_H_
#define MISEG_TESTS_SERVER_API_CLIENT_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "core/dicom/phantom_study.h"
#include "core/volume/dicom_series.h"
#include "miseg/v1/miseg.grpc.pb.h"

namespace miseg::testing {

struct ApiClient {
  explicit ApiClient(std::shared_ptr<grpc::Channel> channel);
  explicit ApiClient(const std::string& address);

  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::DatasetService::Stub> datasets;
  std::unique_ptr<v1::TrainingService::Stub> training;
  std::unique_ptr<v1::ModelService::Stub> models;
  std::unique_ptr<v1::SegmentationService::Stub> segmentation;
  std::string token;  // sent as "authorization: Bearer <token>" when not empty

  // A context with the token and a deadline (seconds from now).
  std::unique_ptr<grpc::ClientContext> Context(int deadline_seconds = 120) const;

  grpc::Status CreateDataset(const std::string& name, v1::Dataset* out = nullptr) const;
  // Files in chunks of chunk_bytes; `truncate_last` stops inside the last file (no
  // last_chunk), as a client that dies mid-stream.
  grpc::Status Upload(const std::string& dataset, v1::StudyRole role,
                      const std::vector<DicomBuffer>& files, v1::UploadResponse* response,
                      size_t chunk_bytes = 16 << 10, bool truncate_last = false) const;
  grpc::Status Segment(const v1::SegmentHeader& header, const std::vector<DicomBuffer>& files,
                       std::string* seg_bytes, v1::SegmentSummary* summary,
                       int deadline_ms = 120000) const;
  // Every event until the stream ends.
  grpc::Status Watch(int64_t job_id, std::vector<v1::JobEvent>* events, int64_t from_step = 0,
                     int deadline_seconds = 300, int64_t after_sequence = 0,
                     bool no_follow = false) const;
};

// Follows a job until a step event with step >= `step` arrives; false if the stream ends
// first.
bool WaitForStep(const ApiClient& client, int64_t job_id, int64_t step);
// The steps of a job's step events, in order; and 1..n, to compare them with.
std::vector<int64_t> StepsOf(const std::vector<v1::JobEvent>& events);
std::vector<int64_t> OneTo(int64_t n);

// The phantom class names, background first.
std::vector<std::string> CardiacClasses();
// A study's files for a labeled upload: images then the SEG.
std::vector<DicomBuffer> LabeledFiles(const PhantomStudy& study);
// Hyperparameters for a job that finishes in seconds on two CPU cores.
v1::Hyperparameters TinyHyperparameters(int64_t total_steps, int64_t checkpoint_every);

// GET http://127.0.0.1:port/metrics; empty on failure.
std::string ScrapeMetrics(int port);
// The value of the sample `name{labels}` (exact text before the value), or -1.
double MetricValue(const std::string& exposition, const std::string& sample);

}  // namespace miseg::testing

#endif  // MISEG_TESTS_SERVER_API_CLIENT_H_

#include "tests/server/api_client.h"

#include <curl/curl.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/phantom/phantom.h"

namespace miseg::testing {

ApiClient::ApiClient(std::shared_ptr<grpc::Channel> c)
    : channel(std::move(c)),
      datasets(v1::DatasetService::NewStub(channel)),
      training(v1::TrainingService::NewStub(channel)),
      models(v1::ModelService::NewStub(channel)),
      segmentation(v1::SegmentationService::NewStub(channel)) {}

ApiClient::ApiClient(const std::string& address)
    : ApiClient(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())) {}

std::unique_ptr<grpc::ClientContext> ApiClient::Context(int deadline_seconds) const {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(deadline_seconds));
  return context;
}

grpc::Status ApiClient::CreateDataset(const std::string& name, v1::Dataset* out) const {
  v1::CreateDatasetRequest request;
  request.set_name(name);
  for (const std::string& c : CardiacClasses()) request.add_class_names(c);
  request.set_modality("MR");
  v1::Dataset ignored;
  auto context = Context();
  return datasets->CreateDataset(context.get(), request, out ? out : &ignored);
}

grpc::Status ApiClient::Upload(const std::string& dataset, v1::StudyRole role,
                               const std::vector<DicomBuffer>& files,
                               v1::UploadResponse* response, size_t chunk_bytes,
                               bool truncate_last) const {
  auto context = Context();
  auto writer = datasets->Upload(context.get(), response);
  v1::UploadRequest header;
  header.mutable_header()->set_dataset(dataset);
  header.mutable_header()->set_role(role);
  writer->Write(header);
  for (size_t f = 0; f < files.size(); ++f) {
    const std::string& bytes = files[f].bytes;
    size_t offset = 0;
    do {
      v1::UploadRequest chunk;
      if (offset == 0) chunk.mutable_chunk()->set_file_name(files[f].name);
      const size_t n = std::min(chunk_bytes, bytes.size() - offset);
      chunk.mutable_chunk()->set_data(bytes.substr(offset, n));
      offset += n;
      const bool last = offset >= bytes.size();
      if (truncate_last && f + 1 == files.size() && last) break;  // never finish this file
      chunk.mutable_chunk()->set_last_chunk(last);
      if (!writer->Write(chunk)) break;
    } while (offset < bytes.size());
  }
  writer->WritesDone();
  return writer->Finish();
}

grpc::Status ApiClient::Segment(const v1::SegmentHeader& header,
                                const std::vector<DicomBuffer>& files, std::string* seg_bytes,
                                v1::SegmentSummary* summary, int deadline_ms) const {
  grpc::ClientContext context;
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
  auto stream = segmentation->Segment(&context);
  v1::SegmentRequest first;
  *first.mutable_header() = header;
  stream->Write(first);
  for (const DicomBuffer& file : files) {
    v1::SegmentRequest chunk;
    chunk.mutable_chunk()->set_file_name(file.name);
    chunk.mutable_chunk()->set_data(file.bytes);
    chunk.mutable_chunk()->set_last_chunk(true);
    if (!stream->Write(chunk)) break;
  }
  stream->WritesDone();
  v1::SegmentResponse response;
  seg_bytes->clear();
  while (stream->Read(&response)) {
    if (response.has_summary()) {
      *summary = response.summary();
    } else {
      seg_bytes->append(response.segmentation_chunk());
    }
  }
  return stream->Finish();
}

grpc::Status ApiClient::Watch(int64_t job_id, std::vector<v1::JobEvent>* events,
                              int64_t from_step, int deadline_seconds, int64_t after_sequence,
                              bool no_follow) const {
  auto context = Context(deadline_seconds);
  v1::WatchJobRequest request;
  request.set_id(job_id);
  request.set_from_step(from_step);
  request.set_after_sequence(after_sequence);
  request.set_no_follow(no_follow);
  auto reader = training->WatchJob(context.get(), request);
  v1::JobEvent event;
  while (reader->Read(&event)) events->push_back(event);
  return reader->Finish();
}

std::vector<std::string> CardiacClasses() { return PhantomClassNames(); }

std::vector<DicomBuffer> LabeledFiles(const PhantomStudy& study) {
  std::vector<DicomBuffer> files = study.image_files;
  if (study.segmentation) files.push_back(*study.segmentation);
  return files;
}

bool WaitForStep(const ApiClient& client, int64_t job_id, int64_t step) {
  auto context = client.Context();
  v1::WatchJobRequest request;
  request.set_id(job_id);
  auto reader = client.training->WatchJob(context.get(), request);
  v1::JobEvent event;
  while (reader->Read(&event)) {
    if (event.has_step() && event.step().step() >= step) {
      context->TryCancel();
      reader->Finish();
      return true;
    }
  }
  reader->Finish();
  return false;
}

std::vector<int64_t> StepsOf(const std::vector<v1::JobEvent>& events) {
  std::vector<int64_t> steps;
  for (const v1::JobEvent& e : events) {
    if (e.has_step()) steps.push_back(e.step().step());
  }
  return steps;
}

std::vector<int64_t> OneTo(int64_t n) {
  std::vector<int64_t> v;
  for (int64_t i = 1; i <= n; ++i) v.push_back(i);
  return v;
}

v1::Hyperparameters TinyHyperparameters(int64_t total_steps, int64_t checkpoint_every) {
  v1::Hyperparameters h;
  h.set_total_steps(total_steps);
  h.set_checkpoint_every(checkpoint_every);
  h.set_grid_size(32);
  h.add_widths(8);
  h.add_widths(16);
  h.set_labeled_batch(2);
  h.set_unlabeled_batch(2);
  h.set_warmup_steps(1);
  h.set_rampup_steps(2);
  h.set_validate_every(std::max<int64_t>(1, total_steps / 2));
  return h;
}

namespace {
size_t AppendBody(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}
}  // namespace

std::string ScrapeMetrics(int port) {
  std::string body;
  CURL* curl = curl_easy_init();
  if (!curl) return body;
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/metrics";
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, AppendBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 30L);
  if (curl_easy_perform(curl) != CURLE_OK) body.clear();
  curl_easy_cleanup(curl);
  return body;
}

double MetricValue(const std::string& exposition, const std::string& sample) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (line.size() > sample.size() && line.substr(0, sample.size()) == sample &&
        line[sample.size()] == ' ') {
      double value = -1;
      if (absl::SimpleAtod(line.substr(sample.size() + 1), &value)) return value;
    }
  }
  return -1;
}

}  // namespace miseg::testing

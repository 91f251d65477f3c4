#include "client/client.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include <grpcpp/generic/generic_stub.h>
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "absl/synchronization/notification.h"
#include "miseg/v1/miseg.grpc.pb.h"

namespace miseg::client {
namespace {

// The full name of DatasetService.Upload, for the hand-made ClientWriter in UploadFrom.
constexpr char kUploadMethod[] = "/miseg.v1.DatasetService/Upload";

// Parses a reply received as raw bytes. DataLoss, one line, when it does not parse (protobuf
// refuses proto3 strings that are not UTF-8); protobuf's own log line is silenced, as the
// status says it.
absl::Status ParseReply(const grpc::ByteBuffer& raw, const char* method,
                        google::protobuf::Message* reply) {
  std::vector<grpc::Slice> slices;
  if (!raw.Dump(&slices).ok()) {
    return absl::DataLossError(absl::StrCat("the server's ", method, " reply could not be read"));
  }
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  google::protobuf::LogSilencer silence;
  if (!reply->ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat(
        "the server's ", method, " reply could not be parsed (a text field that is not UTF-8?)"));
  }
  return absl::OkStatus();
}

constexpr size_t kChunkBytes = 256 << 10;

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
  std::string bytes;
  char buffer[1 << 16];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), f)) > 0) bytes.append(buffer, n);
  fclose(f);
  return bytes;
}

// Sends one file as FileChunk messages; false when the stream broke.
template <typename Writer, typename Request>
bool WriteFile(Writer* writer, const DicomBuffer& file, int64_t total, int64_t* done,
               const ProgressCallback& progress) {
  size_t offset = 0;
  do {
    Request request;
    v1::FileChunk* chunk = request.mutable_chunk();
    if (offset == 0) chunk->set_file_name(file.name);
    const size_t n = std::min(kChunkBytes, file.bytes.size() - offset);
    chunk->set_data(file.bytes.data() + offset, n);
    offset += n;
    chunk->set_last_chunk(offset >= file.bytes.size());
    if (!writer->Write(request)) return false;
    *done += static_cast<int64_t>(n);
    if (progress) progress(*done, total);
  } while (offset < file.bytes.size());
  return true;
}

// Sends the source's files after the header. OK also when the stream broke (Finish then
// says why); the source's error otherwise.
template <typename Writer, typename Request>
absl::Status WriteFiles(Writer* writer, const FileSource& next_file, int64_t total,
                        const ProgressCallback& progress) {
  int64_t done = 0;
  while (true) {
    absl::StatusOr<const DicomBuffer*> file = next_file();
    if (!file.ok()) return file.status();
    if (*file == nullptr) return absl::OkStatus();
    if (!WriteFile<Writer, Request>(writer, **file, total, &done, progress)) {
      return absl::OkStatus();
    }
  }
}

FileSource FromVector(const std::vector<DicomBuffer>& files) {
  return [&files, next = size_t{0}]() mutable -> absl::StatusOr<const DicomBuffer*> {
    return next < files.size() ? &files[next++] : nullptr;
  };
}

int64_t TotalBytes(const std::vector<DicomBuffer>& files) {
  int64_t total = 0;
  for (const DicomBuffer& f : files) total += static_cast<int64_t>(f.bytes.size());
  return total;
}

}  // namespace

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

ConnectionOptions OptionsFromEnvironment() {
  ConnectionOptions options;
  auto env = [](const char* name, std::string* out) {
    if (const char* value = std::getenv(name); value && *value) *out = value;
  };
  env("MISEG_ADDRESS", &options.address);
  env("MISEG_TOKEN", &options.token);
  env("MISEG_TLS_CA", &options.tls_ca_file);
  env("MISEG_TLS_CERT", &options.tls_cert_file);
  env("MISEG_TLS_KEY", &options.tls_key_file);
  env("MISEG_TLS_SERVER_NAME", &options.tls_server_name);
  return options;
}

struct Client::State {
  ConnectionOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::DatasetService::Stub> datasets;
  std::unique_ptr<v1::TrainingService::Stub> training;
  std::unique_ptr<v1::ModelService::Stub> models;
  std::unique_ptr<v1::SegmentationService::Stub> segmentation;
  std::unique_ptr<v1::DicomNodeService::Stub> node;
  std::unique_ptr<v1::ImportService::Stub> imports;
  std::unique_ptr<v1::WorkerService::Stub> workers;

  void Prepare(grpc::ClientContext* context, std::chrono::seconds timeout) const {
    if (!options.token.empty()) context->AddMetadata("authorization", "Bearer " + options.token);
    context->set_deadline(std::chrono::system_clock::now() + timeout);
  }
  void Prepare(grpc::ClientContext* context) const {
    Prepare(context, std::chrono::seconds(options.call_timeout_seconds));
  }
};

namespace {

// One unary call: a prepared context (token, deadline), the stub's method, the status
// mapped to absl's.
template <typename State, typename Stub, typename Request, typename Response>
absl::StatusOr<Response> UnaryCall(const State& state, Stub& stub,
                                   grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                                const Request&, Response*),
                                   const Request& request) {
  grpc::ClientContext context;
  state.Prepare(&context);
  Response response;
  grpc::Status status = (stub.*method)(&context, request, &response);
  if (!status.ok()) return FromGrpc(status);
  return response;
}

}  // namespace

Client::Client(std::unique_ptr<State> state) : state_(std::move(state)) {}
Client::~Client() = default;

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ConnectionOptions& options) {
  auto state = std::make_unique<State>();
  state->options = options;
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(64 << 20);
  if (options.tls_ca_file.empty()) {
    if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
      return absl::InvalidArgumentError("a client certificate needs TLS: set the CA as well");
    }
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    absl::StatusOr<std::string> ca = ReadWholeFile(options.tls_ca_file);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
      absl::StatusOr<std::string> cert = ReadWholeFile(options.tls_cert_file);
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadWholeFile(options.tls_key_file);
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      arguments.SetSslTargetNameOverride(options.tls_server_name);
    }
  }
  if (options.own_connection) arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  state->channel = grpc::CreateCustomChannel(options.address, credentials, arguments);
  state->datasets = v1::DatasetService::NewStub(state->channel);
  state->training = v1::TrainingService::NewStub(state->channel);
  state->workers = v1::WorkerService::NewStub(state->channel);
  state->models = v1::ModelService::NewStub(state->channel);
  state->segmentation = v1::SegmentationService::NewStub(state->channel);
  state->node = v1::DicomNodeService::NewStub(state->channel);
  state->imports = v1::ImportService::NewStub(state->channel);
  return std::unique_ptr<Client>(new Client(std::move(state)));
}

absl::Status Client::Health() {
  grpc::GenericStub generic(state_->channel);
  grpc::ClientContext context;
  state_->Prepare(&context, std::chrono::seconds(10));
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  // Written by the callback before Notify, read after WaitForNotification (which orders it).
  grpc::Status status;
  absl::Notification done;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  done.WaitForNotification();
  if (!status.ok()) return FromGrpc(status);
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (response.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices)
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  // HealthCheckResponse: field 1 (status) = 1 (SERVING).
  if (bytes != std::string("\x08\x01", 2)) {
    return absl::UnavailableError("the server is not serving (shutting down?)");
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Dataset> Client::CreateDataset(const std::string& name,
                                                  const std::vector<std::string>& class_names,
                                                  const std::string& modality) {
  v1::CreateDatasetRequest request;
  request.set_name(name);
  for (const std::string& c : class_names) request.add_class_names(c);
  request.set_modality(modality);
  return UnaryCall(*state_, *state_->datasets, &v1::DatasetService::Stub::CreateDataset, request);
}

absl::StatusOr<std::vector<v1::Dataset>> Client::ListDatasets() {
  ASSIGN_OR_RETURN(v1::ListDatasetsResponse response,
                   UnaryCall(*state_, *state_->datasets, &v1::DatasetService::Stub::ListDatasets,
                             v1::ListDatasetsRequest()));
  return std::vector<v1::Dataset>(response.datasets().begin(), response.datasets().end());
}

absl::StatusOr<v1::Dataset> Client::GetDataset(const std::string& name) {
  v1::GetDatasetRequest request;
  request.set_name(name);
  return UnaryCall(*state_, *state_->datasets, &v1::DatasetService::Stub::GetDataset, request);
}

absl::StatusOr<v1::UploadResponse> Client::Upload(const std::string& dataset,
                                                  v1::StudyRole role,
                                                  const std::vector<DicomBuffer>& files,
                                                  const ProgressCallback& progress) {
  return UploadFrom(dataset, role, FromVector(files), TotalBytes(files), progress);
}

absl::StatusOr<v1::UploadResponse> Client::UploadFrom(const std::string& dataset,
                                                      v1::StudyRole role,
                                                      const FileSource& next_file,
                                                      int64_t total_bytes,
                                                      const ProgressCallback& progress) {
  grpc::ClientContext context;
  state_->Prepare(&context, std::chrono::seconds(3600));
  // The reply is received as raw bytes and parsed here: with a v1::UploadResponse, gRPC's
  // synchronous ClientWriter::Finish asserts (cq_.Pluck(&finish_ops_), SIGABRT) when the
  // reply fails to parse, e.g. a string field that is not UTF-8 (issue 18). A ByteBuffer
  // always "parses", so a bad reply becomes a status instead.
  grpc::ByteBuffer raw_response;
  const grpc::internal::RpcMethod method(
      kUploadMethod, grpc::internal::RpcMethod::CLIENT_STREAMING, state_->channel);
  std::unique_ptr<grpc::ClientWriter<v1::UploadRequest>> writer(
      grpc::internal::ClientWriterFactory<v1::UploadRequest>::Create(
          state_->channel.get(), method, &context, &raw_response));
  v1::UploadRequest header;
  header.mutable_header()->set_dataset(dataset);
  header.mutable_header()->set_role(role);
  absl::Status sent = absl::OkStatus();
  if (writer->Write(header)) {
    sent = WriteFiles<grpc::ClientWriter<v1::UploadRequest>, v1::UploadRequest>(
        writer.get(), next_file, total_bytes, progress);
  }
  if (!sent.ok()) {
    context.TryCancel();  // a broken stream: the server keeps nothing
    (void)writer->Finish();
    return sent;
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return FromGrpc(status);
  v1::UploadResponse response;
  RETURN_IF_ERROR(ParseReply(raw_response, "Upload", &response));
  return response;
}

absl::StatusOr<std::vector<v1::Study>> Client::ListStudies(const std::string& dataset,
                                                           v1::StudyRole role) {
  v1::ListStudiesRequest request;
  request.set_dataset(dataset);
  request.set_role(role);
  ASSIGN_OR_RETURN(
      v1::ListStudiesResponse response,
      UnaryCall(*state_, *state_->datasets, &v1::DatasetService::Stub::ListStudies, request));
  return std::vector<v1::Study>(response.studies().begin(), response.studies().end());
}

absl::StatusOr<int64_t> Client::DeleteStudy(const std::string& dataset,
                                            const std::string& series_uid) {
  v1::DeleteStudyRequest request;
  request.set_dataset(dataset);
  request.set_series_instance_uid(series_uid);
  ASSIGN_OR_RETURN(
      v1::DeleteStudyResponse response,
      UnaryCall(*state_, *state_->datasets, &v1::DatasetService::Stub::DeleteStudy, request));
  return response.deleted_instances();
}

absl::StatusOr<v1::SuggestStudiesResponse> Client::SuggestStudies(const std::string& dataset,
                                                                  int count) {
  v1::SuggestStudiesRequest request;
  request.set_dataset(dataset);
  request.set_count(count);
  return UnaryCall(*state_, *state_->datasets, &v1::DatasetService::Stub::SuggestStudies, request);
}

absl::StatusOr<v1::Job> Client::StartJob(const std::string& dataset,
                                         const v1::Hyperparameters& hyperparameters) {
  v1::StartJobRequest request;
  request.set_dataset(dataset);
  *request.mutable_hyperparameters() = hyperparameters;
  return UnaryCall(*state_, *state_->training, &v1::TrainingService::Stub::StartJob, request);
}

absl::StatusOr<v1::Job> Client::GetJob(int64_t id) {
  v1::GetJobRequest request;
  request.set_id(id);
  return UnaryCall(*state_, *state_->training, &v1::TrainingService::Stub::GetJob, request);
}

absl::StatusOr<std::vector<v1::Job>> Client::ListJobs(const std::string& dataset) {
  v1::ListJobsRequest request;
  request.set_dataset(dataset);
  ASSIGN_OR_RETURN(
      v1::ListJobsResponse response,
      UnaryCall(*state_, *state_->training, &v1::TrainingService::Stub::ListJobs, request));
  return std::vector<v1::Job>(response.jobs().begin(), response.jobs().end());
}

absl::StatusOr<std::vector<v1::Worker>> Client::ListWorkers() {
  ASSIGN_OR_RETURN(v1::ListWorkersResponse response,
                   UnaryCall(*state_, *state_->workers, &v1::WorkerService::Stub::ListWorkers,
                             v1::ListWorkersRequest()));
  return std::vector<v1::Worker>(response.workers().begin(), response.workers().end());
}

absl::StatusOr<v1::Job> Client::CancelJob(int64_t id) {
  v1::CancelJobRequest request;
  request.set_id(id);
  return UnaryCall(*state_, *state_->training, &v1::TrainingService::Stub::CancelJob, request);
}

absl::Status Client::WatchJob(int64_t id, const WatchOptions& options,
                              const std::function<void(const v1::JobEvent&)>& on_event) {
  int64_t last_sequence = 0;
  auto reconnect_until = std::chrono::steady_clock::time_point::min();
  std::chrono::milliseconds backoff(250);
  while (true) {
    grpc::ClientContext context;
    // A watch may last as long as the job: no deadline beyond a generous bound.
    state_->Prepare(&context, options.timeout.count() > 0
                                  ? options.timeout
                                  : std::chrono::seconds(std::chrono::hours(24 * 30)));
    v1::WatchJobRequest request;
    request.set_id(id);
    request.set_from_step(options.from_step);
    request.set_after_sequence(last_sequence);
    request.set_no_follow(!options.follow);
    auto reader = state_->training->WatchJob(&context, request);
    v1::JobEvent event;
    bool ended = false;
    while (reader->Read(&event)) {
      backoff = std::chrono::milliseconds(250);
      reconnect_until = std::chrono::steady_clock::time_point::min();
      if (event.sequence() > 0) last_sequence = event.sequence();
      on_event(event);
      if (event.has_state() && IsTerminal(event.state().state())) ended = true;
    }
    grpc::Status status = reader->Finish();
    if (status.ok() || ended) return absl::OkStatus();
    const bool transient = status.error_code() == grpc::StatusCode::UNAVAILABLE;
    if (!transient || options.reconnect_for.count() <= 0) return FromGrpc(status);
    const auto now = std::chrono::steady_clock::now();
    if (reconnect_until == std::chrono::steady_clock::time_point::min()) {
      reconnect_until = now + options.reconnect_for;
    }
    if (now >= reconnect_until) return FromGrpc(status);
    if (options.on_reconnect) options.on_reconnect(FromGrpc(status));
    // Wait for the channel to come back rather than spinning: WaitForConnected blocks until
    // the server accepts a connection again or the backoff passes.
    state_->channel->WaitForConnected(std::chrono::system_clock::now() + backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
  }
}

absl::StatusOr<std::vector<v1::Model>> Client::ListModels(const std::string& dataset) {
  v1::ListModelsRequest request;
  request.set_dataset(dataset);
  ASSIGN_OR_RETURN(
      v1::ListModelsResponse response,
      UnaryCall(*state_, *state_->models, &v1::ModelService::Stub::ListModels, request));
  return std::vector<v1::Model>(response.models().begin(), response.models().end());
}

absl::StatusOr<v1::Model> Client::GetModel(int64_t id) {
  v1::GetModelRequest request;
  request.set_id(id);
  return UnaryCall(*state_, *state_->models, &v1::ModelService::Stub::GetModel, request);
}

absl::StatusOr<v1::Model> Client::PromoteModel(int64_t id) {
  v1::PromoteModelRequest request;
  request.set_id(id);
  return UnaryCall(*state_, *state_->models, &v1::ModelService::Stub::PromoteModel, request);
}

absl::StatusOr<std::vector<v1::Delivery>> Client::ListDeliveries(v1::DeliveryState state) {
  v1::ListDeliveriesRequest request;
  request.set_state(state);
  ASSIGN_OR_RETURN(
      v1::ListDeliveriesResponse response,
      UnaryCall(*state_, *state_->node, &v1::DicomNodeService::Stub::ListDeliveries, request));
  return std::vector<v1::Delivery>(response.deliveries().begin(), response.deliveries().end());
}

absl::StatusOr<std::vector<v1::Import>> Client::StartImport(
    const v1::StartImportRequest& request) {
  ASSIGN_OR_RETURN(
      v1::StartImportResponse response,
      UnaryCall(*state_, *state_->imports, &v1::ImportService::Stub::StartImport, request));
  return std::vector<v1::Import>(response.imports().begin(), response.imports().end());
}

absl::StatusOr<v1::Import> Client::GetImport(int64_t id) {
  v1::GetImportRequest request;
  request.set_id(id);
  return UnaryCall(*state_, *state_->imports, &v1::ImportService::Stub::GetImport, request);
}

absl::StatusOr<std::vector<v1::Import>> Client::ListImports(const std::string& dataset) {
  v1::ListImportsRequest request;
  request.set_dataset(dataset);
  ASSIGN_OR_RETURN(
      v1::ListImportsResponse response,
      UnaryCall(*state_, *state_->imports, &v1::ImportService::Stub::ListImports, request));
  return std::vector<v1::Import>(response.imports().begin(), response.imports().end());
}

absl::StatusOr<v1::Import> Client::CancelImport(int64_t id) {
  v1::CancelImportRequest request;
  request.set_id(id);
  return UnaryCall(*state_, *state_->imports, &v1::ImportService::Stub::CancelImport, request);
}

absl::StatusOr<std::vector<v1::ImportSource>> Client::ListImportSources() {
  ASSIGN_OR_RETURN(v1::ListImportSourcesResponse response,
                   UnaryCall(*state_, *state_->imports,
                             &v1::ImportService::Stub::ListImportSources,
                             v1::ListImportSourcesRequest()));
  return std::vector<v1::ImportSource>(response.sources().begin(), response.sources().end());
}

absl::StatusOr<SegmentResult> Client::Segment(const v1::SegmentHeader& header,
                                              const std::vector<DicomBuffer>& files,
                                              const ProgressCallback& progress,
                                              std::chrono::seconds timeout) {
  grpc::ClientContext context;
  state_->Prepare(&context, timeout);
  auto stream = state_->segmentation->Segment(&context);
  v1::SegmentRequest first;
  *first.mutable_header() = header;
  if (stream->Write(first)) {
    // A vector's source cannot fail.
    (void)WriteFiles<grpc::ClientReaderWriter<v1::SegmentRequest, v1::SegmentResponse>,
                     v1::SegmentRequest>(stream.get(), FromVector(files), TotalBytes(files),
                                         progress);
  }
  stream->WritesDone();
  SegmentResult result;
  v1::SegmentResponse response;
  bool summarised = false;
  while (stream->Read(&response)) {
    if (response.has_summary()) {
      result.summary = response.summary();
      summarised = true;
    } else {
      result.seg_bytes.append(response.segmentation_chunk());
    }
  }
  grpc::Status status = stream->Finish();
  if (!status.ok()) return FromGrpc(status);
  if (!summarised || static_cast<int64_t>(result.seg_bytes.size()) !=
                         result.summary.segmentation_bytes()) {
    return absl::DataLossError("the segmentation arrived incomplete");
  }
  return result;
}

namespace {

namespace fs = std::filesystem;

// A name the server may give an exported file: plain, in the directory itself.
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

absl::Status CheckExportTarget(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return absl::OkStatus();
  if (!fs::is_directory(dir, ec) || !fs::is_empty(dir, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " exists and is not an empty directory"));
  }
  return absl::OkStatus();
}

// Writes the files of an export stream into a directory, one open at a time: a chunk with
// a file name opens the next file, last_chunk closes it (flushed and fsynced).
class ExportFiles {
 public:
  explicit ExportFiles(std::string dir) : dir_(std::move(dir)) {}
  ~ExportFiles() {
    if (out_ != nullptr) std::fclose(out_);
  }

  absl::Status Take(const v1::FileChunk& chunk) {
    if (out_ == nullptr) {
      if (!IsPlainFileName(chunk.file_name())) {
        return absl::DataLossError("the server sent a file without a plain name");
      }
      names_.push_back(chunk.file_name());
      out_ = std::fopen((dir_ + "/" + chunk.file_name()).c_str(), "wb");
      if (out_ == nullptr) return absl::InternalError(absl::StrCat("cannot write in ", dir_));
    }
    const std::string& data = chunk.data();
    if (std::fwrite(data.data(), 1, data.size(), out_) != data.size()) return WriteError();
    return chunk.last_chunk() ? Close() : absl::OkStatus();
  }
  // OK when the stream ended between files, after at least one.
  absl::Status Finish() const {
    if (out_ != nullptr) return absl::DataLossError("the export ended inside a file");
    if (names_.empty()) return absl::DataLossError("the export was empty");
    return absl::OkStatus();
  }
  const std::vector<std::string>& names() const { return names_; }

 private:
  absl::Status Close() {
    const bool flushed = std::fflush(out_) == 0 && ::fsync(::fileno(out_)) == 0;
    const bool closed = std::fclose(out_) == 0;
    out_ = nullptr;
    return flushed && closed ? absl::OkStatus() : WriteError();
  }
  absl::Status WriteError() const {
    return absl::ResourceExhaustedError(absl::StrCat("cannot write in ", dir_));
  }

  const std::string dir_;
  std::FILE* out_ = nullptr;
  std::vector<std::string> names_;
};

absl::Status MoveExportIntoPlace(const std::string& temporary, const std::string& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec)) fs::remove(dir, ec);  // empty (checked before the call)
  fs::rename(temporary, dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", temporary, " to ", dir, ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> Client::ExportModel(int64_t id, const std::string& dir) {
  RETURN_IF_ERROR(CheckExportTarget(dir));
  const std::string temporary = absl::StrCat(dir, ".partial-", ::getpid());
  std::error_code ec;
  fs::remove_all(temporary, ec);
  fs::create_directories(temporary, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create ", temporary, ": ", ec.message()));
  }
  std::vector<std::string> names;
  absl::Status written = [&]() -> absl::Status {
    v1::ExportModelRequest request;
    request.set_id(id);
    grpc::ClientContext context;
    state_->Prepare(&context, std::chrono::seconds(600));
    auto reader = state_->models->ExportModel(&context, request);
    ExportFiles files(temporary);
    absl::Status taken;
    v1::FileChunk chunk;
    while (taken.ok() && reader->Read(&chunk)) taken = files.Take(chunk);
    if (!taken.ok()) context.TryCancel();
    const grpc::Status status = reader->Finish();
    RETURN_IF_ERROR(taken);
    RETURN_IF_ERROR(FromGrpc(status));
    names = files.names();
    return files.Finish();
  }();
  if (written.ok()) written = MoveExportIntoPlace(temporary, dir);
  if (!written.ok()) {
    fs::remove_all(temporary, ec);
    return written;
  }
  return names;
}

absl::StatusOr<v1::Model> Client::ImportModel(const std::string& dataset, const std::string& dir) {
  std::vector<DicomBuffer> files;
  for (const char* name : {"model.json", "model.pt"}) {
    ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(dir + "/" + name));
    files.push_back(DicomBuffer{name, std::move(bytes)});
  }
  grpc::ClientContext context;
  state_->Prepare(&context, std::chrono::seconds(600));
  v1::Model response;
  auto writer = state_->models->ImportModel(&context, &response);
  v1::ImportModelRequest first;
  first.mutable_header()->set_dataset(dataset);
  if (writer->Write(first)) {
    (void)WriteFiles<grpc::ClientWriter<v1::ImportModelRequest>, v1::ImportModelRequest>(
        writer.get(), FromVector(files), TotalBytes(files), nullptr);
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return FromGrpc(status);
  return response;
}

absl::StatusOr<int64_t> Client::DeleteModel(int64_t id) {
  v1::DeleteModelRequest request;
  request.set_id(id);
  ASSIGN_OR_RETURN(
      v1::DeleteModelResponse response,
      UnaryCall(*state_, *state_->models, &v1::ModelService::Stub::DeleteModel, request));
  return response.freed_bytes();
}

absl::StatusOr<v1::DeleteDatasetResponse> Client::DeleteDataset(const std::string& name,
                                                                bool force) {
  v1::DeleteDatasetRequest request;
  request.set_name(name);
  request.set_force(force);
  grpc::ClientContext context;
  // With force the server waits (up to two minutes) for the dataset's jobs to stop.
  state_->Prepare(&context,
                  std::chrono::seconds(std::max(state_->options.call_timeout_seconds, 180)));
  v1::DeleteDatasetResponse response;
  grpc::Status status = state_->datasets->DeleteDataset(&context, request, &response);
  if (!status.ok()) return FromGrpc(status);
  return response;
}

}  // namespace miseg::client

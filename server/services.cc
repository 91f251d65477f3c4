#include "server/services.h"

#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "server/convert.h"
#include "server/ingest.h"

namespace miseg {
namespace {

using Clock = std::chrono::steady_clock;

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

std::string AuthorizationOf(const grpc::ServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

// Authorises, runs the body, records the metrics, and converts the status at the edge.
template <typename Body>
grpc::Status Handle(const ServiceDeps& deps, grpc::ServerContext* context, const char* method,
                    Permission permission, Body&& body) {
  const auto start = Clock::now();
  absl::Status status;
  absl::StatusOr<Principal> principal = deps.auth->Authorize(AuthorizationOf(context), permission);
  if (!principal.ok()) {
    status = principal.status();
  } else {
    status = body();
  }
  deps.metrics->ObserveRpc(method, absl::StatusCodeToString(status.code()),
                           std::chrono::duration<double>(Clock::now() - start).count());
  return ToGrpc(status);
}

std::chrono::system_clock::time_point DeadlineOf(const grpc::ServerContext* context) {
  // Calls without a deadline still get a bound, so nothing waits forever.
  const auto cap = std::chrono::system_clock::now() + std::chrono::hours(24);
  const auto deadline = context->deadline();
  return deadline < cap ? deadline : cap;
}

// Collects whole files from a stream of FileChunk messages (after the header). A stream that
// breaks, or ends inside a file, yields an error and nothing.
template <typename Stream, typename Request>
absl::StatusOr<std::vector<DicomBuffer>> ReadFiles(const ServiceDeps& deps,
                                                   grpc::ServerContext* context,
                                                   Stream* stream, int64_t* bytes_received) {
  std::vector<DicomBuffer> files;
  std::optional<DicomBuffer> current;
  Request request;
  *bytes_received = 0;
  while (stream->Read(&request)) {
    if (!request.has_chunk()) {
      return absl::InvalidArgumentError("only the first message may carry the header");
    }
    const v1::FileChunk& chunk = request.chunk();
    *bytes_received += static_cast<int64_t>(chunk.data().size());
    if (*bytes_received > deps.max_request_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "request exceeds the server's limit of ", deps.max_request_bytes, " bytes"));
    }
    if (!current) {
      if (static_cast<int64_t>(files.size()) >= deps.max_files) {
        return absl::ResourceExhaustedError(
            absl::StrCat("request exceeds the server's limit of ", deps.max_files, " files"));
      }
      current.emplace();
      current->name = chunk.file_name().empty() ? absl::StrCat("file #", files.size() + 1)
                                                : chunk.file_name().substr(0, 256);
    }
    current->bytes.append(chunk.data());
    if (chunk.last_chunk()) {
      files.push_back(*std::move(current));
      current.reset();
    }
  }
  if (context->IsCancelled()) {
    return absl::CancelledError("the client cancelled the stream; nothing was stored");
  }
  if (current) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the stream ended inside '", current->name, "' (no chunk with last_chunk set)"));
  }
  return files;
}

absl::StatusOr<DatasetRecord> FindDataset(const ServiceDeps& deps, const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("dataset is required");
  return deps.store->GetDataset(name);
}

absl::StatusOr<v1::Model> ModelToProto(const ServiceDeps& deps, const ModelRecord& model) {
  ASSIGN_OR_RETURN(DatasetRecord dataset, deps.store->GetDatasetById(model.dataset_id));
  return ToProto(model, dataset.class_names);
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

// ------------------------------------------------------------------------------------------

class DatasetServiceImpl final : public v1::DatasetService::Service {
 public:
  explicit DatasetServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::Status CreateDataset(grpc::ServerContext* context, const v1::CreateDatasetRequest* request,
                             v1::Dataset* response) override {
    return Handle(deps_, context, "CreateDataset", Permission::kCreateDataset, [&]() -> absl::Status {
      RETURN_IF_ERROR(ValidateDatasetName(request->name()));
      std::vector<std::string> classes(request->class_names().begin(),
                                       request->class_names().end());
      RETURN_IF_ERROR(ValidateClassNames(classes));
      const std::string modality = request->modality().empty() ? "MR" : request->modality();
      if (modality != "MR" && modality != "CT") {
        return absl::InvalidArgumentError("modality must be MR or CT");
      }
      DatasetRecord record;
      record.name = request->name();
      record.class_names = classes;
      record.modality = modality;
      ASSIGN_OR_RETURN(DatasetRecord created, deps_.store->CreateDataset(record));
      *response = ToProto(created);
      return absl::OkStatus();
    });
  }

  grpc::Status ListDatasets(grpc::ServerContext* context, const v1::ListDatasetsRequest*,
                            v1::ListDatasetsResponse* response) override {
    return Handle(deps_, context, "ListDatasets", Permission::kRead, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(std::vector<DatasetRecord> datasets, deps_.store->ListDatasets());
      for (const DatasetRecord& d : datasets) *response->add_datasets() = ToProto(d);
      return absl::OkStatus();
    });
  }

  grpc::Status GetDataset(grpc::ServerContext* context, const v1::GetDatasetRequest* request,
                          v1::Dataset* response) override {
    return Handle(deps_, context, "GetDataset", Permission::kRead, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->name()));
      *response = ToProto(dataset);
      return absl::OkStatus();
    });
  }

  grpc::Status Upload(grpc::ServerContext* context, grpc::ServerReader<v1::UploadRequest>* reader,
                      v1::UploadResponse* response) override {
    return Handle(deps_, context, "Upload", Permission::kUpload, [&]() -> absl::Status {
      v1::UploadRequest first;
      if (!reader->Read(&first) || !first.has_header()) {
        return absl::InvalidArgumentError("the first message must carry the upload header");
      }
      const v1::UploadHeader& header = first.header();
      if (header.role() != v1::STUDY_ROLE_LABELED && header.role() != v1::STUDY_ROLE_UNLABELED &&
          header.role() != v1::STUDY_ROLE_VALIDATION) {
        return absl::InvalidArgumentError("role must be LABELED, UNLABELED or VALIDATION");
      }
      ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, header.dataset()));
      int64_t bytes = 0;
      ASSIGN_OR_RETURN(std::vector<DicomBuffer> files,
                       (ReadFiles<grpc::ServerReader<v1::UploadRequest>, v1::UploadRequest>(
                           deps_, context, reader, &bytes)));
      if (files.empty()) return absl::InvalidArgumentError("the upload holds no files");
      ASSIGN_OR_RETURN(IngestResult result,
                       IngestFiles(*deps_.store, *deps_.files, dataset,
                                   static_cast<StoredRole>(header.role()), files,
                                   deps_.reader_limits));
      for (const StudyRecord& study : result.stored) {
        *response->add_stored() = ToProto(study, dataset.name);
      }
      for (const IngestFileResult& file : result.files) {
        v1::InstanceResult* r = response->add_results();
        r->set_file_name(file.file_name);
        r->set_sop_instance_uid(file.sop_instance_uid);
        r->set_series_instance_uid(file.series_instance_uid);
        r->set_outcome(static_cast<v1::InstanceOutcome>(file.outcome));
        r->set_reason(file.reason);
        switch (file.outcome) {
          case IngestOutcome::kStored: response->set_stored_instances(response->stored_instances() + 1); break;
          case IngestOutcome::kDuplicate: response->set_duplicate_instances(response->duplicate_instances() + 1); break;
          case IngestOutcome::kRefused: response->set_refused_instances(response->refused_instances() + 1); break;
        }
      }
      response->set_bytes_received(bytes);
      deps_.metrics->CountUpload(bytes, response->stored_instances(),
                                 response->duplicate_instances(), response->refused_instances());
      return absl::OkStatus();
    });
  }

  grpc::Status ListStudies(grpc::ServerContext* context, const v1::ListStudiesRequest* request,
                           v1::ListStudiesResponse* response) override {
    return Handle(deps_, context, "ListStudies", Permission::kRead, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->dataset()));
      std::optional<StoredRole> role;
      if (request->role() != v1::STUDY_ROLE_UNSPECIFIED) {
        if (!v1::StudyRole_IsValid(request->role())) {
          return absl::InvalidArgumentError("unknown role");
        }
        role = static_cast<StoredRole>(request->role());
      }
      ASSIGN_OR_RETURN(std::vector<StudyRecord> studies, deps_.store->ListStudies(dataset.id, role));
      for (const StudyRecord& s : studies) *response->add_studies() = ToProto(s, dataset.name);
      return absl::OkStatus();
    });
  }

  grpc::Status DeleteStudy(grpc::ServerContext* context, const v1::DeleteStudyRequest* request,
                           v1::DeleteStudyResponse* response) override {
    return Handle(deps_, context, "DeleteStudy", Permission::kDeleteStudy, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->dataset()));
      if (request->series_instance_uid().empty()) {
        return absl::InvalidArgumentError("series_instance_uid is required");
      }
      int64_t deleted = 0;
      ASSIGN_OR_RETURN(std::vector<std::string> orphans,
                       deps_.store->DeleteStudy(dataset.id, request->series_instance_uid(), &deleted));
      // After the commit: a crash here leaves unreferenced files, collected at startup.
      for (const std::string& hash : orphans) (void)deps_.files->Remove(hash);
      response->set_deleted_instances(deleted);
      return absl::OkStatus();
    });
  }

 private:
  ServiceDeps deps_;
};

// ------------------------------------------------------------------------------------------

class TrainingServiceImpl final : public v1::TrainingService::Service {
 public:
  explicit TrainingServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::Status StartJob(grpc::ServerContext* context, const v1::StartJobRequest* request,
                        v1::Job* response) override {
    return Handle(deps_, context, "StartJob", Permission::kTrain, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->dataset()));
      ASSIGN_OR_RETURN(v1::Hyperparameters resolved,
                       ResolveHyperparameters(request->hyperparameters(),
                                              static_cast<int64_t>(dataset.class_names.size())));
      if (dataset.labeled_studies == 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "dataset '", dataset.name, "' has no labeled studies: upload some first"));
      }
      JobRecord job;
      job.dataset_id = dataset.id;
      job.state = StoredJobState::kQueued;
      job.hyperparameters = resolved.SerializeAsString();
      job.total_steps = resolved.total_steps();
      ASSIGN_OR_RETURN(JobRecord created, deps_.store->CreateJob(job));
      v1::JobEvent queued;
      queued.mutable_state()->set_state(v1::JOB_STATE_QUEUED);
      queued.mutable_state()->set_message("queued");
      RETURN_IF_ERROR(deps_.runner->AppendEvent(created.id, 0, queued));
      deps_.runner->RefreshJobGauges();
      deps_.runner->Wake();
      *response = ToProto(created);
      return absl::OkStatus();
    });
  }

  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::Job* response) override {
    return Handle(deps_, context, "GetJob", Permission::kRead, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(JobRecord job, deps_.store->GetJob(request->id()));
      *response = ToProto(job);
      return absl::OkStatus();
    });
  }

  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override {
    return Handle(deps_, context, "ListJobs", Permission::kRead, [&]() -> absl::Status {
      int64_t dataset_id = 0;
      if (!request->dataset().empty()) {
        ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->dataset()));
        dataset_id = dataset.id;
      }
      ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, deps_.store->ListJobs(dataset_id));
      for (const JobRecord& j : jobs) *response->add_jobs() = ToProto(j);
      return absl::OkStatus();
    });
  }

  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                         v1::Job* response) override {
    return Handle(deps_, context, "CancelJob", Permission::kTrain, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(JobRecord job, deps_.store->RequestCancel(request->id()));
      if (job.state == StoredJobState::kCancelled) {
        v1::JobEvent cancelled;
        cancelled.mutable_state()->set_state(v1::JOB_STATE_CANCELLED);
        cancelled.mutable_state()->set_step(job.step);
        cancelled.mutable_state()->set_message("cancelled before it started");
        RETURN_IF_ERROR(deps_.runner->AppendEvent(job.id, job.step, cancelled));
        deps_.runner->RefreshJobGauges();
      } else {
        deps_.runner->CancelRunning(job.id);
      }
      *response = ToProto(job);
      return absl::OkStatus();
    });
  }

  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobEvent>* writer) override {
    return Handle(deps_, context, "WatchJob", Permission::kRead, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(JobRecord job, deps_.store->GetJob(request->id()));
      if (request->after_sequence() < 0 || request->from_step() < 0) {
        return absl::InvalidArgumentError("after_sequence and from_step must not be negative");
      }
      int64_t last_sequence = request->after_sequence();
      constexpr int64_t kPage = 500;
      while (true) {
        if (context->IsCancelled()) return absl::CancelledError("the client went away");
        if (deps_.stopping->load()) {
          return absl::UnavailableError("the server is shutting down; reconnect to follow");
        }
        const int64_t generation = deps_.hub->generation();
        // The job's state is read before its events: an event stored before a terminal
        // state is then always among those listed.
        ASSIGN_OR_RETURN(job, deps_.store->GetJob(request->id()));
        ASSIGN_OR_RETURN(std::vector<JobEventRecord> events,
                         deps_.store->ListJobEvents(job.id, last_sequence, request->from_step(), kPage));
        for (const JobEventRecord& record : events) {
          v1::JobEvent event;
          if (!event.ParseFromString(record.payload)) {
            return absl::DataLossError(absl::StrCat("event ", record.sequence, " is corrupt"));
          }
          event.set_sequence(record.sequence);
          last_sequence = record.sequence;
          if (!writer->Write(event)) return absl::CancelledError("the client went away");
          if (event.has_state() && IsTerminal(event.state().state())) return absl::OkStatus();
        }
        if (static_cast<int64_t>(events.size()) == kPage) continue;
        if (request->no_follow()) return absl::OkStatus();
        if (IsTerminal(static_cast<v1::JobState>(job.state))) {
          // Terminal, but its state event is not stored (or was filtered by from_step).
          v1::JobEvent event;
          event.set_job_id(job.id);
          event.set_unix_ms(job.finished_unix_ms);
          event.mutable_state()->set_state(static_cast<v1::JobState>(job.state));
          event.mutable_state()->set_step(job.step);
          event.mutable_state()->set_message(job.error);
          writer->Write(event);
          return absl::OkStatus();
        }
        deps_.hub->WaitForChange(generation, Clock::now() + std::chrono::seconds(1));
      }
    });
  }

 private:
  ServiceDeps deps_;
};

// ------------------------------------------------------------------------------------------

class ModelServiceImpl final : public v1::ModelService::Service {
 public:
  explicit ModelServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override {
    return Handle(deps_, context, "ListModels", Permission::kRead, [&]() -> absl::Status {
      int64_t dataset_id = 0;
      if (!request->dataset().empty()) {
        ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->dataset()));
        dataset_id = dataset.id;
      }
      ASSIGN_OR_RETURN(std::vector<ModelRecord> models, deps_.store->ListModels(dataset_id));
      for (const ModelRecord& m : models) {
        ASSIGN_OR_RETURN(*response->add_models(), ModelToProto(deps_, m));
      }
      return absl::OkStatus();
    });
  }

  grpc::Status GetModel(grpc::ServerContext* context, const v1::GetModelRequest* request,
                        v1::Model* response) override {
    return Handle(deps_, context, "GetModel", Permission::kRead, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(ModelRecord model, deps_.store->GetModel(request->id()));
      ASSIGN_OR_RETURN(*response, ModelToProto(deps_, model));
      return absl::OkStatus();
    });
  }

  grpc::Status PromoteModel(grpc::ServerContext* context, const v1::PromoteModelRequest* request,
                            v1::Model* response) override {
    return Handle(deps_, context, "PromoteModel", Permission::kPromote, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(ModelRecord model, deps_.store->PromoteModel(request->id()));
      ASSIGN_OR_RETURN(*response, ModelToProto(deps_, model));
      return absl::OkStatus();
    });
  }

 private:
  ServiceDeps deps_;
};

// ------------------------------------------------------------------------------------------

class SegmentationServiceImpl final : public v1::SegmentationService::Service {
 public:
  explicit SegmentationServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::Status Segment(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<v1::SegmentResponse, v1::SegmentRequest>* stream)
      override {
    return Handle(deps_, context, "Segment", Permission::kSegment, [&]() -> absl::Status {
      v1::SegmentRequest first;
      if (!stream->Read(&first) || !first.has_header()) {
        return absl::InvalidArgumentError("the first message must carry the segment header");
      }
      const v1::SegmentHeader& header = first.header();
      SegmentationJob job;
      job.dataset = header.dataset();
      job.model_id = header.model_id();
      job.stored_series_uid = header.stored_series_instance_uid();
      if (job.dataset.empty()) return absl::InvalidArgumentError("dataset is required");
      int64_t bytes = 0;
      ASSIGN_OR_RETURN(job.files,
                       (ReadFiles<grpc::ServerReaderWriter<v1::SegmentResponse, v1::SegmentRequest>,
                                  v1::SegmentRequest>(deps_, context, stream, &bytes)));
      if (!job.stored_series_uid.empty() && !job.files.empty()) {
        return absl::InvalidArgumentError(
            "send either files or stored_series_instance_uid, not both");
      }
      ASSIGN_OR_RETURN(SegmentationResult result, deps_.engine->Segment(job, DeadlineOf(context)));
      constexpr size_t kChunk = 1 << 20;
      for (size_t offset = 0; offset < result.seg_bytes.size(); offset += kChunk) {
        v1::SegmentResponse chunk;
        chunk.set_segmentation_chunk(result.seg_bytes.substr(offset, kChunk));
        if (!stream->Write(chunk)) return absl::CancelledError("the client went away");
      }
      v1::SegmentResponse last;
      v1::SegmentSummary* s = last.mutable_summary();
      s->set_model_id(result.model.id);
      s->set_model_version(result.model.version);
      s->set_dataset(result.dataset);
      s->set_source_series_instance_uid(result.source_series_uid);
      s->set_segmentation_sop_instance_uid(result.seg_sop_instance_uid);
      s->set_segmentation_series_instance_uid(result.seg_series_uid);
      for (const ClassVolumeResult& c : result.classes) {
        v1::ClassVolume* v = s->add_classes();
        v->set_class_name(c.class_name);
        v->set_volume_ml(c.volume_ml);
        v->set_voxels(c.voxels);
      }
      s->set_queue_seconds(result.queue_seconds);
      s->set_decode_seconds(result.decode_seconds);
      s->set_inference_seconds(result.inference_seconds);
      s->set_encode_seconds(result.encode_seconds);
      s->set_segmentation_bytes(static_cast<int64_t>(result.seg_bytes.size()));
      if (!stream->Write(last)) return absl::CancelledError("the client went away");
      return absl::OkStatus();
    });
  }

 private:
  ServiceDeps deps_;
};

// ------------------------------------------------------------------------------------------

class DicomNodeServiceImpl final : public v1::DicomNodeService::Service {
 public:
  explicit DicomNodeServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::Status ListDeliveries(grpc::ServerContext* context, const v1::ListDeliveriesRequest* request,
                              v1::ListDeliveriesResponse* response) override {
    return Handle(deps_, context, "ListDeliveries", Permission::kRead, [&]() -> absl::Status {
      if (deps_.node_store == nullptr) {
        return absl::FailedPreconditionError(
            "the DICOM node is not configured (--dicom_node_config)");
      }
      std::optional<DeliveryStateCode> state;
      if (request->state() != v1::DELIVERY_STATE_UNSPECIFIED) {
        if (!v1::DeliveryState_IsValid(request->state())) {
          return absl::InvalidArgumentError("unknown delivery state");
        }
        state = static_cast<DeliveryStateCode>(request->state());
      }
      ASSIGN_OR_RETURN(std::vector<DeliveryRecord> deliveries, deps_.node_store->ListDeliveries(state));
      for (const DeliveryRecord& d : deliveries) {
        v1::Delivery* out = response->add_deliveries();
        out->set_id(d.id);
        out->set_destination(d.destination);
        out->set_state(static_cast<v1::DeliveryState>(d.state));
        out->set_dataset(d.dataset);
        out->set_model_id(d.model_id);
        out->set_source_series_instance_uid(d.source_series_instance_uid);
        out->set_segmentation_sop_instance_uid(d.segmentation_sop_instance_uid);
        out->set_attempts(d.attempts);
        out->set_last_error(d.last_error);
        out->set_received_unix_ms(d.received_unix_ms);
        out->set_created_unix_ms(d.created_unix_ms);
        out->set_next_attempt_unix_ms(d.next_attempt_unix_ms);
        out->set_delivered_unix_ms(d.delivered_unix_ms);
      }
      return absl::OkStatus();
    });
  }

 private:
  ServiceDeps deps_;
};

}  // namespace

std::vector<std::unique_ptr<grpc::Service>> MakeServices(const ServiceDeps& deps) {
  std::vector<std::unique_ptr<grpc::Service>> services;
  services.push_back(std::make_unique<DatasetServiceImpl>(deps));
  services.push_back(std::make_unique<TrainingServiceImpl>(deps));
  services.push_back(std::make_unique<ModelServiceImpl>(deps));
  services.push_back(std::make_unique<SegmentationServiceImpl>(deps));
  services.push_back(std::make_unique<DicomNodeServiceImpl>(deps));
  return services;
}

}  // namespace miseg

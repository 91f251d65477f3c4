#include "server/edge/enum_maps.h"
#include "server/edge/services.h"

#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "server/edge/convert.h"
#include "server/domain/ingest.h"
#include "server/edge/lifecycle.h"
#include "server/edge/model_transfer.h"
#include "server/edge/rpc_edge.h"
#include "server/edge/stream_reactors.h"
#include "server/edge/unary_handler.h"
#include "server/edge/utf8_check.h"

namespace miseg {
namespace {

// A job with where its ranks run now.
v1::Job JobToProto(const ServiceDeps& deps, const JobRecord& job) {
  v1::Job out = ToProto(job);
  if (job.state != StoredJobState::kRunning) return out;
  auto [placement, attempt] = deps.runner->scheduler().Placement(job.id);
  for (v1::RankPlacement& rank : placement) *out.add_placement() = std::move(rank);
  out.set_attempt(attempt);
  return out;
}

absl::StatusOr<v1::Model> ModelToProto(const ServiceDeps& deps, const ModelRecord& model) {
  ASSIGN_OR_RETURN(DatasetRecord dataset, deps.store->GetDatasetById(model.dataset_id));
  return ToProto(model, dataset.class_names);
}

// ------------------------------------------------------------------------------------------

class DatasetServiceImpl final : public v1::DatasetService::CallbackService {
 public:
  explicit DatasetServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::ServerUnaryReactor* CreateDataset(grpc::CallbackServerContext* context,
                                          const v1::CreateDatasetRequest* request,
                                          v1::Dataset* response) override {
    return HandleUnary(
        deps_, context, response, "CreateDataset", Permission::kCreateDataset,
        [&]() -> absl::Status {
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

  grpc::ServerUnaryReactor* ListDatasets(grpc::CallbackServerContext* context,
                                         const v1::ListDatasetsRequest*,
                                         v1::ListDatasetsResponse* response) override {
    return HandleUnary(
        deps_, context, response, "ListDatasets", Permission::kRead, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(std::vector<DatasetRecord> datasets, deps_.store->ListDatasets());
      for (const DatasetRecord& d : datasets) *response->add_datasets() = ToProto(d);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* GetDataset(grpc::CallbackServerContext* context,
                                       const v1::GetDatasetRequest* request,
                                       v1::Dataset* response) override {
    return HandleUnary(
        deps_, context, response, "GetDataset", Permission::kRead, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->name()));
      *response = ToProto(dataset);
      return absl::OkStatus();
    });
  }

  grpc::ServerReadReactor<v1::UploadRequest>* Upload(grpc::CallbackServerContext* context,
                                                     v1::UploadResponse* response) override {
    return StartUpload(deps_, context, response);
  }

  grpc::ServerUnaryReactor* ListStudies(grpc::CallbackServerContext* context,
                                        const v1::ListStudiesRequest* request,
                                        v1::ListStudiesResponse* response) override {
    return HandleUnary(
        deps_, context, response, "ListStudies", Permission::kRead, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->dataset()));
      std::optional<StoredRole> role;
      if (request->role() != v1::STUDY_ROLE_UNSPECIFIED) {
        role = FromProto(request->role());
        if (!role) return absl::InvalidArgumentError("unknown role");
      }
      ASSIGN_OR_RETURN(std::vector<StudyRecord> studies,
                       deps_.store->ListStudies(dataset.id, role));
      ASSIGN_OR_RETURN(std::vector<LabelingPriorityRecord> priorities,
                       deps_.store->ListLabelingPriorities(dataset.id));
      std::map<std::string, const LabelingPriorityRecord*> priority_of;
      for (const LabelingPriorityRecord& p : priorities) priority_of[p.series_instance_uid] = &p;
      for (const StudyRecord& s : studies) {
        v1::Study* study = response->add_studies();
        *study = ToProto(s, dataset.name);
        auto it = priority_of.find(s.series_instance_uid);
        if (it != priority_of.end()) *study->mutable_priority() = ToProto(*it->second);
      }
      return absl::OkStatus();
    });
  }

  // Scoring runs on the inference engine's threads; this handler only admits it and the
  // engine's callback finishes the call.
  grpc::ServerUnaryReactor* SuggestStudies(grpc::CallbackServerContext* context,
                                           const v1::SuggestStudiesRequest* request,
                                           v1::SuggestStudiesResponse* response) override {
    RpcCall call(deps_, context, "SuggestStudies", Permission::kSegment);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    absl::Status status = call.authorization();
    if (status.ok() && (request->count() < 1 || request->count() > 10000)) {
      status = absl::InvalidArgumentError("count must be in 1..10000");
    }
    absl::StatusOr<DatasetRecord> dataset =
        status.ok() ? FindDataset(deps_, request->dataset()) : status;
    if (status.ok()) status = dataset.status();
    if (status.ok()) {
      const std::string name = dataset->name;
      const int count = request->count();
      status = deps_.engine->SubmitSuggestion(
          name, context->deadline(),
          [reactor, call, response, name, count](absl::StatusOr<SuggestionResult> result) {
            if (result.ok()) {
              response->set_model_id(result->model.id);
              response->set_scored_studies(static_cast<int64_t>(result->ranked.size()));
              for (size_t i = 0; i < result->ranked.size() && static_cast<int>(i) < count; ++i) {
                v1::Study* study = response->add_studies();
                *study = ToProto(result->ranked[i].study, name);
                *study->mutable_priority() = ToProto(result->ranked[i].priority);
              }
            }
            reactor->Finish(call.Complete(result.status()));
          });
    }
    if (!status.ok()) reactor->Finish(call.Complete(status));
    return reactor;
  }

  grpc::ServerUnaryReactor* DeleteStudy(grpc::CallbackServerContext* context,
                                        const v1::DeleteStudyRequest* request,
                                        v1::DeleteStudyResponse* response) override {
    return HandleUnary(
        deps_, context, response, "DeleteStudy", Permission::kDeleteStudy, [&]() -> absl::Status {
          ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->dataset()));
          if (request->series_instance_uid().empty()) {
            return absl::InvalidArgumentError("series_instance_uid is required");
          }
          int64_t deleted = 0;
          ASSIGN_OR_RETURN(
              std::vector<std::string> orphans,
              deps_.store->DeleteStudy(dataset.id, request->series_instance_uid(), &deleted));
          // After the commit: a crash here leaves unreferenced files, collected at startup.
          for (const std::string& hash : orphans) (void)deps_.files->Remove(hash);
          response->set_deleted_instances(deleted);
          return absl::OkStatus();
        });
  }

  grpc::ServerUnaryReactor* DeleteDataset(grpc::CallbackServerContext* context,
                                          const v1::DeleteDatasetRequest* request,
                                          v1::DeleteDatasetResponse* response) override {
    auto call = std::make_shared<RpcCall>(deps_, context, "DeleteDataset",
                                          Permission::kDeleteStudy);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    if (!call->authorization().ok()) {
      reactor->Finish(call->Complete(call->authorization()));
      return reactor;
    }
    // With force it waits for the dataset's jobs to stop: off the gRPC thread.
    const ServiceDeps deps = deps_;
    deps_.ingest_pool->Schedule([deps, call, reactor, request, response] {
      absl::StatusOr<v1::DeleteDatasetResponse> deleted =
          DeleteDatasetAndFiles(deps, request->name(), request->force(), absl::Seconds(120));
      if (deleted.ok()) *response = *std::move(deleted);
      reactor->Finish(call->Complete(deleted.status()));
    });
    return reactor;
  }

 private:
  ServiceDeps deps_;
};

// ------------------------------------------------------------------------------------------

class TrainingServiceImpl final : public v1::TrainingService::CallbackService {
 public:
  explicit TrainingServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::ServerUnaryReactor* StartJob(grpc::CallbackServerContext* context,
                                     const v1::StartJobRequest* request,
                                     v1::Job* response) override {
    return HandleUnary(
        deps_, context, response, "StartJob", Permission::kTrain, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->dataset()));
      ASSIGN_OR_RETURN(v1::Hyperparameters resolved,
                       ResolveHyperparameters(request->hyperparameters(),
                                              static_cast<int64_t>(dataset.class_names.size())));
      if (dataset.labeled_studies == 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("dataset '", dataset.name, "' has no labeled studies: upload some first"));
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

  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::GetJobRequest* request, v1::Job* response) override {
    return HandleUnary(
        deps_, context, response, "GetJob", Permission::kRead, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(JobRecord job, deps_.store->GetJob(request->id()));
      *response = JobToProto(deps_, job);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override {
    return HandleUnary(
        deps_, context, response, "ListJobs", Permission::kRead, [&]() -> absl::Status {
      int64_t dataset_id = 0;
      if (!request->dataset().empty()) {
        ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->dataset()));
        dataset_id = dataset.id;
      }
      ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, deps_.store->ListJobs(dataset_id));
      for (const JobRecord& j : jobs) *response->add_jobs() = JobToProto(deps_, j);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const v1::CancelJobRequest* request,
                                      v1::Job* response) override {
    return HandleUnary(
        deps_, context, response, "CancelJob", Permission::kTrain, [&]() -> absl::Status {
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

  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* context,
                                                   const v1::WatchJobRequest* request) override {
    return StartWatchJob(deps_, context, request);
  }

 private:
  ServiceDeps deps_;
};

// ------------------------------------------------------------------------------------------

class ModelServiceImpl final : public v1::ModelService::CallbackService {
 public:
  explicit ModelServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override {
    return HandleUnary(
        deps_, context, response, "ListModels", Permission::kRead, [&]() -> absl::Status {
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

  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const v1::GetModelRequest* request,
                                     v1::Model* response) override {
    return HandleUnary(
        deps_, context, response, "GetModel", Permission::kRead, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(ModelRecord model, deps_.store->GetModel(request->id()));
      ASSIGN_OR_RETURN(*response, ModelToProto(deps_, model));
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* PromoteModel(grpc::CallbackServerContext* context,
                                         const v1::PromoteModelRequest* request,
                                         v1::Model* response) override {
    return HandleUnary(
        deps_, context, response, "PromoteModel", Permission::kPromote, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(ModelRecord model, deps_.store->PromoteModel(request->id()));
      ASSIGN_OR_RETURN(*response, ModelToProto(deps_, model));
      return absl::OkStatus();
    });
  }

  grpc::ServerWriteReactor<v1::FileChunk>* ExportModel(
      grpc::CallbackServerContext* context, const v1::ExportModelRequest* request) override {
    return StartExportModel(deps_, context, request);
  }

  grpc::ServerReadReactor<v1::ImportModelRequest>* ImportModel(
      grpc::CallbackServerContext* context, v1::Model* response) override {
    return StartImportModel(deps_, context, response);
  }

  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* context,
                                        const v1::DeleteModelRequest* request,
                                        v1::DeleteModelResponse* response) override {
    return HandleUnary(
        deps_, context, response, "DeleteModel", Permission::kDeleteStudy, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(int64_t freed, DeleteModelAndFile(deps_, request->id()));
      response->set_freed_bytes(freed);
      return absl::OkStatus();
    });
  }

 private:
  ServiceDeps deps_;
};

// ------------------------------------------------------------------------------------------

class SegmentationServiceImpl final : public v1::SegmentationService::CallbackService {
 public:
  explicit SegmentationServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::ServerBidiReactor<v1::SegmentRequest, v1::SegmentResponse>* Segment(
      grpc::CallbackServerContext* context) override {
    return StartSegment(deps_, context);
  }

 private:
  ServiceDeps deps_;
};

// ------------------------------------------------------------------------------------------

class DicomNodeServiceImpl final : public v1::DicomNodeService::CallbackService {
 public:
  explicit DicomNodeServiceImpl(const ServiceDeps& deps) : deps_(deps) {}

  grpc::ServerUnaryReactor* ListDeliveries(grpc::CallbackServerContext* context,
                                           const v1::ListDeliveriesRequest* request,
                                           v1::ListDeliveriesResponse* response) override {
    return HandleUnary(
        deps_, context, response, "ListDeliveries", Permission::kRead, [&]() -> absl::Status {
      if (deps_.node_store == nullptr) {
        return absl::FailedPreconditionError(
            "the DICOM node is not configured (--dicom_node_config)");
      }
      std::optional<DeliveryStateCode> state;
      if (request->state() != v1::DELIVERY_STATE_UNSPECIFIED) {
        state = FromProto(request->state());
        if (!state) return absl::InvalidArgumentError("unknown delivery state");
      }
      ASSIGN_OR_RETURN(std::vector<DeliveryRecord> deliveries,
                       deps_.node_store->ListDeliveries(state));
      for (const DeliveryRecord& d : deliveries) {
        v1::Delivery* out = response->add_deliveries();
        out->set_id(d.id);
        out->set_destination(d.destination);
        out->set_state(ToProto(d.state));
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

absl::StatusOr<DatasetRecord> FindDataset(const ServiceDeps& deps, const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("dataset is required");
  return deps.store->GetDataset(name);
}

std::vector<std::unique_ptr<grpc::Service>> MakeServices(const ServiceDeps& deps) {
  std::vector<std::unique_ptr<grpc::Service>> services;
  services.push_back(MakeWorkerService(deps));
  services.push_back(std::make_unique<DatasetServiceImpl>(deps));
  services.push_back(std::make_unique<TrainingServiceImpl>(deps));
  services.push_back(std::make_unique<ModelServiceImpl>(deps));
  services.push_back(std::make_unique<SegmentationServiceImpl>(deps));
  services.push_back(std::make_unique<DicomNodeServiceImpl>(deps));
  return services;
}

}  // namespace miseg

// ImportService: request checks and conversions at the edge; the work is the Importer's.
#include "server/import/import_service.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "server/edge/enum_maps.h"
#include "server/edge/unary_handler.h"

namespace miseg {
namespace {

v1::Import ToProto(const ImportRecord& r) {
  v1::Import out;
  out.set_id(r.id);
  out.set_dataset(r.dataset_name);
  out.set_source(r.source);
  out.set_role(ToProto(r.role));
  out.set_study_instance_uid(r.study_instance_uid);
  out.set_series_instance_uid(r.series_instance_uid);
  out.set_state(ToProto(r.state));
  out.set_instances_total(r.instances_total);
  out.set_instances_fetched(r.instances_fetched);
  out.set_error(r.error);
  out.set_message(r.message);
  out.set_attempts(r.attempts);
  out.set_created_unix_ms(r.created_unix_ms);
  out.set_started_unix_ms(r.started_unix_ms);
  out.set_finished_unix_ms(r.finished_unix_ms);
  for (const std::string& s : r.stored_series) out.add_stored_series_instance_uids(s);
  return out;
}

class ImportServiceImpl final : public v1::ImportService::CallbackService {
 public:
  ImportServiceImpl(const ServiceDeps& deps, Importer* importer)
      : deps_(deps), importer_(importer) {}

  grpc::ServerUnaryReactor* StartImport(grpc::CallbackServerContext* context,
                                        const v1::StartImportRequest* request,
                                        v1::StartImportResponse* response) override {
    return HandleUnary(
        deps_, context, response, "StartImport", Permission::kUpload, [&]() -> absl::Status {
          if (importer_ == nullptr) {
            return absl::FailedPreconditionError(
                "this server has no import sources (--import_sources)");
          }
          ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->dataset()));
          const std::optional<StoredRole> role = FromProto(request->role());
          if (!role) {
            return absl::InvalidArgumentError("role is required: labeled, unlabeled or validation");
          }
          if (request->source().empty()) return absl::InvalidArgumentError("source is required");
          ImportRequest r;
          r.source = request->source();
          r.role = *role;
          r.study_instance_uid = request->study_instance_uid();
          r.series_instance_uid = request->series_instance_uid();
          r.query = request->query();
          ASSIGN_OR_RETURN(std::vector<ImportRecord> imports, importer_->StartImports(dataset, r));
          for (const ImportRecord& i : imports) *response->add_imports() = ToProto(i);
          return absl::OkStatus();
        });
  }

  grpc::ServerUnaryReactor* GetImport(grpc::CallbackServerContext* context,
                                      const v1::GetImportRequest* request,
                                      v1::Import* response) override {
    return HandleUnary(
        deps_, context, response, "GetImport", Permission::kRead, [&]() -> absl::Status {
          ASSIGN_OR_RETURN(ImportRecord import, deps_.store->GetImport(request->id()));
          *response = ToProto(import);
          return absl::OkStatus();
        });
  }

  grpc::ServerUnaryReactor* ListImports(grpc::CallbackServerContext* context,
                                        const v1::ListImportsRequest* request,
                                        v1::ListImportsResponse* response) override {
    return HandleUnary(
        deps_, context, response, "ListImports", Permission::kRead, [&]() -> absl::Status {
          int64_t dataset_id = 0;
          if (!request->dataset().empty()) {
            ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, request->dataset()));
            dataset_id = dataset.id;
          }
          ASSIGN_OR_RETURN(std::vector<ImportRecord> imports, deps_.store->ListImports(dataset_id));
          for (const ImportRecord& i : imports) *response->add_imports() = ToProto(i);
          return absl::OkStatus();
        });
  }

  grpc::ServerUnaryReactor* CancelImport(grpc::CallbackServerContext* context,
                                         const v1::CancelImportRequest* request,
                                         v1::Import* response) override {
    return HandleUnary(
        deps_, context, response, "CancelImport", Permission::kUpload, [&]() -> absl::Status {
          ASSIGN_OR_RETURN(ImportRecord import,
                           importer_ != nullptr ? importer_->Cancel(request->id())
                                                : deps_.store->RequestImportCancel(request->id()));
          *response = ToProto(import);
          return absl::OkStatus();
        });
  }

  grpc::ServerUnaryReactor* ListImportSources(grpc::CallbackServerContext* context,
                                              const v1::ListImportSourcesRequest*,
                                              v1::ListImportSourcesResponse* response) override {
    return HandleUnary(
        deps_, context, response, "ListImportSources", Permission::kRead, [&]() -> absl::Status {
          if (importer_ == nullptr) return absl::OkStatus();
          for (const ImportSourceSpec& s : importer_->sources()) {
            v1::ImportSource* out = response->add_sources();
            out->set_name(s.name);
            out->set_kind(s.is_dicomweb ? "dicomweb" : "dicom");
            out->set_address(s.Address());
          }
          return absl::OkStatus();
        });
  }

 private:
  ServiceDeps deps_;
  Importer* const importer_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeImportService(const ServiceDeps& deps, Importer* importer) {
  return std::make_unique<ImportServiceImpl>(deps, importer);
}

}  // namespace miseg

// Upload: each chunk goes to a staged file as it arrives (the ingest session), and the
// finished upload is checked and committed on the ingest pool, all or nothing.
#include <memory>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "server/edge/convert.h"
#include "server/edge/edge_reactor.h"
#include "server/edge/enum_maps.h"
#include "server/domain/ingest.h"
#include "server/edge/stream_reactors.h"
#include "server/edge/utf8_check.h"

namespace miseg {
namespace {

class UploadReactor final
    : public ChunkedInputReactor<grpc::ServerReadReactor<v1::UploadRequest>, v1::UploadRequest> {
 public:
  UploadReactor(const ServiceDeps& deps, grpc::CallbackServerContext* context,
                v1::UploadResponse* response)
      : ChunkedInputReactor(deps, context, {"Upload", Permission::kUpload, /*needs_slot=*/true}),
        response_(response) {
    Begin();
  }

 private:
  absl::Status TakeHeader(const v1::UploadRequest& first) override {
    if (!first.has_header()) {
      return absl::InvalidArgumentError("the first message must carry the upload header");
    }
    const v1::UploadHeader& header = first.header();
    const std::optional<StoredRole> role = FromProto(header.role());
    if (!role) return absl::InvalidArgumentError("role must be LABELED, UNLABELED or VALIDATION");
    ASSIGN_OR_RETURN(DatasetRecord dataset, FindDataset(deps_, header.dataset()));
    dataset_name_ = dataset.name;
    session_ = std::make_unique<IngestSession>(
        deps_.store, deps_.files, std::move(dataset), *role,
        ChunkLimits{deps_.max_request_bytes, deps_.max_files}, deps_.reader_limits);
    return absl::OkStatus();
  }

  absl::Status TakeChunk(const v1::FileChunk& chunk) override {
    return session_->AddChunk(chunk.file_name(), chunk.data(), chunk.last_chunk());
  }

  void EndOfStream() override {
    if (context_->IsCancelled()) {
      End(absl::CancelledError("the client cancelled the stream; nothing was stored"));
      return;
    }
    if (!session_) {
      End(absl::InvalidArgumentError("the first message must carry the upload header"));
      return;
    }
    Hold();  // checking and committing take time: off the gRPC thread
    deps_.ingest_pool->Schedule([this] {
      End(Commit());
      Unhold();
    });
  }

  absl::Status Commit() {
    ASSIGN_OR_RETURN(IngestResult result, session_->Finish());
    if (result.files.empty()) return absl::InvalidArgumentError("the upload holds no files");
    for (const StudyRecord& study : result.stored) {
      *response_->add_stored() = ToProto(study, dataset_name_);
    }
    for (const IngestFileResult& file : result.files) AddResult(file);
    response_->set_bytes_received(session_->bytes_received());
    DebugCheckUtf8(*response_, "Upload");
    deps_.metrics->CountUpload(session_->bytes_received(), response_->stored_instances(),
                               response_->duplicate_instances(), response_->refused_instances());
    return absl::OkStatus();
  }

  void AddResult(const IngestFileResult& file) {
    v1::InstanceResult* r = response_->add_results();
    r->set_file_name(file.file_name);
    r->set_sop_instance_uid(file.sop_instance_uid);
    r->set_series_instance_uid(file.series_instance_uid);
    r->set_outcome(ToProto(file.outcome));
    r->set_reason(file.reason);
    switch (file.outcome) {
      case IngestOutcome::kStored:
        response_->set_stored_instances(response_->stored_instances() + 1);
        break;
      case IngestOutcome::kDuplicate:
        response_->set_duplicate_instances(response_->duplicate_instances() + 1);
        break;
      case IngestOutcome::kRefused:
        response_->set_refused_instances(response_->refused_instances() + 1);
        break;
    }
  }

  v1::UploadResponse* const response_;
  std::string dataset_name_;
  std::unique_ptr<IngestSession> session_;
};

}  // namespace

grpc::ServerReadReactor<v1::UploadRequest>* StartUpload(const ServiceDeps& deps,
                                                        grpc::CallbackServerContext* context,
                                                        v1::UploadResponse* response) {
  return new UploadReactor(deps, context, response);
}

}  // namespace miseg

// Segment: the series is staged to disk as it arrives, the engine segments it on its own
// threads, and the SEG streams back from its file one chunk per write, so a slow reader
// holds a file and one chunk, never the whole result.
#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "server/edge/edge_reactor.h"
#include "server/domain/ingest.h"
#include "server/edge/stream_reactors.h"
#include "server/edge/utf8_check.h"

namespace miseg {
namespace {

constexpr size_t kResponseChunkBytes = 1 << 20;

std::chrono::system_clock::time_point DeadlineOf(const grpc::CallbackServerContext* context) {
  // Calls without a deadline still get a bound, so nothing waits forever.
  const auto cap = std::chrono::system_clock::now() + std::chrono::hours(24);
  const auto deadline = context->deadline();
  return deadline < cap ? deadline : cap;
}

void FillSummary(const SegmentationResult& result, v1::SegmentSummary* s) {
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
  s->set_segmentation_bytes(result.seg_file->size());
}

class SegmentReactor final
    : public ChunkedInputReactor<grpc::ServerBidiReactor<v1::SegmentRequest, v1::SegmentResponse>,
                                 v1::SegmentRequest> {
 public:
  SegmentReactor(const ServiceDeps& deps, grpc::CallbackServerContext* context)
      : ChunkedInputReactor(deps, context, {"Segment", Permission::kSegment, /*needs_slot=*/true}),
        receiver_(deps.files, ChunkLimits{deps.max_request_bytes, deps.max_files}) {
    Begin();
  }

  void OnWriteDone(bool ok) override {
    WaitingOnClient(false);
    Rearm();  // the client took a chunk
    if (ended()) return;
    if (!ok) {
      End(absl::CancelledError("the client went away"));
      return;
    }
    WriteNext();
  }

 private:
  absl::Status TakeHeader(const v1::SegmentRequest& first) override {
    if (!first.has_header()) {
      return absl::InvalidArgumentError("the first message must carry the segment header");
    }
    const v1::SegmentHeader& header = first.header();
    job_.dataset = header.dataset();
    job_.model_id = header.model_id();
    job_.stored_series_uid = header.stored_series_instance_uid();
    if (job_.dataset.empty()) return absl::InvalidArgumentError("dataset is required");
    header_ok_ = true;
    return absl::OkStatus();
  }

  absl::Status TakeChunk(const v1::FileChunk& chunk) override {
    return receiver_.AddChunk(chunk.file_name(), chunk.data(), chunk.last_chunk());
  }

  void EndOfStream() override { Submit(); }

  absl::Status PrepareJob() {
    if (context_->IsCancelled()) {
      return absl::CancelledError("the client cancelled the stream; nothing was stored");
    }
    if (!header_ok_) {
      return absl::InvalidArgumentError("the first message must carry the segment header");
    }
    RETURN_IF_ERROR(receiver_.EndOfStream());
    if (!job_.stored_series_uid.empty() && !receiver_.files().empty()) {
      return absl::InvalidArgumentError(
          "send either files or stored_series_instance_uid, not both");
    }
    for (const std::unique_ptr<StagedFile>& file : receiver_.files()) {
      job_.file_paths.push_back(file->path());
    }
    job_.file_names = receiver_.names();
    return absl::OkStatus();
  }

  void Submit() {
    absl::Status prepared = PrepareJob();
    if (!prepared.ok()) {
      End(prepared);
      return;
    }
    Hold();  // until the engine has called back
    absl::Status admitted = deps_.engine->Submit(std::move(job_), DeadlineOf(context_),
                                                 [this](absl::StatusOr<SegmentationResult> result) {
                                                   Segmented(std::move(result));
                                                   Unhold();
                                                 });
    if (!admitted.ok()) {
      Unhold();
      End(admitted);
    }
  }

  void Segmented(absl::StatusOr<SegmentationResult> result) {
    if (ended()) return;
    if (!result.ok()) {
      End(result.status());
      return;
    }
    Rearm();  // the engine's time is not the client's
    result_ = *std::move(result);
    seg_.open(result_.seg_file->path(), std::ios::binary);
    if (!seg_) {
      End(absl::InternalError("cannot read back the segmentation just written"));
      return;
    }
    WriteNext();
  }

  void WriteNext() {
    response_.Clear();
    if (!summary_sent_) {
      std::string* chunk = response_.mutable_segmentation_chunk();
      chunk->resize(kResponseChunkBytes);
      seg_.read(chunk->data(), static_cast<std::streamsize>(chunk->size()));
      chunk->resize(static_cast<size_t>(seg_.gcount()));
      if (chunk->empty()) {
        FillSummary(result_, response_.mutable_summary());
        summary_sent_ = true;
      }
    } else {
      End(absl::OkStatus());
      return;
    }
    DebugCheckUtf8(response_, "Segment");
    WaitingOnClient(true);
    StartWrite(&response_);
  }

  FileReceiver receiver_;
  SegmentationJob job_;
  SegmentationResult result_;
  std::ifstream seg_;
  v1::SegmentResponse response_;  // the one message being written
  bool header_ok_ = false;
  bool summary_sent_ = false;
};

}  // namespace

grpc::ServerBidiReactor<v1::SegmentRequest, v1::SegmentResponse>* StartSegment(
    const ServiceDeps& deps, grpc::CallbackServerContext* context) {
  return new SegmentReactor(deps, context);
}

}  // namespace miseg

#include "server/dicom_node/dicom_node.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/common/status_macros.h"
#include "core/common/unix_time.h"
#include "core/dicom/instance_info.h"
#include "core/dicom/net/cstore_sender.h"
#include "core/dicom/net/storage_scp.h"
#include "core/dicom/net/stow_client.h"
#include "server/domain/ingest.h"
#include "server/log.h"

namespace miseg {
namespace {

bool Matches(const std::string& pattern, const std::string& value) {
  return pattern.empty() || pattern == value;
}

// A delivery of `series` to one destination, due now; the caller sets its state.
DeliveryRecord NewDelivery(const InboxSeries& series, const server::Route& route,
                           const std::string& destination, int64_t now) {
  DeliveryRecord d;
  d.destination = destination;
  d.dataset = route.segment_dataset();
  d.source_series_instance_uid = series.series_instance_uid;
  d.received_unix_ms = series.last_received_unix_ms;
  d.created_unix_ms = now;
  d.next_attempt_unix_ms = now;
  return d;
}

DeliveryRecord FailedDelivery(const InboxSeries& series, const server::Route& route,
                              const std::string& destination, int64_t now,
                              const std::string& error) {
  DeliveryRecord d = NewDelivery(series, route, destination, now);
  d.state = DeliveryStateCode::kFailed;
  d.last_error = error;
  return d;
}

// The delivery of a segmentation (pending) or of its failure, to one destination.
DeliveryRecord SegmentationDelivery(const InboxSeries& series, const server::Route& route,
                                    const std::string& destination, int64_t now,
                                    const absl::StatusOr<SegmentationResult>& result,
                                    const std::string& hash) {
  if (!result.ok()) {
    return FailedDelivery(series, route, destination, now, std::string(result.status().message()));
  }
  DeliveryRecord d = NewDelivery(series, route, destination, now);
  d.state = DeliveryStateCode::kPending;
  d.model_id = result->model.id;
  d.segmentation_sop_instance_uid = result->seg_sop_instance_uid;
  d.segmentation_hash = hash;
  return d;
}

}  // namespace

DicomNode::DicomNode(server::DicomNodeConfig config, std::unique_ptr<NodeStore> node_store,
                     DicomNodeDeps deps)
    : config_(std::move(config)), node_store_(std::move(node_store)), deps_(deps) {}

absl::StatusOr<std::unique_ptr<DicomNode>> DicomNode::Create(server::DicomNodeConfig config,
                                                             const std::string& data_dir,
                                                             DicomNodeDeps deps) {
  ASSIGN_OR_RETURN(std::unique_ptr<NodeStore> node_store, NodeStore::Open(data_dir + "/node.db"));
  return std::unique_ptr<DicomNode>(new DicomNode(std::move(config), std::move(node_store), deps));
}

DicomNode::~DicomNode() { Stop(); }

absl::Status DicomNode::Start() {
  StorageScpOptions options;
  options.ae_title = config_.ae_title();
  options.port = config_.port();
  options.bind_address = config_.bind_address();
  options.max_associations = config_.max_associations();
  for (const server::AllowedPeer& p : config_.peers()) {
    options.allowed_peers.push_back({p.ae_title(), p.host()});
  }
  StorageScpCallbacks callbacks;
  callbacks.on_instance = [this](const ReceivedInstance& i) { return OnInstance(i); };
  callbacks.on_association_end = [this](uint64_t id, const std::string&, const std::string&) {
    OnAssociationEnd(id);
  };
  scp_ = std::make_unique<StorageScp>(options, callbacks);
  RETURN_IF_ERROR(scp_->Start());
  RefreshDeliveryGauges();
  routing_thread_ = std::thread([this] { RoutingLoop(); });
  delivery_thread_ = std::thread([this] { DeliveryLoop(); });
  Log(absl::StrCat("DICOM node ", config_.ae_title(), " listening on port ", scp_->port()));
  return absl::OkStatus();
}

int DicomNode::port() const { return scp_ ? scp_->port() : 0; }

void DicomNode::Stop() {
  if (scp_) scp_->Stop();
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  routing_wake_.SignalAll();
  delivery_wake_.SignalAll();
  if (routing_thread_.joinable()) routing_thread_.join();
  if (delivery_thread_.joinable()) delivery_thread_.join();
}

absl::Status DicomNode::OnInstance(const ReceivedInstance& received) {
  bool routed = false;
  for (const server::Route& r : config_.routes()) {
    routed |= Matches(r.called_ae_title(), received.called_ae_title) &&
              Matches(r.calling_ae_title(), received.calling_ae_title);
  }
  if (!routed) {
    deps_.metrics->CountDicomInstance("refused");
    return absl::FailedPreconditionError("no route for this peer and AE title");
  }
  absl::StatusOr<InstanceInfo> info = IdentifyInstance({"C-STORE", received.bytes});
  if (!info.ok()) {
    deps_.metrics->CountDicomInstance("refused");
    return info.status();
  }
  absl::StatusOr<std::string> hash = deps_.files->Put(received.bytes);
  if (!hash.ok()) {
    deps_.metrics->CountDicomInstance("failed");
    return hash.status();
  }
  InboxInstance instance;
  instance.sop_instance_uid = info->sop_instance_uid;
  instance.series_instance_uid = info->series_instance_uid;
  instance.calling_ae_title = received.calling_ae_title;
  instance.called_ae_title = received.called_ae_title;
  instance.peer_host = received.peer_host;
  instance.association_id = received.association_id;
  instance.object_hash = *hash;
  instance.received_unix_ms = NowUnixMs();
  if (absl::Status added = node_store_->AddReceived(instance); !added.ok()) {
    deps_.metrics->CountDicomInstance("failed");
    return added;
  }
  deps_.metrics->CountDicomInstance("stored");
  // No wake-up per instance (each would rescan the inbox): a series completes when its
  // association ends, which wakes the router, or after its quiet period, which the router
  // sleeps until anyway.
  return absl::OkStatus();
}

void DicomNode::OnAssociationEnd(uint64_t association_id) {
  {
    absl::MutexLock lock(&mutex_);
    ended_associations_.insert(association_id);
    routing_pending_ = true;
  }
  routing_wake_.SignalAll();
}

void DicomNode::RoutingLoop() {
  const int64_t quiet_ms = static_cast<int64_t>(config_.quiet_period_seconds() * 1000);
  while (true) {
    std::set<uint64_t> ended_before_scan;
    {
      absl::MutexLock lock(&mutex_);
      if (stopping_) return;
      routing_pending_ = false;
      ended_before_scan = ended_associations_;
    }
    absl::StatusOr<std::vector<InboxSeries>> pending = node_store_->PendingSeries();
    const int64_t now = NowUnixMs();
    int64_t next_check = now + quiet_ms;
    if (pending.ok()) {
      for (const InboxSeries& series : *pending) {
        bool ended = true;
        int64_t retry_at = 0;
        {
          absl::MutexLock lock(&mutex_);
          for (const InboxInstance& i : series.instances) {
            ended = ended && ended_associations_.count(i.association_id) > 0;
          }
          auto it = retry_after_.find(series.series_instance_uid);
          if (it != retry_after_.end()) retry_at = it->second;
        }
        const int64_t quiet_at = series.last_received_unix_ms + quiet_ms;
        const bool complete = ended || now >= quiet_at;
        if (complete && now >= retry_at) {
          ProcessSeries(series);
        } else {
          next_check = std::min(next_check, std::max(complete ? retry_at : quiet_at, now + 50));
        }
      }
    }
    if (pending.ok()) ForgetEndedAssociations(ended_before_scan, *pending);
    absl::MutexLock lock(&mutex_);
    if (stopping_) return;
    // Until the next series could be complete, or a new instance or association end.
    if (!routing_pending_) {
      routing_wake_.WaitWithTimeout(
          &mutex_, absl::Milliseconds(std::max<int64_t>(50, next_check - NowUnixMs())));
    }
  }
}

void DicomNode::ForgetEndedAssociations(const std::set<uint64_t>& ended_before_scan,
                                        const std::vector<InboxSeries>& pending) {
  // An association that had ended before the scan and has no instance left pending will
  // never be asked about again (its instances were all in the inbox before it ended).
  std::set<uint64_t> still_pending;
  for (const InboxSeries& series : pending) {
    for (const InboxInstance& i : series.instances) still_pending.insert(i.association_id);
  }
  absl::MutexLock lock(&mutex_);
  for (uint64_t id : ended_before_scan) {
    if (!still_pending.count(id)) ended_associations_.erase(id);
  }
}

// The series' received files, each checked against its hash: DataLoss when one is damaged
// or gone (the series fails); any other error is the disk's (the series is retried).
absl::StatusOr<std::vector<DicomBuffer>> DicomNode::LoadSeriesFiles(const InboxSeries& series) {
  std::vector<DicomBuffer> files;
  for (const InboxInstance& i : series.instances) {
    absl::StatusOr<std::string> bytes = deps_.files->Get(i.object_hash);
    if (absl::IsDataLoss(bytes.status()) || absl::IsNotFound(bytes.status())) {
      return absl::DataLossError(
          absl::StrCat("instance ", i.sop_instance_uid, ": ", bytes.status().message()));
    }
    if (!bytes.ok()) return bytes.status();
    files.push_back({i.sop_instance_uid, *std::move(bytes)});
  }
  return files;
}

void DicomNode::RetrySeriesLater(const std::string& series_instance_uid) {
  absl::MutexLock lock(&mutex_);
  retry_after_[series_instance_uid] = NowUnixMs() + 5000;
}

void DicomNode::StoreSeries(const InboxSeries& series, const server::Route& route,
                            const std::vector<DicomBuffer>& files) {
  absl::StatusOr<DatasetRecord> dataset = deps_.store->GetDataset(route.store_dataset());
  absl::StatusOr<IngestResult> ingested =
      dataset.ok()
          ? IngestFiles(*deps_.store, *deps_.files, *dataset, StoredRole::kUnlabeled, files)
          : absl::StatusOr<IngestResult>(dataset.status());
  if (!ingested.ok()) {
    Log(absl::StrCat("series ", series.series_instance_uid, " not stored into '",
                     route.store_dataset(), "': ", ingested.status().message()));
  } else {
    Log(absl::StrCat("series ", series.series_instance_uid, " from ", series.calling_ae_title, ": ",
                     ingested->stored.size(), " stud", ingested->stored.size() == 1 ? "y" : "ies",
                     " stored into '", route.store_dataset(), "'"));
  }
}

bool DicomNode::SegmentSeries(const InboxSeries& series, const server::Route& route,
                              const std::vector<DicomBuffer>& files, int64_t now,
                              std::vector<DeliveryRecord>* deliveries) {
  SegmentationJob job;
  job.dataset = route.segment_dataset();
  job.files = files;
  absl::StatusOr<SegmentationResult> result =
      deps_.engine->Segment(job, std::chrono::system_clock::now() + std::chrono::minutes(30));
  if (absl::IsResourceExhausted(result.status()) || absl::IsUnavailable(result.status())) {
    return false;  // the queue is full: try the series again shortly
  }
  std::string hash;
  if (result.ok()) {
    absl::StatusOr<std::string> put = deps_.files->Commit(*result->seg_file);
    if (!put.ok()) return false;
    hash = *put;
  }
  Log(absl::StrCat("series ", series.series_instance_uid, " from ", series.calling_ae_title,
                   result.ok()
                       ? absl::StrCat(": segmented with model ", result->model.id)
                       : absl::StrCat(": segmentation failed: ", result.status().message())));
  for (const std::string& destination : route.deliver_to()) {
    deliveries->push_back(SegmentationDelivery(series, route, destination, now, result, hash));
  }
  return true;
}

bool DicomNode::RouteSeries(const InboxSeries& series, const std::vector<DicomBuffer>& files,
                            const absl::Status& damaged, std::vector<DeliveryRecord>* deliveries) {
  const int64_t now = NowUnixMs();
  for (const server::Route& route : config_.routes()) {
    if (!Matches(route.called_ae_title(), series.called_ae_title) ||
        !Matches(route.calling_ae_title(), series.calling_ae_title)) {
      continue;
    }
    if (!damaged.ok()) {
      for (const std::string& destination : route.deliver_to()) {
        deliveries->push_back(FailedDelivery(series, route, destination, now, damaged.ToString()));
      }
      continue;
    }
    if (!route.store_dataset().empty()) StoreSeries(series, route, files);
    if (route.segment_dataset().empty()) continue;
    if (!SegmentSeries(series, route, files, now, deliveries)) return false;
  }
  return true;
}

void DicomNode::FinishSeries(const InboxSeries& series,
                             const std::vector<DeliveryRecord>& deliveries) {
  absl::StatusOr<std::vector<DeliveryRecord>> stored =
      node_store_->CompleteSeries(series, deliveries);
  if (!stored.ok()) {
    Log(absl::StrCat("series ", series.series_instance_uid, ": ", stored.status().ToString()));
    RetrySeriesLater(series.series_instance_uid);
    return;
  }
  {
    absl::MutexLock lock(&mutex_);
    retry_after_.erase(series.series_instance_uid);
  }
  deps_.metrics->CountDicomSeries(
      deliveries.empty() || deliveries.front().state == DeliveryStateCode::kPending ? "processed"
                                                                                    : "failed");
  RefreshDeliveryGauges();
  {
    absl::MutexLock lock(&mutex_);
    delivery_pending_ = true;
  }
  delivery_wake_.SignalAll();
}

void DicomNode::ProcessSeries(const InboxSeries& series) {
  // A damaged file fails the series (its deliveries say DATA_LOSS and which object) rather
  // than segmenting the rest.
  absl::StatusOr<std::vector<DicomBuffer>> loaded = LoadSeriesFiles(series);
  if (!loaded.ok()) {
    Log(absl::StrCat("series ", series.series_instance_uid, ": ", loaded.status().ToString()));
  }
  if (!loaded.ok() && !absl::IsDataLoss(loaded.status())) {
    RetrySeriesLater(series.series_instance_uid);  // the disk, not the data
    return;
  }
  const absl::Status damaged = loaded.status();
  std::vector<DicomBuffer> files;
  if (loaded.ok()) files = *std::move(loaded);
  std::vector<DeliveryRecord> deliveries;
  if (!RouteSeries(series, files, damaged, &deliveries)) {
    RetrySeriesLater(series.series_instance_uid);
    return;
  }
  FinishSeries(series, deliveries);
}

absl::Status DicomNode::Deliver(const DeliveryRecord& delivery) {
  const server::Destination* destination = nullptr;
  for (const server::Destination& d : config_.destinations()) {
    if (d.name() == delivery.destination) destination = &d;
  }
  if (!destination) {
    return absl::FailedPreconditionError(
        absl::StrCat("destination '", delivery.destination, "' is no longer configured"));
  }
  ASSIGN_OR_RETURN(std::string seg, deps_.files->Get(delivery.segmentation_hash));
  if (destination->has_dicom()) {
    DicomPeer peer{destination->dicom().ae_title(), destination->dicom().host(), destination->dicom().port()};
    return SendByCStore(peer, config_.ae_title(), {seg}, std::chrono::seconds(60));
  }
  std::string token;
  if (!destination->stow_rs().bearer_token_file().empty()) {
    ASSIGN_OR_RETURN(token, ReadFileToString(destination->stow_rs().bearer_token_file()));
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) {
      token.pop_back();
    }
  }
  return SendByStowRs(destination->stow_rs().url(), token, {seg}, std::chrono::seconds(60));
}

void DicomNode::DeliveryLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mutex_);
      if (stopping_) return;
      delivery_pending_ = false;
    }
    absl::StatusOr<std::vector<DeliveryRecord>> due = node_store_->DueDeliveries(NowUnixMs(), 16);
    if (due.ok()) {
      for (const DeliveryRecord& d : *due) {
        {
          absl::MutexLock lock(&mutex_);
          if (stopping_) return;
        }
        absl::Status sent = Deliver(d);
        const int64_t now = NowUnixMs();
        if (sent.ok()) {
          (void)node_store_->MarkDelivered(d.id, now);
          deps_.metrics->CountDeliveryAttempt("delivered");
          deps_.metrics->ObserveDeliveryLatency(static_cast<double>(now - d.received_unix_ms) / 1000.0);
          Log(absl::StrCat("delivery ", d.id, " of series ", d.source_series_instance_uid, " to ",
                           d.destination, " done (attempt ", d.attempts + 1, ")"));
        } else {
          // 1 s, 2 s, 4 s, ... up to the configured ceiling.
          const double backoff = std::min(config_.max_retry_interval_seconds(),
                                          std::ldexp(1.0, std::min(d.attempts, 20)));
          (void)node_store_->MarkAttemptFailed(d.id, std::string(sent.message()),
                                               now + static_cast<int64_t>(backoff * 1000));
          deps_.metrics->CountDeliveryAttempt("failed");
          Log(absl::StrCat("delivery ", d.id, " to ", d.destination, " failed (attempt ",
                           d.attempts + 1, "), retry in ", backoff, " s: ", sent.message()));
        }
      }
      if (!due->empty()) RefreshDeliveryGauges();
    }
    absl::StatusOr<std::optional<int64_t>> next = node_store_->NextAttemptTime();
    int64_t wait_ms = 60000;
    if (next.ok() && next->has_value()) wait_ms = std::clamp<int64_t>(**next - NowUnixMs(), 0, 60000);
    if (due.ok() && due->size() == 16) wait_ms = 0;  // more are due
    absl::MutexLock lock(&mutex_);
    if (stopping_) return;
    if (wait_ms > 0 && !delivery_pending_) {
      delivery_wake_.WaitWithTimeout(&mutex_, absl::Milliseconds(wait_ms));
    }
  }
}

void DicomNode::RefreshDeliveryGauges() {
  absl::StatusOr<std::vector<std::pair<DeliveryStateCode, int64_t>>> counts =
      node_store_->CountDeliveries();
  if (!counts.ok()) return;
  for (const auto& [state, count] : *counts) {
    deps_.metrics->SetDeliveries(state == DeliveryStateCode::kPending     ? "pending"
                                 : state == DeliveryStateCode::kDelivered ? "delivered"
                                                                          : "failed",
                                 count);
  }
}

}  // namespace miseg

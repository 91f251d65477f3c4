// miseg-server as a DICOM node: a storage SCP for the peers of the configuration; each
// series received, once complete, is routed (stored into a dataset as unlabeled, and/or
// segmented with a dataset's active model) and the DICOM SEG delivered to the route's
// destinations (C-STORE, STOW-RS) from a durable outbox, retried with backoff until it is.
// Received instances are committed to the inbox before the C-STORE succeeds, so nothing a
// PACS was told is stored is lost to a crash.
#ifndef MISEG_SERVER_DICOM_NODE_DICOM_NODE_H_
#define MISEG_SERVER_DICOM_NODE_DICOM_NODE_H_

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <vector>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/dicom_node/node_config.h"
#include "server/dicom_node/node_store.h"
#include "server/metrics/metrics.h"
#include "server/domain/segmentation_engine.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {

class StorageScp;
struct ReceivedInstance;

struct DicomNodeDeps {
  Store* store = nullptr;
  FileStore* files = nullptr;
  SegmentationEngine* engine = nullptr;
  ServerMetrics* metrics = nullptr;
};

// Thread safety: OnInstance and OnAssociationEnd run on the SCP's association threads,
// RoutingLoop (with ProcessSeries) and DeliveryLoop on a worker thread each; mutex_ guards the
// state they share (stopping_, ended_associations_, retry_after_). config_, node_store_ and
// deps_ are constant after construction (the pointers; what they point to locks for itself).
// Start, Stop, port and the destructor are for the owner's thread only: scp_ and the two
// worker threads are written by Start and Stop alone, never concurrently with each other.
class DicomNode {
 public:
  // Opens data_dir/node.db.
  static absl::StatusOr<std::unique_ptr<DicomNode>> Create(server::DicomNodeConfig config,
                                                           const std::string& data_dir,
                                                           DicomNodeDeps deps);
  ~DicomNode();

  // Starts the SCP and the routing and delivery workers (inbox and outbox left by an
  // earlier run are picked up).
  absl::Status Start();
  // Stops accepting associations, lets running ones end, stops the workers.
  void Stop();
  int port() const;
  NodeStore* node_store() { return node_store_.get(); }

 private:
  DicomNode(server::DicomNodeConfig config, std::unique_ptr<NodeStore> node_store,
            DicomNodeDeps deps);
  absl::Status OnInstance(const ReceivedInstance& instance);
  void OnAssociationEnd(uint64_t association_id) ABSL_LOCKS_EXCLUDED(mutex_);
  void RoutingLoop() ABSL_LOCKS_EXCLUDED(mutex_);
  void ForgetEndedAssociations(const std::set<uint64_t>& ended_before_scan,
                               const std::vector<InboxSeries>& pending)
      ABSL_LOCKS_EXCLUDED(mutex_);
  void DeliveryLoop() ABSL_LOCKS_EXCLUDED(mutex_);
  absl::StatusOr<std::vector<DicomBuffer>> LoadSeriesFiles(const InboxSeries& series);
  void ProcessSeries(const InboxSeries& series) ABSL_LOCKS_EXCLUDED(mutex_);
  // The series through every route that matches it; false when it must be tried again
  // later (the segmentation queue was full, or the SEG could not be stored).
  bool RouteSeries(const InboxSeries& series, const std::vector<DicomBuffer>& files,
                   const absl::Status& damaged, std::vector<DeliveryRecord>* deliveries);
  void StoreSeries(const InboxSeries& series, const server::Route& route,
                   const std::vector<DicomBuffer>& files);
  // Segments for the route and adds its deliveries; false: try the series again later.
  bool SegmentSeries(const InboxSeries& series, const server::Route& route,
                     const std::vector<DicomBuffer>& files, int64_t now,
                     std::vector<DeliveryRecord>* deliveries);
  // Completes the inbox series with its deliveries (NodeStore::CompleteSeries) and wakes the
  // delivery loop; on a store error the series is tried again later.
  void FinishSeries(const InboxSeries& series, const std::vector<DeliveryRecord>& deliveries)
      ABSL_LOCKS_EXCLUDED(mutex_);
  void RetrySeriesLater(const std::string& series_instance_uid) ABSL_LOCKS_EXCLUDED(mutex_);
  absl::Status Deliver(const DeliveryRecord& delivery);
  void RefreshDeliveryGauges();

  server::DicomNodeConfig config_;
  std::unique_ptr<NodeStore> node_store_;
  DicomNodeDeps deps_;
  std::unique_ptr<StorageScp> scp_;

  absl::Mutex mutex_;
  // Signalled (without a predicate: the loops rescan the store) when a series may have
  // become complete or a delivery due, and on Stop.
  absl::CondVar routing_wake_, delivery_wake_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  // Set with each signal and cleared by the loop before it rescans, so a signal sent while
  // the loop scans is not lost: the loop then rescans at once instead of sleeping.
  bool routing_pending_ ABSL_GUARDED_BY(mutex_) = false;
  bool delivery_pending_ ABSL_GUARDED_BY(mutex_) = false;
  // Ended associations whose instances may still be pending; pruned after each scan.
  std::set<uint64_t> ended_associations_ ABSL_GUARDED_BY(mutex_);
  // Series whose processing hit a transient error (queue full): not before this time.
  std::map<std::string, int64_t> retry_after_ ABSL_GUARDED_BY(mutex_);
  std::thread routing_thread_, delivery_thread_;
};

}  // namespace miseg

#endif  // MISEG_SERVER_DICOM_NODE_DICOM_NODE_H_

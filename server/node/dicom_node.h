// miseg-server as a DICOM node: a storage SCP for the peers of the configuration; each
// series received, once complete, is routed (stored into a dataset as unlabeled, and/or
// segmented with a dataset's active model) and the DICOM SEG delivered to the route's
// destinations (C-STORE, STOW-RS) from a durable outbox, retried with backoff until it is.
// Received instances are committed to the inbox before the C-STORE succeeds, so nothing a
// PACS was told is stored is lost to a crash.
#ifndef MISEG_SERVER_NODE_DICOM_NODE_H_
#define MISEG_SERVER_NODE_DICOM_NODE_H_

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/node/node_config.pb.h"
#include "server/node/node_store.h"
#include "server/metrics.h"
#include "server/segmentation_engine.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {

class StorageScp;
struct ReceivedInstance;

// Reads and checks a JSON configuration; fills the defaults. InvalidArgument naming the
// problem (unknown destination in a route, bad AE title, unreadable token file).
absl::StatusOr<server::DicomNodeConfig> LoadDicomNodeConfig(const std::string& path);

struct DicomNodeDeps {
  Store* store = nullptr;
  FileStore* files = nullptr;
  SegmentationEngine* engine = nullptr;
  ServerMetrics* metrics = nullptr;
};

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
  void OnAssociationEnd(uint64_t association_id);
  void RoutingLoop();
  void DeliveryLoop();
  void ProcessSeries(const InboxSeries& series);
  absl::Status Deliver(const DeliveryRecord& delivery);
  void RefreshDeliveryGauges();

  server::DicomNodeConfig config_;
  std::unique_ptr<NodeStore> node_store_;
  DicomNodeDeps deps_;
  std::unique_ptr<StorageScp> scp_;

  std::mutex mutex_;
  std::condition_variable routing_wake_, delivery_wake_;
  bool stopping_ = false;
  std::set<uint64_t> ended_associations_;
  // Series whose processing hit a transient error (queue full): not before this time.
  std::map<std::string, int64_t> retry_after_;
  std::thread routing_thread_, delivery_thread_;
};

}  // namespace miseg

#endif  // MISEG_SERVER_NODE_DICOM_NODE_H_

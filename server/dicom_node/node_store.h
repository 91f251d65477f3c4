// The DICOM node's durable state, in its own SQLite file (node.db, WAL): the inbox of
// received instances (committed before the C-STORE is acknowledged) and the outbox of
// SEGs to deliver (committed, with the inbox rows they replace, in one transaction).
// Nothing received or produced is lost to a crash or a restart.
#ifndef MISEG_SERVER_DICOM_NODE_NODE_STORE_H_
#define MISEG_SERVER_DICOM_NODE_NODE_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

struct sqlite3;

namespace miseg {

struct InboxInstance {
  std::string sop_instance_uid;
  std::string series_instance_uid;
  std::string calling_ae_title;
  std::string called_ae_title;
  std::string peer_host;
  uint64_t association_id = 0;
  std::string object_hash;  // the file, in the FileStore
  int64_t received_unix_ms = 0;
};

// One series from one peer to one of our AE titles.
struct InboxSeries {
  std::string series_instance_uid;
  std::string calling_ae_title;
  std::string called_ae_title;
  std::vector<InboxInstance> instances;
  int64_t last_received_unix_ms = 0;
};

// Matches miseg.v1.DeliveryState numbers.
enum class DeliveryStateCode : int { kPending = 1, kDelivered = 2, kFailed = 3 };

struct DeliveryRecord {
  int64_t id = 0;
  std::string destination;
  DeliveryStateCode state = DeliveryStateCode::kPending;
  std::string dataset;
  int64_t model_id = 0;
  std::string source_series_instance_uid;
  std::string segmentation_sop_instance_uid;
  std::string segmentation_hash;  // the SEG, in the FileStore
  int32_t attempts = 0;
  std::string last_error;
  int64_t received_unix_ms = 0;
  int64_t created_unix_ms = 0;
  int64_t next_attempt_unix_ms = 0;
  int64_t delivered_unix_ms = 0;
};

// Thread safety: every method takes mutex_ for its whole run (a transaction included), so
// calls from any threads (association threads adding received instances, the routing and
// delivery workers, the RPCs) are serialized on the one SQLite connection. mutex_ guards that
// connection (what db_ points to); db_ itself is constant after construction.
class NodeStore {
 public:
  static absl::StatusOr<std::unique_ptr<NodeStore>> Open(const std::string& path);
  ~NodeStore();

  // A received instance; the same SOP Instance UID again from the same peer replaces the
  // earlier copy (a resend).
  absl::Status AddReceived(const InboxInstance& instance);
  // Every series with instances in the inbox.
  absl::StatusOr<std::vector<InboxSeries>> PendingSeries();
  // Removes the series' inbox rows (those received up to last_received_unix_ms: a late
  // instance stays for another round) and inserts its deliveries, in one transaction.
  absl::StatusOr<std::vector<DeliveryRecord>> CompleteSeries(
      const InboxSeries& series, const std::vector<DeliveryRecord>& deliveries);

  // Pending deliveries whose next attempt is due at now_unix_ms, oldest first.
  absl::StatusOr<std::vector<DeliveryRecord>> DueDeliveries(int64_t now_unix_ms, int limit);
  // The earliest next attempt of any pending delivery.
  absl::StatusOr<std::optional<int64_t>> NextAttemptTime();
  absl::Status MarkDelivered(int64_t id, int64_t now_unix_ms);
  absl::Status MarkAttemptFailed(int64_t id, const std::string& error,
                                 int64_t next_attempt_unix_ms);
  // Newest first; nullopt: every state.
  absl::StatusOr<std::vector<DeliveryRecord>> ListDeliveries(
      std::optional<DeliveryStateCode> state);
  // Pending, delivered, failed.
  absl::StatusOr<std::vector<std::pair<DeliveryStateCode, int64_t>>> CountDeliveries();
  // Objects the node still needs (inbox files, SEGs), for the file store's collection.
  absl::StatusOr<std::vector<std::string>> ReferencedObjects();

 private:
  explicit NodeStore(sqlite3* db) : db_(db) {}

  absl::Mutex mutex_;
  // Constant after construction. Clang's analysis sees dereferences only, not a sqlite3_*
  // call that is handed db_: taking mutex_ before any use of db_ is the rule it cannot check.
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mutex_);
};

}  // namespace miseg

#endif  // MISEG_SERVER_DICOM_NODE_NODE_STORE_H_

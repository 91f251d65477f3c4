#include "server/dicom_node/node_store.h"

#include <sqlite3.h>

#include <chrono>
#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "server/store/sqlite_util.h"

namespace miseg {
namespace {

using sqlite::Exec;
using sqlite::InTransaction;
using sqlite::Stmt;

constexpr int kSchemaVersion = 1;

constexpr char kSchema[] = R"sql(
CREATE TABLE inbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  sop_instance_uid TEXT NOT NULL,
  series_instance_uid TEXT NOT NULL,
  calling_ae_title TEXT NOT NULL,
  called_ae_title TEXT NOT NULL,
  peer_host TEXT NOT NULL,
  association_id INTEGER NOT NULL,
  object_hash TEXT NOT NULL,
  received_unix_ms INTEGER NOT NULL,
  UNIQUE (calling_ae_title, called_ae_title, sop_instance_uid)
);
CREATE INDEX inbox_by_series ON inbox(series_instance_uid, calling_ae_title, called_ae_title);
CREATE TABLE deliveries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  destination TEXT NOT NULL,
  state INTEGER NOT NULL,
  dataset TEXT NOT NULL,
  model_id INTEGER NOT NULL,
  source_series_instance_uid TEXT NOT NULL,
  segmentation_sop_instance_uid TEXT NOT NULL,
  segmentation_hash TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  received_unix_ms INTEGER NOT NULL,
  created_unix_ms INTEGER NOT NULL,
  next_attempt_unix_ms INTEGER NOT NULL,
  delivered_unix_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX deliveries_due ON deliveries(state, next_attempt_unix_ms);
)sql";

constexpr char kDeliveryColumns[] =
    "id, destination, state, dataset, model_id, source_series_instance_uid, "
    "segmentation_sop_instance_uid, segmentation_hash, attempts, last_error, received_unix_ms, "
    "created_unix_ms, next_attempt_unix_ms, delivered_unix_ms";

DeliveryRecord ReadDelivery(const Stmt& s) {
  DeliveryRecord d;
  d.id = s.Int(0);
  d.destination = s.Text(1);
  d.state = static_cast<DeliveryStateCode>(s.Int(2));
  d.dataset = s.Text(3);
  d.model_id = s.Int(4);
  d.source_series_instance_uid = s.Text(5);
  d.segmentation_sop_instance_uid = s.Text(6);
  d.segmentation_hash = s.Text(7);
  d.attempts = static_cast<int32_t>(s.Int(8));
  d.last_error = s.Text(9);
  d.received_unix_ms = s.Int(10);
  d.created_unix_ms = s.Int(11);
  d.next_attempt_unix_ms = s.Int(12);
  d.delivered_unix_ms = s.Int(13);
  return d;
}

absl::StatusOr<std::vector<DeliveryRecord>> ReadDeliveries(Stmt& s) {
  return sqlite::ReadRows(s, ReadDelivery);
}

}  // namespace

absl::StatusOr<std::unique_ptr<NodeStore>> NodeStore::Open(const std::string& path) {
  ASSIGN_OR_RETURN(sqlite3 * db, sqlite::OpenDatabase(path, kSchema, kSchemaVersion));
  return std::unique_ptr<NodeStore>(new NodeStore(db));
}

NodeStore::~NodeStore() { sqlite3_close_v2(db_); }

absl::Status NodeStore::AddReceived(const InboxInstance& i) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
        "INSERT INTO inbox (sop_instance_uid, series_instance_uid, calling_ae_title, "
        "called_ae_title, peer_host, association_id, object_hash, received_unix_ms) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
        "ON CONFLICT (calling_ae_title, called_ae_title, sop_instance_uid) DO UPDATE SET "
        "series_instance_uid = excluded.series_instance_uid, peer_host = excluded.peer_host, "
        "association_id = excluded.association_id, object_hash = excluded.object_hash, "
        "received_unix_ms = excluded.received_unix_ms"));
    s.BindText(1, i.sop_instance_uid)
        .BindText(2, i.series_instance_uid)
        .BindText(3, i.calling_ae_title)
        .BindText(4, i.called_ae_title)
        .BindText(5, i.peer_host)
        .Bind(6, static_cast<int64_t>(i.association_id))
        .BindText(7, i.object_hash)
        .Bind(8, i.received_unix_ms);
    return s.Run();
  });
}

absl::StatusOr<std::vector<InboxSeries>> NodeStore::PendingSeries() {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
      "SELECT sop_instance_uid, series_instance_uid, calling_ae_title, called_ae_title, "
      "peer_host, association_id, object_hash, received_unix_ms FROM inbox ORDER BY id"));
  std::map<std::tuple<std::string, std::string, std::string>, size_t> index;
  std::vector<InboxSeries> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    InboxInstance i;
    i.sop_instance_uid = s.Text(0);
    i.series_instance_uid = s.Text(1);
    i.calling_ae_title = s.Text(2);
    i.called_ae_title = s.Text(3);
    i.peer_host = s.Text(4);
    i.association_id = static_cast<uint64_t>(s.Int(5));
    i.object_hash = s.Text(6);
    i.received_unix_ms = s.Int(7);
    auto key = std::make_tuple(i.series_instance_uid, i.calling_ae_title, i.called_ae_title);
    auto [it, inserted] = index.try_emplace(key, out.size());
    if (inserted) {
      out.push_back({i.series_instance_uid, i.calling_ae_title, i.called_ae_title, {}, 0});
    }
    InboxSeries& series = out[it->second];
    series.last_received_unix_ms = std::max(series.last_received_unix_ms, i.received_unix_ms);
    series.instances.push_back(std::move(i));
  }
  return out;
}

absl::StatusOr<std::vector<DeliveryRecord>> NodeStore::CompleteSeries(
    const InboxSeries& series, const std::vector<DeliveryRecord>& deliveries) {
  absl::MutexLock lock(&mutex_);
  std::vector<DeliveryRecord> stored;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt remove, Stmt::Prepare(db_,
        "DELETE FROM inbox WHERE series_instance_uid = ?1 AND calling_ae_title = ?2 AND "
        "called_ae_title = ?3 AND received_unix_ms <= ?4"));
    remove.BindText(1, series.series_instance_uid)
        .BindText(2, series.calling_ae_title)
        .BindText(3, series.called_ae_title)
        .Bind(4, series.last_received_unix_ms);
    RETURN_IF_ERROR(remove.Run());
    ASSIGN_OR_RETURN(Stmt insert, Stmt::Prepare(db_,
        "INSERT INTO deliveries (destination, state, dataset, model_id, "
        "source_series_instance_uid, segmentation_sop_instance_uid, segmentation_hash, "
        "attempts, last_error, received_unix_ms, created_unix_ms, next_attempt_unix_ms) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?10, ?11)"));
    for (DeliveryRecord d : deliveries) {
      insert.Reset();
      insert.BindText(1, d.destination)
          .Bind(2, static_cast<int64_t>(d.state))
          .BindText(3, d.dataset)
          .Bind(4, d.model_id)
          .BindText(5, d.source_series_instance_uid)
          .BindText(6, d.segmentation_sop_instance_uid)
          .BindText(7, d.segmentation_hash)
          .BindText(8, d.last_error)
          .Bind(9, d.received_unix_ms)
          .Bind(10, d.created_unix_ms)
          .Bind(11, d.next_attempt_unix_ms);
      RETURN_IF_ERROR(insert.Run());
      d.id = sqlite3_last_insert_rowid(db_);
      stored.push_back(std::move(d));
    }
    return absl::OkStatus();
  }));
  return stored;
}

absl::StatusOr<std::vector<DeliveryRecord>> NodeStore::DueDeliveries(int64_t now_unix_ms,
                                                                     int limit) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, absl::StrCat(
      "SELECT ", kDeliveryColumns, " FROM deliveries WHERE state = 1 AND "
      "next_attempt_unix_ms <= ?1 ORDER BY next_attempt_unix_ms, id LIMIT ?2").c_str()));
  s.Bind(1, now_unix_ms).Bind(2, static_cast<int64_t>(limit));
  return ReadDeliveries(s);
}

absl::StatusOr<std::optional<int64_t>> NodeStore::NextAttemptTime() {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
      "SELECT MIN(next_attempt_unix_ms) FROM deliveries WHERE state = 1"));
  ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row || s.Text(0).empty()) return std::optional<int64_t>();
  return std::optional<int64_t>(s.Int(0));
}

absl::Status NodeStore::MarkDelivered(int64_t id, int64_t now_unix_ms) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
        "UPDATE deliveries SET state = 2, attempts = attempts + 1, delivered_unix_ms = ?2, "
        "last_error = '' WHERE id = ?1"));
    s.Bind(1, id).Bind(2, now_unix_ms);
    return s.Run();
  });
}

absl::Status NodeStore::MarkAttemptFailed(int64_t id, const std::string& error,
                                          int64_t next_attempt_unix_ms) {
  absl::MutexLock lock(&mutex_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
        "UPDATE deliveries SET attempts = attempts + 1, last_error = ?2, "
        "next_attempt_unix_ms = ?3 WHERE id = ?1"));
    s.Bind(1, id).BindText(2, error).Bind(3, next_attempt_unix_ms);
    return s.Run();
  });
}

absl::StatusOr<std::vector<DeliveryRecord>> NodeStore::ListDeliveries(
    std::optional<DeliveryStateCode> state) {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, absl::StrCat(
      "SELECT ", kDeliveryColumns, " FROM deliveries WHERE ?1 = 0 OR state = ?1 "
      "ORDER BY id DESC").c_str()));
  s.Bind(1, state ? static_cast<int64_t>(*state) : int64_t{0});
  return ReadDeliveries(s);
}

absl::StatusOr<std::vector<std::pair<DeliveryStateCode, int64_t>>> NodeStore::CountDeliveries() {
  absl::MutexLock lock(&mutex_);
  std::vector<std::pair<DeliveryStateCode, int64_t>> counts = {
      {DeliveryStateCode::kPending, 0}, {DeliveryStateCode::kDelivered, 0},
      {DeliveryStateCode::kFailed, 0}};
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_, "SELECT state, COUNT(*) FROM deliveries GROUP BY state"));
  while (true) {
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    for (auto& [state, count] : counts) {
      if (static_cast<int64_t>(state) == s.Int(0)) count = s.Int(1);
    }
  }
  return counts;
}

absl::StatusOr<std::vector<std::string>> NodeStore::ReferencedObjects() {
  absl::MutexLock lock(&mutex_);
  ASSIGN_OR_RETURN(Stmt s, Stmt::Prepare(db_,
      "SELECT object_hash FROM inbox UNION SELECT segmentation_hash FROM deliveries "
      "WHERE segmentation_hash != ''"));
  return sqlite::ReadStrings(s);
}

}  // namespace miseg

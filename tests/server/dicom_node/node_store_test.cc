// The DICOM node's inbox and outbox: durable across reopen, grouped by series and peer,
// completed atomically, retried in order of their next attempt.
#include "server/dicom_node/node_store.h"

#include <stdlib.h>

#include <filesystem>

#include <gtest/gtest.h>


namespace miseg {
namespace {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "miseg-node-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

InboxInstance Instance(const std::string& sop, const std::string& series, int64_t at,
                       const std::string& calling = "PACS") {
  InboxInstance i;
  i.sop_instance_uid = sop;
  i.series_instance_uid = series;
  i.calling_ae_title = calling;
  i.called_ae_title = "MISEG";
  i.peer_host = "127.0.0.1";
  i.association_id = 7;
  i.object_hash = "h-" + sop;
  i.received_unix_ms = at;
  return i;
}

DeliveryRecord Pending(const std::string& destination, const std::string& series, int64_t next) {
  DeliveryRecord d;
  d.destination = destination;
  d.state = DeliveryStateCode::kPending;
  d.dataset = "d";
  d.model_id = 3;
  d.source_series_instance_uid = series;
  d.segmentation_sop_instance_uid = "seg-" + series;
  d.segmentation_hash = "seghash-" + series;
  d.received_unix_ms = 100;
  d.created_unix_ms = 200;
  d.next_attempt_unix_ms = next;
  return d;
}

TEST(NodeStoreTest, InboxGroupsBySeriesAndPeerAndSurvivesReopen) {
  TempDir dir;
  const std::string path = dir.path() + "/node.db";
  {
    auto store = NodeStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->AddReceived(Instance("1", "A", 10)).ok());
    ASSERT_TRUE((*store)->AddReceived(Instance("2", "A", 20)).ok());
    ASSERT_TRUE((*store)->AddReceived(Instance("3", "B", 15)).ok());
    ASSERT_TRUE((*store)->AddReceived(Instance("4", "A", 30, "OTHER")).ok());
    // A resend of the same instance replaces it rather than doubling it.
    ASSERT_TRUE((*store)->AddReceived(Instance("2", "A", 25)).ok());
  }
  auto store = NodeStore::Open(path);
  ASSERT_TRUE(store.ok());
  auto pending = (*store)->PendingSeries();
  ASSERT_TRUE(pending.ok());
  ASSERT_EQ(pending->size(), 3u);
  EXPECT_EQ((*pending)[0].series_instance_uid, "A");
  EXPECT_EQ((*pending)[0].calling_ae_title, "PACS");
  EXPECT_EQ((*pending)[0].instances.size(), 2u);
  EXPECT_EQ((*pending)[0].last_received_unix_ms, 25);
  EXPECT_EQ((*pending)[2].calling_ae_title, "OTHER");
  auto referenced = (*store)->ReferencedObjects();
  ASSERT_TRUE(referenced.ok());
  EXPECT_EQ(referenced->size(), 4u);
}

TEST(NodeStoreTest, CompletingASeriesReplacesItsInboxByDeliveriesAtOnce) {
  TempDir dir;
  auto store = NodeStore::Open(dir.path() + "/node.db");
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->AddReceived(Instance("1", "A", 10)).ok());
  ASSERT_TRUE((*store)->AddReceived(Instance("2", "A", 20)).ok());
  auto pending = (*store)->PendingSeries();
  ASSERT_TRUE(pending.ok());
  const InboxSeries series = pending->front();
  // An instance that arrives while the series is processed stays for the next round.
  ASSERT_TRUE((*store)->AddReceived(Instance("3", "A", 40)).ok());
  auto stored = (*store)->CompleteSeries(series, {Pending("pacs", "A", 0), Pending("web", "A", 0)});
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_EQ(stored->size(), 2u);
  EXPECT_GT((*stored)[0].id, 0);
  pending = (*store)->PendingSeries();
  ASSERT_TRUE(pending.ok());
  ASSERT_EQ(pending->size(), 1u);
  EXPECT_EQ(pending->front().instances.size(), 1u);
  EXPECT_EQ(pending->front().instances.front().sop_instance_uid, "3");
  auto all = (*store)->ListDeliveries(std::nullopt);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 2u);
}

TEST(NodeStoreTest, DeliveriesAreDueByTimeAndKeepTheirHistory) {
  TempDir dir;
  auto store = NodeStore::Open(dir.path() + "/node.db");
  ASSERT_TRUE(store.ok());
  InboxSeries series{"A", "PACS", "MISEG", {}, 0};
  DeliveryRecord failed = Pending("pacs", "A", 0);
  failed.state = DeliveryStateCode::kFailed;
  failed.last_error = "no active model";
  auto stored = (*store)->CompleteSeries(series, {Pending("pacs", "A", 500), Pending("web", "A", 100), failed});
  ASSERT_TRUE(stored.ok());
  auto due = (*store)->DueDeliveries(200, 10);
  ASSERT_TRUE(due.ok());
  ASSERT_EQ(due->size(), 1u);
  EXPECT_EQ(due->front().destination, "web");
  auto next = (*store)->NextAttemptTime();
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(**next, 100);

  ASSERT_TRUE((*store)->MarkAttemptFailed(due->front().id, "connection refused", 1000).ok());
  due = (*store)->DueDeliveries(600, 10);
  ASSERT_TRUE(due.ok());
  ASSERT_EQ(due->size(), 1u);
  EXPECT_EQ(due->front().destination, "pacs");
  ASSERT_TRUE((*store)->MarkDelivered(due->front().id, 650).ok());
  auto web = (*store)->DueDeliveries(1000, 10);
  ASSERT_TRUE(web.ok());
  ASSERT_EQ(web->size(), 1u);
  EXPECT_EQ(web->front().attempts, 1);
  EXPECT_EQ(web->front().last_error, "connection refused");

  auto counts = (*store)->CountDeliveries();
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ((*counts)[0].second, 1);  // pending
  EXPECT_EQ((*counts)[1].second, 1);  // delivered
  EXPECT_EQ((*counts)[2].second, 1);  // failed
  auto delivered = (*store)->ListDeliveries(DeliveryStateCode::kDelivered);
  ASSERT_TRUE(delivered.ok());
  ASSERT_EQ(delivered->size(), 1u);
  EXPECT_EQ(delivered->front().delivered_unix_ms, 650);
  EXPECT_EQ(delivered->front().attempts, 1);
}

}  // namespace
}  // namespace miseg

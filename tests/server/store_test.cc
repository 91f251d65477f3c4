#include "server/store/store.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sqlite3.h>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/store/file_store.h"
#include "tests/server/store_test_util.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "miseg_store_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr) << pattern;
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string dir_;
};

std::string Hash(int i) { return Sha256Hex(absl::StrCat("object ", i)); }

class StoreTest : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    Reopen();
  }
  void Reopen() {
    store_.reset();
    auto store = Store::Open(Path("miseg.db"));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  DatasetRecord MakeDataset(const std::string& name) {
    DatasetRecord d;
    d.name = name;
    d.class_names = {"background", "liver", "tumor"};
    d.modality = "CT";
    auto created = store_->CreateDataset(d);
    EXPECT_TRUE(created.ok()) << created.status();
    return created.ok() ? *created : DatasetRecord{};
  }
  // A study with `images` images (hash ids start at hash_base) and optionally a SEG.
  static StudyRecord MakeStudy(int64_t dataset_id, const std::string& series, StoredRole role,
                               int images, int hash_base, bool with_seg) {
    StudyRecord s;
    s.dataset_id = dataset_id;
    s.role = role;
    s.study_instance_uid = "1.2.study." + series;
    s.series_instance_uid = series;
    s.modality = "CT";
    s.slices = images;
    s.rows = 64;
    s.columns = 48;
    for (int i = 0; i < images; ++i) {
      InstanceRecord inst;
      inst.sop_instance_uid = absl::StrCat(series, ".", i);
      inst.object_hash = Hash(hash_base + i);
      inst.size_bytes = 100 + i;
      s.instances.push_back(inst);
    }
    if (with_seg) {
      InstanceRecord seg;
      seg.sop_instance_uid = series + ".seg";
      seg.object_hash = Hash(hash_base + 1000);
      seg.size_bytes = 1000;
      seg.is_segmentation = true;
      s.instances.push_back(seg);
      s.segmentation_sop_instance_uid = seg.sop_instance_uid;
    }
    return s;
  }
  JobRecord MakeJob(int64_t dataset_id, int64_t total_steps = 100) {
    JobRecord j;
    j.dataset_id = dataset_id;
    j.hyperparameters = std::string("hp\0\x01\xff", 5);
    j.total_steps = total_steps;
    j.labeled_studies = 2;
    auto created = store_->CreateJob(j);
    EXPECT_TRUE(created.ok()) << created.status();
    return created.ok() ? *created : JobRecord{};
  }
  ModelRecord ModelOf(int64_t steps) {
    ModelRecord m;
    m.path = "/models/m.pt";
    m.dice_per_class = {0.1, 0.8123456789012345, 1.0 / 3.0};
    m.mean_dice = 0.55;
    m.size_bytes = 4096;
    m.steps = steps;
    return m;
  }

  std::unique_ptr<Store> store_;
};

// ---------------------------------------------------------------- Datasets

TEST_F(StoreTest, CreateAndGetDataset) {
  DatasetRecord d = MakeDataset("liver");
  EXPECT_GT(d.id, 0);
  EXPECT_EQ(d.name, "liver");
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"background", "liver", "tumor"}));
  EXPECT_EQ(d.modality, "CT");
  EXPECT_EQ(d.active_model_id, 0);
  EXPECT_GT(d.created_unix_ms, 0);
  EXPECT_EQ(d.instances, 0);

  auto by_name = store_->GetDataset("liver");
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  EXPECT_EQ(by_name->id, d.id);
  EXPECT_EQ(by_name->class_names, d.class_names);
  auto by_id = store_->GetDatasetById(d.id);
  ASSERT_TRUE(by_id.ok());
  EXPECT_EQ(by_id->name, "liver");
  EXPECT_EQ(by_id->created_unix_ms, d.created_unix_ms);
}

TEST_F(StoreTest, DatasetErrors) {
  MakeDataset("a");
  DatasetRecord dup;
  dup.name = "a";
  EXPECT_EQ(store_->CreateDataset(dup).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->GetDataset("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetDatasetById(999).status().code(), absl::StatusCode::kNotFound);
  auto list = store_->ListDatasets();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 1u);
}

TEST_F(StoreTest, EmptyClassNamesRoundTrip) {
  DatasetRecord d;
  d.name = "empty";
  ASSERT_TRUE(store_->CreateDataset(d).ok());
  auto got = store_->GetDataset("empty");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->class_names.empty());
}

TEST_F(StoreTest, ListDatasetsFillsCounts) {
  DatasetRecord a = MakeDataset("a");
  DatasetRecord b = MakeDataset("b");
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(a.id, "s1", StoredRole::kLabeled, 2, 0, true)).ok());
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(a.id, "s2", StoredRole::kLabeled, 1, 10, true)).ok());
  ASSERT_TRUE(
      store_->InsertStudy(MakeStudy(a.id, "s3", StoredRole::kUnlabeled, 3, 20, false)).ok());
  ASSERT_TRUE(
      store_->InsertStudy(MakeStudy(a.id, "s4", StoredRole::kValidation, 1, 30, true)).ok());

  auto list = store_->ListDatasets();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  const DatasetRecord& la = (*list)[0];
  EXPECT_EQ(la.id, a.id);
  EXPECT_EQ(la.labeled_studies, 2);
  EXPECT_EQ(la.unlabeled_studies, 1);
  EXPECT_EQ(la.validation_studies, 1);
  // s1: 2 + seg, s2: 1 + seg, s3: 3, s4: 1 + seg.
  EXPECT_EQ(la.instances, 3 + 2 + 3 + 2);
  EXPECT_EQ(la.stored_bytes,
            (100 + 101 + 1000) + (100 + 1000) + (100 + 101 + 102) + (100 + 1000));
  EXPECT_EQ((*list)[1].id, b.id);
  EXPECT_EQ((*list)[1].instances, 0);
  EXPECT_EQ((*list)[1].stored_bytes, 0);

  auto got = store_->GetDataset("a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->instances, la.instances);
  EXPECT_EQ(got->stored_bytes, la.stored_bytes);
  EXPECT_EQ(got->labeled_studies, 2);
}

// ---------------------------------------------------------------- Studies

TEST_F(StoreTest, InsertAndGetStudy) {
  DatasetRecord d = MakeDataset("d");
  StudyRecord in = MakeStudy(d.id, "1.2.3", StoredRole::kLabeled, 3, 0, true);
  auto inserted = store_->InsertStudy(in);
  ASSERT_TRUE(inserted.ok()) << inserted.status();
  EXPECT_GT(inserted->id, 0);
  EXPECT_GT(inserted->created_unix_ms, 0);

  auto got = store_->GetStudy(d.id, "1.2.3");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->id, inserted->id);
  EXPECT_EQ(got->dataset_id, d.id);
  EXPECT_EQ(got->role, StoredRole::kLabeled);
  EXPECT_EQ(got->study_instance_uid, in.study_instance_uid);
  EXPECT_EQ(got->modality, "CT");
  EXPECT_EQ(got->slices, 3);
  EXPECT_EQ(got->rows, 64);
  EXPECT_EQ(got->columns, 48);
  EXPECT_EQ(got->segmentation_sop_instance_uid, "1.2.3.seg");
  ASSERT_EQ(got->instances.size(), 4u);
  for (size_t i = 0; i < in.instances.size(); ++i) {
    EXPECT_EQ(got->instances[i].sop_instance_uid, in.instances[i].sop_instance_uid);
    EXPECT_EQ(got->instances[i].object_hash, in.instances[i].object_hash);
    EXPECT_EQ(got->instances[i].size_bytes, in.instances[i].size_bytes);
    EXPECT_EQ(got->instances[i].is_segmentation, in.instances[i].is_segmentation);
  }
  EXPECT_EQ(store_->GetStudy(d.id, "9.9").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetStudy(d.id + 1, "1.2.3").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, InsertStudyErrors) {
  DatasetRecord d = MakeDataset("d");
  EXPECT_EQ(store_->InsertStudy(MakeStudy(999, "s", StoredRole::kLabeled, 1, 0, false))
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  StudyRecord bad_role = MakeStudy(d.id, "s", StoredRole::kLabeled, 1, 0, false);
  bad_role.role = static_cast<StoredRole>(7);
  EXPECT_EQ(store_->InsertStudy(bad_role).status().code(), absl::StatusCode::kInvalidArgument);
  StudyRecord twice = MakeStudy(d.id, "s", StoredRole::kLabeled, 2, 0, false);
  twice.instances[1].sop_instance_uid = twice.instances[0].sop_instance_uid;
  EXPECT_EQ(store_->InsertStudy(twice).status().code(), absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "s", StoredRole::kLabeled, 2, 0, false)).ok());
  // Same series again.
  EXPECT_EQ(store_->InsertStudy(MakeStudy(d.id, "s", StoredRole::kLabeled, 1, 50, false))
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(StoreTest, InsertStudyWithDuplicateInstanceInsertsNothing) {
  DatasetRecord d = MakeDataset("d");
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "a", StoredRole::kLabeled, 2, 0, false)).ok());
  // A new series whose last instance is already stored (under study "a").
  StudyRecord b = MakeStudy(d.id, "b", StoredRole::kUnlabeled, 3, 10, false);
  b.instances[2].sop_instance_uid = "a.1";
  auto status = store_->InsertStudy(b).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists) << status;
  EXPECT_EQ(store_->GetStudy(d.id, "b").status().code(), absl::StatusCode::kNotFound);
  auto existing = store_->ExistingInstances(d.id, {"b.0", "b.1"});
  ASSERT_TRUE(existing.ok());
  EXPECT_TRUE(existing->empty());
  auto got = store_->GetDataset("d");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->instances, 2);
  EXPECT_EQ(got->unlabeled_studies, 0);

  // The same instance UIDs in another dataset are fine.
  DatasetRecord e = MakeDataset("e");
  StudyRecord in_e = MakeStudy(e.id, "a", StoredRole::kLabeled, 2, 0, false);
  EXPECT_TRUE(store_->InsertStudy(in_e).ok());
}

TEST_F(StoreTest, ExistingInstances) {
  DatasetRecord d = MakeDataset("d");
  DatasetRecord other = MakeDataset("other");
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "s", StoredRole::kLabeled, 3, 0, true)).ok());
  auto existing = store_->ExistingInstances(d.id, {"x", "s.2", "s.seg", "s.2", "s.0"});
  ASSERT_TRUE(existing.ok()) << existing.status();
  EXPECT_EQ(*existing, (std::vector<std::string>{"s.2", "s.seg", "s.0"}));
  auto none = store_->ExistingInstances(other.id, {"s.0"});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  auto empty = store_->ExistingInstances(d.id, {});
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST_F(StoreTest, ListStudiesByRole) {
  DatasetRecord d = MakeDataset("d");
  DatasetRecord other = MakeDataset("other");
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "l1", StoredRole::kLabeled, 2, 0, true)).ok());
  ASSERT_TRUE(
      store_->InsertStudy(MakeStudy(d.id, "u1", StoredRole::kUnlabeled, 1, 10, false)).ok());
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "l2", StoredRole::kLabeled, 1, 20, true)).ok());
  ASSERT_TRUE(
      store_->InsertStudy(MakeStudy(d.id, "v1", StoredRole::kValidation, 1, 30, true)).ok());
  ASSERT_TRUE(
      store_->InsertStudy(MakeStudy(other.id, "o1", StoredRole::kLabeled, 1, 40, true)).ok());

  auto all = store_->ListStudies(d.id, std::nullopt);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[0].series_instance_uid, "l1");
  EXPECT_EQ((*all)[1].series_instance_uid, "u1");
  EXPECT_EQ((*all)[2].series_instance_uid, "l2");
  EXPECT_EQ((*all)[3].series_instance_uid, "v1");
  EXPECT_LT((*all)[0].id, (*all)[1].id);
  EXPECT_EQ((*all)[0].instances.size(), 3u);
  EXPECT_EQ((*all)[0].instances[0].sop_instance_uid, "l1.0");
  EXPECT_EQ((*all)[0].instances[2].sop_instance_uid, "l1.seg");
  EXPECT_EQ((*all)[1].instances.size(), 1u);

  auto labeled = store_->ListStudies(d.id, StoredRole::kLabeled);
  ASSERT_TRUE(labeled.ok());
  ASSERT_EQ(labeled->size(), 2u);
  EXPECT_EQ((*labeled)[0].series_instance_uid, "l1");
  EXPECT_EQ((*labeled)[1].series_instance_uid, "l2");
  EXPECT_EQ((*labeled)[1].instances.size(), 2u);
  auto validation = store_->ListStudies(d.id, StoredRole::kValidation);
  ASSERT_TRUE(validation.ok());
  ASSERT_EQ(validation->size(), 1u);
  EXPECT_EQ((*validation)[0].role, StoredRole::kValidation);
  auto none = store_->ListStudies(999, std::nullopt);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_F(StoreTest, DeleteStudyReturnsUnreferencedHashes) {
  DatasetRecord d = MakeDataset("d");
  DatasetRecord other = MakeDataset("other");
  // "a" uses hashes 0, 1, 1000; "b" in d shares hash 1; "c" in another dataset shares 0.
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "a", StoredRole::kLabeled, 2, 0, true)).ok());
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "b", StoredRole::kUnlabeled, 1, 1, false)).ok());
  ASSERT_TRUE(
      store_->InsertStudy(MakeStudy(other.id, "c", StoredRole::kUnlabeled, 1, 0, false)).ok());

  auto referenced = store_->ReferencedObjects();
  ASSERT_TRUE(referenced.ok());
  EXPECT_EQ(referenced->size(), 3u);  // distinct: 0, 1, 1000

  int64_t deleted = -1;
  auto orphans = store_->DeleteStudy(d.id, "a", &deleted);
  ASSERT_TRUE(orphans.ok()) << orphans.status();
  EXPECT_EQ(deleted, 3);
  EXPECT_EQ(*orphans, std::vector<std::string>{Hash(1000)});
  EXPECT_EQ(store_->GetStudy(d.id, "a").status().code(), absl::StatusCode::kNotFound);
  auto existing = store_->ExistingInstances(d.id, {"a.0", "a.1", "a.seg"});
  ASSERT_TRUE(existing.ok());
  EXPECT_TRUE(existing->empty());

  referenced = store_->ReferencedObjects();
  ASSERT_TRUE(referenced.ok());
  std::vector<std::string> expected = {Hash(0), Hash(1)};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(*referenced, expected);

  orphans = store_->DeleteStudy(d.id, "b", nullptr);
  ASSERT_TRUE(orphans.ok());
  EXPECT_EQ(*orphans, std::vector<std::string>{Hash(1)});
  orphans = store_->DeleteStudy(other.id, "c", &deleted);
  ASSERT_TRUE(orphans.ok());
  EXPECT_EQ(deleted, 1);
  EXPECT_EQ(*orphans, std::vector<std::string>{Hash(0)});
  referenced = store_->ReferencedObjects();
  ASSERT_TRUE(referenced.ok());
  EXPECT_TRUE(referenced->empty());

  EXPECT_EQ(store_->DeleteStudy(d.id, "a", &deleted).status().code(),
            absl::StatusCode::kNotFound);
  // The series can be uploaded again once deleted.
  EXPECT_TRUE(store_->InsertStudy(MakeStudy(d.id, "a", StoredRole::kLabeled, 2, 0, true)).ok());
}

// ---------------------------------------------------------------- Jobs

TEST_F(StoreTest, CreateAndGetJob) {
  DatasetRecord d = MakeDataset("d");
  JobRecord j = MakeJob(d.id, 500);
  EXPECT_GT(j.id, 0);
  EXPECT_EQ(j.state, StoredJobState::kQueued);
  EXPECT_EQ(j.dataset_name, "d");
  EXPECT_EQ(j.hyperparameters, std::string("hp\0\x01\xff", 5));
  EXPECT_EQ(j.total_steps, 500);
  EXPECT_EQ(j.labeled_studies, 2);
  EXPECT_GT(j.created_unix_ms, 0);
  EXPECT_EQ(j.started_unix_ms, 0);
  EXPECT_EQ(j.finished_unix_ms, 0);
  auto got = store_->GetJob(j.id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->hyperparameters, j.hyperparameters);
  EXPECT_EQ(got->dataset_name, "d");
  EXPECT_EQ(store_->GetJob(12345).status().code(), absl::StatusCode::kNotFound);
  JobRecord orphan;
  orphan.dataset_id = 999;
  EXPECT_EQ(store_->CreateJob(orphan).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, ListJobsNewestFirst) {
  DatasetRecord a = MakeDataset("a");
  DatasetRecord b = MakeDataset("b");
  JobRecord j1 = MakeJob(a.id);
  JobRecord j2 = MakeJob(b.id);
  JobRecord j3 = MakeJob(a.id);
  auto all = store_->ListJobs(0);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].id, j3.id);
  EXPECT_EQ((*all)[1].id, j2.id);
  EXPECT_EQ((*all)[2].id, j1.id);
  EXPECT_EQ((*all)[1].dataset_name, "b");
  auto only_a = store_->ListJobs(a.id);
  ASSERT_TRUE(only_a.ok());
  ASSERT_EQ(only_a->size(), 2u);
  EXPECT_EQ((*only_a)[0].id, j3.id);
  EXPECT_EQ((*only_a)[1].id, j1.id);
}

TEST_F(StoreTest, ClaimIsFifo) {
  DatasetRecord d = MakeDataset("d");
  auto none = ClaimNext(*store_, "cuda:0");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  JobRecord j1 = MakeJob(d.id);
  JobRecord j2 = MakeJob(d.id);
  JobRecord j3 = MakeJob(d.id);
  auto c1 = ClaimNext(*store_, "cuda:0");
  ASSERT_TRUE(c1.ok() && c1->has_value());
  EXPECT_EQ((*c1)->id, j1.id);
  EXPECT_EQ((*c1)->state, StoredJobState::kRunning);
  EXPECT_EQ((*c1)->device, "cuda:0");
  EXPECT_GT((*c1)->started_unix_ms, 0);
  EXPECT_EQ((*c1)->dataset_name, "d");
  auto c2 = ClaimNext(*store_, "cpu");
  ASSERT_TRUE(c2.ok() && c2->has_value());
  EXPECT_EQ((*c2)->id, j2.id);
  auto c3 = ClaimNext(*store_, "cpu");
  ASSERT_TRUE(c3.ok() && c3->has_value());
  EXPECT_EQ((*c3)->id, j3.id);
  auto c4 = ClaimNext(*store_, "cpu");
  ASSERT_TRUE(c4.ok());
  EXPECT_FALSE(c4->has_value());
}

TEST_F(StoreTest, RequeueRunningJobsAfterCrash) {
  DatasetRecord d = MakeDataset("d");
  JobRecord j1 = MakeJob(d.id);
  JobRecord j2 = MakeJob(d.id);
  JobRecord j3 = MakeJob(d.id);
  auto c1 = ClaimNext(*store_, "cuda:0");
  ASSERT_TRUE(c1.ok() && c1->has_value());
  const int64_t started = (*c1)->started_unix_ms;
  auto c2 = ClaimNext(*store_, "cuda:0");
  ASSERT_TRUE(c2.ok() && c2->has_value());
  ASSERT_TRUE(store_->FailJob(j2.id, "boom").ok());

  // Simulated crash: the process dies, the store is reopened.
  Reopen();
  auto requeued = store_->RequeueRunningJobs();
  ASSERT_TRUE(requeued.ok()) << requeued.status();
  EXPECT_EQ(*requeued, 1);
  auto j1_after = store_->GetJob(j1.id);
  ASSERT_TRUE(j1_after.ok());
  EXPECT_EQ(j1_after->state, StoredJobState::kQueued);
  EXPECT_EQ(j1_after->resumes, 1);
  auto j2_after = store_->GetJob(j2.id);
  ASSERT_TRUE(j2_after.ok());
  EXPECT_EQ(j2_after->state, StoredJobState::kFailed);
  EXPECT_EQ(j2_after->resumes, 0);

  // The requeued job is older than j3, so it is claimed first and keeps its start time.
  auto again = ClaimNext(*store_, "cuda:1");
  ASSERT_TRUE(again.ok() && again->has_value());
  EXPECT_EQ((*again)->id, j1.id);
  EXPECT_EQ((*again)->device, "cuda:1");
  EXPECT_EQ((*again)->started_unix_ms, started);
  EXPECT_EQ((*again)->resumes, 1);
  auto next = ClaimNext(*store_, "cuda:1");
  ASSERT_TRUE(next.ok() && next->has_value());
  EXPECT_EQ((*next)->id, j3.id);

  auto zero = store_->RequeueRunningJobs();
  ASSERT_TRUE(zero.ok());
  EXPECT_EQ(*zero, 2);
}

TEST_F(StoreTest, RequeueJob) {
  DatasetRecord d = MakeDataset("d");
  JobRecord j = MakeJob(d.id);
  EXPECT_EQ(store_->RequeueJob(j.id).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->RequeueJob(999).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(ClaimNext(*store_, "cpu").ok());
  ASSERT_TRUE(store_->RequeueJob(j.id).ok());
  auto got = store_->GetJob(j.id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state, StoredJobState::kQueued);
  EXPECT_EQ(got->resumes, 1);
  ASSERT_TRUE(ClaimNext(*store_, "cpu").ok());
  ASSERT_TRUE(store_->RequeueJob(j.id).ok());
  got = store_->GetJob(j.id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->resumes, 2);
}

TEST_F(StoreTest, RequeueOfCancelRequestedJobCancelsIt) {
  DatasetRecord d = MakeDataset("d");
  JobRecord j = MakeJob(d.id);
  ASSERT_TRUE(ClaimNext(*store_, "cpu").ok());
  ASSERT_TRUE(store_->RequestCancel(j.id).ok());
  auto requeued = store_->RequeueRunningJobs();
  ASSERT_TRUE(requeued.ok());
  EXPECT_EQ(*requeued, 0);
  auto got = store_->GetJob(j.id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state, StoredJobState::kCancelled);
  EXPECT_GT(got->finished_unix_ms, 0);
}

TEST_F(StoreTest, RequestCancel) {
  DatasetRecord d = MakeDataset("d");
  JobRecord queued = MakeJob(d.id);
  auto cancelled = store_->RequestCancel(queued.id);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state, StoredJobState::kCancelled);
  EXPECT_TRUE(cancelled->cancel_requested);
  EXPECT_GT(cancelled->finished_unix_ms, 0);
  // Cancelled jobs are never claimed.
  auto none = ClaimNext(*store_, "cpu");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  EXPECT_EQ(store_->RequestCancel(queued.id).status().code(),
            absl::StatusCode::kFailedPrecondition);

  JobRecord running = MakeJob(d.id);
  ASSERT_TRUE(ClaimNext(*store_, "cpu").ok());
  auto requested = store_->RequestCancel(running.id);
  ASSERT_TRUE(requested.ok());
  EXPECT_EQ(requested->state, StoredJobState::kRunning);
  EXPECT_TRUE(requested->cancel_requested);
  EXPECT_EQ(requested->finished_unix_ms, 0);
  // The runner acknowledges.
  ASSERT_TRUE(store_->CancelJob(running.id).ok());
  auto got = store_->GetJob(running.id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state, StoredJobState::kCancelled);
  EXPECT_GT(got->finished_unix_ms, 0);
  EXPECT_EQ(store_->RequestCancel(running.id).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->RequestCancel(999).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, CheckpointAndStudyCounts) {
  DatasetRecord d = MakeDataset("d");
  JobRecord j = MakeJob(d.id);
  ASSERT_TRUE(store_->RecordCheckpoint(j.id, 40, "/ckpt/40.pt").ok());
  ASSERT_TRUE(store_->SetJobStudyCounts(j.id, 3, 7, 2).ok());
  auto got = store_->GetJob(j.id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->step, 40);
  EXPECT_EQ(got->checkpoint_path, "/ckpt/40.pt");
  EXPECT_EQ(got->labeled_studies, 3);
  EXPECT_EQ(got->unlabeled_studies, 7);
  EXPECT_EQ(got->validation_studies, 2);
  EXPECT_EQ(store_->RecordCheckpoint(999, 1, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->SetJobStudyCounts(999, 1, 1, 1).code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, FailAndCancelAreTerminal) {
  DatasetRecord d = MakeDataset("d");
  JobRecord j = MakeJob(d.id);
  ASSERT_TRUE(ClaimNext(*store_, "cpu").ok());
  ASSERT_TRUE(store_->FailJob(j.id, "out of memory").ok());
  auto got = store_->GetJob(j.id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state, StoredJobState::kFailed);
  EXPECT_EQ(got->error, "out of memory");
  EXPECT_GT(got->finished_unix_ms, 0);
  EXPECT_EQ(store_->FailJob(j.id, "again").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->CancelJob(j.id).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->FailJob(999, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->CancelJob(999).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->FinishJobWithModel(j.id, ModelOf(1), true).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(StoreTest, CountJobsByState) {
  DatasetRecord d = MakeDataset("d");
  auto empty = store_->CountJobsByState();
  ASSERT_TRUE(empty.ok());
  ASSERT_EQ(empty->size(), 5u);
  for (const auto& [state, count] : *empty) EXPECT_EQ(count, 0);

  JobRecord a = MakeJob(d.id);
  JobRecord b = MakeJob(d.id);
  MakeJob(d.id);
  MakeJob(d.id);
  ASSERT_TRUE(ClaimNext(*store_, "cpu").ok());  // a running
  ASSERT_TRUE(store_->FailJob(a.id, "x").ok());   // a failed
  ASSERT_TRUE(ClaimNext(*store_, "cpu").ok());  // b running
  auto counts = store_->CountJobsByState();
  ASSERT_TRUE(counts.ok());
  ASSERT_EQ(counts->size(), 5u);
  EXPECT_EQ((*counts)[0], std::make_pair(StoredJobState::kQueued, int64_t{2}));
  EXPECT_EQ((*counts)[1], std::make_pair(StoredJobState::kRunning, int64_t{1}));
  EXPECT_EQ((*counts)[2], std::make_pair(StoredJobState::kSucceeded, int64_t{0}));
  EXPECT_EQ((*counts)[3], std::make_pair(StoredJobState::kFailed, int64_t{1}));
  EXPECT_EQ((*counts)[4], std::make_pair(StoredJobState::kCancelled, int64_t{0}));
  (void)b;
}

TEST_F(StoreTest, ConcurrentClaimsTakeEachJobOnce) {
  DatasetRecord d = MakeDataset("d");
  constexpr int kJobs = 40;
  for (int i = 0; i < kJobs; ++i) MakeJob(d.id);
  std::mutex mu;
  std::vector<int64_t> claimed;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      while (true) {
        auto job = ClaimNext(*store_, absl::StrCat("worker", t));
        ASSERT_TRUE(job.ok()) << job.status();
        if (!job->has_value()) return;
        std::lock_guard<std::mutex> lock(mu);
        claimed.push_back((*job)->id);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(claimed.size(), static_cast<size_t>(kJobs));
  std::sort(claimed.begin(), claimed.end());
  EXPECT_EQ(std::unique(claimed.begin(), claimed.end()), claimed.end());
}

// ---------------------------------------------------------------- Models

TEST_F(StoreTest, FinishJobWithModel) {
  DatasetRecord d = MakeDataset("d");
  JobRecord j = MakeJob(d.id);
  ASSERT_TRUE(ClaimNext(*store_, "cpu").ok());
  auto model = store_->FinishJobWithModel(j.id, ModelOf(250), /*activate=*/true);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_GT(model->id, 0);
  EXPECT_EQ(model->dataset_id, d.id);
  EXPECT_EQ(model->dataset_name, "d");
  EXPECT_EQ(model->version, 1);
  EXPECT_EQ(model->job_id, j.id);
  EXPECT_EQ(model->path, "/models/m.pt");
  EXPECT_EQ(model->dice_per_class, ModelOf(0).dice_per_class);  // bit-exact round trip
  EXPECT_DOUBLE_EQ(model->mean_dice, 0.55);
  EXPECT_EQ(model->size_bytes, 4096);
  EXPECT_EQ(model->steps, 250);
  EXPECT_GT(model->created_unix_ms, 0);
  EXPECT_TRUE(model->active);

  auto job = store_->GetJob(j.id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state, StoredJobState::kSucceeded);
  EXPECT_EQ(job->model_id, model->id);
  EXPECT_EQ(job->step, 250);
  EXPECT_GT(job->finished_unix_ms, 0);
  auto dataset = store_->GetDataset("d");
  ASSERT_TRUE(dataset.ok());
  EXPECT_EQ(dataset->active_model_id, model->id);

  EXPECT_EQ(store_->FinishJobWithModel(j.id, ModelOf(1), true).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->FinishJobWithModel(999, ModelOf(1), true).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, ModelVersionsAndPromotion) {
  DatasetRecord a = MakeDataset("a");
  DatasetRecord b = MakeDataset("b");
  JobRecord ja1 = MakeJob(a.id);
  JobRecord jb1 = MakeJob(b.id);
  JobRecord ja2 = MakeJob(a.id);
  auto ma1 = store_->FinishJobWithModel(ja1.id, ModelOf(10), true);
  auto mb1 = store_->FinishJobWithModel(jb1.id, ModelOf(10), false);
  ModelRecord empty_dice = ModelOf(20);
  empty_dice.dice_per_class.clear();
  auto ma2 = store_->FinishJobWithModel(ja2.id, empty_dice, /*activate=*/false);
  ASSERT_TRUE(ma1.ok() && mb1.ok() && ma2.ok());
  EXPECT_EQ(ma1->version, 1);
  EXPECT_EQ(mb1->version, 1);
  EXPECT_EQ(ma2->version, 2);
  EXPECT_TRUE(ma2->dice_per_class.empty());
  EXPECT_FALSE(mb1->active);
  EXPECT_FALSE(ma2->active);

  auto all = store_->ListModels(0);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].id, ma1->id);
  EXPECT_EQ((*all)[1].id, mb1->id);
  EXPECT_EQ((*all)[2].id, ma2->id);
  EXPECT_EQ((*all)[1].dataset_name, "b");
  auto only_a = store_->ListModels(a.id);
  ASSERT_TRUE(only_a.ok());
  ASSERT_EQ(only_a->size(), 2u);
  EXPECT_TRUE((*only_a)[0].active);
  EXPECT_FALSE((*only_a)[1].active);

  auto promoted = store_->PromoteModel(ma2->id);
  ASSERT_TRUE(promoted.ok()) << promoted.status();
  EXPECT_TRUE(promoted->active);
  auto old = store_->GetModel(ma1->id);
  ASSERT_TRUE(old.ok());
  EXPECT_FALSE(old->active);
  auto dataset = store_->GetDatasetById(a.id);
  ASSERT_TRUE(dataset.ok());
  EXPECT_EQ(dataset->active_model_id, ma2->id);
  // Dataset b is untouched.
  auto db = store_->GetDatasetById(b.id);
  ASSERT_TRUE(db.ok());
  EXPECT_EQ(db->active_model_id, 0);

  EXPECT_EQ(store_->GetModel(999).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->PromoteModel(999).status().code(), absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------- Job events

std::vector<JobEventRecord> Events(std::vector<int64_t> steps) {
  std::vector<JobEventRecord> out;
  for (int64_t step : steps) {
    JobEventRecord e;
    e.step = step;
    e.unix_ms = 1000 + step;
    e.payload = absl::StrCat("event@", step, std::string("\0", 1));
    out.push_back(e);
  }
  return out;
}

TEST_F(StoreTest, AppendAndListJobEvents) {
  DatasetRecord d = MakeDataset("d");
  JobRecord j = MakeJob(d.id);
  JobRecord other = MakeJob(d.id);
  auto first = store_->AppendJobEvents(j.id, Events({0, 1, 2}));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ((*first)[i].job_id, j.id);
    EXPECT_EQ((*first)[i].sequence, i + 1);
  }
  auto second = store_->AppendJobEvents(j.id, Events({3, 4}));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ((*second)[0].sequence, 4);
  EXPECT_EQ((*second)[1].sequence, 5);
  // Sequences are per job.
  auto other_events = store_->AppendJobEvents(other.id, Events({0}));
  ASSERT_TRUE(other_events.ok());
  EXPECT_EQ((*other_events)[0].sequence, 1);
  auto empty = store_->AppendJobEvents(j.id, {});
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  EXPECT_EQ(store_->AppendJobEvents(999, Events({0})).status().code(),
            absl::StatusCode::kNotFound);

  auto all = store_->ListJobEvents(j.id, 0, 0, 0);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ((*all)[i].sequence, i + 1);
    EXPECT_EQ((*all)[i].step, i);
    EXPECT_EQ((*all)[i].unix_ms, 1000 + i);
    EXPECT_EQ((*all)[i].payload, absl::StrCat("event@", i, std::string("\0", 1)));
  }
  auto after = store_->ListJobEvents(j.id, 2, 0, 100);
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), 3u);
  EXPECT_EQ(after->front().sequence, 3);
  auto limited = store_->ListJobEvents(j.id, 1, 0, 2);
  ASSERT_TRUE(limited.ok());
  ASSERT_EQ(limited->size(), 2u);
  EXPECT_EQ((*limited)[0].sequence, 2);
  EXPECT_EQ((*limited)[1].sequence, 3);
  auto from_step = store_->ListJobEvents(j.id, 0, 3, 100);
  ASSERT_TRUE(from_step.ok());
  ASSERT_EQ(from_step->size(), 2u);
  EXPECT_EQ((*from_step)[0].step, 3);
  auto none = store_->ListJobEvents(j.id, 5, 0, 100);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_F(StoreTest, TruncateJobEventsAfterResume) {
  DatasetRecord d = MakeDataset("d");
  JobRecord j = MakeJob(d.id);
  ASSERT_TRUE(store_->AppendJobEvents(j.id, Events({10, 20, 30, 40})).ok());
  // Resume from a checkpoint at step 20: events of steps 30 and 40 will be produced again.
  ASSERT_TRUE(store_->TruncateJobEventsAfter(j.id, 20).ok());
  auto left = store_->ListJobEvents(j.id, 0, 0, 0);
  ASSERT_TRUE(left.ok());
  ASSERT_EQ(left->size(), 2u);
  EXPECT_EQ((*left)[1].step, 20);
  // Sequences are never reused: a watcher past sequence 4 still gets the new events.
  auto again = store_->AppendJobEvents(j.id, Events({30}));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)[0].sequence, 5);
  EXPECT_EQ(store_->TruncateJobEventsAfter(999, 0).code(), absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------- Durability

TEST_F(StoreTest, EverythingSurvivesReopen) {
  DatasetRecord d = MakeDataset("d");
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "s", StoredRole::kLabeled, 2, 0, true)).ok());
  JobRecord j = MakeJob(d.id);
  ASSERT_TRUE(ClaimNext(*store_, "cuda:0").ok());
  ASSERT_TRUE(store_->AppendJobEvents(j.id, Events({1, 2})).ok());
  ASSERT_TRUE(store_->RecordCheckpoint(j.id, 2, "/c/2").ok());
  auto model = store_->FinishJobWithModel(j.id, ModelOf(2), true);
  ASSERT_TRUE(model.ok());

  Reopen();
  auto dataset = store_->GetDataset("d");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->class_names.size(), 3u);
  EXPECT_EQ(dataset->instances, 3);
  EXPECT_EQ(dataset->active_model_id, model->id);
  auto study = store_->GetStudy(d.id, "s");
  ASSERT_TRUE(study.ok());
  EXPECT_EQ(study->instances.size(), 3u);
  auto job = store_->GetJob(j.id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state, StoredJobState::kSucceeded);
  EXPECT_EQ(job->checkpoint_path, "/c/2");
  EXPECT_EQ(job->device, "cuda:0");
  auto events = store_->ListJobEvents(j.id, 0, 0, 0);
  ASSERT_TRUE(events.ok());
  EXPECT_EQ(events->size(), 2u);
  auto reread = store_->GetModel(model->id);
  ASSERT_TRUE(reread.ok());
  EXPECT_EQ(reread->dice_per_class, model->dice_per_class);
  EXPECT_TRUE(reread->active);
  // New ids continue after the old ones.
  JobRecord j2 = MakeJob(d.id);
  EXPECT_GT(j2.id, j.id);
}

TEST_F(StoreTest, AcknowledgedWritesSurviveProcessDeath) {
  store_.reset();
  // The child dies without closing the database (no checkpoint, WAL left behind), as on
  // SIGKILL; what it was told OK for must be there after recovery.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto store = Store::Open(Path("miseg.db"));
    if (!store.ok()) _exit(1);
    DatasetRecord d;
    d.name = "crashy";
    auto created = (*store)->CreateDataset(d);
    if (!created.ok()) _exit(2);
    if (!(*store)->InsertStudy(MakeStudy(created->id, "s", StoredRole::kLabeled, 2, 0, true))
             .ok()) {
      _exit(3);
    }
    JobRecord j;
    j.dataset_id = created->id;
    auto job = (*store)->CreateJob(j);
    if (!job.ok() || !(*store)->AppendJobEvents(job->id, Events({1, 2, 3})).ok()) _exit(4);
    (void)store->release();  // never closed
    _exit(0);
  }
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus));
  ASSERT_EQ(WEXITSTATUS(wstatus), 0);
  EXPECT_TRUE(fs::exists(Path("miseg.db-wal")));

  Reopen();
  auto dataset = store_->GetDataset("crashy");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->instances, 3);
  auto jobs = store_->ListJobs(0);
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 1u);
  auto events = store_->ListJobEvents(jobs->front().id, 0, 0, 0);
  ASSERT_TRUE(events.ok());
  EXPECT_EQ(events->size(), 3u);
}

TEST_F(StoreTest, RejectsNewerSchema) {
  store_.reset();
  {
    // user_version is the big-endian 32-bit integer at byte 60 of the database header; the
    // clean close above checkpointed the WAL into the file, so patching it there suffices.
    std::fstream f(Path("miseg.db"), std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good());
    f.seekp(60);
    const char version[4] = {0, 0, 0, 9};
    f.write(version, 4);
  }
  auto store = Store::Open(Path("miseg.db"));
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
}

TEST_F(StoreTest, OpenFailsForUnwritablePath) {
  auto store = Store::Open(Path("no/such/dir/miseg.db"));
  EXPECT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInternal);
}

// ---------------------------------------------------------------- FileStore

class FileStoreTest : public TempDirTest {};

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_F(FileStoreTest, PutGetContainsListRemove) {
  auto fs_or = FileStore::Open(Path("files"));
  ASSERT_TRUE(fs_or.ok()) << fs_or.status();
  FileStore& store = *fs_or;
  EXPECT_EQ(store.root(), Path("files"));
  const std::string bytes("DICM\0\x01\x02 payload", 16);
  auto hash = store.Put(bytes);
  ASSERT_TRUE(hash.ok()) << hash.status();
  EXPECT_EQ(*hash, Sha256Hex(bytes));
  EXPECT_TRUE(fs::exists(Path("files/objects/" + hash->substr(0, 2) + "/" + *hash)));
  EXPECT_TRUE(store.Contains(*hash));
  auto got = store.Get(*hash);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, bytes);

  auto empty_hash = store.Put("");
  ASSERT_TRUE(empty_hash.ok());
  auto empty = store.Get(*empty_hash);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());

  auto list = store.List();
  ASSERT_TRUE(list.ok());
  std::vector<std::string> expected = {*hash, *empty_hash};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(*list, expected);

  ASSERT_TRUE(store.Remove(*hash).ok());
  EXPECT_FALSE(store.Contains(*hash));
  EXPECT_EQ(store.Get(*hash).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store.Remove(*hash).ok());  // idempotent
  list = store.List();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(*list, std::vector<std::string>{*empty_hash});
}

TEST_F(FileStoreTest, PutDeduplicates) {
  auto store = FileStore::Open(Path("files"));
  ASSERT_TRUE(store.ok());
  auto a = store->Put("same bytes");
  ASSERT_TRUE(a.ok());
  const std::string path = Path("files/objects/" + a->substr(0, 2) + "/" + *a);
  const auto mtime = fs::last_write_time(path);
  auto b = store->Put("same bytes");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(fs::last_write_time(path), mtime);
  auto list = store->List();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 1u);
  // No temporaries are left beside the object.
  size_t files = 0;
  for (const auto& entry : fs::recursive_directory_iterator(Path("files"))) {
    if (entry.is_regular_file()) ++files;
  }
  EXPECT_EQ(files, 1u);
}

TEST_F(FileStoreTest, DetectsCorruption) {
  auto store = FileStore::Open(Path("files"));
  ASSERT_TRUE(store.ok());
  auto hash = store->Put("original bytes");
  ASSERT_TRUE(hash.ok());
  const std::string path = Path("files/objects/" + hash->substr(0, 2) + "/" + *hash);
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << "Original bytes";  // same size, one bit flipped
  }
  EXPECT_EQ(store->Get(*hash).status().code(), absl::StatusCode::kDataLoss);
  // A truncated object is repaired by storing the same bytes again.
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << "orig";
  }
  EXPECT_EQ(store->Get(*hash).status().code(), absl::StatusCode::kDataLoss);
  ASSERT_TRUE(store->Put("original bytes").ok());
  auto repaired = store->Get(*hash);
  ASSERT_TRUE(repaired.ok()) << repaired.status();
  EXPECT_EQ(*repaired, "original bytes");
}

TEST_F(FileStoreTest, RejectsBadHashes) {
  auto store = FileStore::Open(Path("files"));
  ASSERT_TRUE(store.ok());
  const std::string good = Sha256Hex("x");
  std::string upper = good;
  for (char& c : upper) c = static_cast<char>(toupper(c));
  for (const std::string& bad :
       {std::string(""), std::string("abc"), good + "0", good.substr(1), upper,
        std::string(64, 'g'), "../../../../etc/passwd" + std::string(42, 'a'),
        std::string(62, 'a') + "/a"}) {
    EXPECT_EQ(store->Get(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store->Remove(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_FALSE(store->Contains(bad)) << bad;
  }
  EXPECT_EQ(store->Get(good).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(store->Contains(good));
}

TEST_F(FileStoreTest, OpenRemovesLeftoverTemporaries) {
  {
    auto store = FileStore::Open(Path("files"));
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE(store->Put("kept").ok());
  }
  const std::string hash = Sha256Hex("kept");
  const std::string shard = Path("files/objects/" + hash.substr(0, 2));
  const std::string temp = shard + "/" + hash + ".0123456789abcdef.tmp";
  ASSERT_TRUE(WriteFileAtomically(temp + ".x", "ignored").ok());
  fs::rename(temp + ".x", temp);
  ASSERT_TRUE(fs::exists(temp));
  auto store = FileStore::Open(Path("files"));
  ASSERT_TRUE(store.ok());
  EXPECT_FALSE(fs::exists(temp));
  auto kept = store->Get(hash);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, "kept");
  auto list = store->List();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(*list, std::vector<std::string>{hash});
}

TEST_F(FileStoreTest, ObjectsSurviveReopen) {
  std::string hash;
  {
    auto store = FileStore::Open(Path("files"));
    ASSERT_TRUE(store.ok());
    auto put = store->Put("durable");
    ASSERT_TRUE(put.ok());
    hash = *put;
  }
  auto store = FileStore::Open(Path("files"));
  ASSERT_TRUE(store.ok());
  auto got = store->Get(hash);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, "durable");
}

TEST_F(FileStoreTest, WriteAndReadFile) {
  const std::string path = Path("a/b/c/file.bin");
  const std::string bytes("x\0y", 3);
  ASSERT_TRUE(WriteFileAtomically(path, bytes).ok());
  auto read = ReadFileToString(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, bytes);
  // Overwrite replaces the whole content.
  ASSERT_TRUE(WriteFileAtomically(path, "new").ok());
  read = ReadFileToString(path);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, "new");
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(Path("a/b/c"))) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1u);  // no temporary left behind

  EXPECT_EQ(ReadFileToString(Path("missing")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(FileStoreTest, WriteFailureNamesPathAndLeavesNoTemporary) {
  // The parent "directory" is a regular file, so creating it fails.
  ASSERT_TRUE(WriteFileAtomically(Path("blocker"), "x").ok());
  const std::string path = Path("blocker/child");
  absl::Status status = WriteFileAtomically(path, "y");
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find(Path("blocker")), std::string::npos) << status;

  // A target that is a directory: the rename fails and the temporary is removed.
  fs::create_directories(Path("dir_target/sub"));
  status = WriteFileAtomically(Path("dir_target"), "z");
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find(Path("dir_target")), std::string::npos) << status;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    EXPECT_NE(entry.path().extension(), ".tmp") << "temporary left: " << entry.path();
  }
}

// ---------------------------------------------------------------- Schema versions

namespace schema {

void Exec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  EXPECT_EQ(rc, SQLITE_OK) << (error != nullptr ? error : "");
  sqlite3_free(error);
  sqlite3_close(db);
}

}  // namespace schema

// A database written by the first release (schema 1: no series_description) is upgraded in
// place when the server opens it: its studies stay, and new ones keep their descriptions.
TEST_F(StoreTest, ASchemaOneDatabaseIsUpgradedInPlace) {
  const DatasetRecord d = MakeDataset("old");
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "1.2.3", StoredRole::kUnlabeled, 2, 0, false)).ok());
  store_.reset();
  // Back to schema 1 exactly as that release created it (nor had it the lossy flag).
  schema::Exec(Path("miseg.db"),
               "ALTER TABLE studies DROP COLUMN series_description; "
               "ALTER TABLE studies DROP COLUMN lossy_compressed; "
               "ALTER TABLE studies DROP COLUMN lossy_compression_method; "
               "PRAGMA user_version = 1;");

  Reopen();
  auto studies = store_->ListStudies(d.id, std::nullopt);
  ASSERT_TRUE(studies.ok()) << studies.status();
  ASSERT_EQ(studies->size(), 1u);
  EXPECT_EQ(studies->front().series_instance_uid, "1.2.3");
  EXPECT_EQ(studies->front().series_description, "");
  EXPECT_FALSE(studies->front().lossy_compressed);
  StudyRecord described = MakeStudy(d.id, "1.2.4", StoredRole::kUnlabeled, 1, 10, false);
  described.series_description = "Süßes Herz";
  described.lossy_compressed = true;
  described.lossy_compression_method = "ISO_10918_1\\ISO_15444_1";
  ASSERT_TRUE(store_->InsertStudy(described).ok());
  auto stored = store_->GetStudy(d.id, "1.2.4");
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->series_description, "Süßes Herz");
  // Issue 21: the lossy flag and its methods, after every migration.
  EXPECT_TRUE(stored->lossy_compressed);
  EXPECT_EQ(stored->lossy_compression_method, "ISO_10918_1\\ISO_15444_1");
}

// Active learning's scores: a call replaces the dataset's scores (not another dataset's),
// skips studies gone since, and a deleted study takes its score with it.
TEST_F(StoreTest, LabelingPrioritiesAreReplacedPerDatasetAndFollowTheirStudies) {
  const DatasetRecord d = MakeDataset("d");
  const DatasetRecord other = MakeDataset("other");
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "a", StoredRole::kUnlabeled, 1, 0, false)).ok());
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "b", StoredRole::kUnlabeled, 1, 1, false)).ok());
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(other.id, "c", StoredRole::kUnlabeled, 1, 2, false)).ok());
  ASSERT_TRUE(store_->ReplaceLabelingPriorities(other.id, {{"c", 1.5, 0.1, 0.2, 0.3, 7, 100}}).ok());
  ASSERT_TRUE(store_->ReplaceLabelingPriorities(
                        d.id, {{"a", 2.0, 0.4, 0.1, 0.9, 3, 200}, {"gone", 1.0, 0, 0, 0, 3, 200}})
                  .ok());
  ASSERT_TRUE(store_->ReplaceLabelingPriorities(d.id, {{"b", 0.5, 0.2, 0.3, 0.4, 4, 300}}).ok());
  auto listed = store_->ListLabelingPriorities(d.id);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);  // "a" replaced away, "gone" never stored
  const LabelingPriorityRecord& b = listed->front();
  EXPECT_EQ(b.series_instance_uid, "b");
  EXPECT_EQ(b.score, 0.5);
  EXPECT_EQ(b.disagreement, 0.2);
  EXPECT_EQ(b.mutual_information, 0.3);
  EXPECT_EQ(b.entropy, 0.4);
  EXPECT_EQ(b.model_id, 4);
  EXPECT_EQ(b.scored_unix_ms, 300);
  auto others = store_->ListLabelingPriorities(other.id);
  ASSERT_TRUE(others.ok());
  ASSERT_EQ(others->size(), 1u);
  EXPECT_EQ(others->front().score, 1.5);
  ASSERT_TRUE(store_->DeleteStudy(d.id, "b", nullptr).ok());
  listed = store_->ListLabelingPriorities(d.id);
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());
}

TEST_F(StoreTest, ADatabaseOfANewerSchemaIsRefusedUntouched) {
  store_.reset();
  schema::Exec(Path("miseg.db"), "PRAGMA user_version = 99;");
  auto reopened = Store::Open(Path("miseg.db"));
  ASSERT_FALSE(reopened.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(reopened.status())) << reopened.status();
  EXPECT_NE(reopened.status().message().find("newer"), std::string::npos) << reopened.status();
}

// Issue 16: a dataset goes with its studies, jobs and models in one transaction, handing
// back the objects nothing else references (not those another dataset still holds), the
// model files and the jobs whose checkpoints go; refused while a job is queued or running.
TEST_F(StoreTest, DeleteDatasetTakesItsRowsAndOnlyItsOwnObjects) {
  const DatasetRecord d = MakeDataset("d");
  const DatasetRecord other = MakeDataset("other");
  // d: hashes 0, 1, 1000 and 5; other shares hash 0.
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "a", StoredRole::kLabeled, 2, 0, true)).ok());
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(d.id, "b", StoredRole::kUnlabeled, 1, 5, false)).ok());
  ASSERT_TRUE(store_->InsertStudy(MakeStudy(other.id, "c", StoredRole::kUnlabeled, 1, 0, false)).ok());
  const JobRecord job = MakeJob(d.id);
  EXPECT_EQ(store_->DeleteDataset(d.id).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(store_->ClaimJob(job.id, "cpu").ok());
  ASSERT_TRUE(store_->FinishJobWithModel(job.id, ModelOf(10), /*activate=*/true).ok());

  absl::StatusOr<DeletedDataset> deleted = store_->DeleteDataset(d.id);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->studies, 2);
  EXPECT_EQ(deleted->jobs, 1);
  EXPECT_EQ(deleted->models, 1);
  EXPECT_EQ(deleted->job_ids, std::vector<int64_t>{job.id});
  EXPECT_EQ(deleted->model_paths, std::vector<std::string>{"/models/m.pt"});
  std::vector<std::string> orphans = deleted->orphan_objects;
  std::sort(orphans.begin(), orphans.end());
  std::vector<std::string> expected = {Hash(1), Hash(5), Hash(1000)};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(orphans, expected);
  EXPECT_EQ(store_->GetDatasetById(d.id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetJob(job.id).status().code(), absl::StatusCode::kNotFound);
  auto referenced = store_->ReferencedObjects();
  ASSERT_TRUE(referenced.ok());
  EXPECT_EQ(*referenced, std::vector<std::string>{Hash(0)});
  EXPECT_EQ(store_->DeleteDataset(d.id).status().code(), absl::StatusCode::kNotFound);
}

// Issue 16: an imported model has no job and its format; the active model is not deleted.
TEST_F(StoreTest, ImportedModelsAndModelDeletes) {
  const DatasetRecord d = MakeDataset("d");
  const JobRecord job = MakeJob(d.id);
  ASSERT_TRUE(store_->ClaimJob(job.id, "cpu").ok());
  auto trained = store_->FinishJobWithModel(job.id, ModelOf(10), /*activate=*/true);
  ASSERT_TRUE(trained.ok());
  EXPECT_EQ(trained->format, StoredModelFormat::kMiseg);
  ModelRecord record = ModelOf(7);
  record.dataset_id = d.id;
  record.path = "/models/import-1.model";
  record.format = StoredModelFormat::kTorchScript;
  auto imported = store_->InsertImportedModel(record);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->version, 2);
  EXPECT_EQ(imported->job_id, 0);
  EXPECT_FALSE(imported->active);
  EXPECT_EQ(imported->format, StoredModelFormat::kTorchScript);
  Reopen();
  auto read = store_->GetModel(imported->id);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->format, StoredModelFormat::kTorchScript);

  EXPECT_EQ(store_->DeleteModel(trained->id).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(store_->PromoteModel(imported->id).ok());
  auto deleted = store_->DeleteModel(trained->id);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->path, "/models/m.pt");
  auto paths = store_->ModelPaths();
  ASSERT_TRUE(paths.ok());
  EXPECT_EQ(*paths, std::vector<std::string>{"/models/import-1.model"});
  EXPECT_EQ(store_->DeleteModel(trained->id).status().code(), absl::StatusCode::kNotFound);
  ModelRecord nowhere = record;
  nowhere.dataset_id = 999;
  EXPECT_EQ(store_->InsertImportedModel(nowhere).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace miseg

// Tests of server/ingest in process, against a real SQLite store and a real file store in a
// temporary directory: FileReceiver (chunks to staged files, limits, bad sequences),
// IngestSession (an upload streamed to disk, checked file by file, committed at the end)
// giving the same outcomes and reasons as IngestFiles for the same files, and leaving no
// staged file behind whatever happens.
#include "server/domain/ingest.h"

#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcmetinf.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/phantom_study.h"
#include "core/phantom/phantom.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr ChunkLimits kRoomy{int64_t{1} << 30, 10000};

PhantomStudy SmallStudy(int index, bool with_segmentation, uint64_t seed = 11) {
  const PhantomSubject subject = GeneratePhantomSubject(seed, index, SmallPhantomOptions());
  absl::StatusOr<PhantomStudy> study =
      MakePhantomStudy(subject, absl::StrCat("ingest-", seed, "-", index), with_segmentation);
  if (!study.ok()) std::abort();
  return *std::move(study);
}

std::vector<DicomBuffer> WithSeg(const PhantomStudy& study) {
  std::vector<DicomBuffer> files = study.image_files;
  files.push_back(*study.segmentation);
  return files;
}

// A data directory: metadata store, file store, one dataset "d".
class DataDir {
 public:
  explicit DataDir(const std::string& dir) : dir_(dir) {
    auto store = Store::Open((fs::path(dir) / "miseg.db").string());
    EXPECT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto files = FileStore::Open((fs::path(dir) / "files").string());
    EXPECT_TRUE(files.ok()) << files.status();
    files_ = std::make_unique<FileStore>(*std::move(files));
    DatasetRecord d;
    d.name = "d";
    d.class_names = PhantomClassNames();
    d.modality = "MR";
    auto created = store_->CreateDataset(d);
    EXPECT_TRUE(created.ok()) << created.status();
    dataset_ = *created;
  }

  int StagedCount() const {
    int n = 0;
    for (const auto& entry : fs::directory_iterator(fs::path(dir_) / "files" / "staging")) {
      (void)entry;
      ++n;
    }
    return n;
  }
  size_t ObjectCount() const { return files_->List().value().size(); }
  std::vector<StudyRecord> Studies() const {
    return store_->ListStudies(dataset_.id, std::nullopt).value();
  }

  std::unique_ptr<IngestSession> Session(StoredRole role, ChunkLimits limits = kRoomy) {
    return std::make_unique<IngestSession>(store_.get(), files_.get(), dataset_, role, limits,
                                           SeriesReaderLimits{});
  }
  // Streams the files in chunks of chunk_bytes (the name on each file's first chunk).
  absl::Status Send(IngestSession& session, const std::vector<DicomBuffer>& input,
                    size_t chunk_bytes = 4096) {
    for (const DicomBuffer& file : input) {
      size_t offset = 0;
      do {
        const size_t n = std::min(chunk_bytes, file.bytes.size() - offset);
        const bool last = offset + n >= file.bytes.size();
        absl::Status added = session.AddChunk(offset == 0 ? file.name : std::string(),
                                              std::string_view(file.bytes).substr(offset, n),
                                              last);
        if (!added.ok()) return added;
        offset += n;
      } while (offset < file.bytes.size());
    }
    return absl::OkStatus();
  }
  absl::StatusOr<IngestResult> Upload(StoredRole role, const std::vector<DicomBuffer>& input,
                                      size_t chunk_bytes = 4096) {
    std::unique_ptr<IngestSession> session = Session(role);
    absl::Status sent = Send(*session, input, chunk_bytes);
    if (!sent.ok()) return sent;
    return session->Finish();
  }
  absl::StatusOr<IngestResult> InMemory(StoredRole role, const std::vector<DicomBuffer>& input) {
    return IngestFiles(*store_, *files_, dataset_, role, input);
  }

  FileStore& files() { return *files_; }
  const DatasetRecord& dataset() const { return dataset_; }

 private:
  std::string dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<FileStore> files_;
  DatasetRecord dataset_;
};

class IngestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "miseg_ingest.XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr) << pattern;
    dir_ = pattern;
    fs::create_directories(fs::path(dir_) / "streamed");
    fs::create_directories(fs::path(dir_) / "in_memory");
    streamed_ = std::make_unique<DataDir>((fs::path(dir_) / "streamed").string());
    in_memory_ = std::make_unique<DataDir>((fs::path(dir_) / "in_memory").string());
  }
  void TearDown() override {
    streamed_.reset();
    in_memory_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Uploads the files both ways, each into its own data directory; expects the same
  // outcome for every file and no staged file left. Returns the streamed result.
  IngestResult ExpectSameAsInMemory(StoredRole role, const std::vector<DicomBuffer>& input,
                                    const std::string& what, size_t chunk_bytes = 4096) {
    SCOPED_TRACE(what);
    absl::StatusOr<IngestResult> streamed = streamed_->Upload(role, input, chunk_bytes);
    absl::StatusOr<IngestResult> in_memory = in_memory_->InMemory(role, input);
    EXPECT_TRUE(streamed.ok()) << streamed.status();
    EXPECT_TRUE(in_memory.ok()) << in_memory.status();
    EXPECT_EQ(streamed_->StagedCount(), 0);
    if (!streamed.ok() || !in_memory.ok()) return {};
    EXPECT_EQ(streamed->files.size(), input.size());
    EXPECT_EQ(streamed->files.size(), in_memory->files.size());
    for (size_t i = 0; i < std::min(streamed->files.size(), in_memory->files.size()); ++i) {
      const IngestFileResult& a = streamed->files[i];
      const IngestFileResult& b = in_memory->files[i];
      EXPECT_EQ(a.file_name, b.file_name) << i;
      EXPECT_EQ(a.sop_instance_uid, b.sop_instance_uid) << i;
      EXPECT_EQ(a.series_instance_uid, b.series_instance_uid) << i;
      EXPECT_EQ(a.outcome, b.outcome) << i << " " << a.reason;
      EXPECT_EQ(a.reason, b.reason) << i;
    }
    EXPECT_EQ(streamed->stored.size(), in_memory->stored.size());
    EXPECT_EQ(streamed_->ObjectCount(), in_memory_->ObjectCount());
    return *std::move(streamed);
  }

  std::string dir_;
  std::unique_ptr<DataDir> streamed_;
  std::unique_ptr<DataDir> in_memory_;
};

// ---------------------------------------------------------------- FileReceiver

TEST_F(IngestTest, ReceiverStagesFilesInOrderWithTheirNames) {
  FileReceiver receiver(&streamed_->files(), kRoomy);
  ASSERT_TRUE(receiver.AddChunk("a.dcm", "first ", false).ok());
  ASSERT_TRUE(receiver.AddChunk("", "file", true).ok());
  ASSERT_TRUE(receiver.AddChunk("", "unnamed", true).ok());
  const std::string long_name(300, 'n');
  ASSERT_TRUE(receiver.AddChunk(long_name, "long", false).ok());
  ASSERT_TRUE(receiver.AddChunk(long_name, " name", true).ok());  // the name again: fine
  ASSERT_TRUE(receiver.EndOfStream().ok());
  EXPECT_EQ(receiver.bytes_received(), 26);
  ASSERT_EQ(receiver.files().size(), 3u);
  EXPECT_EQ(receiver.names(),
            (std::vector<std::string>{"a.dcm", "file #2", std::string(256, 'n')}));
  EXPECT_EQ(receiver.files()[0]->hash(), Sha256Hex("first file"));
  EXPECT_EQ(receiver.files()[1]->hash(), Sha256Hex("unnamed"));
  EXPECT_EQ(receiver.files()[2]->hash(), Sha256Hex("long name"));
  EXPECT_EQ(receiver.files()[2]->size(), 9);
  EXPECT_EQ(streamed_->StagedCount(), 3);
  receiver.files().clear();
  EXPECT_EQ(streamed_->StagedCount(), 0);
}

TEST_F(IngestTest, ReceiverLimitsAreResourceExhausted) {
  {
    FileReceiver receiver(&streamed_->files(), ChunkLimits{10, 100});
    ASSERT_TRUE(receiver.AddChunk("a", "12345", true).ok());
    ASSERT_TRUE(receiver.AddChunk("b", "12345", false).ok());
    absl::Status over = receiver.AddChunk("", "6", true);
    EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(over.message(), HasSubstr("limit of 10 bytes"));
    EXPECT_EQ(streamed_->StagedCount(), 0);  // a failed receiver keeps nothing
    EXPECT_EQ(receiver.AddChunk("c", "", true), over);  // spent
    EXPECT_EQ(receiver.EndOfStream(), over);
  }
  {
    FileReceiver receiver(&streamed_->files(), ChunkLimits{1000, 2});
    ASSERT_TRUE(receiver.AddChunk("a", "1", true).ok());
    ASSERT_TRUE(receiver.AddChunk("b", "2", true).ok());
    absl::Status over = receiver.AddChunk("c", "3", true);
    EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(over.message(), HasSubstr("limit of 2 files"));
  }
  EXPECT_EQ(streamed_->StagedCount(), 0);
}

TEST_F(IngestTest, ReceiverBadSequencesAreInvalidArgument) {
  {
    FileReceiver receiver(&streamed_->files(), kRoomy);
    ASSERT_TRUE(receiver.AddChunk("done.dcm", "x", true).ok());
    ASSERT_TRUE(receiver.AddChunk("open.dcm", "x", false).ok());
    absl::Status ended = receiver.EndOfStream();
    EXPECT_EQ(ended.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(ended.message(), HasSubstr("ended inside 'open.dcm'"));
    EXPECT_TRUE(receiver.files().empty());
  }
  {
    FileReceiver receiver(&streamed_->files(), kRoomy);
    ASSERT_TRUE(receiver.AddChunk("a.dcm", "x", false).ok());
    absl::Status other = receiver.AddChunk("b.dcm", "y", true);
    EXPECT_EQ(other.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(other.message(), HasSubstr("'b.dcm' arrived inside 'a.dcm'"));
  }
  {
    FileReceiver receiver(&streamed_->files(), kRoomy);
    ASSERT_TRUE(receiver.EndOfStream().ok());
    EXPECT_EQ(receiver.AddChunk("late.dcm", "x", true).code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(streamed_->StagedCount(), 0);
}

// ---------------------------------------------------------------- IngestSession

TEST_F(IngestTest, StoresAnUnlabeledStudy) {
  const PhantomStudy study = SmallStudy(0, false);
  IngestResult result = ExpectSameAsInMemory(StoredRole::kUnlabeled, study.image_files,
                                             "unlabeled", /*chunk_bytes=*/1000);
  ASSERT_EQ(result.stored.size(), 1u);
  const StudyRecord& stored = result.stored[0];
  EXPECT_EQ(stored.series_instance_uid, study.series.series_instance_uid);
  EXPECT_EQ(stored.slices, study.series.image.geometry.slices);
  EXPECT_EQ(stored.rows, study.series.image.geometry.rows);
  EXPECT_EQ(stored.columns, study.series.image.geometry.cols);
  for (const IngestFileResult& r : result.files) EXPECT_EQ(r.outcome, IngestOutcome::kStored);
  // Every object is there under its hash, with the bytes that were sent.
  ASSERT_EQ(stored.instances.size(), study.image_files.size());
  for (const InstanceRecord& instance : stored.instances) {
    auto bytes = streamed_->files().Get(instance.object_hash);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(static_cast<int64_t>(bytes->size()), instance.size_bytes);
  }
  EXPECT_EQ(streamed_->Studies().size(), 1u);
  // And it reads back as the series that was sent.
  auto loaded = LoadStoredStudy(streamed_->files(), streamed_->Studies()[0], {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->series.image.voxels == study.series.image.voxels);
}

// Issue 21: pydicom's MR_small_jp2klossless.dcm is MR_small.dcm re-encoded as JPEG 2000
// under the same UIDs. After MR_small it is refused, naming the reused UID (other bytes
// under a stored UID are not the stored instance), instead of passing as a duplicate; the
// same bytes again are a duplicate; with new UIDs it is a new study whose voxels equal
// MR_small's.
TEST_F(IngestTest, SameUidOtherBytesIsRefusedAndNewUidsStoreTheJpeg2000Study) {
  const std::string dir = MISEG_PYDICOM_TEST_FILES;
  if (!fs::exists(dir + "/MR_small_jp2klossless.dcm")) GTEST_SKIP() << "no pydicom samples";
  const DicomBuffer native{"MR_small.dcm", ReadFileToString(dir + "/MR_small.dcm").value()};
  const DicomBuffer j2k{"MR_small_jp2klossless.dcm",
                        ReadFileToString(dir + "/MR_small_jp2klossless.dcm").value()};
  IngestResult result = ExpectSameAsInMemory(StoredRole::kUnlabeled, {native}, "MR_small");
  ASSERT_EQ(result.stored.size(), 1u);
  result = ExpectSameAsInMemory(StoredRole::kUnlabeled, {j2k}, "the same UIDs in JPEG 2000");
  ASSERT_EQ(result.files.size(), 1u);
  EXPECT_EQ(result.files[0].outcome, IngestOutcome::kRefused);
  EXPECT_THAT(result.files[0].reason,
              HasSubstr("is already stored in this dataset with other content"));
  result = ExpectSameAsInMemory(StoredRole::kUnlabeled, {native}, "MR_small again");
  EXPECT_EQ(result.files[0].outcome, IngestOutcome::kDuplicate);

  // New study, series and instance UIDs; the pixel data untouched (still JPEG 2000).
  auto parsed = ParseDicom(j2k.bytes, j2k.name);
  ASSERT_TRUE(parsed.ok());
  DcmDataset& ds = *(*parsed)->getDataset();
  const std::string sop_uid = NewUid();
  ds.putAndInsertString(DCM_StudyInstanceUID, NewUid().c_str());
  ds.putAndInsertString(DCM_SeriesInstanceUID, NewUid().c_str());
  ds.putAndInsertString(DCM_SOPInstanceUID, sop_uid.c_str());
  (*parsed)->getMetaInfo()->putAndInsertString(DCM_MediaStorageSOPInstanceUID, sop_uid.c_str());
  absl::StatusOr<std::string> renamed = SerializeDicom(**parsed, EXS_JPEG2000LosslessOnly);
  ASSERT_TRUE(renamed.ok()) << renamed.status();
  result = ExpectSameAsInMemory(StoredRole::kUnlabeled, {{"renamed.dcm", *renamed}}, "new UIDs");
  ASSERT_EQ(result.stored.size(), 1u);
  EXPECT_FALSE(result.stored[0].lossy_compressed);
  const std::vector<StudyRecord> studies = streamed_->Studies();
  ASSERT_EQ(studies.size(), 2u);
  auto first = LoadStoredStudy(streamed_->files(), studies[0], {});
  auto second = LoadStoredStudy(streamed_->files(), studies[1], {});
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->series.image.voxels.size(), 64u * 64u);
  EXPECT_TRUE(second->series.image.voxels == first->series.image.voxels);
}

TEST_F(IngestTest, StoresALabeledStudyWithItsSegmentation) {
  const PhantomStudy study = SmallStudy(1, true);
  IngestResult result = ExpectSameAsInMemory(StoredRole::kLabeled, WithSeg(study), "labeled");
  ASSERT_EQ(result.stored.size(), 1u);
  EXPECT_EQ(result.stored[0].segmentation_sop_instance_uid,
            result.files.back().sop_instance_uid);
  auto loaded = LoadStoredStudy(streamed_->files(), streamed_->Studies()[0],
                                streamed_->dataset().class_names);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_TRUE(loaded->labels.has_value());
  EXPECT_TRUE(loaded->labels->consistent());
  // Again: duplicates, nothing new stored.
  IngestResult again = ExpectSameAsInMemory(StoredRole::kLabeled, WithSeg(study), "again");
  for (const IngestFileResult& r : again.files) {
    EXPECT_EQ(r.outcome, IngestOutcome::kDuplicate);
    EXPECT_EQ(r.reason, "already stored in this dataset");
  }
  EXPECT_EQ(streamed_->Studies().size(), 1u);
}

TEST_F(IngestTest, RefusesWithTheReasonsOfIngestFiles) {
  const PhantomStudy a = SmallStudy(2, true);
  const PhantomStudy b = SmallStudy(3, true);

  std::vector<DicomBuffer> garbage = a.image_files;
  garbage.push_back({"notes.txt", "this is not DICOM"});
  garbage.push_back({"empty.dcm", ""});
  IngestResult refused = ExpectSameAsInMemory(StoredRole::kLabeled, garbage, "no SEG, garbage");
  EXPECT_THAT(refused.files[0].reason, HasSubstr("needs its DICOM SEG"));
  EXPECT_FALSE(refused.files.back().reason.empty());

  ExpectSameAsInMemory(StoredRole::kUnlabeled, WithSeg(a), "unlabeled with a SEG");
  ExpectSameAsInMemory(StoredRole::kLabeled, {*a.segmentation}, "a SEG alone");

  std::vector<DicomBuffer> gap = WithSeg(a);
  gap.erase(gap.begin() + 2);
  IngestResult gapped = ExpectSameAsInMemory(StoredRole::kLabeled, gap, "gap");
  EXPECT_THAT(gapped.files[0].reason, HasSubstr("gap in series"));

  std::vector<DicomBuffer> twice = b.image_files;
  twice.push_back(b.image_files[0]);
  twice.back().name = "copy.dcm";
  IngestResult doubled = ExpectSameAsInMemory(StoredRole::kUnlabeled, twice, "twice");
  EXPECT_EQ(doubled.files.back().outcome, IngestOutcome::kDuplicate);

  std::vector<DicomBuffer> cut = SmallStudy(4, false).image_files;
  cut[1].bytes.resize(cut[1].bytes.size() / 2);
  ExpectSameAsInMemory(StoredRole::kUnlabeled, cut, "a file cut in half");

  // The same series stored already, now with an instance less and one from elsewhere.
  std::vector<DicomBuffer> changed = b.image_files;
  changed.erase(changed.begin());
  changed.push_back(SmallStudy(3, false, /*seed=*/99).image_files[0]);
  ExpectSameAsInMemory(StoredRole::kUnlabeled, changed, "changed series");

  // A SEG that does not fit its series: the labels of another study with its references.
  std::vector<DicomBuffer> two_segs = WithSeg(SmallStudy(5, true));
  two_segs.push_back(*SmallStudy(5, true, /*seed=*/12).segmentation);
  ExpectSameAsInMemory(StoredRole::kLabeled, two_segs, "two SEGs");
}

TEST_F(IngestTest, EmptyAndUnfinishedUploadsStoreNothing) {
  {
    std::unique_ptr<IngestSession> session = streamed_->Session(StoredRole::kUnlabeled);
    absl::StatusOr<IngestResult> result = session->Finish();
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(result.status().message(), HasSubstr("holds no files"));
  }
  const PhantomStudy study = SmallStudy(6, false);
  {
    std::unique_ptr<IngestSession> session = streamed_->Session(StoredRole::kUnlabeled);
    ASSERT_TRUE(streamed_->Send(*session, study.image_files).ok());
    ASSERT_TRUE(session->AddChunk("open.dcm", "DICM", false).ok());
    absl::StatusOr<IngestResult> result = session->Finish();
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(result.status().message(), HasSubstr("ended inside 'open.dcm'"));
    EXPECT_EQ(streamed_->StagedCount(), 0);
  }
  {
    // Over the byte limit mid-stream.
    int64_t total = 0;
    for (const DicomBuffer& f : study.image_files) total += static_cast<int64_t>(f.bytes.size());
    std::unique_ptr<IngestSession> session =
        streamed_->Session(StoredRole::kUnlabeled, ChunkLimits{total / 2, 1000});
    absl::Status sent = streamed_->Send(*session, study.image_files);
    EXPECT_EQ(sent.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(streamed_->StagedCount(), 0);
  }
  EXPECT_TRUE(streamed_->Studies().empty());
  EXPECT_EQ(streamed_->ObjectCount(), 0u);
}

TEST_F(IngestTest, DestroyingASessionMidStreamLeavesNothing) {
  const PhantomStudy study = SmallStudy(7, true);
  {
    std::unique_ptr<IngestSession> session = streamed_->Session(StoredRole::kLabeled);
    ASSERT_TRUE(streamed_->Send(*session, WithSeg(study)).ok());
    ASSERT_TRUE(session->AddChunk("half.dcm", study.image_files[0].bytes.substr(0, 100), false)
                    .ok());
    EXPECT_GT(streamed_->StagedCount(), 0);
    EXPECT_EQ(session->bytes_received(), [&] {
      int64_t n = 100;
      for (const DicomBuffer& f : WithSeg(study)) n += static_cast<int64_t>(f.bytes.size());
      return n;
    }());
  }  // a cancelled stream: the reactor drops its session
  EXPECT_EQ(streamed_->StagedCount(), 0);
  EXPECT_TRUE(streamed_->Studies().empty());
  EXPECT_EQ(streamed_->ObjectCount(), 0u);
}

TEST_F(IngestTest, FinishTwiceIsFailedPrecondition) {
  std::unique_ptr<IngestSession> session = streamed_->Session(StoredRole::kUnlabeled);
  ASSERT_TRUE(streamed_->Send(*session, SmallStudy(8, false).image_files).ok());
  ASSERT_TRUE(session->Finish().ok());
  EXPECT_EQ(session->Finish().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session->AddChunk("x", "y", true).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(streamed_->StagedCount(), 0);
}

}  // namespace
}  // namespace miseg

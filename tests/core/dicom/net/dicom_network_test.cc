// The DICOM networking layer (core/dicom/net) against independent peers: DCMTK's echoscu
// and storescu, raw dcmnet associations, a real Orthanc (C-STORE both ways, STOW-RS), and a
// scripted HTTP server for STOW-RS error mapping. No sleeps: every wait is on a condition
// with a bound, or on a process exiting.
#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmnet/assoc.h>
#include <dcmtk/dcmnet/dimse.h>
#include <dcmtk/dcmnet/dul.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/instance_info.h"
#include "core/dicom/net/cstore_sender.h"
#include "core/dicom/net/storage_scp.h"
#include "core/dicom/net/stow_client.h"
#include "core/dicom/series_reader.h"
#include "gtest/gtest.h"
#include "tests/server/orthanc_process.h"
#include "tests/server/raw_association.h"
#include "tests/server/test_studies.h"

#ifndef MISEG_ECHOSCU
#define MISEG_ECHOSCU "/usr/bin/echoscu"
#endif
#ifndef MISEG_STORESCU
#define MISEG_STORESCU "/usr/bin/storescu"
#endif

namespace miseg {
namespace {

using ::miseg::testing::OrthancOptions;
using ::miseg::testing::OrthancProcess;
using ::miseg::testing::RawAssociation;
using ::miseg::testing::RunCommand;
using ::miseg::testing::TempDir;
using std::chrono::seconds;

constexpr char kScpAe[] = "MISEG";
constexpr char kSenderAe[] = "SENDER";
constexpr auto kWait = seconds(60);

bool Executable(const std::string& path) { return access(path.c_str(), X_OK) == 0; }

// ---------------------------------------------------------------------------------------
// Test data

struct Series {
  std::vector<std::string> images;
  std::string segmentation;  // empty when not asked for
  std::string study_uid, series_uid;
};

Series PhantomSeries(int index, bool with_segmentation = false) {
  absl::StatusOr<PhantomStudy> study =
      miseg::testing::SmallPhantomStudy(/*population_seed=*/11, index, with_segmentation);
  EXPECT_TRUE(study.ok()) << study.status();
  Series out;
  if (!study.ok()) return out;
  for (const DicomBuffer& b : study->image_files) out.images.push_back(b.bytes);
  if (study->segmentation) out.segmentation = study->segmentation->bytes;
  out.study_uid = study->series.study_instance_uid;
  out.series_uid = study->series.series_instance_uid;
  return out;
}

InstanceInfo Identify(const std::string& bytes, const std::string& name = "instance") {
  absl::StatusOr<InstanceInfo> info = IdentifyInstance(DicomBuffer{name, bytes});
  EXPECT_TRUE(info.ok()) << info.status();
  return info.ok() ? *info : InstanceInfo{};
}

std::string TransferSyntaxOf(const std::string& bytes) {
  absl::StatusOr<std::unique_ptr<DcmFileFormat>> file = ParseDicom(bytes, "file");
  if (!file.ok()) return "";
  OFString syntax;
  (*file)->getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, syntax);
  return syntax.c_str();
}

// The pixel data, decoded to explicit VR little endian, as raw bytes.
std::string DecodedPixels(const std::string& bytes) {
  RegisterDicomCodecs();
  absl::StatusOr<std::unique_ptr<DcmFileFormat>> file = ParseDicom(bytes, "file");
  if (!file.ok()) return "";
  DcmDataset* ds = (*file)->getDataset();
  if (ds->chooseRepresentation(EXS_LittleEndianExplicit, nullptr).bad()) return "";
  const Uint8* data = nullptr;
  unsigned long count = 0;
  DcmElement* element = nullptr;
  if (ds->findAndGetElement(DCM_PixelData, element).bad() || element == nullptr) return "";
  Uint8* raw = nullptr;
  if (element->getUint8Array(raw).bad()) return "";
  data = raw;
  count = element->getLength();
  return std::string(reinterpret_cast<const char*>(data), count);
}

// The same instance re-encoded in another transfer syntax.
std::string Transcode(const std::string& bytes, E_TransferSyntax syntax) {
  RegisterDicomCodecs();
  absl::StatusOr<std::unique_ptr<DcmFileFormat>> file = ParseDicom(bytes, "file");
  EXPECT_TRUE(file.ok());
  if (!file.ok()) return "";
  DcmDataset* ds = (*file)->getDataset();
  EXPECT_TRUE(ds->chooseRepresentation(syntax, nullptr).good()) << DcmXfer(syntax).getXferName();
  absl::StatusOr<std::string> out = SerializeDicom(**file, syntax);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : "";
}

std::vector<std::string> WriteFiles(const std::string& dir, const std::vector<std::string>& files) {
  std::filesystem::create_directories(dir);
  std::vector<std::string> paths;
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string path = absl::StrCat(dir, "/", i, ".dcm");
    std::ofstream(path, std::ios::binary) << files[i];
    paths.push_back(path);
  }
  return paths;
}

// ---------------------------------------------------------------------------------------
// An SCP whose callbacks record what arrives.

class Recorder {
 public:
  struct End {
    uint64_t id;
    std::string calling, called;
  };

  StorageScpCallbacks Callbacks() {
    StorageScpCallbacks callbacks;
    callbacks.on_instance = [this](const ReceivedInstance& r) { return OnInstance(r); };
    callbacks.on_association_end = [this](uint64_t id, const std::string& calling,
                                          const std::string& called) {
      std::lock_guard<std::mutex> lock(mutex_);
      ends_.push_back({id, calling, called});
      changed_.notify_all();
    };
    return callbacks;
  }

  // Decides the answer to each instance (OK when unset); called before it is recorded.
  std::function<absl::Status(const ReceivedInstance&)> verdict;

  bool WaitForEnds(size_t count, seconds timeout = kWait) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return ends_.size() >= count; });
  }
  std::vector<ReceivedInstance> instances() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return instances_;
  }
  std::vector<End> ends() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return ends_;
  }

 private:
  absl::Status OnInstance(const ReceivedInstance& r) {
    absl::Status verdict_status = verdict ? verdict(r) : absl::OkStatus();
    std::lock_guard<std::mutex> lock(mutex_);
    if (verdict_status.ok()) instances_.push_back(r);
    changed_.notify_all();
    return verdict_status;
  }

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<ReceivedInstance> instances_;
  std::vector<End> ends_;
};

StorageScpOptions ScpOptions(std::vector<AllowedPeer> allowed) {
  StorageScpOptions options;
  options.ae_title = kScpAe;
  options.port = 0;
  options.allowed_peers = std::move(allowed);
  options.acse_timeout = seconds(10);
  options.dimse_timeout = seconds(30);
  return options;
}

DicomPeer ScpPeer(const StorageScp& scp) { return DicomPeer{kScpAe, "127.0.0.1", scp.port()}; }

// ---------------------------------------------------------------------------------------
// StorageScp with in-process and command-line peers

TEST(StorageScpTest, AnswersEchoscu) {
  if (!Executable(MISEG_ECHOSCU)) GTEST_SKIP() << "no echoscu";
  Recorder recorder;
  StorageScp scp(ScpOptions({{"ECHOSCU", "127.0.0.1"}}), recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());
  ASSERT_GT(scp.port(), 0);
  const auto [status, output] = RunCommand(
      absl::StrCat(MISEG_ECHOSCU, " -aet ECHOSCU -aec ", kScpAe, " 127.0.0.1 ", scp.port()));
  EXPECT_EQ(status, 0) << output;
  ASSERT_TRUE(recorder.WaitForEnds(1));
  EXPECT_EQ(recorder.ends()[0].calling, "ECHOSCU");
  EXPECT_EQ(recorder.ends()[0].called, kScpAe);
  EXPECT_TRUE(recorder.instances().empty());
}

TEST(StorageScpTest, SendByCStoreDeliversSeriesOnOneAssociation) {
  const Series series = PhantomSeries(0);
  ASSERT_GE(series.images.size(), 4u);
  Recorder recorder;
  StorageScp scp(ScpOptions({{kSenderAe, "127.0.0.1"}}), recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());

  ASSERT_TRUE(SendByCStore(ScpPeer(scp), kSenderAe, series.images, seconds(30)).ok());
  // The sender's release returns before the SCP's thread has finished the association.
  ASSERT_TRUE(recorder.WaitForEnds(1));
  const std::vector<ReceivedInstance> received = recorder.instances();
  ASSERT_EQ(received.size(), series.images.size());
  const uint64_t id = received[0].association_id;
  EXPECT_EQ(recorder.ends().size(), 1u);
  EXPECT_EQ(recorder.ends()[0].id, id);
  for (size_t i = 0; i < received.size(); ++i) {
    EXPECT_EQ(received[i].association_id, id);
    EXPECT_EQ(received[i].calling_ae_title, kSenderAe);
    EXPECT_EQ(received[i].called_ae_title, kScpAe);
    EXPECT_EQ(received[i].peer_host, "127.0.0.1");
    const InstanceInfo sent = Identify(series.images[i]);
    const InstanceInfo got = Identify(received[i].bytes, "received");
    EXPECT_EQ(got.sop_instance_uid, sent.sop_instance_uid);
    EXPECT_EQ(got.sop_class_uid, sent.sop_class_uid);
    EXPECT_EQ(got.series_instance_uid, series.series_uid);
    EXPECT_EQ(got.study_instance_uid, series.study_uid);
    EXPECT_EQ(TransferSyntaxOf(received[i].bytes), UID_LittleEndianExplicitTransferSyntax);
    EXPECT_EQ(DecodedPixels(received[i].bytes), DecodedPixels(series.images[i]));
  }
  // The received files read back as the same series.
  std::vector<DicomBuffer> buffers;
  for (const ReceivedInstance& r : received) buffers.push_back({"received", r.bytes});
  absl::StatusOr<std::vector<SeriesVolume>> volumes = ReadSeries(buffers);
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  ASSERT_EQ(volumes->size(), 1u);
  EXPECT_EQ((*volumes)[0].series_instance_uid, series.series_uid);
}

TEST(StorageScpTest, KeepsTheTransferSyntaxEachInstanceArrivedIn) {
  const Series series = PhantomSeries(1);
  ASSERT_FALSE(series.images.empty());
  const std::string& source = series.images[0];
  const std::vector<E_TransferSyntax> syntaxes = {
      EXS_JPEGLSLossless,    EXS_JPEGProcess14SV1,     EXS_RLELossless,
      EXS_BigEndianExplicit, EXS_LittleEndianImplicit, EXS_DeflatedLittleEndianExplicit};
  std::vector<std::string> files;
  for (E_TransferSyntax s : syntaxes) files.push_back(Transcode(source, s));
  Recorder recorder;
  StorageScp scp(ScpOptions({{kSenderAe, "127.0.0.1"}}), recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());

  const absl::Status sent = SendByCStore(ScpPeer(scp), kSenderAe, files, seconds(30));
  ASSERT_TRUE(sent.ok()) << sent;
  const std::vector<ReceivedInstance> received = recorder.instances();
  ASSERT_EQ(received.size(), files.size());
  const std::string pixels = DecodedPixels(source);
  ASSERT_FALSE(pixels.empty());
  for (size_t i = 0; i < files.size(); ++i) {
    SCOPED_TRACE(DcmXfer(syntaxes[i]).getXferName());
    // An implicit VR file goes out in the context that proposes both little endian syntaxes,
    // where the SCP prefers explicit VR; every other one in its own context, as it is.
    const E_TransferSyntax expected =
        syntaxes[i] == EXS_LittleEndianImplicit ? EXS_LittleEndianExplicit : syntaxes[i];
    EXPECT_EQ(TransferSyntaxOf(received[i].bytes), DcmXfer(expected).getXferID());
    EXPECT_EQ(DecodedPixels(received[i].bytes), pixels);  // all lossless
    EXPECT_EQ(Identify(received[i].bytes).sop_instance_uid, Identify(source).sop_instance_uid);
  }
}

TEST(StorageScpTest, StorescuSeveralAssociationsAtOnce) {
  if (!Executable(MISEG_STORESCU)) GTEST_SKIP() << "no storescu";
  constexpr int kSenders = 3;
  TempDir dir;
  std::vector<Series> series;
  std::vector<std::vector<std::string>> paths;
  for (int i = 0; i < kSenders; ++i) {
    series.push_back(PhantomSeries(10 + i));
    paths.push_back(WriteFiles(absl::StrCat(dir.path(), "/s", i), series.back().images));
  }
  // Each association's first instance waits until all senders are inside: this only passes
  // when the associations are served at the same time.
  std::mutex mutex;
  std::condition_variable all_in;
  std::set<uint64_t> associations;
  Recorder recorder;
  recorder.verdict = [&](const ReceivedInstance& r) {
    std::unique_lock<std::mutex> lock(mutex);
    associations.insert(r.association_id);
    all_in.notify_all();
    if (!all_in.wait_for(lock, kWait, [&] { return associations.size() >= kSenders; })) {
      return absl::UnavailableError("the associations were not served concurrently");
    }
    return absl::OkStatus();
  };
  StorageScp scp(ScpOptions({{"STORESCU", "127.0.0.1"}}), recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());

  std::string script;
  for (int i = 0; i < kSenders; ++i) {
    absl::StrAppend(&script, MISEG_STORESCU, " -aet STORESCU -aec ", kScpAe, " 127.0.0.1 ",
                    scp.port(), " ", absl::StrJoin(paths[i], " "), " & p", i, "=$!; ");
  }
  script += "r=0; ";
  for (int i = 0; i < kSenders; ++i) absl::StrAppend(&script, "wait $p", i, " || r=1; ");
  script += "exit $r";
  const auto [status, output] = RunCommand(script);
  EXPECT_EQ(status, 0) << output;

  ASSERT_TRUE(recorder.WaitForEnds(kSenders));
  const std::vector<ReceivedInstance> received = recorder.instances();
  std::map<uint64_t, std::vector<std::string>> by_association;
  for (const ReceivedInstance& r : received) {
    EXPECT_EQ(r.calling_ae_title, "STORESCU");
    by_association[r.association_id].push_back(Identify(r.bytes).series_instance_uid);
  }
  ASSERT_EQ(by_association.size(), static_cast<size_t>(kSenders));
  // Every series arrived whole, each on its own association.
  std::set<std::string> series_seen;
  size_t total = 0;
  for (const auto& [id, uids] : by_association) {
    EXPECT_EQ(std::set<std::string>(uids.begin(), uids.end()).size(), 1u);
    series_seen.insert(uids[0]);
    total += uids.size();
  }
  size_t expected_total = 0;
  for (const Series& s : series) {
    EXPECT_EQ(series_seen.count(s.series_uid), 1u);
    expected_total += s.images.size();
  }
  EXPECT_EQ(total, expected_total);
  // on_association_end once per association, with the same ids.
  std::multiset<uint64_t> ended;
  for (const Recorder::End& e : recorder.ends()) ended.insert(e.id);
  EXPECT_EQ(ended.size(), static_cast<size_t>(kSenders));
  for (const auto& [id, uids] : by_association) EXPECT_EQ(ended.count(id), 1u);
}

TEST(StorageScpTest, RejectsPeersNotAllowed) {
  const Series series = PhantomSeries(2);
  Recorder recorder;
  StorageScp scp(ScpOptions({{"GOODSCU", "127.0.0.1"}, {"FARSCU", "192.0.2.7"}}),
                 recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());

  // Wrong calling AE title.
  absl::Status sent = SendByCStore(ScpPeer(scp), "BADSCU", series.images, seconds(30));
  EXPECT_EQ(sent.code(), absl::StatusCode::kFailedPrecondition) << sent;
  EXPECT_TRUE(absl::StrContains(sent.message(), "rejected")) << sent;
  // A known AE title from a host it is not allowed from.
  sent = SendByCStore(ScpPeer(scp), "FARSCU", series.images, seconds(30));
  EXPECT_EQ(sent.code(), absl::StatusCode::kFailedPrecondition) << sent;
  // Addressed to another called AE title.
  sent = SendByCStore(DicomPeer{"OTHERAE", "127.0.0.1", scp.port()}, "GOODSCU", series.images,
                      seconds(30));
  EXPECT_EQ(sent.code(), absl::StatusCode::kFailedPrecondition) << sent;
  if (Executable(MISEG_ECHOSCU)) {
    const auto [status, output] = RunCommand(
        absl::StrCat(MISEG_ECHOSCU, " -aet BADSCU -aec ", kScpAe, " 127.0.0.1 ", scp.port()));
    EXPECT_NE(status, 0);
    EXPECT_TRUE(absl::StrContains(output, "Association Rejected")) << output;
  }
  if (Executable(MISEG_STORESCU)) {
    TempDir dir;
    const std::vector<std::string> paths = WriteFiles(dir.path(), series.images);
    const auto [status, output] = RunCommand(absl::StrCat(
        MISEG_STORESCU, " -aet BADSCU -aec ", kScpAe, " 127.0.0.1 ", scp.port(), " ", paths[0]));
    EXPECT_NE(status, 0) << output;
  }
  EXPECT_TRUE(recorder.instances().empty());
  EXPECT_TRUE(recorder.ends().empty());  // rejected associations do not count

  // The allowed peer gets through (on the same SCP, so the rejections above did not wedge it).
  sent = SendByCStore(ScpPeer(scp), "GOODSCU", series.images, seconds(30));
  EXPECT_TRUE(sent.ok()) << sent;
  EXPECT_EQ(recorder.instances().size(), series.images.size());
}

TEST(StorageScpTest, AllowListByHostNameAndEmptyList) {
  const Series series = PhantomSeries(3);
  {
    Recorder recorder;
    StorageScp scp(ScpOptions({{kSenderAe, "localhost"}}), recorder.Callbacks());
    ASSERT_TRUE(scp.Start().ok());
    const absl::Status sent = SendByCStore(ScpPeer(scp), kSenderAe, series.images, seconds(30));
    EXPECT_TRUE(sent.ok()) << sent;
  }
  {
    Recorder recorder;
    StorageScp scp(ScpOptions({}), recorder.Callbacks());
    ASSERT_TRUE(scp.Start().ok());
    const absl::Status sent = SendByCStore(ScpPeer(scp), kSenderAe, series.images, seconds(30));
    EXPECT_EQ(sent.code(), absl::StatusCode::kFailedPrecondition) << sent;
    EXPECT_TRUE(recorder.instances().empty());
  }
}

TEST(StorageScpTest, DataSetNotMatchingItsRequestGetsFailureStatus) {
  const Series series = PhantomSeries(4);
  Recorder recorder;
  StorageScp scp(ScpOptions({{kSenderAe, "127.0.0.1"}}), recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());
  absl::StatusOr<std::unique_ptr<DcmFileFormat>> file = ParseDicom(series.images[0], "image");
  ASSERT_TRUE(file.ok());
  DcmDataset* ds = (*file)->getDataset();
  const std::string uid = Identify(series.images[0]).sop_instance_uid;

  RawAssociation association(scp.port(), kSenderAe, kScpAe);
  ASSERT_TRUE(association.established()) << association.condition().text();
  // The data set's SOP Instance UID differs from the request's.
  EXPECT_EQ(association.Store(ds, UID_MRImageStorage, "1.2.3.4"),
            STATUS_STORE_Error_DataSetDoesNotMatchSOPClass);
  // The data set has no SOP Instance UID at all.
  ASSERT_TRUE(ds->findAndDeleteElement(DCM_SOPInstanceUID).good());
  EXPECT_EQ(association.Store(ds, UID_MRImageStorage, uid),
            STATUS_STORE_Error_DataSetDoesNotMatchSOPClass);
  // The association survives both failures.
  ASSERT_TRUE(ds->putAndInsertString(DCM_SOPInstanceUID, uid.c_str()).good());
  EXPECT_EQ(association.Store(ds, UID_MRImageStorage, uid), STATUS_Success);
  EXPECT_TRUE(association.Release());
  ASSERT_TRUE(recorder.WaitForEnds(1));
  ASSERT_EQ(recorder.instances().size(), 1u);
  EXPECT_EQ(Identify(recorder.instances()[0].bytes).sop_instance_uid, uid);
}

TEST(StorageScpTest, CallbackErrorBecomesFailureStatusTheSenderSees) {
  const Series series = PhantomSeries(5);
  ASSERT_GE(series.images.size(), 3u);
  const std::string refused = Identify(series.images[1]).sop_instance_uid;
  absl::StatusCode code = absl::StatusCode::kInvalidArgument;
  Recorder recorder;
  recorder.verdict = [&](const ReceivedInstance& r) {
    if (Identify(r.bytes).sop_instance_uid == refused) return absl::Status(code, "not cardiac");
    return absl::OkStatus();
  };
  StorageScp scp(ScpOptions({{kSenderAe, "127.0.0.1"}}), recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());

  absl::Status sent = SendByCStore(ScpPeer(scp), kSenderAe, series.images, seconds(30));
  EXPECT_EQ(sent.code(), absl::StatusCode::kInternal) << sent;
  EXPECT_TRUE(absl::StrContains(sent.message(), "0xC000")) << sent;
  EXPECT_TRUE(absl::StrContains(sent.message(), "not cardiac")) << sent;  // Error Comment
  EXPECT_TRUE(absl::StrContains(sent.message(), refused)) << sent;
  EXPECT_TRUE(absl::StrContains(sent.message(), absl::StrCat(kScpAe, "@127.0.0.1:", scp.port())))
      << sent;
  ASSERT_TRUE(recorder.WaitForEnds(1));
  EXPECT_EQ(recorder.instances().size(), 1u);  // sending stopped at the failure

  code = absl::StatusCode::kResourceExhausted;  // -> 0xA700, worth retrying
  sent = SendByCStore(ScpPeer(scp), kSenderAe, series.images, seconds(30));
  EXPECT_EQ(sent.code(), absl::StatusCode::kUnavailable) << sent;
  EXPECT_TRUE(absl::StrContains(sent.message(), "0xA700")) << sent;
  ASSERT_TRUE(recorder.WaitForEnds(2));
}

TEST(StorageScpTest, SopClassesNotConfiguredAreNotAccepted) {
  const Series series = PhantomSeries(6, /*with_segmentation=*/true);
  ASSERT_FALSE(series.segmentation.empty());
  {
    Recorder recorder;
    StorageScp scp(ScpOptions({{kSenderAe, "127.0.0.1"}}), recorder.Callbacks());
    ASSERT_TRUE(scp.Start().ok());
    const absl::Status sent =
        SendByCStore(ScpPeer(scp), kSenderAe, {series.segmentation}, seconds(30));
    EXPECT_EQ(sent.code(), absl::StatusCode::kFailedPrecondition) << sent;
  }
  {
    StorageScpOptions options = ScpOptions({{kSenderAe, "127.0.0.1"}});
    options.sop_classes.push_back(kSegmentationStorageUid);
    Recorder recorder;
    StorageScp scp(options, recorder.Callbacks());
    ASSERT_TRUE(scp.Start().ok());
    std::vector<std::string> all = series.images;
    all.push_back(series.segmentation);
    const absl::Status sent = SendByCStore(ScpPeer(scp), kSenderAe, all, seconds(30));
    EXPECT_TRUE(sent.ok()) << sent;
    ASSERT_EQ(recorder.instances().size(), all.size());
    EXPECT_TRUE(Identify(recorder.instances().back().bytes).is_segmentation);
  }
}

TEST(StorageScpTest, OneAssociationTooManyIsRejectedTransiently) {
  const Series series = PhantomSeries(7);
  StorageScpOptions options = ScpOptions({{kSenderAe, "127.0.0.1"}});
  options.max_associations = 1;
  Recorder recorder;
  StorageScp scp(options, recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());

  auto held = std::make_unique<RawAssociation>(scp.port(), kSenderAe, kScpAe);
  ASSERT_TRUE(held->established());
  absl::Status sent = SendByCStore(ScpPeer(scp), kSenderAe, series.images, seconds(30));
  EXPECT_EQ(sent.code(), absl::StatusCode::kUnavailable) << sent;
  EXPECT_TRUE(absl::StrContains(sent.message(), "rejected")) << sent;
  EXPECT_TRUE(held->Release());
  ASSERT_TRUE(recorder.WaitForEnds(1));  // the slot is free once this has been called
  sent = SendByCStore(ScpPeer(scp), kSenderAe, series.images, seconds(30));
  EXPECT_TRUE(sent.ok()) << sent;
}

TEST(StorageScpTest, StopWaitsForRunningAssociationsThenRefusesConnections) {
  Recorder recorder;
  StorageScp scp(ScpOptions({{kSenderAe, "127.0.0.1"}}), recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());
  const int port = scp.port();
  auto held = std::make_unique<RawAssociation>(port, kSenderAe, kScpAe);
  ASSERT_TRUE(held->established());

  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    scp.Stop();
    stopped = true;
  });
  // Stop returns only after the held association ended, and its end was reported.
  EXPECT_TRUE(held->Release());
  stopper.join();
  EXPECT_TRUE(stopped);
  EXPECT_EQ(recorder.ends().size(), 1u);
  EXPECT_EQ(scp.port(), 0);
  const Series series = PhantomSeries(8);
  const absl::Status sent =
      SendByCStore(DicomPeer{kScpAe, "127.0.0.1", port}, kSenderAe, series.images, seconds(10));
  EXPECT_EQ(sent.code(), absl::StatusCode::kUnavailable) << sent;
  scp.Stop();  // idempotent
}

TEST(StorageScpTest, ListensOnTheBindAddressOnly) {
  Recorder recorder;
  StorageScp scp(ScpOptions({}), recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());
  // /proc/net/tcp: "sl local_address rem_address st ...", addresses as hex IP:port; the
  // listening socket (st 0A) must be on 0100007F (127.0.0.1), not 00000000.
  std::ifstream tcp("/proc/net/tcp");
  std::string line;
  const std::string port_hex = absl::StrFormat(":%04X", scp.port());
  std::vector<std::string> listening;
  while (std::getline(tcp, line)) {
    std::vector<std::string> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (fields.size() > 3 && absl::EndsWith(fields[1], port_hex) && fields[3] == "0A") {
      listening.push_back(fields[1]);
    }
  }
  ASSERT_EQ(listening.size(), 1u);
  EXPECT_EQ(listening[0], "0100007F" + port_hex);
}

// Connects to 127.0.0.1:port, sends data (if any), closes after reading what comes back.
std::string Poke(int port, const std::string& data) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  std::string reply;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 && !data.empty()) {
    (void)!write(fd, data.data(), data.size());
    char buffer[1024];
    ssize_t n;
    while ((n = read(fd, buffer, sizeof(buffer))) > 0) reply.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return reply;
}

// Connects to 127.0.0.1:port and sends data; the open socket.
int Connect(int port, const std::string& data) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    (void)!write(fd, data.data(), data.size());
  }
  return fd;
}

TEST(StorageScpTest, SurvivesProbesAndGarbage) {
  const Series series = PhantomSeries(14);
  Recorder recorder;
  StorageScp scp(ScpOptions({{kSenderAe, "127.0.0.1"}}), recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());
  Poke(scp.port(), "");                        // a port probe: connect, close
  Poke(scp.port(), "GET / HTTP/1.0\r\n\r\n");  // not DICOM: dropped
  Poke(scp.port(), std::string("\x01\x00\x00\x00\xff\xff\xff\xff", 8));  // absurd PDU length
  // Peers that stall half-way stay open meanwhile: a partial PDU header, and an
  // A-ASSOCIATE-RQ header announcing 100 bytes of which 4 came.
  const int stalled_header = Connect(scp.port(), std::string("\x01\x00", 2));
  const int stalled_request = Connect(scp.port(), std::string("\x01\x00\x00\x00\x00\x64"
                                                              "abcd",
                                                              10));
  const auto start = std::chrono::steady_clock::now();
  const absl::Status sent = SendByCStore(ScpPeer(scp), kSenderAe, series.images, seconds(30));
  EXPECT_TRUE(sent.ok()) << sent;
  // Not held up by the stalled peers (each may take up to acse_timeout, 10 s, on its own).
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(5));
  ASSERT_TRUE(recorder.WaitForEnds(1));
  EXPECT_EQ(recorder.ends().size(), 1u);
  EXPECT_EQ(recorder.instances().size(), series.images.size());
  // Stop does not wait for connections still negotiating.
  const auto stopping = std::chrono::steady_clock::now();
  scp.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - stopping, seconds(5));
  close(stalled_header);
  close(stalled_request);
}

TEST(StorageScpTest, StartRefusesBadOptions) {
  Recorder recorder;
  auto start = [&](StorageScpOptions options, StorageScpCallbacks callbacks) {
    StorageScp scp(std::move(options), std::move(callbacks));
    return scp.Start();
  };
  StorageScpOptions options = ScpOptions({});
  options.ae_title = "THIS-AE-TITLE-IS-TOO-LONG";
  EXPECT_EQ(start(options, recorder.Callbacks()).code(), absl::StatusCode::kInvalidArgument);
  options = ScpOptions({});
  options.bind_address = "localhost";
  EXPECT_EQ(start(options, recorder.Callbacks()).code(), absl::StatusCode::kInvalidArgument);
  options = ScpOptions({});
  options.max_associations = 0;
  EXPECT_EQ(start(options, recorder.Callbacks()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(start(ScpOptions({}), StorageScpCallbacks{}).code(),
            absl::StatusCode::kInvalidArgument);
  // A port in use.
  StorageScp first(ScpOptions({}), recorder.Callbacks());
  ASSERT_TRUE(first.Start().ok());
  EXPECT_EQ(first.Start().code(), absl::StatusCode::kFailedPrecondition);
  options = ScpOptions({});
  options.port = first.port();
  EXPECT_EQ(start(options, recorder.Callbacks()).code(), absl::StatusCode::kUnavailable);
}

// ---------------------------------------------------------------------------------------
// Senders against peers that do not answer

// A listening socket nobody accepts on: connects succeed (the kernel's backlog), nothing
// ever answers.
class SilentListener {
 public:
  SilentListener() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address));
    listen(fd_, 8);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
  }
  ~SilentListener() { close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(SendersTest, SilentPeerTimesOutAsUnavailable) {
  const Series series = PhantomSeries(9);
  SilentListener silent;
  const auto start = std::chrono::steady_clock::now();
  absl::Status sent = SendByCStore(DicomPeer{"SILENT", "127.0.0.1", silent.port()}, kSenderAe,
                                   series.images, seconds(2));
  EXPECT_EQ(sent.code(), absl::StatusCode::kUnavailable) << sent;
  sent = SendByStowRs(absl::StrCat("http://127.0.0.1:", silent.port(), "/dicom-web/studies"), "",
                      series.images, seconds(2));
  EXPECT_EQ(sent.code(), absl::StatusCode::kUnavailable) << sent;
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(30));
}

TEST(SendersTest, RefusesFilesThatAreNotDicom) {
  const absl::Status sent =
      SendByCStore(DicomPeer{"ANY", "127.0.0.1", 1}, kSenderAe, {"not a DICOM file"}, seconds(5));
  EXPECT_EQ(sent.code(), absl::StatusCode::kInvalidArgument) << sent;
  EXPECT_TRUE(SendByCStore(DicomPeer{"ANY", "127.0.0.1", 1}, kSenderAe, {}, seconds(5)).ok());
}

// ---------------------------------------------------------------------------------------
// STOW-RS against a scripted HTTP server: what goes out, and how replies map to statuses.

class OneShotHttpServer {
 public:
  OneShotHttpServer(int status, std::string body) : status_(status), body_(std::move(body)) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    const int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address));
    listen(fd_, 4);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~OneShotHttpServer() {
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_, "/dicom-web/studies"); }
  // The request as received (headers and body); complete once the sender has returned.
  std::string request() {
    std::lock_guard<std::mutex> lock(mutex_);
    return request_;
  }

 private:
  void Serve() {
    const int client = accept(fd_, nullptr, nullptr);
    if (client < 0) return;
    std::string data;
    char buffer[65536];
    size_t needed = std::string::npos;
    while (data.size() < needed) {
      const ssize_t n = read(client, buffer, sizeof(buffer));
      if (n <= 0) break;
      data.append(buffer, static_cast<size_t>(n));
      const size_t head_end = data.find("\r\n\r\n");
      if (needed == std::string::npos && head_end != std::string::npos) {
        size_t length = 0;
        const std::string lower = absl::AsciiStrToLower(data.substr(0, head_end));
        const size_t at = lower.find("content-length:");
        if (at != std::string::npos) {
          (void)absl::SimpleAtoi(
              absl::StripAsciiWhitespace(lower.substr(at + 15, lower.find("\r\n", at) - at - 15)),
              &length);
        }
        needed = head_end + 4 + length;
      }
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      request_ = data;
    }
    const std::string reply =
        absl::StrCat("HTTP/1.1 ", status_, " Scripted\r\nContent-Type: application/dicom+json\r\n",
                     "Content-Length: ", body_.size(), "\r\nConnection: close\r\n\r\n", body_);
    (void)!write(client, reply.data(), reply.size());
    close(client);
  }

  int status_;
  std::string body_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  std::mutex mutex_;
  std::string request_;
};

constexpr char kStowOk[] = R"({"00081190":{"vr":"UR","Value":["x"]},"00081198":{"vr":"SQ"}})";
constexpr char kStowFailed[] =
    R"({"00081198":{"vr":"SQ","Value":[{"00081150":{"vr":"UI","Value":["1.2"]}}]}})";

TEST(StowRsTest, SendsMultipartRelatedWithBearerToken) {
  const Series series = PhantomSeries(12);
  OneShotHttpServer server(200, kStowOk);
  const absl::Status sent = SendByStowRs(server.url(), "secret-token", series.images, seconds(30));
  ASSERT_TRUE(sent.ok()) << sent;
  const std::string request = server.request();
  const size_t head_end = request.find("\r\n\r\n");
  ASSERT_NE(head_end, std::string::npos);
  const std::string head = request.substr(0, head_end);
  const std::string body = request.substr(head_end + 4);
  EXPECT_TRUE(absl::StartsWith(head, "POST /dicom-web/studies HTTP/1.1")) << head;
  EXPECT_TRUE(absl::StrContains(head, "Authorization: Bearer secret-token")) << head;
  EXPECT_TRUE(absl::StrContains(head, "Accept: application/dicom+json")) << head;
  const std::string type_prefix =
      "Content-Type: multipart/related; type=\"application/dicom\"; boundary=";
  const size_t type_at = head.find(type_prefix);
  ASSERT_NE(type_at, std::string::npos) << head;
  const size_t boundary_at = type_at + type_prefix.size();
  const std::string boundary =
      head.substr(boundary_at, head.find("\r\n", boundary_at) - boundary_at);
  ASSERT_FALSE(boundary.empty());
  // The body splits back into the files, in order.
  const std::string delimiter = "--" + boundary;
  ASSERT_TRUE(absl::StartsWith(body, delimiter));
  ASSERT_TRUE(absl::EndsWith(body, delimiter + "--\r\n"));
  std::vector<std::string> parts = absl::StrSplit(
      body.substr(0, body.size() - delimiter.size() - 4), delimiter, absl::SkipEmpty());
  ASSERT_EQ(parts.size(), series.images.size());
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string part_head = "\r\nContent-Type: application/dicom\r\n\r\n";
    ASSERT_TRUE(absl::StartsWith(parts[i], part_head));
    EXPECT_EQ(parts[i].substr(part_head.size(), parts[i].size() - part_head.size() - 2),
              series.images[i]);
  }
}

TEST(StowRsTest, MapsHttpStatusesAndFailedSops) {
  const Series series = PhantomSeries(13);
  struct Case {
    int status;
    std::string body;
    absl::StatusCode expected;
  };
  const std::vector<Case> cases = {
      {200, kStowOk, absl::StatusCode::kOk},
      {200, kStowFailed, absl::StatusCode::kFailedPrecondition},
      {202, kStowFailed, absl::StatusCode::kFailedPrecondition},
      {400, "{\"Message\":\"bad request\"}", absl::StatusCode::kInvalidArgument},
      {401, "{}", absl::StatusCode::kFailedPrecondition},
      {403, "{}", absl::StatusCode::kFailedPrecondition},
      {409, kStowFailed, absl::StatusCode::kFailedPrecondition},
      {500, "{\"Message\":\"boom\"}", absl::StatusCode::kUnavailable},
      {503, "", absl::StatusCode::kUnavailable},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.status);
    OneShotHttpServer server(c.status, c.body);
    const absl::Status sent = SendByStowRs(server.url(), "", series.images, seconds(30));
    EXPECT_EQ(sent.code(), c.expected) << sent;
    if (c.status == 400) {
      EXPECT_TRUE(absl::StrContains(sent.message(), "bad request")) << sent;
    }
    if (!sent.ok()) {
      EXPECT_TRUE(absl::StrContains(sent.message(), server.url())) << sent;
    }
    // No token: no Authorization header.
    EXPECT_FALSE(absl::StrContains(server.request(), "Authorization:"));
  }
}

// ---------------------------------------------------------------------------------------
// Against a real Orthanc

class OrthancTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!Executable(miseg::testing::kOrthancBinary)) GTEST_SKIP() << "no Orthanc";
  }

  void StartOrthanc(const OrthancOptions& options = {}) {
    absl::StatusOr<std::unique_ptr<OrthancProcess>> started =
        OrthancProcess::Start(dir_.path(), options);
    ASSERT_TRUE(started.ok()) << started.status();
    orthanc_ = std::move(*started);
  }

  DicomPeer OrthancPeer() const {
    return DicomPeer{orthanc_->dicom_aet(), "127.0.0.1", orthanc_->dicom_port()};
  }

  // The SOP Instance UIDs Orthanc holds for the series.
  std::set<std::string> StoredSopUids(const std::string& series_uid) {
    std::set<std::string> uids;
    absl::StatusOr<std::vector<std::string>> ids = orthanc_->SeriesInstances(series_uid);
    EXPECT_TRUE(ids.ok()) << ids.status();
    if (!ids.ok()) return uids;
    for (const std::string& id : *ids) {
      absl::StatusOr<std::string> file = orthanc_->DownloadInstance(id);
      EXPECT_TRUE(file.ok()) << file.status();
      if (file.ok()) uids.insert(Identify(*file, "from Orthanc").sop_instance_uid);
    }
    return uids;
  }

  static std::set<std::string> SopUids(const std::vector<std::string>& files) {
    std::set<std::string> uids;
    for (const std::string& f : files) uids.insert(Identify(f).sop_instance_uid);
    return uids;
  }

  TempDir dir_;
  std::unique_ptr<OrthancProcess> orthanc_;
};

TEST_F(OrthancTest, SendByCStoreStoresSeriesAndSegmentation) {
  StartOrthanc();
  const Series series = PhantomSeries(20, /*with_segmentation=*/true);
  std::vector<std::string> files = series.images;
  files.push_back(series.segmentation);
  const absl::Status sent = SendByCStore(OrthancPeer(), kScpAe, files, seconds(30));
  ASSERT_TRUE(sent.ok()) << sent;
  EXPECT_EQ(StoredSopUids(series.series_uid), SopUids(series.images));
  const InstanceInfo seg = Identify(series.segmentation);
  EXPECT_EQ(StoredSopUids(seg.series_instance_uid), SopUids({series.segmentation}));
  absl::StatusOr<int> count = orthanc_->CountInstances();
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, static_cast<int>(files.size()));
}

TEST_F(OrthancTest, SendByCStoreOfCompressedFiles) {
  StartOrthanc();
  const Series series = PhantomSeries(21);
  std::vector<std::string> files;
  for (const std::string& f : series.images) files.push_back(Transcode(f, EXS_JPEGLSLossless));
  const absl::Status sent = SendByCStore(OrthancPeer(), kScpAe, files, seconds(30));
  ASSERT_TRUE(sent.ok()) << sent;
  absl::StatusOr<std::vector<std::string>> ids = orthanc_->SeriesInstances(series.series_uid);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(ids->size(), files.size());
  absl::StatusOr<std::string> stored = orthanc_->DownloadInstance((*ids)[0]);
  ASSERT_TRUE(stored.ok());
  // Orthanc accepted JPEG-LS as proposed: the file was not decompressed on the way.
  EXPECT_EQ(TransferSyntaxOf(*stored), UID_JPEGLSLosslessTransferSyntax);
}

TEST_F(OrthancTest, SendByStowRsStoresSeries) {
  StartOrthanc();
  const Series series = PhantomSeries(22, /*with_segmentation=*/true);
  std::vector<std::string> files = series.images;
  files.push_back(series.segmentation);
  // Orthanc ignores the token (authentication off); it must not mind it either.
  const absl::Status sent =
      SendByStowRs(orthanc_->dicomweb_studies_url(), "token", files, seconds(30));
  ASSERT_TRUE(sent.ok()) << sent;
  EXPECT_EQ(StoredSopUids(series.series_uid), SopUids(series.images));
  EXPECT_EQ(StoredSopUids(Identify(series.segmentation).series_instance_uid),
            SopUids({series.segmentation}));
  // A part that is not DICOM: Orthanc answers 400.
  const absl::Status bad =
      SendByStowRs(orthanc_->dicomweb_studies_url(), "", {"not DICOM"}, seconds(30));
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
}

TEST_F(OrthancTest, StoppedOrthancIsUnavailableToBothSendersUntilRestarted) {
  StartOrthanc();
  const Series first = PhantomSeries(23);
  ASSERT_TRUE(SendByCStore(OrthancPeer(), kScpAe, first.images, seconds(30)).ok());
  ASSERT_TRUE(orthanc_->Stop().ok());

  const Series second = PhantomSeries(24);
  absl::Status sent = SendByCStore(OrthancPeer(), kScpAe, second.images, seconds(10));
  EXPECT_EQ(sent.code(), absl::StatusCode::kUnavailable) << sent;
  EXPECT_TRUE(
      absl::StrContains(sent.message(), absl::StrCat("@127.0.0.1:", orthanc_->dicom_port())))
      << sent;
  sent = SendByStowRs(orthanc_->dicomweb_studies_url(), "", second.images, seconds(10));
  EXPECT_EQ(sent.code(), absl::StatusCode::kUnavailable) << sent;

  // Same storage, same ports: what was stored is still there, and sending works again.
  ASSERT_TRUE(orthanc_->Restart().ok()) << orthanc_->log();
  EXPECT_EQ(StoredSopUids(first.series_uid), SopUids(first.images));
  sent = SendByStowRs(orthanc_->dicomweb_studies_url(), "", second.images, seconds(30));
  EXPECT_TRUE(sent.ok()) << sent;
  EXPECT_EQ(StoredSopUids(second.series_uid), SopUids(second.images));

  orthanc_->Kill();
  sent = SendByCStore(OrthancPeer(), kScpAe, second.images, seconds(10));
  EXPECT_EQ(sent.code(), absl::StatusCode::kUnavailable) << sent;
}

TEST_F(OrthancTest, OrthancStoresIntoOurScp) {
  Recorder recorder;
  StorageScp scp(ScpOptions({{"ORTHANC", "127.0.0.1"}}), recorder.Callbacks());
  ASSERT_TRUE(scp.Start().ok());
  OrthancOptions options;
  options.modalities["miseg"] = {kScpAe, "127.0.0.1", scp.port()};
  options.enable_dicomweb = false;
  StartOrthanc(options);

  const Series series = PhantomSeries(25);
  for (const std::string& f : series.images) ASSERT_TRUE(orthanc_->UploadInstance(f).ok());
  absl::StatusOr<std::string> series_id = orthanc_->FindSeries(series.series_uid);
  ASSERT_TRUE(series_id.ok()) << series_id.status();
  absl::StatusOr<int> stored = orthanc_->StoreToModality("miseg", {*series_id});
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(*stored, static_cast<int>(series.images.size()));

  ASSERT_TRUE(recorder.WaitForEnds(1));
  const std::vector<ReceivedInstance> received = recorder.instances();
  std::vector<std::string> bytes;
  for (const ReceivedInstance& r : received) {
    EXPECT_EQ(r.calling_ae_title, "ORTHANC");
    EXPECT_EQ(r.association_id, recorder.ends()[0].id);
    bytes.push_back(r.bytes);
  }
  EXPECT_EQ(SopUids(bytes), SopUids(series.images));
  EXPECT_EQ(recorder.ends().size(), 1u);
}

}  // namespace
}  // namespace miseg

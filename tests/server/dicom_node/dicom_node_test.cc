// miseg-server as a DICOM node, against a real PACS: Orthanc (Debian's, with its DICOMweb
// plugin) started by the tests on loopback. Orthanc forwards a phantom study to miseg by
// C-STORE, as a PACS routes a study; miseg segments it and delivers the DICOM SEG back by
// C-STORE or STOW-RS, from an outbox that survives Orthanc's outage and miseg's restart.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iterator>
#include <map>
#include <optional>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <dcmtk/dcmdata/dctk.h>

#include "absl/strings/str_cat.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/instance_info.h"
#include "core/dicom/net/cstore_sender.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "tests/server/child_process.h"
#include "tests/server/api_client.h"
#include "tests/server/orthanc_process.h"
#include "tests/server/raw_association.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

class DicomNodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    node_port_ = FreeLoopbackPort();
    OrthancOptions options;
    options.dicom_aet = "ORTHANC";
    options.modalities["miseg"] = OrthancModality{"MISEG", "127.0.0.1", node_port_};
    absl::StatusOr<std::unique_ptr<OrthancProcess>> orthanc =
        OrthancProcess::Start(dir_.path() + "/orthanc", options);
    ASSERT_TRUE(orthanc.ok()) << orthanc.status();
    orthanc_ = *std::move(orthanc);
  }

  // Starts miseg with a node that takes studies from Orthanc, stores them into "cardiac" and
  // delivers SEGs to `deliver_to` ("pacs": C-STORE to Orthanc, "web": STOW-RS to Orthanc).
  void StartMiseg(const std::string& deliver_to) {
    const std::string config_path = dir_.path() + "/node.json";
    std::ofstream(config_path) << absl::StrCat(R"({
  "aeTitle": "MISEG",
  "bindAddress": "127.0.0.1",
  "port": )", node_port_, R"(,
  "peers": [{"aeTitle": "ORTHANC", "host": "127.0.0.1"}],
  "quietPeriodSeconds": 2,
  "maxRetryIntervalSeconds": 1,
  "destinations": [
    {"name": "pacs", "dicom": {"aeTitle": "ORTHANC", "host": "127.0.0.1", "port": )",
                                               orthanc_->dicom_port(), R"(}},
    {"name": "web", "stowRs": {"url": ")", orthanc_->dicomweb_studies_url(), R"("}}
  ],
  "routes": [{"callingAeTitle": "ORTHANC", "storeDataset": "cardiac",
              "segmentDataset": "cardiac", "deliverTo": [")", deliver_to, R"("]}]
})");
    RestartMiseg(config_path);
  }

  void RestartMiseg(const std::string& config_path) {
    config_path_ = config_path;
    miseg_.reset();
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start(dir_.path() + "/miseg", {"--dicom_node_config=" + config_path});
    ASSERT_TRUE(started.ok()) << started.status();
    miseg_ = *std::move(started);
    ASSERT_TRUE(miseg_->WaitForLog(absl::StrCat("listening on port ", node_port_), std::chrono::seconds(10)))
        << miseg_->log();
    client_ = std::make_unique<ApiClient>(miseg_->address());
  }

  // A dataset with an active model (two labeled studies, a two-step job).
  void TrainModel() {
    v1::Dataset dataset;
    ASSERT_TRUE(client_->CreateDataset("cardiac", &dataset).ok());
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(61, i, true);
      ASSERT_TRUE(study.ok());
      v1::UploadResponse response;
      ASSERT_TRUE(client_->Upload("cardiac", v1::STUDY_ROLE_LABELED, LabeledFiles(*study), &response).ok());
    }
    v1::StartJobRequest request;
    request.set_dataset("cardiac");
    *request.mutable_hyperparameters() = TinyHyperparameters(2, 2);
    v1::Job job;
    auto context = client_->Context();
    ASSERT_TRUE(client_->training->StartJob(context.get(), request, &job).ok());
    std::vector<v1::JobEvent> events;
    ASSERT_TRUE(client_->Watch(job.id(), &events).ok());
    ASSERT_EQ(events.back().state().state(), v1::JOB_STATE_SUCCEEDED);
  }

  // The study into Orthanc; returns its Orthanc series id.
  std::string PutIntoOrthanc(const PhantomStudy& study) {
    for (const DicomBuffer& f : study.image_files) EXPECT_TRUE(orthanc_->UploadInstance(f.bytes).ok());
    absl::StatusOr<std::string> series = orthanc_->FindSeries(study.series.series_instance_uid);
    EXPECT_TRUE(series.ok()) << series.status();
    return series.ok() ? *series : "";
  }

  std::vector<v1::Delivery> Deliveries() {
    v1::ListDeliveriesResponse response;
    auto context = client_->Context();
    auto stub = v1::DicomNodeService::NewStub(client_->channel);
    grpc::Status status = stub->ListDeliveries(context.get(), {}, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return {response.deliveries().begin(), response.deliveries().end()};
  }

  // Waits (bounded) until a delivery satisfies the predicate; polls the API, as an operator
  // would, every 100 ms.
  template <typename Predicate>
  std::optional<v1::Delivery> WaitForDelivery(Predicate predicate, std::chrono::seconds timeout) {
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      for (const v1::Delivery& d : Deliveries()) {
        if (predicate(d)) return d;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return std::nullopt;
  }

  // The SEG in Orthanc: referencing the source series, valid for dciodvfy.
  void ExpectSegInOrthanc(const std::string& seg_sop_uid, const std::string& source_series_uid) {
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> found = orthanc_->Lookup(seg_sop_uid);
    ASSERT_TRUE(found.ok()) << found.status();
    std::string instance_id;
    for (const auto& [id, type] : *found) {
      if (type == "Instance") instance_id = id;
    }
    ASSERT_FALSE(instance_id.empty()) << "the SEG is not in Orthanc";
    absl::StatusOr<std::string> bytes = orthanc_->DownloadInstance(instance_id);
    ASSERT_TRUE(bytes.ok());
    absl::StatusOr<InstanceInfo> info = IdentifyInstance({"seg", *bytes});
    ASSERT_TRUE(info.ok());
    EXPECT_TRUE(info->is_segmentation);
    EXPECT_THAT(info->referenced_series_instance_uids, ::testing::ElementsAre(source_series_uid));
    const std::string path = dir_.path() + "/seg-from-orthanc.dcm";
    std::ofstream(path, std::ios::binary) << *bytes;
    auto [rc, output] = RunCommand("dciodvfy -new " + path);
    EXPECT_EQ(output.find("Error"), std::string::npos) << output;
  }

  TempDir dir_;
  int node_port_ = 0;
  std::string config_path_;
  std::unique_ptr<OrthancProcess> orthanc_;
  std::unique_ptr<ServerProcess> miseg_;
  std::unique_ptr<ApiClient> client_;
};

TEST_F(DicomNodeTest, OrthancSendsAStudyAndGetsItsSegBackByCStore) {
  StartMiseg("pacs");
  TrainModel();
  absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(62, 0, false);
  ASSERT_TRUE(study.ok());
  const std::string series_id = PutIntoOrthanc(*study);
  const auto sent = Clock::now();
  absl::StatusOr<int> stored = orthanc_->StoreToModality("miseg", {series_id});
  ASSERT_TRUE(stored.ok()) << stored.status() << "\n" << miseg_->log();
  const auto forwarded = Clock::now();

  std::optional<v1::Delivery> delivered = WaitForDelivery(
      [](const v1::Delivery& d) { return d.state() == v1::DELIVERY_STATE_DELIVERED; },
      std::chrono::seconds(120));
  ASSERT_TRUE(delivered.has_value()) << miseg_->log();
  const auto seen = Clock::now();
  EXPECT_EQ(delivered->destination(), "pacs");
  EXPECT_EQ(delivered->source_series_instance_uid(), study->series.series_instance_uid);
  EXPECT_EQ(delivered->attempts(), 1);
  ExpectSegInOrthanc(delivered->segmentation_sop_instance_uid(), study->series.series_instance_uid);
  // The figure for the record: last instance received -> SEG stored in Orthanc.
  std::cout << "[ latency  ] C-STORE: last instance received -> SEG stored in Orthanc "
            << (delivered->delivered_unix_ms() - delivered->received_unix_ms()) << " ms (server clock); "
            << "Orthanc forward " << std::chrono::duration_cast<std::chrono::milliseconds>(forwarded - sent).count()
            << " ms; forward done -> delivery seen by the test "
            << std::chrono::duration_cast<std::chrono::milliseconds>(seen - forwarded).count() << " ms\n";

  // The route also stored the study into the dataset, as unlabeled.
  v1::GetDatasetRequest get;
  get.set_name("cardiac");
  v1::Dataset dataset;
  auto context = client_->Context();
  ASSERT_TRUE(client_->datasets->GetDataset(context.get(), get, &dataset).ok());
  EXPECT_EQ(dataset.unlabeled_studies(), 1);
  const std::string metrics = ScrapeMetrics(miseg_->metrics_port());
  EXPECT_EQ(MetricValue(metrics, "miseg_deliveries{state=\"delivered\"}"), 1);
  EXPECT_EQ(MetricValue(metrics, "miseg_dicom_received_instances_total{outcome=\"stored\"}"),
            static_cast<double>(study->image_files.size()));
  EXPECT_EQ(MetricValue(metrics, "miseg_delivery_latency_seconds_count"), 1);
}

TEST_F(DicomNodeTest, OrthancSendsAStudyAndGetsItsSegBackByStowRs) {
  StartMiseg("web");
  TrainModel();
  absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(63, 0, false);
  ASSERT_TRUE(study.ok());
  const std::string series_id = PutIntoOrthanc(*study);
  ASSERT_TRUE(orthanc_->StoreToModality("miseg", {series_id}).ok());
  std::optional<v1::Delivery> delivered = WaitForDelivery(
      [](const v1::Delivery& d) { return d.state() == v1::DELIVERY_STATE_DELIVERED; },
      std::chrono::seconds(120));
  ASSERT_TRUE(delivered.has_value()) << miseg_->log();
  EXPECT_EQ(delivered->destination(), "web");
  ExpectSegInOrthanc(delivered->segmentation_sop_instance_uid(), study->series.series_instance_uid);
  std::cout << "[ latency  ] STOW-RS: last instance received -> SEG stored in Orthanc "
            << (delivered->delivered_unix_ms() - delivered->received_unix_ms()) << " ms\n";
}

TEST_F(DicomNodeTest, ResultsWaitOutAnOrthancOutageAndAMisegRestart) {
  StartMiseg("pacs");
  TrainModel();
  ASSERT_TRUE(orthanc_->Stop().ok());
  // The PACS is down: the study comes from a modality sending as the configured peer.
  absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(64, 0, false);
  ASSERT_TRUE(study.ok());
  std::vector<std::string> files;
  for (const DicomBuffer& f : study->image_files) files.push_back(f.bytes);
  ASSERT_TRUE(SendByCStore({"MISEG", "127.0.0.1", node_port_}, "ORTHANC", files, std::chrono::seconds(30)).ok());
  std::optional<v1::Delivery> failing = WaitForDelivery(
      [](const v1::Delivery& d) { return d.state() == v1::DELIVERY_STATE_PENDING && d.attempts() >= 2; },
      std::chrono::seconds(120));
  ASSERT_TRUE(failing.has_value()) << miseg_->log();
  EXPECT_FALSE(failing->last_error().empty());

  // miseg dies too; the outbox is on disk.
  miseg_->Kill();
  RestartMiseg(config_path_);
  std::vector<v1::Delivery> after_restart = Deliveries();
  ASSERT_EQ(after_restart.size(), 1u);
  EXPECT_EQ(after_restart[0].state(), v1::DELIVERY_STATE_PENDING);

  ASSERT_TRUE(orthanc_->Restart().ok());
  std::optional<v1::Delivery> delivered = WaitForDelivery(
      [](const v1::Delivery& d) { return d.state() == v1::DELIVERY_STATE_DELIVERED; },
      std::chrono::seconds(120));
  ASSERT_TRUE(delivered.has_value()) << miseg_->log();
  EXPECT_GE(delivered->attempts(), 3);
  ExpectSegInOrthanc(delivered->segmentation_sop_instance_uid(), study->series.series_instance_uid);
  EXPECT_EQ(Deliveries().size(), 1u);  // delivered once, not twice
}

TEST_F(DicomNodeTest, ASeriesOnAnAssociationLeftOpenCompletesAfterTheQuietPeriod) {
  StartMiseg("pacs");
  TrainModel();
  absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(66, 0, false);
  ASSERT_TRUE(study.ok());
  // A modality that keeps its association open: only the quiet period (2 s) completes the
  // series.
  RawAssociation association(node_port_, "ORTHANC", "MISEG");
  ASSERT_TRUE(association.established()) << association.condition().text();
  for (const DicomBuffer& file : study->image_files) {
    absl::StatusOr<std::unique_ptr<DcmFileFormat>> parsed = ParseDicom(file.bytes, file.name);
    ASSERT_TRUE(parsed.ok());
    absl::StatusOr<InstanceInfo> info = IdentifyInstance(file);
    ASSERT_TRUE(info.ok());
    ASSERT_EQ(association.Store((*parsed)->getDataset(), info->sop_class_uid, info->sop_instance_uid), 0);
  }
  std::optional<v1::Delivery> delivered = WaitForDelivery(
      [](const v1::Delivery& d) { return d.state() == v1::DELIVERY_STATE_DELIVERED; },
      std::chrono::seconds(120));
  ASSERT_TRUE(delivered.has_value()) << miseg_->log();
  // Not before the quiet period had passed since the last instance.
  EXPECT_GE(delivered->created_unix_ms() - delivered->received_unix_ms(), 2000);
  ExpectSegInOrthanc(delivered->segmentation_sop_instance_uid(), study->series.series_instance_uid);
  EXPECT_TRUE(association.Release());
}

TEST_F(DicomNodeTest, UnknownPeersAreRefusedAndMalformedInstancesLeaveNothing) {
  StartMiseg("pacs");
  absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(65, 0, false);
  ASSERT_TRUE(study.ok());
  const std::vector<std::string> files = {study->image_files[0].bytes};
  absl::Status stranger = SendByCStore({"MISEG", "127.0.0.1", node_port_}, "STRANGER", files,
                                       std::chrono::seconds(30));
  EXPECT_FALSE(stranger.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(stranger) || absl::IsUnavailable(stranger)) << stranger;

  // An instance without its Series Instance UID gets a failure status.
  absl::StatusOr<std::unique_ptr<DcmFileFormat>> parsed = ParseDicom(files[0], "x");
  ASSERT_TRUE(parsed.ok());
  (*parsed)->getDataset()->findAndDeleteElement(DCM_SeriesInstanceUID);
  absl::StatusOr<std::string> malformed = SerializeDicom(**parsed);
  ASSERT_TRUE(malformed.ok());
  absl::Status refused = SendByCStore({"MISEG", "127.0.0.1", node_port_}, "ORTHANC", {*malformed},
                                      std::chrono::seconds(30));
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(refused.message(), HasSubstr("0xA900"));  // a failure status, not an abort

  const std::string metrics = ScrapeMetrics(miseg_->metrics_port());
  EXPECT_EQ(MetricValue(metrics, "miseg_dicom_received_instances_total{outcome=\"stored\"}"), 0);
  EXPECT_TRUE(Deliveries().empty());
  // Nothing was written to the file store.
  auto [rc, listing] = RunCommand("find " + dir_.path() + "/miseg/objects -type f 2>/dev/null | wc -l");
  EXPECT_EQ(listing, "0\n");
}

// JPEG 2000 studies (the frames encoded by opj_compress, wrapped by pydicom) sent by DCMTK's
// storescu in their own transfer syntax, as a PACS that stores JPEG 2000 sends them: stored,
// segmented and delivered like any other; the lossy one is flagged in the dataset and its
// SEG carries Lossy Image Compression "01" with the method (PS3.3 C.7.6.1.1.5).
TEST_F(DicomNodeTest, StorescuSendsJpeg2000StudiesThatAreSegmentedAndDelivered) {
  if (!std::filesystem::exists(MISEG_STORESCU) || !std::filesystem::exists("/usr/bin/opj_compress")) {
    GTEST_SKIP() << "storescu or opj_compress is not installed";
  }
  StartMiseg("pacs");
  TrainModel();
  std::map<std::string, bool> lossy_of_series;
  for (bool lossy : {false, true}) {
    absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(66, lossy ? 1 : 0, false);
    ASSERT_TRUE(study.ok());
    lossy_of_series[study->series.series_instance_uid] = lossy;
    const std::string dir = absl::StrCat(dir_.path(), "/j2k-", lossy);
    std::filesystem::create_directories(dir);
    std::string encode = absl::StrCat("/usr/bin/python3 ", MISEG_JPEG2000_REENCODE,
                                      lossy ? " --lossy 8" : "");
    // -xv / -xw: propose the file's JPEG 2000 syntax (storescu cannot decompress it);
    // -R: only the contexts these files need.
    std::string send = absl::StrCat(MISEG_STORESCU, lossy ? " -xw" : " -xv",
                                    " -R -aet ORTHANC -aec MISEG 127.0.0.1 ", node_port_);
    for (size_t i = 0; i < study->image_files.size(); ++i) {
      const std::string in = absl::StrCat(dir, "/native", i, ".dcm");
      std::ofstream(in, std::ios::binary) << study->image_files[i].bytes;
      absl::StrAppend(&encode, " ", in, " ", dir, "/j2k", i, ".dcm");
      absl::StrAppend(&send, " ", dir, "/j2k", i, ".dcm");
    }
    auto [encoded, encode_output] = RunCommand(encode + " 2>&1");
    ASSERT_EQ(encoded, 0) << encode_output;
    std::ifstream first(dir + "/j2k0.dcm", std::ios::binary);
    const std::string first_bytes((std::istreambuf_iterator<char>(first)), {});
    ASSERT_NE(first_bytes.find(lossy ? "1.2.840.10008.1.2.4.91" : "1.2.840.10008.1.2.4.90"),
              std::string::npos);
    auto [sent, send_output] = RunCommand(send + " 2>&1");
    ASSERT_EQ(sent, 0) << send_output << miseg_->log();
  }

  for (const auto& [series_uid, lossy] : lossy_of_series) {
    SCOPED_TRACE(lossy ? "lossy" : "lossless");
    std::optional<v1::Delivery> delivered = WaitForDelivery(
        [&series_uid = series_uid](const v1::Delivery& d) {
          return d.state() == v1::DELIVERY_STATE_DELIVERED &&
                 d.source_series_instance_uid() == series_uid;
        },
        std::chrono::seconds(120));
    ASSERT_TRUE(delivered.has_value()) << miseg_->log();
    ExpectSegInOrthanc(delivered->segmentation_sop_instance_uid(), series_uid);
    // The SEG's provenance, as Orthanc holds it.
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> found =
        orthanc_->Lookup(delivered->segmentation_sop_instance_uid());
    ASSERT_TRUE(found.ok());
    for (const auto& [id, type] : *found) {
      if (type != "Instance") continue;
      absl::StatusOr<std::string> bytes = orthanc_->DownloadInstance(id);
      ASSERT_TRUE(bytes.ok());
      absl::StatusOr<std::unique_ptr<DcmFileFormat>> seg = ParseDicom(*bytes, "seg");
      ASSERT_TRUE(seg.ok());
      OFString flag, method;
      (*seg)->getDataset()->findAndGetOFString(DCM_LossyImageCompression, flag);
      (*seg)->getDataset()->findAndGetOFStringArray(DCM_LossyImageCompressionMethod, method);
      EXPECT_EQ(std::string(flag.c_str()), lossy ? "01" : "00");
      EXPECT_EQ(std::string(method.c_str()), lossy ? "ISO_15444_1" : "");
    }
  }
  // Both stored into the dataset, the lossy one flagged.
  v1::ListStudiesRequest request;
  request.set_dataset("cardiac");
  request.set_role(v1::STUDY_ROLE_UNLABELED);
  v1::ListStudiesResponse response;
  auto context = client_->Context();
  ASSERT_TRUE(client_->datasets->ListStudies(context.get(), request, &response).ok());
  int seen = 0;
  for (const v1::Study& study : response.studies()) {
    auto it = lossy_of_series.find(study.series_instance_uid());
    if (it == lossy_of_series.end()) continue;
    ++seen;
    EXPECT_EQ(study.lossy_compressed(), it->second) << study.series_instance_uid();
    EXPECT_EQ(study.lossy_compression_method(), it->second ? "ISO_15444_1" : "");
  }
  EXPECT_EQ(seen, 2);
}

}  // namespace
}  // namespace miseg::testing

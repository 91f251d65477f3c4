#include "tests/chaos/chaos_harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "tests/server/child_process.h"
#include "tests/server/api_client.h"
#include "tests/server/test_studies.h"

namespace miseg::chaos {
namespace {

using client::IsTerminal;

using miseg::testing::ApiClient;

uint64_t SeedOf(const ChaosOptions& options) {
  if (options.seed != 0) return options.seed;
  return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) %
         1000000007ULL;
}

// Follows a job to its end; its final state.
v1::JobState AwaitJob(const ApiClient& client, int64_t job_id) {
  std::vector<v1::JobEvent> events;
  client.Watch(job_id, &events, 0, /*deadline_seconds=*/900);
  for (auto it = events.rbegin(); it != events.rend(); ++it) {
    if (it->has_state() && IsTerminal(it->state().state())) return it->state().state();
  }
  return v1::JOB_STATE_UNSPECIFIED;
}

}  // namespace

Harness::Harness(ChaosOptions options) : options_(std::move(options)), rng_(SeedOf(options_)) {
  clients_.seed = SeedOf(options_);
}

Harness::~Harness() {
  stop_load_ = true;
  jobs_.NoMoreJobs();
  link_.Finish();
  for (std::thread& t : load_threads_) {
    if (t.joinable()) t.join();
  }
  for (std::thread& t : watcher_threads_) {
    if (t.joinable()) t.join();
  }
}

absl::Status Harness::StartServer() {
  absl::StatusOr<std::unique_ptr<testing::ServerProcess>> started;
  for (int attempt = 0; attempt < 10; ++attempt) {
    started = testing::ServerProcess::Start(
        data_, {"--dicom_node_config=" + node_config_, "--training_threads=1",
                "--inference_queue=16", "--shutdown_grace_seconds=20"});
    // Exit status 127: the binary could not be run at all (a rebuild replacing it in a
    // shared build folder; MISEG_TEST_SERVER_BINARY avoids that): not the server's doing.
    if (started.ok() || !absl::StrContains(started.status().message(), "exit status 127")) break;
    std::cerr << "chaos: cannot run the server binary (being rebuilt?); trying again\n";
    absl::SleepFor(absl::Seconds(3));
  }
  if (!started.ok()) return started.status();
  server_ = *std::move(started);
  if (!server_->WaitForLog(absl::StrCat("listening on port ", node_port_),
                           std::chrono::seconds(30))) {
    return absl::UnavailableError(absl::StrCat("the DICOM node did not listen:\n", server_->log()));
  }
  return absl::OkStatus();
}

absl::Status Harness::SetUp() {
  if (options_.keep_dir.empty()) {
    temp_ = std::make_unique<testing::TempDir>();
    root_ = temp_->path();
  } else {
    root_ = options_.keep_dir;
    std::filesystem::create_directories(root_);
  }
  data_ = root_ + "/data";
  node_port_ = testing::FreeLoopbackPort();
  clients_.node_port = node_port_;
  absl::StatusOr<std::unique_ptr<testing::OrthancProcess>> orthanc =
      testing::OrthancProcess::Start(root_ + "/orthanc", {});
  if (!orthanc.ok()) return orthanc.status();
  orthanc_ = *std::move(orthanc);
  node_config_ = root_ + "/node.json";
  // Series complete only when their association ends: a series cut by a kill waits in the
  // inbox for the sender to send it again whole.
  std::ofstream(node_config_) << absl::StrCat(R"({
  "aeTitle": "MISEG", "bindAddress": "127.0.0.1", "port": )",
                                              node_port_, R"(,
  "peers": [{"aeTitle": "SENDER", "host": "127.0.0.1"}],
  "quietPeriodSeconds": 3600, "maxRetryIntervalSeconds": 1,
  "destinations": [{"name": "pacs", "dicom": {"aeTitle": "ORTHANC", "host": "127.0.0.1", "port": )",
                                              orthanc_->dicom_port(), R"(}}],
  "routes": [{"callingAeTitle": "SENDER", "storeDataset": "pacs", "segmentDataset": "seg",
              "deliverTo": ["pacs"]}]
})");
  if (absl::Status started = StartServer(); !started.ok()) return started;
  return FillDatasets();
}

// "seg" gets a model for the segmentations and the node; "train" the jobs' fixed data.
absl::Status Harness::FillDatasets() {
  ApiClient client(server_->address());
  for (const char* name : {kUploadsDataset, kTrainDataset, kSegDataset, kPacsDataset}) {
    if (!client.CreateDataset(name).ok()) return absl::InternalError("cannot create datasets");
  }
  const auto upload = [&](const char* dataset, uint64_t population, int index, bool labeled) {
    absl::StatusOr<PhantomStudy> study = testing::SmallPhantomStudy(population, index, labeled);
    v1::UploadResponse response;
    return study.ok() &&
           client
               .Upload(dataset, labeled ? v1::STUDY_ROLE_LABELED : v1::STUDY_ROLE_UNLABELED,
                       testing::LabeledFiles(*study), &response)
               .ok() &&
           response.stored_instances() ==
               static_cast<int64_t>(testing::LabeledFiles(*study).size());
  };
  bool ok = upload(kSegDataset, 61, 0, true) && upload(kSegDataset, 61, 1, true);
  for (int i = 0; i < 4; ++i) ok = ok && upload(kTrainDataset, 21, i, i < 3);
  if (!ok) return absl::InternalError("cannot upload the datasets' studies");
  v1::StartJobRequest request;
  request.set_dataset(kSegDataset);
  *request.mutable_hyperparameters() = testing::TinyHyperparameters(2, 2);
  v1::Job job;
  auto context = client.Context();
  if (!client.training->StartJob(context.get(), request, &job).ok() ||
      AwaitJob(client, job.id()) != v1::JOB_STATE_SUCCEEDED) {
    return absl::InternalError(
        absl::StrCat("the segmentation model did not train:\n", server_->log()));
  }
  clients_.job_hyperparameters = testing::TinyHyperparameters(options_.job_steps, 2);
  return absl::OkStatus();
}

void Harness::StartClients() {
  clients_.link = &link_;
  clients_.verdict = &verdict_;
  clients_.ledger = &ledger_;
  clients_.jobs = &jobs_;
  clients_.stop_load = &stop_load_;
  const int max_new = std::max(40, options_.kills * 6);
  for (int i = 0; i < options_.uploaders; ++i) {
    load_threads_.emplace_back([this, i, max_new] { RunUploader(clients_, i, max_new); });
  }
  for (int i = 0; i < options_.segmenters; ++i) {
    load_threads_.emplace_back([this, i] { RunSegmenter(clients_, i); });
  }
  load_threads_.emplace_back([this] { RunSender(clients_); });
  load_threads_.emplace_back([this] { RunJobDriver(clients_); });
  for (int i = 0; i < options_.watchers; ++i) {
    watcher_threads_.emplace_back([this, i] { RunWatcher(clients_, i); });
  }
}

void Harness::KillAndRestart(int kill) {
  const int delay =
      std::uniform_int_distribution<int>(options_.min_delay_ms, options_.max_delay_ms)(rng_);
  absl::SleepFor(absl::Milliseconds(delay));
  link_.Down();  // before the kill: every failure it causes comes after this
  server_->Kill();
  ++kills_;
  CheckStopped(kill);
  absl::Status started = StartServer();
  if (!started.ok()) {  // one more try: a port taken by chance, say
    std::cerr << "chaos: restart after kill " << kill << " failed, retrying: " << started << "\n";
    started = StartServer();
  }
  if (!started.ok()) {
    verdict_.Violation(
        absl::StrCat("the server did not restart after kill ", kill, ": ", started.message()));
    return;
  }
  ++restarts_;
  CheckRestarted(kill);
  link_.Up(server_->address());
}

}  // namespace miseg::chaos

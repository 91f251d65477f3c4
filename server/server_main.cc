// miseg-server: the long-running service. Embedded defaults: SQLite and files under
// --data_dir, gRPC on loopback, metrics on loopback. Listening elsewhere needs TLS and a
// token file, or --allow_insecure_remote. SIGTERM/SIGINT: stop accepting calls, let
// running ones finish (up to --shutdown_grace_seconds), checkpoint the running job and put
// it back in the queue, exit 0. One server per --data_dir: a second exits 2 (DirLock).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <dcmtk/oflog/oflog.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "core/common/allocator_tuning.h"
#include "core/dicom/series_reader.h"
#include "server/edge/auth.h"
#include "server/backup.h"
#include "server/verify.h"
#include "server/dicom_node/dicom_node.h"
#include "server/import/import_service.h"
#include "server/import/import_sources.h"
#include "server/import/importer.h"
#include "server/jobs/event_hub.h"
#include "server/health_endpoint.h"
#include "server/log_bridges.h"
#include "server/jobs/job_runner.h"
#include "server/edge/lifecycle.h"
#include "server/flag_help.h"
#include "server/log.h"
#include "server/metrics/metrics.h"
#include "server/domain/segmentation_engine.h"
#include "server/edge/services.h"
#include "server/edge/tls.h"
#include "server/domain/work_pool.h"
#include "server/edge/rpc_edge.h"
#include "server/store/dir_lock.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

ABSL_FLAG(std::string, data_dir, "miseg-data",
          "Directory of the database, the DICOM file store, checkpoints and models");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC address (host:port; port 0 = any free)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics address (host:port; port 0 = any free)");
ABSL_FLAG(std::vector<std::string>, devices, {"cpu"},
          "The server's own training devices, one rank each (cpu, cuda, cuda:1, ...); "
          "empty: train only on miseg-worker processes");
ABSL_FLAG(int, worker_lease_seconds, 15,
          "A miseg-worker silent this long loses its ranks (their jobs resume elsewhere)");
ABSL_FLAG(int, worker_heartbeat_ms, 1000, "How often workers heartbeat");
ABSL_FLAG(int, collective_timeout_seconds, 60,
          "Data-parallel jobs: a rank waiting longer than this in a collective (a peer died, "
          "the network is cut) gives up, and the job resumes from its checkpoint");
ABSL_FLAG(std::string, rendezvous_host, "127.0.0.1",
          "Address of this machine that miseg-workers reach, where the server's own rank 0 "
          "hosts a data-parallel job's rendezvous");
ABSL_FLAG(std::string, checkpoint_retention, "all",
          "Checkpoints kept of a failed or cancelled job: all (its last two), last, or none; "
          "applied when a job finishes and at startup (a succeeded job's model replaces them)");
ABSL_FLAG(bool, verify_replicas, false,
          "Debug: data-parallel ranks compare a hash of their parameters after every step");
ABSL_FLAG(int, training_threads, 0, "CPU threads per training job; 0 = LibTorch's default");
ABSL_FLAG(bool, training_cuda_graphs, false,
          "CUDA devices: each training step's forward, losses and backward replay a CUDA graph "
          "(ignored on the CPU)");
ABSL_FLAG(std::string, inference_device, "cpu", "Device for segmentation");
ABSL_FLAG(int, inference_concurrency, 1, "Segmentations that run at once");
ABSL_FLAG(int, inference_queue, 4, "Segmentations that may wait; beyond: RESOURCE_EXHAUSTED");
ABSL_FLAG(int, model_cache, 2, "Models kept loaded for segmentation");
ABSL_FLAG(int64_t, inference_max_batch_slices, 0,
          "Dynamic batching: slices of segmentations running at once on one model that share "
          "a network forward, at most; 0 = off");
ABSL_FLAG(bool, inference_cuda_graphs, false,
          "On a CUDA inference device: network forwards replay CUDA graphs captured at the "
          "model grid (ignored on the CPU)");
ABSL_FLAG(double, inference_batch_wait_ms, 0,
          "Dynamic batching: how long a slice batch may wait for others to join it");
ABSL_FLAG(int64_t, max_request_mib, 2048, "Largest Upload or Segment stream, in MiB");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate chain (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: clients must present a certificate it signed (mutual TLS)");
ABSL_FLAG(std::string, token_file, "",
          "File of '<sha256 hex> <role> <name>' lines; without it every caller is admin");
ABSL_FLAG(bool, allow_insecure_remote, false,
          "Allow listening beyond loopback without TLS and tokens");
ABSL_FLAG(std::string, ready_file, "",
          "Written (atomically) once serving: grpc_port, metrics_port and pid lines");
ABSL_FLAG(std::string, dicom_node_config, "",
          "JSON configuration of the DICOM node (storage SCP, routes, destinations); "
          "empty: no DICOM node");
ABSL_FLAG(std::string, import_sources, "",
          "JSON file of the PACS sources studies are imported from (DICOMweb: QIDO-RS and "
          "WADO-RS; DICOM: C-FIND and C-GET); empty: no imports");
ABSL_FLAG(int, import_threads, 2, "Imports from a PACS that run at once");
ABSL_FLAG(int64_t, import_test_pause_after, 0,
          "Tests only: imports stop fetching after this many instances (0: never)");
ABSL_FLAG(int, shutdown_grace_seconds, 30, "How long running calls may finish at shutdown");
ABSL_FLAG(int, max_streams, 64,
          "Upload and Segment streams served at once; beyond: RESOURCE_EXHAUSTED");
ABSL_FLAG(double, stream_idle_timeout_seconds, 30,
          "A stream whose client moves less than --stream_min_progress_kib in this many "
          "seconds (while the server waits on it) is closed with DEADLINE_EXCEEDED");
ABSL_FLAG(int64_t, stream_min_progress_kib, 64,
          "Least data a client must send or take per idle window to keep its stream");
ABSL_FLAG(int, ingest_threads, 2, "Threads that check and commit finished uploads");
ABSL_FLAG(std::string, health_listen, "",
          "Also serve grpc.health.v1.Health alone, in plain text, on this host:port (for "
          "probes without TLS, e.g. Kubernetes grpc probes); empty: none");
ABSL_FLAG(std::string, log_format, "text",
          "Log lines on stderr: text, logfmt or json (one line per event, for aggregators)");
ABSL_FLAG(int, stream_window_kib, 1024,
          "HTTP/2 receive window of each stream: the most a client's unread data may take");

namespace miseg {
namespace {

constexpr char kVersion[] = "0.1.0";

// Objects no instance references: left by a crash between storing files and committing
// their study, or between a delete's commit and its file removal.
void CollectGarbage(Store& store, NodeStore* node_store, FileStore& files) {
  absl::StatusOr<std::vector<std::string>> referenced = store.ReferencedObjects();
  absl::StatusOr<std::vector<std::string>> stored = files.List();
  if (!referenced.ok() || !stored.ok()) return;
  std::set<std::string> keep(referenced->begin(), referenced->end());
  if (node_store != nullptr) {
    absl::StatusOr<std::vector<std::string>> node_objects = node_store->ReferencedObjects();
    if (!node_objects.ok()) return;  // unsure what the node needs: keep everything
    keep.insert(node_objects->begin(), node_objects->end());
  }
  int removed = 0;
  for (const std::string& hash : *stored) {
    if (!keep.count(hash) && files.Remove(hash).ok()) ++removed;
  }
  if (removed > 0) Log(absl::StrCat("removed ", removed, " unreferenced stored files"));
}

// A startup step that failed: the line to log and the exit code (2: bad configuration,
// 1: the environment refused).
struct StartupError {
  int exit_code;
  std::string message;
};
using StartupResult = std::optional<StartupError>;

StartupError Refused(int exit_code, const absl::Status& status) {
  return {exit_code, std::string(status.message())};
}

// Signals go to the dedicated thread Serve() starts, never to a worker.
void SetUpProcess(sigset_t& signals) {
  KeepFreedMemoryForReuse();
  // DCMTK logs two INFO lines per C-STORE by default; warnings and errors are enough.
  OFLog::configure(OFLogger::WARN_LOG_LEVEL);
  InstallLogBridges();  // gRPC's and DCMTK's lines as records of --log_format
  RegisterDicomCodecs();
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
}

absl::StatusOr<JobRunnerOptions> RunnerOptionsFromFlags(const std::string& data_dir) {
  JobRunnerOptions options;
  options.devices = absl::GetFlag(FLAGS_devices);
  options.work_dir = data_dir;
  options.training_threads = absl::GetFlag(FLAGS_training_threads);
  options.training_cuda_graphs = absl::GetFlag(FLAGS_training_cuda_graphs);
  options.rendezvous_host = absl::GetFlag(FLAGS_rendezvous_host);
  options.scheduler.lease = absl::Seconds(std::max(1, absl::GetFlag(FLAGS_worker_lease_seconds)));
  options.scheduler.heartbeat_interval =
      absl::Milliseconds(std::max(50, absl::GetFlag(FLAGS_worker_heartbeat_ms)));
  options.collective_timeout =
      absl::Seconds(std::max(1, absl::GetFlag(FLAGS_collective_timeout_seconds)));
  options.verify_replicas = absl::GetFlag(FLAGS_verify_replicas);
  absl::StatusOr<CheckpointRetention> retention =
      ParseCheckpointRetention(absl::GetFlag(FLAGS_checkpoint_retention));
  if (!retention.ok()) return retention.status();
  options.checkpoint_retention = *retention;
  return options;
}

SegmentationEngineOptions EngineOptionsFromFlags() {
  SegmentationEngineOptions options;
  options.device = absl::GetFlag(FLAGS_inference_device);
  options.concurrency = std::max(1, absl::GetFlag(FLAGS_inference_concurrency));
  options.queue = std::max(0, absl::GetFlag(FLAGS_inference_queue));
  options.cached_models = absl::GetFlag(FLAGS_model_cache);
  options.max_batch_slices = std::max<int64_t>(0, absl::GetFlag(FLAGS_inference_max_batch_slices));
  options.batch_wait_ms = std::max(0.0, absl::GetFlag(FLAGS_inference_batch_wait_ms));
  options.cuda_graphs = absl::GetFlag(FLAGS_inference_cuda_graphs);
  options.version = kVersion;
  return options;
}

// Uploads stream in chunks; a single message only needs room for one chunk.
void ConfigureTransport(grpc::ServerBuilder& builder) {
  builder.SetMaxReceiveMessageSize(64 << 20);
  // Bounded receive windows: with gRPC's bandwidth-delay probing, each stream's window grew
  // on loopback until 8 uploads of 256 MiB held about 500 MiB in transport buffers (measured
  // with bench/load.sh). A stream's bytes now wait in the client, not in this process.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                             absl::GetFlag(FLAGS_stream_window_kib) << 10);
}

void WriteReadyFile(int grpc_port, int metrics_port) {
  const std::string ready_file = absl::GetFlag(FLAGS_ready_file);
  if (ready_file.empty()) return;
  absl::Status written = WriteFileAtomically(
      ready_file, absl::StrCat("grpc_port=", grpc_port, "\nmetrics_port=", metrics_port,
                               "\npid=", getpid(), "\n"));
  if (!written.ok()) Log(std::string(written.message()));
}

// The server's parts in the order they start; members are destroyed in reverse, so each
// part outlives everything that references it.
class ServerProcess {
 public:
  ServerProcess() { SetUpProcess(signals_); }

  StartupResult LoadEdgeConfig();
  StartupResult OpenDataDir();
  StartupResult LoadNodeAndImportConfig();
  StartupResult StartDomain();
  StartupResult StartEdge();
  void Serve();

 private:
  StartupResult StartImporter();
  StartupResult StartHealthEndpoint();
  void MakeServiceDeps();
  void StopOnSignal();
  StartupResult FailAfterRunnerStarted(StartupError error) {
    if (server_) server_->Shutdown();
    runner_->Shutdown();
    return error;
  }

  sigset_t signals_;
  std::string listen_;
  bool tls_ = false;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
  Authenticator auth_ = Authenticator::AllowAll();
  std::string data_dir_;
  std::optional<DirLock> dir_lock_;
  std::unique_ptr<Store> store_;
  std::optional<FileStore> files_;
  std::optional<server::DicomNodeConfig> node_config_;
  std::vector<ImportSourceSpec> import_sources_;
  std::unique_ptr<ServerMetrics> metrics_;
  int metrics_port_ = 0;
  EventHub hub_;
  std::unique_ptr<JobRunner> runner_;
  std::unique_ptr<SegmentationEngine> engine_;
  std::unique_ptr<DicomNode> node_;
  std::unique_ptr<WorkPool> ingest_pool_;
  std::unique_ptr<StreamSlots> stream_slots_;
  std::unique_ptr<IdleWatchdog> watchdog_;
  ServiceDeps deps_;
  std::unique_ptr<Importer> importer_;
  std::vector<std::unique_ptr<grpc::Service>> services_;
  std::unique_ptr<grpc::Server> server_;
  int grpc_port_ = 0;
  std::unique_ptr<HealthEndpoint> health_;
};

// Listening beyond loopback needs TLS and tokens (or --allow_insecure_remote).
StartupResult ServerProcess::LoadEdgeConfig() {
  listen_ = absl::GetFlag(FLAGS_listen);
  const std::string token_file = absl::GetFlag(FLAGS_token_file);
  tls_ = !absl::GetFlag(FLAGS_tls_cert).empty();
  if (!IsLoopbackAddress(listen_) && !(tls_ && !token_file.empty()) &&
      !absl::GetFlag(FLAGS_allow_insecure_remote)) {
    return StartupError{2, absl::StrCat("refusing to listen on ", listen_,
                                        " without TLS and a token file; pass "
                                        "--allow_insecure_remote to insist")};
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      LoadServerCredentials(absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                            absl::GetFlag(FLAGS_tls_client_ca));
  if (!credentials.ok()) return Refused(2, credentials.status());
  credentials_ = *std::move(credentials);
  if (!token_file.empty()) {
    absl::StatusOr<Authenticator> loaded = Authenticator::LoadTokenFile(token_file);
    if (!loaded.ok()) return Refused(2, loaded.status());
    auth_ = *std::move(loaded);
  }
  return std::nullopt;
}

StartupResult ServerProcess::OpenDataDir() {
  data_dir_ = absl::GetFlag(FLAGS_data_dir);
  std::error_code ec;
  std::filesystem::create_directories(data_dir_, ec);
  if (ec) return StartupError{1, absl::StrCat("cannot create ", data_dir_, ": ", ec.message())};
  // Held until exit, and taken before anything in the directory is read: a second server
  // would requeue the job this one runs and remove the files its uploads are staging.
  absl::StatusOr<DirLock> dir_lock = DirLock::Acquire(data_dir_, DirLock::Mode::kExclusive);
  if (!dir_lock.ok()) {
    return Refused(absl::IsFailedPrecondition(dir_lock.status()) ? 2 : 1, dir_lock.status());
  }
  dir_lock_.emplace(*std::move(dir_lock));
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(data_dir_ + "/miseg.db");
  if (!store.ok()) return Refused(1, store.status());
  store_ = *std::move(store);
  absl::StatusOr<FileStore> files = FileStore::Open(data_dir_);
  if (!files.ok()) return Refused(1, files.status());
  files_.emplace(*std::move(files));
  return std::nullopt;
}

// Checked before anything starts.
StartupResult ServerProcess::LoadNodeAndImportConfig() {
  if (!absl::GetFlag(FLAGS_dicom_node_config).empty()) {
    absl::StatusOr<server::DicomNodeConfig> loaded =
        LoadDicomNodeConfig(absl::GetFlag(FLAGS_dicom_node_config));
    if (!loaded.ok()) return Refused(2, loaded.status());
    node_config_ = *std::move(loaded);
  }
  if (!absl::GetFlag(FLAGS_import_sources).empty()) {
    absl::StatusOr<std::vector<ImportSourceSpec>> loaded =
        LoadImportSources(absl::GetFlag(FLAGS_import_sources));
    if (!loaded.ok()) return Refused(2, loaded.status());
    import_sources_ = *std::move(loaded);
  }
  return std::nullopt;
}

// Metrics, the job runner, the segmentation engine and the DICOM node.
StartupResult ServerProcess::StartDomain() {
  metrics_ = std::make_unique<ServerMetrics>(kVersion);
  absl::StatusOr<int> metrics_port = metrics_->Serve(absl::GetFlag(FLAGS_metrics_listen));
  if (!metrics_port.ok()) return Refused(1, metrics_port.status());
  metrics_port_ = *metrics_port;
  metrics_->WatchDataDir(data_dir_);  // miseg_data_dir_free_bytes, for the low-disk alert
  absl::StatusOr<JobRunnerOptions> runner_options = RunnerOptionsFromFlags(data_dir_);
  if (!runner_options.ok()) return Refused(2, runner_options.status());
  // Before any job can commit a model: files a crash left between a model delete's commit
  // and its unlink, or between a model file's move into place and its row.
  SweepModelFiles(*store_, data_dir_ + "/models");
  runner_ = std::make_unique<JobRunner>(store_.get(), &*files_, metrics_.get(), &hub_,
                                        *std::move(runner_options));
  if (absl::Status started = runner_->Start(); !started.ok()) return Refused(1, started);
  engine_ = std::make_unique<SegmentationEngine>(store_.get(), &*files_, metrics_.get(),
                                                 EngineOptionsFromFlags());
  if (node_config_) {
    absl::StatusOr<std::unique_ptr<DicomNode>> created = DicomNode::Create(
        *node_config_, data_dir_, {store_.get(), &*files_, engine_.get(), metrics_.get()});
    if (!created.ok()) return FailAfterRunnerStarted(Refused(1, created.status()));
    node_ = *std::move(created);
  }
  // After the node's store is open: its inbox and outbox reference stored files too.
  CollectGarbage(*store_, node_ ? node_->node_store() : nullptr, *files_);
  if (node_) {
    if (absl::Status started = node_->Start(); !started.ok()) {
      return FailAfterRunnerStarted(Refused(1, started));
    }
  }
  return std::nullopt;
}

void ServerProcess::MakeServiceDeps() {
  ingest_pool_ = std::make_unique<WorkPool>(absl::GetFlag(FLAGS_ingest_threads));
  stream_slots_ = std::make_unique<StreamSlots>(std::max(1, absl::GetFlag(FLAGS_max_streams)));
  watchdog_ = std::make_unique<IdleWatchdog>(
      std::chrono::milliseconds(static_cast<int64_t>(
          1000 * std::max(0.05, absl::GetFlag(FLAGS_stream_idle_timeout_seconds)))),
      std::max<int64_t>(1, absl::GetFlag(FLAGS_stream_min_progress_kib) << 10));
  deps_.ingest_pool = ingest_pool_.get();
  deps_.stream_slots = stream_slots_.get();
  deps_.watchdog = watchdog_.get();
  deps_.store = store_.get();
  deps_.files = &*files_;
  deps_.runner = runner_.get();
  deps_.engine = engine_.get();
  deps_.metrics = metrics_.get();
  deps_.auth = &auth_;
  deps_.hub = &hub_;
  deps_.node_store = node_ ? node_->node_store() : nullptr;
  deps_.max_request_bytes = absl::GetFlag(FLAGS_max_request_mib) << 20;
  deps_.version = kVersion;
}

// Imports run on their own bounded pool, so a slow PACS never holds up uploads.
StartupResult ServerProcess::StartImporter() {
  if (import_sources_.empty()) return std::nullopt;
  ImporterOptions options;
  options.threads = std::max(1, absl::GetFlag(FLAGS_import_threads));
  options.test_pause_after = absl::GetFlag(FLAGS_import_test_pause_after);
  importer_ = std::make_unique<Importer>(store_.get(), &*files_, std::move(import_sources_),
                                         options);
  if (absl::Status started = importer_->Start(); !started.ok()) {
    return FailAfterRunnerStarted(Refused(1, started));
  }
  return std::nullopt;
}

StartupResult ServerProcess::StartHealthEndpoint() {
  if (absl::GetFlag(FLAGS_health_listen).empty()) return std::nullopt;
  absl::StatusOr<std::unique_ptr<HealthEndpoint>> started =
      HealthEndpoint::Start(absl::GetFlag(FLAGS_health_listen));
  if (!started.ok()) return FailAfterRunnerStarted(Refused(1, started.status()));
  health_ = *std::move(started);
  health_->SetServing(true);
  return std::nullopt;
}

// The gRPC services, the health endpoint and the ready file.
StartupResult ServerProcess::StartEdge() {
  MakeServiceDeps();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen_, credentials_, &grpc_port_);
  ConfigureTransport(builder);
  if (StartupResult failed = StartImporter()) return failed;
  services_ = MakeServices(deps_);
  services_.push_back(MakeImportService(deps_, importer_.get()));
  for (auto& service : services_) builder.RegisterService(service.get());
  server_ = builder.BuildAndStart();
  if (!server_ || grpc_port_ == 0) {
    return FailAfterRunnerStarted({1, absl::StrCat("cannot listen on ", listen_)});
  }
  server_->GetHealthCheckService()->SetServingStatus(true);
  if (StartupResult failed = StartHealthEndpoint()) return failed;
  WriteReadyFile(grpc_port_, metrics_port_);
  Log(absl::StrCat("serving miseg.v1 on port ", grpc_port_, (tls_ ? " (TLS)" : ""),
                   auth_.enabled() ? " with bearer tokens" : " without authentication",
                   "; metrics on port ", metrics_port_,
                   health_ ? absl::StrCat("; health on port ", health_->port()) : "",
                   "; data in ", data_dir_));
  return std::nullopt;
}

void ServerProcess::StopOnSignal() {
  int received = 0;
  sigwait(&signals_, &received);
  Log(absl::StrCat("signal ", received, ": shutting down"));
  hub_.Close();           // watchers end now and reconnect to the next server
  runner_->RequestStop();  // the running job checkpoints while calls drain
  if (node_) node_->Stop();
  server_->GetHealthCheckService()->SetServingStatus(false);
  if (health_) health_->SetServing(false);
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds)));
}

// Until SIGTERM/SIGINT, then drains calls and checkpoints the running job.
void ServerProcess::Serve() {
  std::thread signal_thread([this] { StopOnSignal(); });
  server_->Wait();
  signal_thread.join();
  if (importer_) importer_->Shutdown();  // running imports are queued again for the next start
  Log("calls drained; waiting for the job workers");
  runner_->Shutdown();  // checkpoints and requeues the running job
  Log("stopped");
}

int Run() {
  ServerProcess process;
  for (StartupResult (ServerProcess::*step)() :
       {&ServerProcess::LoadEdgeConfig, &ServerProcess::OpenDataDir,
        &ServerProcess::LoadNodeAndImportConfig, &ServerProcess::StartDomain,
        &ServerProcess::StartEdge}) {
    if (StartupResult failed = (process.*step)()) {
      Log(failed->message);
      return failed->exit_code;
    }
  }
  process.Serve();
  return 0;
}

int HashToken() {
  std::string token;
  std::getline(std::cin, token);
  token = std::string(absl::StripAsciiWhitespace(token));
  if (token.empty()) {
    std::cerr << "usage: echo TOKEN | miseg-server hash-token\n";
    return 2;
  }
  std::cout << Sha256Hex(token) << "\n";
  return 0;
}

}  // namespace
}  // namespace miseg

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "hash-token") return miseg::HashToken();
  if (argc >= 2 && std::string(argv[1]) == "verify") return miseg::VerifyCommand(argc, argv);
  if (argc >= 2 && (std::string(argv[1]) == "backup" || std::string(argv[1]) == "restore")) {
    return miseg::BackupCommand(argc, argv, miseg::kVersion);
  }
  absl::SetProgramUsageMessage(
      "miseg-server [flags]: trains and serves semi-supervised segmentation models.\n"
      "  miseg-server hash-token < token   prints the SHA-256 line for a token file\n"
      "  miseg-server verify --data_dir=DIR   checks the database and every stored file, "
      "quarantines what is damaged (no server running; exit 1 when it found problems)\n"
      "  miseg-server backup --data_dir=DIR --to=BACKUP_DIR   online backup, beside a running "
      "server\n"
      "  miseg-server restore --from=BACKUP_DIR --data_dir=DIR   into an empty directory, no "
      "server running");
  if (miseg::HandleHelp(argc, argv, "server_main.cc",
                        absl::StrCat("miseg-server ", miseg::kVersion, "\n"))) {
    return 0;
  }
  absl::ParseCommandLine(argc, argv);
  if (!miseg::SetLogFormat(absl::GetFlag(FLAGS_log_format))) {
    std::cerr << "miseg-server: --log_format must be text, logfmt or json\n";
    return 2;
  }
  return miseg::Run();
}

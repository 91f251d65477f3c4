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
#include "server/auth.h"
#include "server/backup.h"
#include "server/verify.h"
#include "server/node/dicom_node.h"
#include "server/import/import_service.h"
#include "server/import/import_sources.h"
#include "server/import/importer.h"
#include "server/event_hub.h"
#include "server/health_endpoint.h"
#include "server/log_bridges.h"
#include "server/job_runner.h"
#include "server/lifecycle.h"
#include "server/flag_help.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/segmentation_engine.h"
#include "server/services.h"
#include "server/tls.h"
#include "server/work_pool.h"
#include "server/rpc_edge.h"
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
ABSL_FLAG(std::string, inference_device, "cpu", "Device for segmentation");
ABSL_FLAG(int, inference_concurrency, 1, "Segmentations that run at once");
ABSL_FLAG(int, inference_queue, 4, "Segmentations that may wait; beyond: RESOURCE_EXHAUSTED");
ABSL_FLAG(int, model_cache, 2, "Models kept loaded for segmentation");
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

int Run() {
  KeepFreedMemoryForReuse();
  // DCMTK logs two INFO lines per C-STORE by default; warnings and errors are enough.
  OFLog::configure(OFLogger::WARN_LOG_LEVEL);
  InstallLogBridges();  // gRPC's and DCMTK's lines as records of --log_format
  RegisterDicomCodecs();

  // Signals go to the dedicated thread below, never to a worker.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string listen = absl::GetFlag(FLAGS_listen);
  const std::string token_file = absl::GetFlag(FLAGS_token_file);
  const bool tls = !absl::GetFlag(FLAGS_tls_cert).empty();
  if (!IsLoopbackAddress(listen) && !(tls && !token_file.empty()) &&
      !absl::GetFlag(FLAGS_allow_insecure_remote)) {
    Log(absl::StrCat("refusing to listen on ", listen,
                     " without TLS and a token file; pass --allow_insecure_remote to insist"));
    return 2;
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      LoadServerCredentials(absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                            absl::GetFlag(FLAGS_tls_client_ca));
  if (!credentials.ok()) {
    Log(std::string(credentials.status().message()));
    return 2;
  }
  Authenticator auth = Authenticator::AllowAll();
  if (!token_file.empty()) {
    absl::StatusOr<Authenticator> loaded = Authenticator::LoadTokenFile(token_file);
    if (!loaded.ok()) {
      Log(std::string(loaded.status().message()));
      return 2;
    }
    auth = *std::move(loaded);
  }

  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  if (ec) {
    Log(absl::StrCat("cannot create ", data_dir, ": ", ec.message()));
    return 1;
  }
  // Held until exit, and taken before anything in the directory is read: a second server
  // would requeue the job this one runs and remove the files its uploads are staging.
  absl::StatusOr<DirLock> dir_lock = DirLock::Acquire(data_dir, DirLock::Mode::kExclusive);
  if (!dir_lock.ok()) {
    Log(std::string(dir_lock.status().message()));
    return absl::IsFailedPrecondition(dir_lock.status()) ? 2 : 1;
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(data_dir + "/miseg.db");
  if (!store.ok()) {
    Log(std::string(store.status().message()));
    return 1;
  }
  absl::StatusOr<FileStore> files = FileStore::Open(data_dir);
  if (!files.ok()) {
    Log(std::string(files.status().message()));
    return 1;
  }
  // The DICOM node's configuration is checked before anything starts.
  std::optional<server::DicomNodeConfig> node_config;
  if (!absl::GetFlag(FLAGS_dicom_node_config).empty()) {
    absl::StatusOr<server::DicomNodeConfig> loaded =
        LoadDicomNodeConfig(absl::GetFlag(FLAGS_dicom_node_config));
    if (!loaded.ok()) {
      Log(std::string(loaded.status().message()));
      return 2;
    }
    node_config = *std::move(loaded);
  }
  std::vector<ImportSourceSpec> import_sources;
  if (!absl::GetFlag(FLAGS_import_sources).empty()) {
    absl::StatusOr<std::vector<ImportSourceSpec>> loaded =
        LoadImportSources(absl::GetFlag(FLAGS_import_sources));
    if (!loaded.ok()) {
      Log(std::string(loaded.status().message()));
      return 2;
    }
    import_sources = *std::move(loaded);
  }

  ServerMetrics metrics(kVersion);
  absl::StatusOr<int> metrics_port = metrics.Serve(absl::GetFlag(FLAGS_metrics_listen));
  if (!metrics_port.ok()) {
    Log(std::string(metrics_port.status().message()));
    return 1;
  }
  metrics.WatchDataDir(data_dir);  // miseg_data_dir_free_bytes, for the low-disk alert

  EventHub hub;
  JobRunnerOptions runner_options;
  runner_options.devices = absl::GetFlag(FLAGS_devices);
  runner_options.work_dir = data_dir;
  runner_options.training_threads = absl::GetFlag(FLAGS_training_threads);
  runner_options.rendezvous_host = absl::GetFlag(FLAGS_rendezvous_host);
  runner_options.scheduler.lease = absl::Seconds(std::max(1, absl::GetFlag(FLAGS_worker_lease_seconds)));
  runner_options.scheduler.heartbeat_interval =
      absl::Milliseconds(std::max(50, absl::GetFlag(FLAGS_worker_heartbeat_ms)));
  runner_options.collective_timeout =
      absl::Seconds(std::max(1, absl::GetFlag(FLAGS_collective_timeout_seconds)));
  runner_options.verify_replicas = absl::GetFlag(FLAGS_verify_replicas);
  absl::StatusOr<CheckpointRetention> retention =
      ParseCheckpointRetention(absl::GetFlag(FLAGS_checkpoint_retention));
  if (!retention.ok()) {
    Log(std::string(retention.status().message()));
    return 2;
  }
  runner_options.checkpoint_retention = *retention;
  // Before any job can commit a model: files a crash left between a model delete's commit
  // and its unlink, or between a model file's move into place and its row.
  SweepModelFiles(**store, data_dir + "/models");
  JobRunner runner(store->get(), &*files, &metrics, &hub, runner_options);
  if (absl::Status started = runner.Start(); !started.ok()) {
    Log(std::string(started.message()));
    return 1;
  }

  SegmentationEngineOptions engine_options;
  engine_options.device = absl::GetFlag(FLAGS_inference_device);
  engine_options.concurrency = std::max(1, absl::GetFlag(FLAGS_inference_concurrency));
  engine_options.queue = std::max(0, absl::GetFlag(FLAGS_inference_queue));
  engine_options.cached_models = absl::GetFlag(FLAGS_model_cache);
  engine_options.version = kVersion;
  SegmentationEngine engine(store->get(), &*files, &metrics, engine_options);

  std::unique_ptr<DicomNode> node;
  if (node_config) {
    absl::StatusOr<std::unique_ptr<DicomNode>> created =
        DicomNode::Create(*node_config, data_dir, {store->get(), &*files, &engine, &metrics});
    if (!created.ok()) {
      Log(std::string(created.status().message()));
      runner.Shutdown();
      return 1;
    }
    node = *std::move(created);
  }
  // After the node's store is open: its inbox and outbox reference stored files too.
  CollectGarbage(**store, node ? node->node_store() : nullptr, *files);
  if (node) {
    if (absl::Status started = node->Start(); !started.ok()) {
      Log(std::string(started.message()));
      runner.Shutdown();
      return 1;
    }
  }

  WorkPool ingest_pool(absl::GetFlag(FLAGS_ingest_threads));
  StreamSlots stream_slots(std::max(1, absl::GetFlag(FLAGS_max_streams)));
  IdleWatchdog watchdog(
      std::chrono::milliseconds(static_cast<int64_t>(
          1000 * std::max(0.05, absl::GetFlag(FLAGS_stream_idle_timeout_seconds)))),
      std::max<int64_t>(1, absl::GetFlag(FLAGS_stream_min_progress_kib) << 10));
  ServiceDeps deps;
  deps.ingest_pool = &ingest_pool;
  deps.stream_slots = &stream_slots;
  deps.watchdog = &watchdog;
  deps.store = store->get();
  deps.files = &*files;
  deps.runner = &runner;
  deps.engine = &engine;
  deps.metrics = &metrics;
  deps.auth = &auth;
  deps.hub = &hub;
  deps.node_store = node ? node->node_store() : nullptr;
  deps.max_request_bytes = absl::GetFlag(FLAGS_max_request_mib) << 20;
  deps.version = kVersion;

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(listen, *credentials, &grpc_port);
  // Uploads stream in chunks; a single message only needs room for one chunk.
  builder.SetMaxReceiveMessageSize(64 << 20);
  // Bounded receive windows: with gRPC's bandwidth-delay probing, each stream's window grew
  // on loopback until 8 uploads of 256 MiB held about 500 MiB in transport buffers (measured
  // with bench/load.sh). A stream's bytes now wait in the client, not in this process.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                             absl::GetFlag(FLAGS_stream_window_kib) << 10);
  // Imports run on their own bounded pool, so a slow PACS never holds up uploads.
  std::unique_ptr<Importer> importer;
  if (!import_sources.empty()) {
    ImporterOptions import_options;
    import_options.threads = std::max(1, absl::GetFlag(FLAGS_import_threads));
    import_options.test_pause_after = absl::GetFlag(FLAGS_import_test_pause_after);
    importer = std::make_unique<Importer>(store->get(), &*files, std::move(import_sources),
                                          import_options);
    if (absl::Status started = importer->Start(); !started.ok()) {
      Log(std::string(started.message()));
      runner.Shutdown();
      return 1;
    }
  }
  std::vector<std::unique_ptr<grpc::Service>> services = MakeServices(deps);
  services.push_back(MakeImportService(deps, importer.get()));
  for (auto& service : services) builder.RegisterService(service.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || grpc_port == 0) {
    Log(absl::StrCat("cannot listen on ", listen));
    runner.Shutdown();
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  std::unique_ptr<HealthEndpoint> health;
  if (!absl::GetFlag(FLAGS_health_listen).empty()) {
    absl::StatusOr<std::unique_ptr<HealthEndpoint>> started =
        HealthEndpoint::Start(absl::GetFlag(FLAGS_health_listen));
    if (!started.ok()) {
      Log(std::string(started.status().message()));
      server->Shutdown();
      runner.Shutdown();
      return 1;
    }
    health = *std::move(started);
    health->SetServing(true);
  }

  const std::string ready_file = absl::GetFlag(FLAGS_ready_file);
  if (!ready_file.empty()) {
    absl::Status written = WriteFileAtomically(
        ready_file, absl::StrCat("grpc_port=", grpc_port, "\nmetrics_port=", *metrics_port,
                                 "\npid=", getpid(), "\n"));
    if (!written.ok()) Log(std::string(written.message()));
  }
  Log(absl::StrCat("serving miseg.v1 on port ", grpc_port, (tls ? " (TLS)" : ""),
                   auth.enabled() ? " with bearer tokens" : " without authentication",
                   "; metrics on port ", *metrics_port,
                   health ? absl::StrCat("; health on port ", health->port()) : "",
                   "; data in ", data_dir));

  std::thread signal_thread([&] {
    int received = 0;
    sigwait(&signals, &received);
    Log(absl::StrCat("signal ", received, ": shutting down"));
    hub.Close();  // watchers end now and reconnect to the next server
    runner.RequestStop();  // the running job checkpoints while calls drain
    if (node) node->Stop();
    server->GetHealthCheckService()->SetServingStatus(false);
    if (health) health->SetServing(false);
    server->Shutdown(std::chrono::system_clock::now() +
                     std::chrono::seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds)));
  });
  server->Wait();
  signal_thread.join();
  if (importer) importer->Shutdown();  // running imports are queued again for the next start
  Log("calls drained; waiting for the job workers");
  runner.Shutdown();  // checkpoints and requeues the running job
  Log("stopped");
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

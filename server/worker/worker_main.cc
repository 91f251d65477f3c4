// miseg-worker: trains ranks of miseg-server's data-parallel jobs on this machine's devices.
// Registers with the coordinator (--coordinator, a miseg-server), heartbeats, and runs the
// ranks it is given; study files are fetched once and cached under --cache_dir. One worker
// per cache directory: a second exits 2. SIGTERM/SIGINT: every rank stops at its next step
// boundary (the job's rank 0 checkpoints first), each is reported, exit 0.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "server/flag_help.h"
#include "server/log.h"
#include "server/log_bridges.h"
#include "server/rank/rank_runner.h"
#include "server/store/file_store.h"
#include "server/worker/worker.h"

ABSL_FLAG(std::string, coordinator, "", "The miseg-server to work for (HOST:PORT); required");
ABSL_FLAG(std::vector<std::string>, devices, {"cpu"},
          "Training devices, one rank each at a time (cpu, cuda:0, cuda:1, ...)");
ABSL_FLAG(std::string, cache_dir, "",
          "Study files fetched from the coordinator, and the ranks' scratch files; empty: "
          "$XDG_CACHE_HOME/miseg-worker, else ~/.cache/miseg-worker. One worker per directory");
ABSL_FLAG(std::string, name, "", "This worker's name in `miseg workers list`; empty: the host name");
ABSL_FLAG(std::string, advertise_host, "127.0.0.1",
          "Host or IP of this machine that the other workers of a job can reach: a job's rank 0 "
          "hosts the rendezvous store and Gloo listens there. 127.0.0.1 only works when every "
          "worker of a job runs on this machine");
ABSL_FLAG(int, training_threads, 0, "CPU threads per rank; 0 = LibTorch's default");
ABSL_FLAG(bool, training_cuda_graphs, false,
          "CUDA devices: each training step's forward, losses and backward replay a CUDA graph");
ABSL_FLAG(std::string, token_file, "",
          "File holding this worker's bearer token (role worker); empty: $MISEG_TOKEN, if set");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA bundle to trust for the coordinator's certificate; set: TLS (--tls-ca works "
          "too, as in the miseg CLI)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate, when the coordinator asks for one");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of tls_cert");
ABSL_FLAG(std::string, log_format, "text",
          "Log lines on stderr: text, logfmt or json (one line per event, for aggregators)");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name expected in the coordinator's certificate, if not the host of --coordinator");

namespace miseg {
namespace {

constexpr char kVersion[] = "0.1.0";

absl::StatusOr<std::string> ReadFlagFile(const std::string& path, const char* flag) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read --", flag, " ", path, ": ", text.status().message()));
  }
  return text;
}

// The channel to the coordinator: TLS when a CA is given (as the miseg CLI does).
absl::StatusOr<std::shared_ptr<grpc::Channel>> CoordinatorChannel(const std::string& address) {
  const std::string ca_file = absl::GetFlag(FLAGS_tls_ca);
  const std::string cert_file = absl::GetFlag(FLAGS_tls_cert);
  const std::string key_file = absl::GetFlag(FLAGS_tls_key);
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(64 << 20);
  // gRPC's own reconnect backoff grows to 2 minutes by default, and a call fails at once
  // while it waits: a coordinator back after a blip would then not hear from this worker
  // before the lease (15 s by default) ran out.
  arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 500);
  arguments.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 500);
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 3000);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (ca_file.empty()) {
    if (!cert_file.empty() || !key_file.empty()) {
      return absl::InvalidArgumentError("a client certificate needs TLS: set --tls_ca as well");
    }
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    absl::StatusOr<std::string> ca = ReadFlagFile(ca_file, "tls_ca");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    if (cert_file.empty() != key_file.empty()) {
      return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
    }
    if (!cert_file.empty()) {
      absl::StatusOr<std::string> cert = ReadFlagFile(cert_file, "tls_cert");
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadFlagFile(key_file, "tls_key");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    credentials = grpc::SslCredentials(ssl);
    const std::string server_name = absl::GetFlag(FLAGS_tls_server_name);
    if (!server_name.empty()) arguments.SetSslTargetNameOverride(server_name);
  }
  return grpc::CreateCustomChannel(address, credentials, arguments);
}

// --token_file's first line, else $MISEG_TOKEN, else none.
absl::StatusOr<std::string> LoadToken() {
  const std::string path = absl::GetFlag(FLAGS_token_file);
  if (path.empty()) {
    const char* env = std::getenv("MISEG_TOKEN");
    return std::string(env != nullptr ? env : "");
  }
  absl::StatusOr<std::string> text = ReadFlagFile(path, "token_file");
  if (!text.ok()) return text.status();
  std::string token(absl::StripAsciiWhitespace(text->substr(0, text->find('\n'))));
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat("--token_file ", path, " is empty"));
  return token;
}

std::string HostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "worker";
  return name;
}

bool IsLoopbackHost(const std::string& host) {
  return absl::StartsWith(host, "127.") || host == "localhost" || host == "::1" ||
         host == "[::1]";
}

// The options from the flags; InvalidArgument for flags that cannot work.
absl::StatusOr<WorkerOptions> OptionsFromFlags() {
  WorkerOptions options;
  options.devices = absl::GetFlag(FLAGS_devices);
  options.devices.erase(std::remove(options.devices.begin(), options.devices.end(), ""),
                        options.devices.end());
  if (options.devices.empty()) return absl::InvalidArgumentError("--devices lists no device");
  options.name = absl::GetFlag(FLAGS_name).empty() ? HostName() : absl::GetFlag(FLAGS_name);
  options.advertise_host = absl::GetFlag(FLAGS_advertise_host);
  if (options.advertise_host.empty()) {
    return absl::InvalidArgumentError("--advertise_host must name this machine");
  }
  options.cache_dir = absl::GetFlag(FLAGS_cache_dir).empty() ? DefaultWorkerCacheDir()
                                                             : absl::GetFlag(FLAGS_cache_dir);
  options.training_threads = std::max(0, absl::GetFlag(FLAGS_training_threads));
  options.training_cuda_graphs = absl::GetFlag(FLAGS_training_cuda_graphs);
  absl::StatusOr<std::string> token = LoadToken();
  if (!token.ok()) return token.status();
  options.token = *token;
  options.run_rank = RunRank;
  return options;
}

int Run() {
  // Signals go to the dedicated thread below, never to a rank. SIGUSR1 only wakes that
  // thread when Run ends by itself.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string coordinator = absl::GetFlag(FLAGS_coordinator);
  if (coordinator.empty()) {
    LogWorkerLine("--coordinator=HOST:PORT is required (see miseg-worker --help)");
    return 2;
  }
  absl::StatusOr<WorkerOptions> options = OptionsFromFlags();
  if (!options.ok()) {
    LogWorkerLine(std::string(options.status().message()));
    return 2;
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = CoordinatorChannel(coordinator);
  if (!channel.ok()) {
    LogWorkerLine(std::string(channel.status().message()));
    return 2;
  }
  const bool tls = !absl::GetFlag(FLAGS_tls_ca).empty();
  if (!tls && !options->token.empty() && !IsLoopbackHost(coordinator.substr(0, coordinator.rfind(':')))) {
    LogWorkerLine("warning: the token goes to " + coordinator + " without TLS (pass --tls_ca)");
  }
  if (IsLoopbackHost(options->advertise_host) && !IsLoopbackHost(coordinator.substr(0, coordinator.rfind(':')))) {
    LogWorkerLine("note: --advertise_host is " + options->advertise_host +
                  ": ranks of a job spread over several machines cannot reach this one");
  }
  absl::StatusOr<std::unique_ptr<Worker>> worker = Worker::Create(*channel, *std::move(options));
  if (!worker.ok()) {
    LogWorkerLine(std::string(worker.status().message()));
    return absl::IsFailedPrecondition(worker.status()) || absl::IsInvalidArgument(worker.status())
               ? 2 : 1;
  }
  LogWorkerLine(absl::StrCat("miseg-worker ", kVersion, " working for ", coordinator,
                             tls ? " (TLS)" : "", "; cache in ", (*worker)->cache_dir()));

  std::thread signal_thread([&] {
    int received = 0;
    sigwait(&signals, &received);
    if (received == SIGUSR1) return;
    LogWorkerLine(absl::StrCat("signal ", received, ": stopping the ranks"));
    (*worker)->Stop();
  });
  const absl::Status ran = (*worker)->Run();
  pthread_kill(signal_thread.native_handle(), SIGUSR1);  // no-op once a signal was received
  signal_thread.join();
  if (!ran.ok()) {
    LogWorkerLine(std::string(ran.message()));
    return 1;
  }
  return 0;
}

// The CLI's spelling --tls-ca (a name Abseil flags cannot have) as --tls_ca.
void AcceptCliSpellings(int argc, char** argv, std::vector<std::string>* storage) {
  storage->reserve(argc);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    for (const char* name : {"tls-ca", "tls-cert", "tls-key", "tls-server-name"}) {
      const std::string dashed = absl::StrCat("--", name);
      if (arg == dashed || absl::StartsWith(arg, dashed + "=")) {
        std::string underscored = dashed;
        std::replace(underscored.begin() + 2, underscored.end(), '-', '_');
        storage->push_back(underscored + arg.substr(dashed.size()));
        argv[i] = storage->back().data();
        break;
      }
    }
  }
}

}  // namespace
}  // namespace miseg

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "miseg-worker --coordinator=HOST:PORT [flags]: trains ranks of miseg-server's jobs on "
      "this machine's devices.\n"
      "  The token (--token_file or MISEG_TOKEN) needs role worker on the coordinator.");
  if (miseg::HandleHelp(argc, argv, "worker_main.cc",
                        absl::StrCat("miseg-worker ", miseg::kVersion, "\n"))) {
    return 0;
  }
  std::vector<std::string> storage;
  miseg::AcceptCliSpellings(argc, argv, &storage);
  absl::ParseCommandLine(argc, argv);
  miseg::SetLogComponent("miseg-worker");
  if (!miseg::SetLogFormat(absl::GetFlag(FLAGS_log_format))) {
    std::cerr << "miseg-worker: --log_format must be text, logfmt or json\n";
    return 2;
  }
  miseg::InstallLogBridges();
  return miseg::Run();
}

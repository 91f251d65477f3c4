// miseg-bench-service: the cost of the service around the network (issue 15). In one run it
// starts a real miseg-server on a fresh data directory, trains a one-step model of the asked
// architecture there (the network's cost does not depend on its weights) and makes it
// active, writes a phantom study as DICOM, and then, round after round on that same study:
//   network  the bare frozen network (batch norm folded, as the server runs it) on the
//            study's prepared slices, in the server's batches of --batch_slices;
//   prepare  PrepareVolume alone (normalisation, resampling onto the grid): the part of
//            segment before the network;
//   segment  the in-process Segmenter::Segment on the decoded volume (preprocessing onto
//            the grid, the network, mapping back, argmax);
//   service  a Segment call through gRPC: the DICOM files up, decode, inference, the SEG
//            encoded, staged and streamed back, as a client sees it.
// The network here is an untrained U-Net of the same spec as the server's model, built in
// this process; the server reports its own phases (queue, decode, inference, encode) in the
// summary, printed beside the round trip. Medians over --rounds; the ratio the issue asks for
// is service_over_network (goal: at most 1.2). On a shared machine the network's time drifts
// between rounds and between the two processes: paired_service_over_network_median takes,
// round by round, (in-process Segment + the call less the server's inference) over that
// round's network, the service's own cost measured inside the call it belongs to.
#include <ATen/Parallel.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_figures.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "core/common/allocator_tuning.h"
#include "core/common/status_macros.h"
#include "core/dicom/phantom_study.h"
#include "core/phantom/phantom.h"
#include "core/train/frozen_unet.h"
#include "core/train/inference.h"
#include "core/train/memory_layout.h"
#include "core/train/model_io.h"
#include "core/train/preprocess.h"

#ifndef MISEG_SERVER_BINARY
#error "MISEG_SERVER_BINARY must name the miseg-server executable"
#endif

ABSL_FLAG(std::string, server, MISEG_SERVER_BINARY, "the miseg-server executable to start");
ABSL_FLAG(int64_t, size, 128, "model grid in pixels (the server's default)");
ABSL_FLAG(std::vector<std::string>, widths, {},
          "U-Net widths per level; empty: the production default (16,32,64,128,256)");
ABSL_FLAG(int, slices, 12, "slices of the segmented study");
ABSL_FLAG(int, matrix, 192, "rows and columns of the segmented study's slices");
ABSL_FLAG(int64_t, batch_slices, 16, "slices per forward pass (the server's default)");
ABSL_FLAG(int, rounds, 5, "timed rounds (each: network, in-process segment, service call)");
ABSL_FLAG(int, warmup, 1, "untimed rounds first");
ABSL_FLAG(int, threads, 0, "this process's intra-op threads; 0: LibTorch's default, as the server");
ABSL_FLAG(std::string, work_dir, "",
          "where the server's data directory goes; empty: a temporary one");
ABSL_FLAG(bool, json, false, "print one JSON object");

namespace miseg {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// A miseg-server child process on a loopback port the kernel picks; terminated (SIGTERM,
// then SIGKILL) and reaped when it goes.
class ServerChild {
 public:
  static absl::StatusOr<std::unique_ptr<ServerChild>> Start(const std::string& binary,
                                                            const std::string& data_dir) {
    const std::string ready = data_dir + ".ready", log = data_dir + ".log";
    std::filesystem::remove(ready);
    std::vector<std::string> args = {binary, "--data_dir=" + data_dir, "--listen=127.0.0.1:0",
                                     "--metrics_listen=127.0.0.1:0", "--ready_file=" + ready};
    const pid_t pid = ::fork();
    if (pid < 0) return absl::InternalError("fork failed");
    if (pid == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    auto child = std::unique_ptr<ServerChild>(new ServerChild(pid));
    // The server renames its ready file into place once it serves (no partial reads). A
    // benchmark may poll; it waits at most a minute and notices an early exit.
    for (const auto deadline = Clock::now() + std::chrono::seconds(60); Clock::now() < deadline;) {
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        child->pid_ = -1;
        return absl::UnavailableError(absl::StrCat("miseg-server exited; see ", log));
      }
      std::ifstream in(ready);
      for (std::string line; std::getline(in, line);) {
        std::vector<std::string> kv = absl::StrSplit(line, '=');
        if (kv.size() == 2 && kv[0] == "grpc_port") (void)absl::SimpleAtoi(kv[1], &child->port_);
      }
      if (child->port_ > 0) return child;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return absl::DeadlineExceededError(absl::StrCat("miseg-server did not serve; see ", log));
  }

  ~ServerChild() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 300; ++i) {  // up to 30 s for a clean shutdown
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  explicit ServerChild(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  int port_ = 0;
};

absl::StatusOr<ModelSpec> SpecFromFlags() {
  ModelSpec spec;
  spec.classes = static_cast<int64_t>(PhantomClassNames().size());
  spec.grid_size = absl::GetFlag(FLAGS_size);
  if (!absl::GetFlag(FLAGS_widths).empty()) {
    spec.widths.clear();
    for (const std::string& w : absl::GetFlag(FLAGS_widths)) {
      int64_t width = 0;
      if (!absl::SimpleAtoi(w, &width) || width < 1) {
        return absl::InvalidArgumentError(absl::StrCat("--widths: bad width '", w, "'"));
      }
      spec.widths.push_back(width);
    }
  }
  return spec;
}

// A dataset "bench" on the server whose active model has `spec`: two small labeled phantom
// studies and a one-step job (its cost is the network's; its weights do not matter).
absl::Status TrainActiveModel(client::Client& client, const ModelSpec& spec) {
  RETURN_IF_ERROR(client.CreateDataset("bench", PhantomClassNames(), "MR").status());
  for (int i = 0; i < 2; ++i) {
    const PhantomSubject subject = GeneratePhantomSubject(2026, i, SmallPhantomOptions());
    ASSIGN_OR_RETURN(PhantomStudy study,
                     MakePhantomStudy(subject, absl::StrCat("bench-train-", i), true));
    study.image_files.push_back(*study.segmentation);
    ASSIGN_OR_RETURN(v1::UploadResponse uploaded,
                     client.Upload("bench", v1::STUDY_ROLE_LABELED, study.image_files));
    if (uploaded.refused_instances() > 0) {
      return absl::InternalError(absl::StrCat("upload refused: ", uploaded.DebugString()));
    }
  }
  v1::Hyperparameters h;
  h.set_total_steps(1);
  h.set_warmup_steps(0);
  h.set_labeled_batch(1);
  h.set_unlabeled_batch(0);
  h.set_w_mi(0);
  h.set_w_cons(0);
  h.set_grid_size(spec.grid_size);
  for (int64_t w : spec.widths) h.add_widths(w);
  ASSIGN_OR_RETURN(v1::Job job, client.StartJob("bench", h));
  client::WatchOptions watch;
  RETURN_IF_ERROR(client.WatchJob(job.id(), watch, [](const v1::JobEvent&) {}));
  ASSIGN_OR_RETURN(job, client.GetJob(job.id()));
  if (job.state() != v1::JOB_STATE_SUCCEEDED || job.model_id() == 0) {
    return absl::InternalError(
        absl::StrCat("the model's job ended ", v1::JobState_Name(job.state()), ": ", job.error()));
  }
  return client.PromoteModel(job.model_id()).status();
}

// The same architecture in this process: the frozen network the server runs, and a model
// file of it for an in-process Segmenter.
struct LocalModel {
  UNet net{nullptr};
  std::unique_ptr<FrozenUNet> frozen;
  std::unique_ptr<Segmenter> segmenter;
  ModelSpec spec;
};

absl::StatusOr<LocalModel> BuildLocalModel(const ModelSpec& spec, const torch::Device& device,
                                           const std::string& dir) {
  LocalModel m;
  m.spec = spec;
  torch::manual_seed(1);
  m.net = UNet(UNetOptionsFor(spec));
  m.net->to(device);
  m.net->eval();
  m.frozen = std::make_unique<FrozenUNet>(FrozenUNet::Fold(m.net, PrefersChannelsLast(device)));
  const std::string path = dir + "/local.model";
  torch::serialize::OutputArchive archive;
  WriteModel(archive, spec, m.net);
  RETURN_IF_ERROR(SaveArchiveAtomically(archive, path));
  InferenceOptions options;
  options.device = device.str();
  options.batch_slices = absl::GetFlag(FLAGS_batch_slices);
  ASSIGN_OR_RETURN(m.segmenter, Segmenter::Load(path, options));
  return m;
}

struct Samples {
  std::vector<double> network, prepare, segment, service;
  // The server's own phases of each call, and what the call spent outside them (the files
  // up, staging, the SEG back: gRPC and disk).
  std::vector<double> queue, decode, inference, encode, outside;
  // Per round: the call less the server's inference (the service's own cost, measured within
  // one call), and (in-process Segment + that) over the network of the same round. Pairing
  // within a round keeps a shared machine's drift between rounds out of the ratio.
  std::vector<double> service_overhead, paired_ratio;
  int64_t seg_bytes = 0;
};

// One round: the bare network, the in-process segmentation and one service call.
absl::Status RunRound(const LocalModel& local, const PreparedVolume& prepared,
                      const PhantomStudy& study, const torch::Device& device,
                      client::Client& client, Samples* samples) {
  const int64_t batch = absl::GetFlag(FLAGS_batch_slices);
  const int64_t slices = prepared.images.size(0);
  Clock::time_point start = Clock::now();
  {
    c10::InferenceMode inference;
    for (int64_t s = 0; s < slices; s += batch) {
      const torch::Tensor x = prepared.images.narrow(0, s, std::min(batch, slices - s)).to(device);
      local.frozen->forward(x).to(torch::kCPU);  // the CPU copy waits for a GPU
    }
  }
  samples->network.push_back(MsSince(start));

  start = Clock::now();
  ASSIGN_OR_RETURN(PreparedVolume again, PrepareVolume(study.series.image, nullptr, local.spec));
  samples->prepare.push_back(MsSince(start));

  start = Clock::now();
  ASSIGN_OR_RETURN(LabelVolume labels, local.segmenter->Segment(study.series.image));
  samples->segment.push_back(MsSince(start));

  v1::SegmentHeader header;
  header.set_dataset("bench");
  start = Clock::now();
  ASSIGN_OR_RETURN(client::SegmentResult result, client.Segment(header, study.image_files));
  const double total = MsSince(start);
  const v1::SegmentSummary& s = result.summary;
  samples->service.push_back(total);
  samples->queue.push_back(1000 * s.queue_seconds());
  samples->decode.push_back(1000 * s.decode_seconds());
  samples->inference.push_back(1000 * s.inference_seconds());
  samples->encode.push_back(1000 * s.encode_seconds());
  samples->outside.push_back(total - 1000 * (s.queue_seconds() + s.decode_seconds() +
                                             s.inference_seconds() + s.encode_seconds()));
  samples->service_overhead.push_back(total - 1000 * s.inference_seconds());
  samples->paired_ratio.push_back((samples->segment.back() + samples->service_overhead.back()) /
                                  samples->network.back());
  samples->seg_bytes = static_cast<int64_t>(result.seg_bytes.size());
  return absl::OkStatus();
}

void Print(const std::vector<std::pair<std::string, std::string>>& figures) {
  if (absl::GetFlag(FLAGS_json)) {
    std::string out = "{\"benchmark\": \"service\"";
    for (const auto& [key, value] : figures) {
      double parsed = 0;
      const bool number = absl::SimpleAtod(value, &parsed);
      absl::StrAppend(&out, ", \"", key, "\": ", number ? value : absl::StrCat("\"", value, "\""));
    }
    std::cout << out << "}" << std::endl;
    return;
  }
  std::cout << "miseg-bench-service\n";
  for (const auto& [key, value] : figures) std::printf("  %-34s %s\n", key.c_str(), value.c_str());
}

void Report(const Samples& s, const ModelSpec& spec, const PhantomStudy& study) {
  int64_t study_bytes = 0;
  for (const DicomBuffer& f : study.image_files)
    study_bytes += static_cast<int64_t>(f.bytes.size());
  std::string widths;
  for (int64_t w : spec.widths) absl::StrAppend(&widths, widths.empty() ? "" : ",", w);
  const double network = Median(s.network), segment = Median(s.segment),
               service = Median(s.service);
  Print({{"grid", std::to_string(spec.grid_size)},
         {"widths", widths},
         {"slices", std::to_string(absl::GetFlag(FLAGS_slices))},
         {"matrix", std::to_string(absl::GetFlag(FLAGS_matrix))},
         {"batch_slices", std::to_string(absl::GetFlag(FLAGS_batch_slices))},
         {"torch_threads", std::to_string(at::get_num_threads())},
         {"rounds", std::to_string(s.service.size())},
         {"study_bytes", std::to_string(study_bytes)},
         {"seg_bytes", std::to_string(s.seg_bytes)},
         {"network_ms_median", Num(network)},
         {"prepare_ms_median", Num(Median(s.prepare))},
         {"segment_ms_median", Num(segment)},
         {"service_ms_median", Num(service)},
         {"server_queue_ms_median", Num(Median(s.queue))},
         {"server_decode_ms_median", Num(Median(s.decode))},
         {"server_inference_ms_median", Num(Median(s.inference))},
         {"server_encode_ms_median", Num(Median(s.encode))},
         {"outside_phases_ms_median", Num(Median(s.outside))},
         {"service_less_inference_ms_median", Num(Median(s.service_overhead))},
         {"segment_over_network", Num(segment / network)},
         {"service_over_segment", Num(service / segment)},
         {"service_over_network", Num(service / network)},
         {"paired_service_over_network_median", Num(Median(s.paired_ratio))},
         // On a shared machine the fastest round is the least disturbed one.
         {"network_ms_min", Num(Min(s.network))},
         {"segment_ms_min", Num(Min(s.segment))},
         {"service_ms_min", Num(Min(s.service))},
         {"service_over_network_min", Num(Min(s.service) / Min(s.network))}});
}

absl::Status Main() {
  ASSIGN_OR_RETURN(const ModelSpec spec, SpecFromFlags());
  ASSIGN_OR_RETURN(const torch::Device device, ResolveDevice("cpu"));
  if (absl::GetFlag(FLAGS_threads) > 0) at::set_num_threads(absl::GetFlag(FLAGS_threads));
  const bool temporary = absl::GetFlag(FLAGS_work_dir).empty();
  const std::string dir = temporary ? (std::filesystem::temp_directory_path() /
                                       absl::StrCat("miseg-bench-service-", ::getpid()))
                                          .string()
                                    : absl::GetFlag(FLAGS_work_dir);
  std::filesystem::create_directories(dir);
  absl::Status status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::unique_ptr<ServerChild> server,
                     ServerChild::Start(absl::GetFlag(FLAGS_server), dir + "/data"));
    client::ConnectionOptions options;
    options.address = server->address();
    ASSIGN_OR_RETURN(std::unique_ptr<client::Client> client, client::Client::Connect(options));
    RETURN_IF_ERROR(TrainActiveModel(*client, spec));

    PhantomOptions shape;
    shape.min_slices = shape.max_slices = absl::GetFlag(FLAGS_slices);
    shape.min_matrix = shape.max_matrix = absl::GetFlag(FLAGS_matrix);
    ASSIGN_OR_RETURN(const PhantomStudy study,
                     MakePhantomStudy(GeneratePhantomSubject(7, 0, shape), "bench-segment", false));
    ASSIGN_OR_RETURN(const LocalModel local, BuildLocalModel(spec, device, dir));
    ASSIGN_OR_RETURN(const PreparedVolume prepared,
                     PrepareVolume(study.series.image, nullptr, spec));
    Samples warmup, timed;
    for (int r = 0; r < absl::GetFlag(FLAGS_warmup); ++r) {
      RETURN_IF_ERROR(RunRound(local, prepared, study, device, *client, &warmup));
    }
    for (int r = 0; r < std::max(1, absl::GetFlag(FLAGS_rounds)); ++r) {
      RETURN_IF_ERROR(RunRound(local, prepared, study, device, *client, &timed));
    }
    Report(timed, spec, study);
    return absl::OkStatus();
  }();
  if (temporary) std::filesystem::remove_all(dir);
  return status;
}

}  // namespace
}  // namespace miseg

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "miseg-bench-service [--size 128] [--slices 12] [--matrix 192] [--rounds 5] [--json]:\n"
      "a Segment call through a miseg-server it starts, against the bare network, same study");
  absl::ParseCommandLine(argc, argv);
  miseg::KeepFreedMemoryForReuse();  // as the server does
  const absl::Status status = miseg::Main();
  if (!status.ok()) {
    std::cerr << "miseg-bench-service: " << status << "\n";
    return 1;
  }
  return 0;
}

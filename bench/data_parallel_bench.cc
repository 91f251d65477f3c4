// miseg-data-parallel-bench: training steps per second of one rank against --world ranks at
// the same per-rank batch (weak scaling: the global batch grows with the ranks), on the
// phantom with the default model, one intra-op thread per rank, the ranks talking Gloo over
// loopback; with the gradient all-reduce's time in the step (which includes waiting for the
// slower rank) and alone (the same bytes right after a barrier), the gradient bytes per step
// and the ring all-reduce's traffic per rank, 2 (W - 1) / W x bytes.
//
// The ranks are processes, forked before this process makes any LibTorch state: as threads
// of one process they would take turns in every convolution, since Debian's serial OpenBLAS
// is guarded by a process-wide lock (core/train/blas.h). The one-rank baseline is a plain
// trainer (no process group), in a process of its own too.
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/dist/process_group.h"
#include "core/phantom/phantom.h"
#include "core/train/collectives.h"
#include "core/train/trainer.h"

ABSL_FLAG(int, world, 2, "ranks of the data-parallel run, against one rank");
ABSL_FLAG(int64_t, size, 128, "model grid in pixels");
ABSL_FLAG(int64_t, labeled_batch, 4, "labeled slices per step and rank");
ABSL_FLAG(int64_t, unlabeled_batch, 8, "unlabeled slices per step and rank");
ABSL_FLAG(int, threads, 1, "intra-op CPU threads per rank");
ABSL_FLAG(int64_t, steps, 10, "timed steps");
ABSL_FLAG(int64_t, warmup, 2, "untimed warm-up steps");
ABSL_FLAG(int, subjects, 4, "phantom subjects of each kind, labeled and unlabeled");

namespace miseg {
namespace {

using Clock = std::chrono::steady_clock;

struct RankFigures {
  double steps_per_second = 0;
  double allreduce_seconds = 0;  // per step, in the step: waiting for the slowest rank too
  int64_t allreduce_bytes = 0;   // per step
  double bare_allreduce_seconds = 0;  // the same bytes alone, the ranks lined up first
};

// Mean seconds of an all-reduce of `bytes` (one bucket) right after a barrier: the
// communication alone, without the wait for a slower rank that the in-step figure includes.
absl::StatusOr<double> TimeBareAllReduce(Collectives& collectives, int64_t bytes) {
  constexpr int kRepetitions = 10;
  std::vector<torch::Tensor> buffer = {torch::ones({bytes / 4}, torch::kFloat32)};
  double seconds = 0;
  for (int i = 0; i < kRepetitions; ++i) {
    if (absl::Status s = collectives.Barrier(); !s.ok()) return s;
    const Clock::time_point start = Clock::now();
    if (absl::Status s = collectives.AllReduceSum(buffer); !s.ok()) return s;
    seconds += std::chrono::duration<double>(Clock::now() - start).count() / kRepetitions;
  }
  return seconds;
}

TrainingData PhantomData() {
  TrainingData data;
  const int n = absl::GetFlag(FLAGS_subjects);
  for (int i = 0; i < 2 * n; ++i) {
    PhantomSubject s = GeneratePhantomSubject(/*population_seed=*/2026, i);
    TrainingVolume v{"phantom-" + std::to_string(i), std::move(s.image), std::nullopt};
    if (i < n) v.labels = std::move(s.labels);
    (i < n ? data.labeled : data.unlabeled).push_back(std::move(v));
  }
  return data;
}

TrainerConfig BenchConfig() {
  TrainerConfig c;  // the default model and objective
  c.model.grid_size = absl::GetFlag(FLAGS_size);
  c.labeled_batch = absl::GetFlag(FLAGS_labeled_batch);
  c.unlabeled_batch = absl::GetFlag(FLAGS_unlabeled_batch);
  c.threads = absl::GetFlag(FLAGS_threads);
  c.total_steps = absl::GetFlag(FLAGS_warmup) + absl::GetFlag(FLAGS_steps);
  c.validate_every = 0;
  c.log_every = 1;
  return c;
}

// One rank's whole life, in its own process. Rank 0 of a group hosts the store and writes
// its port to port_fd for the parent to hand to the others.
absl::StatusOr<RankFigures> RankMain(int rank, int world, int port, int port_fd) {
  const TrainingData data = PhantomData();
  DataParallel parallel{rank, world, nullptr, false};
  std::unique_ptr<RendezvousHost> host;
  if (world > 1) {
    if (rank == 0) {
      auto listening = RendezvousHost::Listen("127.0.0.1", 0);
      if (!listening.ok()) return listening.status();
      host = std::move(*listening);
      const std::string text = absl::StrCat(host->port(), "\n");
      if (write(port_fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
        return absl::InternalError("cannot hand the port to the parent");
      }
    }
    ProcessGroupOptions options;
    options.rank = rank;
    options.world_size = world;
    options.store_host = "127.0.0.1";
    options.store_port = port;
    options.prefix = "bench/";
    options.timeout = absl::Minutes(5);
    auto collectives = JoinProcessGroup(options, host.get());
    if (!collectives.ok()) return collectives.status();
    parallel.collectives = *collectives;
  }
  auto trainer = Trainer::Create(BenchConfig(), data, parallel);
  if (!trainer.ok()) return trainer.status();
  auto warm = (*trainer)->Run({}, nullptr, absl::GetFlag(FLAGS_warmup));
  if (!warm.ok()) return warm.status();
  RankFigures f;
  const int64_t steps = absl::GetFlag(FLAGS_steps);
  const Clock::time_point start = Clock::now();
  auto timed = (*trainer)->Run({[&](const StepMetrics& m) {
                                 f.allreduce_seconds += m.allreduce_seconds / steps;
                                 f.allreduce_bytes = m.allreduce_bytes;
                               }},
                               nullptr, steps);
  if (!timed.ok()) return timed.status();
  f.steps_per_second = steps / std::chrono::duration<double>(Clock::now() - start).count();
  if (parallel.collectives != nullptr) {
    auto bare = TimeBareAllReduce(*parallel.collectives, f.allreduce_bytes);
    if (!bare.ok()) return bare.status();
    f.bare_allreduce_seconds = *bare;
  }
  return f;
}

// Reads up to a newline or the end (the writer's exit).
std::string ReadLine(int fd) {
  std::string text;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') text.push_back(c);
  return text;
}

// Forks one rank; its figures (or its error) come back through a pipe as one line.
pid_t ForkRank(int rank, int world, int port, int port_fd, int* result_fd) {
  int result[2];
  if (pipe(result) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    close(result[0]);
    absl::StatusOr<RankFigures> f = RankMain(rank, world, port, port_fd);
    const std::string line =
        f.ok() ? absl::StrFormat("ok %.17g %.17g %d %.17g\n", f->steps_per_second,
                                 f->allreduce_seconds, f->allreduce_bytes,
                                 f->bare_allreduce_seconds)
               : absl::StrCat("error ", f.status().ToString(), "\n");
    (void)!write(result[1], line.data(), line.size());
    _exit(f.ok() ? 0 : 1);
  }
  close(result[1]);
  *result_fd = result[0];
  return pid;
}

absl::StatusOr<RankFigures> ParseFigures(const std::string& line) {
  std::vector<std::string> fields = absl::StrSplit(line, ' ');
  RankFigures f;
  if (fields.size() != 5 || fields[0] != "ok" ||
      std::sscanf(line.c_str(), "ok %lf %lf %ld %lf", &f.steps_per_second, &f.allreduce_seconds,
                  &f.allreduce_bytes, &f.bare_allreduce_seconds) != 4) {
    return absl::InternalError(line.empty() ? "a rank died without a word" : line);
  }
  return f;
}

// Runs `world` ranks to the end and returns rank 0's figures (the ranks move in lockstep).
absl::StatusOr<RankFigures> RunGroup(int world) {
  int port_pipe[2];
  if (pipe(port_pipe) != 0) return absl::InternalError("pipe");
  std::vector<pid_t> pids;
  std::vector<int> result_fds(world, -1);
  pids.push_back(ForkRank(0, world, 0, port_pipe[1], &result_fds[0]));
  close(port_pipe[1]);
  const int port = world > 1 ? std::atoi(ReadLine(port_pipe[0]).c_str()) : 0;
  close(port_pipe[0]);
  for (int r = 1; r < world && port > 0; ++r) {
    pids.push_back(ForkRank(r, world, port, -1, &result_fds[r]));
  }
  std::vector<absl::StatusOr<RankFigures>> figures;
  for (int fd : result_fds) {
    if (fd < 0) continue;
    figures.push_back(ParseFigures(ReadLine(fd)));
    close(fd);
  }
  for (pid_t pid : pids) {
    if (pid > 0) waitpid(pid, nullptr, 0);
  }
  if (world > 1 && port <= 0) return absl::InternalError("rank 0 handed out no port");
  for (const auto& f : figures) {
    if (!f.ok()) return f.status();
  }
  return figures[0];
}

void PrintTable(const RankFigures& one, const RankFigures& many, int world) {
  const TrainerConfig c = BenchConfig();
  const double slices = static_cast<double>(c.labeled_batch + 2 * c.unlabeled_batch);
  const double mb = 1024.0 * 1024.0;
  std::printf("miseg-data-parallel-bench: grid %ld, U-Net widths 16-32-64-128-256, %ld+%ld slices "
              "per step and rank, %d intra-op thread(s) per rank, %ld timed steps\n",
              static_cast<long>(c.model.grid_size), static_cast<long>(c.labeled_batch),
              static_cast<long>(c.unlabeled_batch), c.threads,
              static_cast<long>(absl::GetFlag(FLAGS_steps)));
  std::printf("%-6s %-8s %-9s %-8s %-18s %-16s %-14s %-14s %-19s %s\n", "ranks", "steps/s",
              "slices/s", "speedup", "allreduce ms/step", "allreduce share", "bare ms",
              "grad MiB/step", "ring MiB/step/rank", "bare ring MiB/s");
  const auto row = [&](int w, const RankFigures& f) {
    const bool group = w > 1;
    const double bytes = static_cast<double>(f.allreduce_bytes);
    const double ring = 2.0 * (w - 1) / w * bytes / mb;
    const auto cell = [&](double v, const char* format) {
      return group ? absl::StrFormat(format, v) : std::string("-");
    };
    std::printf("%-6d %-8.3f %-9.2f %-8.2f %-18s %-16s %-14s %-14s %-19s %s\n", w,
                f.steps_per_second, w * slices * f.steps_per_second,
                w * f.steps_per_second / one.steps_per_second,
                cell(1000.0 * f.allreduce_seconds, "%.1f").c_str(),
                cell(100.0 * f.allreduce_seconds * f.steps_per_second, "%.1f%%").c_str(),
                cell(1000.0 * f.bare_allreduce_seconds, "%.1f").c_str(),
                cell(bytes / mb, "%.2f").c_str(), cell(ring, "%.2f").c_str(),
                cell(ring / std::max(f.bare_allreduce_seconds, 1e-9), "%.0f").c_str());
  };
  row(1, one);
  row(world, many);
  std::printf("speedup: slices/s over one rank's. allreduce: the gradient all-reduce in the "
              "step, waiting for the slower rank included; bare: the same bytes right after a "
              "barrier. ring: 2 (W - 1) / W x gradient bytes sent (and received) per rank.\n");
}

}  // namespace
}  // namespace miseg

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int world = absl::GetFlag(FLAGS_world);
  if (world < 2) {
    std::cerr << "--world must be at least 2\n";
    return 2;
  }
  // Nothing of LibTorch is touched in this process: every rank is a fresh fork.
  auto one = miseg::RunGroup(1);
  if (!one.ok()) {
    std::cerr << "one rank: " << one.status() << "\n";
    return 1;
  }
  auto many = miseg::RunGroup(world);
  if (!many.ok()) {
    std::cerr << world << " ranks: " << many.status() << "\n";
    return 1;
  }
  miseg::PrintTable(*one, *many, world);
  return 0;
}

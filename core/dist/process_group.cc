// Process groups over c10d: the TCPStore rendezvous, Gloo (or NCCL) groups, and the
// Collectives the trainer calls. Only c10d API present in both Debian's LibTorch 1.13 and
// upstream 2.x is used: the backends are constructed directly (not through the
// ProcessGroup wrapper 2.x puts around them), TCPStore(host, TCPStoreOptions), PrefixStore,
// and Work::wait().
#include "core/dist/process_group.h"

#include <cstdlib>

#include <chrono>
#include <exception>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/Device.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "absl/strings/str_cat.h"
#include "core/train/collectives.h"

namespace miseg {
namespace {

#ifdef USE_C10D_NCCL
constexpr bool kNcclBuilt = true;
#else
constexpr bool kNcclBuilt = false;
#endif

std::string FirstLine(const std::exception& e) {
  const std::string what = e.what();
  return what.substr(0, what.find('\n'));
}

std::chrono::milliseconds ToMilliseconds(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

// Runs one collective; any exception (c10::Error, gloo::IoException, a timeout) means the
// group can no longer be trusted, which callers treat as retryable.
template <typename Fn>
absl::Status GuardCollective(const char* op, Fn&& fn) {
  try {
    fn();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("collective ", op, " failed: ", FirstLine(e)));
  }
}

// Collectives over one c10d backend: c10d::ProcessGroupGloo or c10d::ProcessGroupNCCL, whose
// operations have the same signatures in 1.13 and 2.x. Every op is issued on tensors that
// live on device_ and are contiguous; other tensors travel through a staged copy.
template <typename Group>
class C10dCollectives final : public Collectives {
 public:
  C10dCollectives(c10::intrusive_ptr<Group> group, int rank, int world_size, c10::Device device)
      : group_(std::move(group)), rank_(rank), world_size_(world_size), device_(device) {}

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }

  absl::Status AllReduceSum(std::vector<torch::Tensor>& tensors) override {
    return GuardCollective("all-reduce", [&] {
      std::vector<std::vector<torch::Tensor>> staged = Stage(tensors);
      std::vector<c10::intrusive_ptr<c10d::Work>> works;
      c10d::AllreduceOptions options;
      options.reduceOp = c10d::ReduceOp::SUM;
      for (auto& one : staged) works.push_back(group_->allreduce(one, options));
      for (auto& work : works) work->wait();
      Unstage(staged, tensors);
    });
  }

  // One operation per dtype: a model's buffers are dozens of small tensors, and each
  // operation costs a round trip.
  absl::Status Broadcast(std::vector<torch::Tensor>& tensors, int root) override {
    return GuardCollective("broadcast", [&] {
      std::map<c10::ScalarType, std::vector<size_t>> by_dtype;
      for (size_t i = 0; i < tensors.size(); ++i) by_dtype[tensors[i].scalar_type()].push_back(i);
      std::vector<std::vector<torch::Tensor>> flats;
      std::vector<c10::intrusive_ptr<c10d::Work>> works;
      c10d::BroadcastOptions options;
      options.rootRank = root;
      for (const auto& [dtype, indices] : by_dtype) {
        std::vector<torch::Tensor> parts;
        for (size_t i : indices) parts.push_back(tensors[i].reshape(-1).to(device_));
        flats.push_back({torch::cat(parts)});
        works.push_back(group_->broadcast(flats.back(), options));
      }
      for (auto& work : works) work->wait();
      if (rank_ == root) return;
      size_t next = 0;
      for (const auto& [dtype, indices] : by_dtype) {
        const torch::Tensor& flat = flats[next++][0];
        int64_t offset = 0;
        for (size_t i : indices) {
          const int64_t n = tensors[i].numel();
          tensors[i].copy_(flat.narrow(0, offset, n).view(tensors[i].sizes()));
          offset += n;
        }
      }
    });
  }

  absl::Status AllGather(const torch::Tensor& input, std::vector<torch::Tensor>* outputs) override {
    return GuardCollective("all-gather", [&] {
      std::vector<torch::Tensor> in = {input.to(device_).contiguous()};
      std::vector<std::vector<torch::Tensor>> out(1);
      for (int r = 0; r < world_size_; ++r) out[0].push_back(torch::empty_like(in[0]));
      group_->allgather(out, in)->wait();
      outputs->clear();
      for (torch::Tensor& t : out[0]) outputs->push_back(t.to(input.device()));
    });
  }

  // A one-element all-reduce rather than the backends' barrier(): NCCL's guesses a device
  // per rank, this uses the group's.
  absl::Status Barrier() override {
    return GuardCollective("barrier", [&] {
      std::vector<std::vector<torch::Tensor>> token = Stage({torch::zeros({1}, torch::kFloat32)});
      group_->allreduce(token[0])->wait();
    });
  }

 private:
  // Each tensor as the one-tensor list a c10d op takes (a list means one tensor per local
  // device to c10d, not several tensors).
  std::vector<std::vector<torch::Tensor>> Stage(const std::vector<torch::Tensor>& tensors) const {
    std::vector<std::vector<torch::Tensor>> staged;
    for (const torch::Tensor& t : tensors) staged.push_back({t.to(device_).contiguous()});
    return staged;
  }
  // Copies results back where staging made a copy (to() and contiguous() alias otherwise).
  static void Unstage(const std::vector<std::vector<torch::Tensor>>& staged,
                      std::vector<torch::Tensor>& tensors) {
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (!staged[i][0].is_same(tensors[i])) tensors[i].copy_(staged[i][0]);
    }
  }

  c10::intrusive_ptr<Group> group_;
  const int rank_;
  const int world_size_;
  const c10::Device device_;
};

absl::Status ValidateOptions(const ProcessGroupOptions& o, const RendezvousHost* host) {
  if (o.world_size < 1) return absl::InvalidArgumentError("world_size must be at least 1");
  if (o.rank < 0 || o.rank >= o.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", o.rank, " is outside [0, ", o.world_size, ")"));
  }
  if ((o.rank == 0) != (host != nullptr)) {
    return absl::InvalidArgumentError("rank 0, and only rank 0, passes its RendezvousHost");
  }
  if (o.rank > 0 && (o.store_host.empty() || o.store_port <= 0 || o.store_port > 65535)) {
    return absl::InvalidArgumentError("ranks other than 0 need store_host and store_port");
  }
  if (o.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeout must be positive");
  }
  return absl::OkStatus();
}

}  // namespace

struct RendezvousHost::Impl {
  std::string host;
  c10::intrusive_ptr<c10d::TCPStore> store;
};

RendezvousHost::RendezvousHost(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RendezvousHost::~RendezvousHost() = default;
int RendezvousHost::port() const { return impl_->store->getPort(); }
const std::string& RendezvousHost::host() const { return impl_->host; }

absl::StatusOr<std::unique_ptr<RendezvousHost>> RendezvousHost::Listen(const std::string& host,
                                                                       int port) {
  if (port < 0 || port > 65535) return absl::InvalidArgumentError(absl::StrCat("bad port ", port));
  auto impl = std::make_unique<Impl>();
  impl->host = host;
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(port);
    options.isServer = true;
    // Ranks join whenever their job reaches them; nothing waits for a head count here.
    options.waitWorkers = false;
    impl->store = c10::make_intrusive<c10d::TCPStore>(host, options);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot host the rendezvous store on ", host, ":", port, ": ", FirstLine(e)));
  }
  return std::unique_ptr<RendezvousHost>(new RendezvousHost(std::move(impl)));
}

absl::StatusOr<std::shared_ptr<Collectives>> JoinProcessGroup(const ProcessGroupOptions& o,
                                                              RendezvousHost* host) {
  if (absl::Status s = ValidateOptions(o, host); !s.ok()) return s;
  const std::chrono::milliseconds timeout = ToMilliseconds(o.timeout);
  c10::Device device(c10::kCPU);
  std::shared_ptr<::gloo::transport::Device> gloo_device;
  try {
    device = c10::Device(o.device);
    if (!device.is_cuda() || !kNcclBuilt) {
      gloo_device = c10d::ProcessGroupGloo::createDeviceForHostname(o.bind_host);
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("process group on device '", o.device,
                                                   "' bound to '", o.bind_host,
                                                   "': ", FirstLine(e)));
  }
  const std::string where = absl::StrCat("rank ", o.rank, " of ", o.world_size, " joining '",
                                         o.prefix, "'");
  try {
    // A client connection of this group's own, rank 0's too: a TCPStore serialises the
    // operations of one connection, and the rendezvous blocks in them, so groups sharing the
    // host's connection would wait for one another.
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<std::uint16_t>(host != nullptr ? host->port() : o.store_port);
    store_options.isServer = false;
    store_options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(
        host != nullptr ? host->host() : o.store_host, store_options);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(o.prefix, store);
#ifdef USE_C10D_NCCL
    if (device.is_cuda()) {
      // A failed NCCL collective must fail this rank's group, not tear down the process:
      // the process holds other ranks (a worker's other devices, the server itself).
      // 2 = CleanUpOnly (abort the communicators, keep the process), read at construction;
      // set once, before any group exists, and never over an operator's own choice.
      static const bool nccl_error_handling_set = [] {
        ::setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2", /*overwrite=*/0);
        ::setenv("NCCL_ASYNC_ERROR_HANDLING", "2", /*overwrite=*/0);  // LibTorch < 2.2
        return true;
      }();
      (void)nccl_error_handling_set;
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = timeout;
      auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, o.rank, o.world_size,
                                                                nccl_options);
      return std::shared_ptr<Collectives>(std::make_shared<C10dCollectives<c10d::ProcessGroupNCCL>>(
          std::move(group), o.rank, o.world_size, device));
    }
#endif
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(timeout);
    gloo_options->devices.push_back(gloo_device);
    // One worker thread: collectives run in the order they are issued, and a rank's CPU
    // budget stays with its intra-op threads.
    gloo_options->threads = 1;
    // The constructor is the rendezvous: it connects every pair through the store, or
    // throws once the timeout passes.
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, o.rank, o.world_size,
                                                             gloo_options);
    return std::shared_ptr<Collectives>(std::make_shared<C10dCollectives<c10d::ProcessGroupGloo>>(
        std::move(group), o.rank, o.world_size, c10::Device(c10::kCPU)));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(where, ": ", FirstLine(e)));
  }
}

}  // namespace miseg

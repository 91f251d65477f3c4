// Model archive I/O and volume prediction.
#include "core/train/model_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <torch/cuda.h>
#include <torch/utils.h>

#include "absl/strings/str_cat.h"
#include "core/train/torch_status.h"

namespace miseg {

UNetOptions UNetOptionsFor(const ModelSpec& spec) {
  UNetOptions options;
  options.in_channels = 1;
  options.classes = spec.classes;
  options.widths = spec.widths;
  return options;
}

absl::StatusOr<torch::Device> ResolveDevice(const std::string& name) {
  torch::Device device(torch::kCPU);
  absl::Status parsed = GuardTorch("device", absl::StatusCode::kInvalidArgument, [&] {
    device = torch::Device(name);
    return absl::OkStatus();
  });
  if (!parsed.ok()) return parsed;
  if (device.is_cuda()) {
    if (!torch::cuda::is_available()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", name, "': CUDA is not available in this build or machine"));
    }
    if (device.has_index() && device.index() >= static_cast<int>(torch::cuda::device_count())) {
      return absl::FailedPreconditionError(absl::StrCat("device '", name, "': only ",
                                                        torch::cuda::device_count(),
                                                        " CUDA device(s) present"));
    }
  } else if (!device.is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("device '", name, "': only cpu and cuda are supported"));
  }
  return device;
}

void WriteModel(torch::serialize::OutputArchive& archive, const ModelSpec& spec, UNet& model) {
  archive.write("miseg/spec", c10::IValue(SerializeModelSpec(spec)));
  torch::serialize::OutputArchive weights;
  model->save(weights);
  archive.write("model", weights);
}

// The archive goes to disk through a writer of ours rather than LibTorch's file writer:
// that one, told of a failed write (a full disk), throws again from its destructor and
// takes the process down. Ours takes every byte, remembers the first error, and reports it
// (ENOSPC: ResourceExhausted) once LibTorch is done; the file is only renamed into place
// when every byte reached the disk (fsync).
absl::Status SaveArchiveAtomically(torch::serialize::OutputArchive& archive,
                                   const std::string& path) {
  const std::string temporary = path + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", temporary));
  int write_errno = 0;
  const auto writer = [&](const void* data, size_t size) -> size_t {
    const char* p = static_cast<const char*>(data);
    for (size_t left = size; left > 0 && write_errno == 0;) {
      const ssize_t n = ::write(fd, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        write_errno = errno;
        break;
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
    return size;  // all taken, as far as LibTorch knows: the error is ours to report
  };
  absl::Status saved = GuardTorch(absl::StrCat("writing ", path), absl::StatusCode::kInternal, [&] {
    archive.save_to(writer);
    return absl::OkStatus();
  });
  if (saved.ok() && write_errno == 0 && ::fsync(fd) != 0) write_errno = errno;
  if (::close(fd) != 0 && saved.ok() && write_errno == 0) write_errno = errno;
  if (saved.ok() && write_errno != 0) {
    saved = absl::ErrnoToStatus(write_errno, absl::StrCat("cannot write ", path));
  }
  if (!saved.ok()) {
    std::remove(temporary.c_str());
    return saved;
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::remove(temporary.c_str());
    return absl::InternalError(absl::StrCat("renaming ", temporary, ": ", error.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<torch::serialize::InputArchive> OpenArchive(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    return absl::NotFoundError(absl::StrCat("model file not found: ", path));
  }
  torch::serialize::InputArchive archive;
  absl::Status loaded = GuardTorch(absl::StrCat("reading ", path), absl::StatusCode::kDataLoss, [&] {
    archive.load_from(path, torch::Device(torch::kCPU));
    return absl::OkStatus();
  });
  if (!loaded.ok()) return loaded;
  return archive;
}

absl::StatusOr<ModelSpec> ReadSpec(torch::serialize::InputArchive& archive) {
  c10::IValue value;
  if (!archive.try_read("miseg/spec", value) || !value.isString()) {
    return absl::DataLossError("not a miseg model file: no model spec inside");
  }
  return ParseModelSpec(value.toStringRef());
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& path, const torch::Device& device) {
  auto archive = OpenArchive(path);
  if (!archive.ok()) return archive.status();
  auto spec = ReadSpec(*archive);
  if (!spec.ok()) return spec.status();
  LoadedModel loaded;
  loaded.spec = *spec;
  absl::Status status = GuardTorch(absl::StrCat("loading weights from ", path),
                                   absl::StatusCode::kDataLoss, [&] {
    loaded.model = UNet(UNetOptionsFor(loaded.spec));
    torch::serialize::InputArchive weights;
    if (!archive->try_read("model", weights)) {
      return absl::DataLossError("model file has no weights");
    }
    loaded.model->load(weights);
    loaded.model->to(device);
    loaded.model->eval();
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return loaded;
}

}  // namespace miseg

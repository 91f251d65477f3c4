// libFuzzer target for the series reader: any bytes must give a volume or an error status,
// never a crash, a hang or a sanitizer report. One input is one buffer, or several buffers
// separated by kSeparator so that the series-level checks (grouping, ordering, spacing,
// duplicates) see mutated instances side by side. Built with clang's
// -fsanitize=fuzzer,address,undefined by tests/core/CMakeLists.txt (miseg-fuzz-series-reader).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/oflog/oflog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "core/dicom/series_reader.h"

namespace {

constexpr absl::string_view kSeparator = "\nMISEG-NEXT-BUFFER\n";

// Small enough that a legitimate but large header (8192 x 8192 x 32 frames of JPEG-LS
// zeros) cannot exhaust the fuzzer's memory limit; the checks are the same at any limit.
miseg::SeriesReaderLimits FuzzLimits() {
  miseg::SeriesReaderLimits limits;
  limits.max_voxels = int64_t{1} << 24;
  limits.max_rows_or_cols = 4096;
  limits.max_slices = 512;
  limits.max_inflated_bytes = int64_t{64} << 20;
  return limits;
}

}  // namespace

// DCMTK allocates the length an element's header claims before it finds the data is not
// there; with ASan every such (untouched) gigabyte costs a shadow-memory sweep, which slowed
// fuzzing to a few inputs a second. Refusing allocations over 256 MiB (nothrow new returns
// null, DCMTK reports "memory exhausted") keeps the fuzzer fast; nothing legitimate within
// FuzzLimits() needs that much.
extern "C" const char* __asan_default_options() {
  return "max_allocation_size_mb=256:allocator_may_return_null=1";
}

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // DCMTK logs every parse error it meets; at millions of inputs that is all the fuzzer
  // would print.
  OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
  miseg::RegisterDicomCodecs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<miseg::DicomBuffer> buffers;
  for (absl::string_view part : absl::StrSplit(input, kSeparator)) {
    if (buffers.size() == 8) break;  // a few instances exercise every series check
    buffers.push_back({absl::StrCat("fuzz#", buffers.size()), std::string(part)});
  }
  std::vector<std::string> skipped;
  auto volumes = miseg::ReadSeries(buffers, &skipped, FuzzLimits());
  if (volumes.ok()) {
    // What the reader promises its callers: one source per slice, voxels matching geometry.
    for (const miseg::SeriesVolume& volume : *volumes) {
      if (!volume.image.consistent() ||
          volume.slices.size() != static_cast<size_t>(volume.image.geometry.slices)) {
        __builtin_trap();
      }
    }
  } else if (volumes.status().code() != absl::StatusCode::kInvalidArgument) {
    __builtin_trap();  // bad input must be InvalidArgument, nothing else
  }
  return 0;
}

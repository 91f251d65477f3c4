// libFuzzer target for the JPEG 2000 codec (core/dicom/jpeg2000.h): any bytes must give a
// decoded image of exactly the size its header claims, within the limits, or
// InvalidArgument; never a crash, a hang, an allocation past the limits or a sanitizer
// report. The seeds (tests/core/dicom/jpeg2000_fuzzer_seeds) are real codestreams: the
// frames of pydicom's JPEG 2000 samples (lossless and lossy, 16-bit signed) and small ones
// made with opj_compress (8-bit, 16-bit signed and unsigned, lossy, tiled JP2). Two more,
// htj2k_byte.jph and htj2k_byte_causal.j2c, are High-Throughput JPEG 2000 samples from
// OpenJPEG's conformance data (the uclouvain/openjpeg-data repository), used only as
// input; regression_htj2k_mel_init_assert.* are the fuzzer's mutations of them that made
// Debian's OpenJPEG 2.5.0 abort (an assertion in ht_dec.c: mel_init), which the codec now
// refuses before OpenJPEG sees them.
// Only miseg's code is instrumented; Debian's libopenjp2 is not, so the cov:/ft: figures
// count our wrapper, while ASan still sees OpenJPEG's heap through its interceptors.
// Built with clang's -fsanitize=fuzzer,address,undefined by tests/core/CMakeLists.txt
// (miseg-fuzz-jpeg2000).
#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "core/dicom/jpeg2000.h"

namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    fprintf(stderr, "check failed: %s\n", what);
    __builtin_trap();
  }
}

// Small enough that a legitimate image within them decodes in milliseconds.
miseg::Jpeg2000Limits FuzzLimits() {
  miseg::Jpeg2000Limits limits;
  limits.max_rows_or_cols = 2048;
  limits.max_pixels = int64_t{1} << 20;
  limits.max_components = 4;
  limits.max_tiles = 4096;
  return limits;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  const miseg::Jpeg2000Limits limits = FuzzLimits();
  const absl::StatusOr<miseg::Jpeg2000Header> header = miseg::ReadJpeg2000Header(input);
  const absl::StatusOr<miseg::Jpeg2000Image> image = miseg::DecodeJpeg2000(input, limits);
  if (!image.ok()) {
    Check(absl::IsInvalidArgument(image.status()), "bad input is InvalidArgument");
    return 0;
  }
  Check(header.ok(), "a decoded image has a header");
  const miseg::Jpeg2000Header& h = image->header;
  Check(h.rows == header->rows && h.cols == header->cols, "size as the header says");
  Check(h.rows <= limits.max_rows_or_cols && h.cols <= limits.max_rows_or_cols &&
            h.rows * h.cols <= limits.max_pixels && h.components <= limits.max_components,
        "within the limits");
  Check(image->samples.size() ==
            static_cast<size_t>(h.rows * h.cols * h.components * image->bytes_per_sample),
        "every sample there");
  // The same bytes decode to the same samples at the wider width.
  if (image->bytes_per_sample == 1) {
    const absl::StatusOr<miseg::Jpeg2000Image> wide = miseg::DecodeJpeg2000(input, limits, 2);
    Check(wide.ok() && wide->samples.size() == 2 * image->samples.size(), "16-bit decode");
  }
  return 0;
}

#include "core/dicom/net/net_text.h"

#include "absl/strings/ascii.h"

namespace miseg::dicom_net_internal {
namespace {

constexpr size_t kMaxAeTitle = 16;

}  // namespace

std::string Trim(absl::string_view text) { return std::string(absl::StripAsciiWhitespace(text)); }

std::string OneLine(absl::string_view text, size_t max_chars) {
  std::string out;
  for (char c : text.substr(0, max_chars)) {
    const unsigned char u = static_cast<unsigned char>(c);
    out.push_back((u < 0x20 || u == 0x7F || c == '\\') ? ' ' : c);
  }
  return out;
}

bool ValidAeTitle(absl::string_view ae) {
  const std::string trimmed = Trim(ae);
  if (trimmed.empty() || trimmed.size() > kMaxAeTitle) return false;
  for (char c : trimmed) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7F || c == '\\') return false;
  }
  return true;
}

}  // namespace miseg::dicom_net_internal

// Text helpers shared by the storage SCP, the C-STORE sender, the STOW-RS client and the
// HTTP client (internal to core/dicom/net).
#ifndef MISEG_CORE_DICOM_NET_NET_TEXT_H_
#define MISEG_CORE_DICOM_NET_NET_TEXT_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace miseg::dicom_net_internal {

// text without its surrounding ASCII whitespace (DICOM pads AE titles and UIDs).
std::string Trim(absl::string_view text);

// Text safe for a one-line message or an LO element: no control characters, no backslash.
std::string OneLine(absl::string_view text, size_t max_chars);

// 1 to 16 characters once trimmed, printable ASCII, no backslash.
bool ValidAeTitle(absl::string_view ae);

}  // namespace miseg::dicom_net_internal

#endif  // MISEG_CORE_DICOM_NET_NET_TEXT_H_

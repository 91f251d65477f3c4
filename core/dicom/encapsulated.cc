// Splitting encapsulated pixel data into frames (see encapsulated.h).
#include "core/dicom/encapsulated.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcpixseq.h>
#include <dcmtk/dcmdata/dcpxitem.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace miseg {
namespace {

// Each item of a pixel sequence: its tag and length (8 bytes), then the value.
constexpr uint64_t kItemHeaderBytes = 8;

absl::Status Bad(absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat("encapsulated pixel data: ", reason));
}

absl::StatusOr<absl::string_view> ItemValue(DcmPixelSequence& sequence, unsigned long index) {
  DcmPixelItem* item = nullptr;
  if (sequence.getItem(item, index).bad() || item == nullptr) {
    return Bad(absl::StrCat("cannot read item ", index));
  }
  const Uint32 length = item->getLength();
  if (length == 0) return absl::string_view();
  Uint8* data = nullptr;
  if (item->getUint8Array(data).bad() || data == nullptr) {
    return Bad(absl::StrCat("cannot read item ", index));
  }
  return absl::string_view(reinterpret_cast<const char*>(data), length);
}

bool StartsFrame(absl::string_view fragment) {
  static constexpr char kSocSiz[] = {'\xFF', '\x4F', '\xFF', '\x51'};
  static constexpr char kJp2[] = {'\x00', '\x00', '\x00', '\x0C', 'j', 'P', ' ', ' '};
  return (fragment.size() >= sizeof(kSocSiz) &&
          std::memcmp(fragment.data(), kSocSiz, sizeof(kSocSiz)) == 0) ||
         (fragment.size() >= sizeof(kJp2) && std::memcmp(fragment.data(), kJp2, sizeof(kJp2)) == 0);
}

// Frames by the Basic Offset Table: offsets from the first fragment's item tag.
absl::StatusOr<std::vector<FrameFragments>> ByOffsetTable(
    absl::string_view table, const std::vector<absl::string_view>& fragments, int64_t frames) {
  if (table.size() % 4 != 0 || static_cast<int64_t>(table.size() / 4) != frames) {
    return Bad(absl::StrCat("the Basic Offset Table has ", table.size(), " bytes for ", frames,
                            " frames"));
  }
  std::vector<FrameFragments> result;
  uint64_t position = 0;  // of fragment k's item tag
  size_t k = 0;
  for (int64_t f = 0; f < frames; ++f) {
    const auto* b = reinterpret_cast<const uint8_t*>(table.data()) + 4 * f;
    const uint64_t offset = uint64_t{b[0]} | (uint64_t{b[1]} << 8) | (uint64_t{b[2]} << 16) |
                            (uint64_t{b[3]} << 24);
    while (k < fragments.size() && position < offset) {
      if (result.empty()) return Bad("the Basic Offset Table does not start at 0");
      result.back().push_back(fragments[k]);
      position += kItemHeaderBytes + fragments[k].size();
      ++k;
    }
    if (position != offset || k == fragments.size()) {
      return Bad(absl::StrCat("offset ", offset, " of frame ", f + 1,
                              " is not the start of a fragment"));
    }
    result.emplace_back();
  }
  for (; k < fragments.size(); ++k) result.back().push_back(fragments[k]);
  return result;
}

// Frames by their first fragment's markers.
absl::StatusOr<std::vector<FrameFragments>> ByMarkers(
    const std::vector<absl::string_view>& fragments, int64_t frames) {
  std::vector<FrameFragments> result;
  for (absl::string_view fragment : fragments) {
    if (StartsFrame(fragment)) result.emplace_back();
    if (result.empty()) return Bad("the first fragment does not start a JPEG 2000 codestream");
    result.back().push_back(fragment);
  }
  if (static_cast<int64_t>(result.size()) != frames) {
    return Bad(absl::StrCat(fragments.size(), " fragments hold ", result.size(),
                            " codestreams for ", frames, " frames, and no offset table"));
  }
  return result;
}

// The pixel sequence of the element's original representation, or null.
DcmPixelSequence* OriginalSequence(DcmPixelData& pixel_data) {
  E_TransferSyntax syntax = EXS_Unknown;
  const DcmRepresentationParameter* parameter = nullptr;
  pixel_data.getOriginalRepresentationKey(syntax, parameter);
  DcmPixelSequence* sequence = nullptr;
  if (pixel_data.getEncapsulatedRepresentation(syntax, parameter, sequence).bad()) return nullptr;
  return sequence;
}

}  // namespace

std::optional<uint64_t> EncapsulatedBytes(DcmPixelData& pixel_data) {
  DcmPixelSequence* sequence = OriginalSequence(pixel_data);
  if (sequence == nullptr) return std::nullopt;
  uint64_t bytes = 0;
  for (unsigned long i = 1; i < sequence->card(); ++i) {
    DcmPixelItem* item = nullptr;
    if (sequence->getItem(item, i).good() && item != nullptr) bytes += item->getLength();
  }
  return bytes;
}

absl::StatusOr<std::vector<FrameFragments>> SplitFrames(DcmPixelData& pixel_data, int64_t frames) {
  DcmPixelSequence* sequence = OriginalSequence(pixel_data);
  if (sequence == nullptr) return Bad("PixelData is not encapsulated");
  const unsigned long items = sequence->card();
  if (items < 2) return Bad("no fragment");
  std::vector<absl::string_view> fragments;
  fragments.reserve(items - 1);
  for (unsigned long i = 1; i < items; ++i) {
    absl::StatusOr<absl::string_view> value = ItemValue(*sequence, i);
    if (!value.ok()) return value.status();
    fragments.push_back(*value);
  }
  if (frames == 1) return std::vector<FrameFragments>{fragments};
  absl::StatusOr<absl::string_view> table = ItemValue(*sequence, 0);
  if (!table.ok()) return table.status();
  if (!table->empty()) return ByOffsetTable(*table, fragments, frames);
  if (static_cast<int64_t>(fragments.size()) == frames) {
    std::vector<FrameFragments> result;
    for (absl::string_view fragment : fragments) result.push_back({fragment});
    return result;
  }
  return ByMarkers(fragments, frames);
}

uint64_t CompressedBytes(const std::vector<FrameFragments>& frames) {
  uint64_t bytes = 0;
  for (const FrameFragments& frame : frames) {
    for (absl::string_view fragment : frame) bytes += fragment.size();
  }
  return bytes;
}

absl::string_view JoinFragments(const FrameFragments& fragments, std::string* joined) {
  if (fragments.size() == 1) return fragments.front();
  joined->clear();
  for (absl::string_view fragment : fragments) joined->append(fragment.data(), fragment.size());
  return *joined;
}

}  // namespace miseg

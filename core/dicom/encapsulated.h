// Encapsulated pixel data (PS3.5 A.4) as frames for a codec of our own: which fragments make
// up each frame, by the Basic Offset Table, one fragment per frame, or the codestream
// markers that start a frame. DCMTK parses the pixel sequence; it only splits frames for
// the codecs it has, and 3.6.7 has none for JPEG 2000. Internal to core/dicom (it includes
// DCMTK headers).
#ifndef MISEG_CORE_DICOM_ENCAPSULATED_H_
#define MISEG_CORE_DICOM_ENCAPSULATED_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcpixel.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace miseg {

// One frame's fragments, in order; views of values DCMTK owns (loaded from disk if needed),
// valid while the pixel data lives.
using FrameFragments = std::vector<absl::string_view>;

// The frames of an encapsulated PixelData element, in its original representation:
//  - one frame: every fragment;
//  - a Basic Offset Table: its offsets (one per frame, first 0, increasing, each at a
//    fragment's start) split the fragments;
//  - as many fragments as frames: one each;
//  - otherwise: a frame starts at each fragment that begins with a JPEG 2000 SOC+SIZ or a
//    JP2 signature (what pydicom and GDCM do without a table).
// InvalidArgument (with no instance name: the caller adds it) when the element is not
// encapsulated, holds no fragment, or the frames cannot be found or counted as `frames`.
absl::StatusOr<std::vector<FrameFragments>> SplitFrames(DcmPixelData& pixel_data, int64_t frames);

// The bytes of every fragment of an encapsulated PixelData element, read from the items'
// lengths without loading their values; nullopt when it is not encapsulated.
std::optional<uint64_t> EncapsulatedBytes(DcmPixelData& pixel_data);

// The bytes of all fragments together (the size of the compressed pixel data).
uint64_t CompressedBytes(const std::vector<FrameFragments>& frames);

// A frame's codestream: its one fragment as it is, or several joined in `joined`.
absl::string_view JoinFragments(const FrameFragments& fragments, std::string* joined);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_ENCAPSULATED_H_

// Text from DICOM, made safe before it reaches the API or a log: UIDs checked against
// PS3.5 9.1, any byte string turned into bounded valid UTF-8 (invalid bytes and control
// characters escaped), and text values decoded by the dataset's Specific Character Set.
// Every place that puts DICOM-derived text into a proto `string` field, a status message or
// a log line goes through SafeText (directly or through DicomText / DicomUid), because
// proto3 clients must reject a message whose string fields are not UTF-8 (issue 18).
//
// Internal to core/dicom for the DCMTK-facing functions; SafeText, IsValidUtf8 and
// ValidateUid are plain functions any layer may use. All functions are thread-safe.
#ifndef MISEG_CORE_DICOM_DICOM_TEXT_H_
#define MISEG_CORE_DICOM_DICOM_TEXT_H_

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dctagkey.h>

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace miseg {

// The longest text SafeText keeps by default (bytes of output, before the ellipsis).
inline constexpr size_t kSafeTextDefaultMax = 64;

// True when `text` is well-formed UTF-8 (no overlongs, surrogates or code points past
// U+10FFFF), the rule protobuf applies to proto3 `string` fields.
bool IsValidUtf8(absl::string_view text);

// `text` as valid UTF-8 of at most about `max_bytes` bytes: valid multi-byte sequences are
// kept, every invalid byte becomes "\xNN", control characters (C0, DEL, C1) become "\n",
// "\t", "\r" or "\xNN", and a backslash stays a backslash (DICOM's value separator). When the
// result would be longer than `max_bytes` it is cut at a character boundary and ends in "…".
std::string SafeText(absl::string_view text, size_t max_bytes = kSafeTextDefaultMax);

// A value without the padding DICOM allows (one trailing NUL or space, as DCMTK's
// getOFString strips) and, for UIDs written carelessly, surrounding spaces.
absl::string_view StripUidPadding(absl::string_view uid);

// OK when `uid` (after StripUidPadding) is a UID per PS3.5 9.1: components of digits
// separated by single dots, none empty, none with a leading zero unless it is "0", at most
// 64 characters in all. InvalidArgument saying what is wrong otherwise (the value itself is
// not quoted: callers name the attribute and quote it with SafeText).
absl::Status ValidateUid(absl::string_view uid);

// The UID in `tag` of `item`, validated: "" when absent or empty and not `required`;
// InvalidArgument "<Attribute> is missing" when required and absent or empty, and
// "<Attribute> is not a valid UID: '<escaped value>' (<why>)" when present but malformed.
absl::StatusOr<std::string> DicomUid(DcmItem& item, const DcmTagKey& tag, bool required);

// The value (all values, backslash-separated) of text attribute `tag` in `item`, decoded
// to UTF-8 by the Specific Character Set of `charset_source` (the dataset the item belongs
// to; the default repertoire when it has none), trimmed of DICOM padding, then passed
// through SafeText(…, max_bytes). When the character set is unknown or the bytes are not
// valid in it, the raw bytes go through SafeText instead: escaped, never copied raw. ""
// when absent.
std::string DicomText(DcmItem& item, const DcmTagKey& tag, DcmItem& charset_source,
                      size_t max_bytes = 256);
inline std::string DicomText(DcmItem& item, const DcmTagKey& tag, size_t max_bytes = 256) {
  return DicomText(item, tag, item, max_bytes);
}

// All values of `tag` in `item` (backslash-separated) as raw bytes, without surrounding
// whitespace: not decoded and not escaped, for values the caller parses or compares (CS,
// IS, DS). "" when absent or not readable as a string.
std::string TrimmedDicomValues(DcmItem& item, const DcmTagKey& tag);

// The first value of `tag` in `item`, surrounding whitespace trimmed; "" when `item` is null
// or the tag is absent. For UIDs and codes in peers' responses and incoming datasets.
std::string TrimmedFirstDicomValue(DcmItem* item, const DcmTagKey& tag);

// The first value of `tag` in `item` (as DCMTK normalises it) passed through
// SafeText(…, max_bytes), for values that end up in messages. "" when absent or not
// readable as a string.
std::string EscapedDicomValue(DcmItem& item, const DcmTagKey& tag, size_t max_bytes = 1024);

// Decodes `raw` from the DICOM character set `specific_character_set` (the value of
// (0008,0005), possibly multi-valued, e.g. "\\ISO 2022 IR 87") to UTF-8. Errors when the
// set is unknown to the conversion backend or `raw` is not valid in it. A person name's
// component delimiters (^ and =) reset ISO 2022 code extensions, as PS3.5 6.1.2.5.3 says.
absl::StatusOr<std::string> DecodeDicomString(absl::string_view raw,
                                              absl::string_view specific_character_set,
                                              bool person_name = false);

// The name of a tag as the dictionary knows it ("SeriesInstanceUID"), else "(gggg,eeee)".
std::string DicomTagName(const DcmTagKey& tag);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_DICOM_TEXT_H_

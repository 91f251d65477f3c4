// Text from DICOM made safe: UID rule, UTF-8 escaping, character set decoding.
#include "core/dicom/dicom_text.h"

#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcelem.h>
#include <dcmtk/dcmdata/dcspchrs.h>
#include <dcmtk/dcmdata/dctag.h>
#include <iconv.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace miseg {
namespace {

// The length of the valid UTF-8 sequence starting at text[i], or 0 when none starts there.
size_t Utf8SequenceLength(absl::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t b0 = byte(i);
  if (b0 < 0x80) return 1;
  size_t length = 0;
  uint8_t low = 0x80, high = 0xBF;  // the range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    length = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    length = 3;
    if (b0 == 0xE0) low = 0xA0;   // no overlongs
    if (b0 == 0xED) high = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    length = 4;
    if (b0 == 0xF0) low = 0x90;   // no overlongs
    if (b0 == 0xF4) high = 0x8F;  // nothing past U+10FFFF
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  if (byte(i + 1) < low || byte(i + 1) > high) return 0;
  for (size_t k = 2; k < length; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  }
  return length;
}

void AppendHex(uint8_t b, std::string* out) {
  char buffer[8];
  std::snprintf(buffer, sizeof(buffer), "\\x%02X", b);
  out->append(buffer);
}

// DICOM's text VRs whose values the Specific Character Set governs (PS3.5 6.1.2.3); the
// others (CS, UI, DS, IS, AE, DA, TM, ...) use the default repertoire only.
bool IsCharsetVr(DcmEVR vr) {
  switch (vr) {
    case EVR_SH:
    case EVR_LO:
    case EVR_ST:
    case EVR_LT:
    case EVR_UT:
    case EVR_PN:
    case EVR_UC:
      return true;
    default:
      return false;
  }
}

// Strips what DICOM pads text with: spaces at both ends (leading spaces are significant only
// for ST/LT/UT, which we only display) and trailing NULs.
absl::string_view StripPadding(absl::string_view text) {
  while (!text.empty() && (text.back() == '\0' || text.back() == ' ')) text.remove_suffix(1);
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  return text;
}

// Converts with glibc's iconv; nullopt-like error when the bytes are not valid in `from`.
absl::StatusOr<std::string> Iconv(const std::string& in, const char* from) {
  iconv_t cd = iconv_open("UTF-8", from);
  if (cd == reinterpret_cast<iconv_t>(-1)) {
    return absl::UnimplementedError(absl::StrCat("iconv has no ", from));
  }
  std::string out(in.size() * 4 + 16, '\0');
  char* in_ptr = const_cast<char*>(in.data());
  size_t in_left = in.size();
  char* out_ptr = out.data();
  size_t out_left = out.size();
  const size_t done = iconv(cd, &in_ptr, &in_left, &out_ptr, &out_left);
  iconv_close(cd);
  if (done == static_cast<size_t>(-1) || in_left != 0) {
    return absl::InvalidArgumentError(absl::StrCat("not valid ", from));
  }
  out.resize(out.size() - out_left);
  return out;
}

// The Japanese ISO 2022 sets (ISO 2022 IR 13, 87, 159), which Debian's DCMTK cannot
// convert with glibc's iconv ("'ISO 2022 IR 87' is not supported"): the escape sequences of
// PS3.3 C.12.1.1.2 are undone into EUC-JP, which iconv knows. JIS X 0208 and 0212 pairs get
// their high bits set (0212 behind SS3), half-width katakana goes behind SS2, and each
// delimiter returns G0 to ASCII as PS3.5 6.1.2.5.3 says.
absl::StatusOr<std::string> DecodeJapanese(absl::string_view raw, bool person_name) {
  enum class G0 { kAscii, kJisX0208, kJisX0212, kKatakana } g0 = G0::kAscii;
  std::string euc;
  for (size_t i = 0; i < raw.size(); ++i) {
    const uint8_t b = static_cast<uint8_t>(raw[i]);
    const absl::string_view rest = raw.substr(i + 1);
    if (b == 0x1B) {
      if (absl::StartsWith(rest, "$B") || absl::StartsWith(rest, "$@")) {
        g0 = G0::kJisX0208, i += 2;
      } else if (absl::StartsWith(rest, "$(D")) {
        g0 = G0::kJisX0212, i += 3;
      } else if (absl::StartsWith(rest, "(B") || absl::StartsWith(rest, "(J")) {
        g0 = G0::kAscii, i += 2;
      } else if (absl::StartsWith(rest, "(I")) {
        g0 = G0::kKatakana, i += 2;
      } else if (absl::StartsWith(rest, ")I")) {
        i += 2;  // G1 is half-width katakana: bytes 0xA1-0xDF below
      } else {
        return absl::InvalidArgumentError("unknown escape sequence");
      }
      continue;
    }
    const bool delimiter = b == '\r' || b == '\n' || b == '\f' || b == '\t' || b == '\\' ||
                           (person_name && (b == '^' || b == '='));
    if (delimiter) {
      g0 = G0::kAscii;
      euc.push_back(static_cast<char>(b));
    } else if (b >= 0xA1 && b <= 0xDF) {
      euc.push_back('\x8E');
      euc.push_back(static_cast<char>(b));
    } else if (b >= 0x80) {
      return absl::InvalidArgumentError("a byte outside the declared sets");
    } else if (g0 == G0::kJisX0208 || g0 == G0::kJisX0212) {
      if (i + 1 >= raw.size()) return absl::InvalidArgumentError("half a character");
      if (g0 == G0::kJisX0212) euc.push_back('\x8F');
      euc.push_back(static_cast<char>(b | 0x80));
      euc.push_back(static_cast<char>(static_cast<uint8_t>(raw[++i]) | 0x80));
    } else if (g0 == G0::kKatakana && b >= 0x21 && b <= 0x5F) {
      euc.push_back('\x8E');
      euc.push_back(static_cast<char>(b | 0x80));
    } else {
      euc.push_back(static_cast<char>(b));
    }
  }
  return Iconv(euc, "EUC-JP");
}

// The element at `tag`, or null when absent.
DcmElement* FindElement(DcmItem& item, const DcmTagKey& tag) {
  DcmElement* element = nullptr;
  if (item.findAndGetElement(tag, element).bad()) return nullptr;
  return element;
}

// The raw bytes of every value of `element` ("" when unreadable): getOFStringArray would
// stop at an embedded NUL and hide the rest.
std::string RawValue(DcmElement& element) {
  char* bytes = nullptr;
  Uint32 length = 0;
  if (element.getString(bytes, length).good() && bytes != nullptr) {
    return std::string(bytes, length);
  }
  OFString value;
  if (element.getOFStringArray(value).bad()) return "";
  return std::string(value.c_str(), value.length());
}

}  // namespace

bool IsValidUtf8(absl::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t length = Utf8SequenceLength(text, i);
    if (length == 0) return false;
    i += length;
  }
  return true;
}

std::string SafeText(absl::string_view text, size_t max_bytes) {
  static constexpr char kEllipsis[] = "\xE2\x80\xA6";  // U+2026
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 4);
  for (size_t i = 0; i < text.size();) {
    std::string piece;
    const size_t length = Utf8SequenceLength(text, i);
    const uint8_t b0 = static_cast<uint8_t>(text[i]);
    if (length == 0) {
      AppendHex(b0, &piece);
      i += 1;
    } else if (length == 1 && (b0 < 0x20 || b0 == 0x7F)) {
      if (b0 == '\n')
        piece = "\\n";
      else if (b0 == '\t')
        piece = "\\t";
      else if (b0 == '\r')
        piece = "\\r";
      else
        AppendHex(b0, &piece);
      i += 1;
    } else if (length == 2 && b0 == 0xC2 && static_cast<uint8_t>(text[i + 1]) < 0xA0) {
      // C1 controls (U+0080..U+009F): valid UTF-8, but terminals act on them.
      AppendHex(0xC2, &piece);
      AppendHex(static_cast<uint8_t>(text[i + 1]), &piece);
      i += 2;
    } else {
      piece = std::string(text.substr(i, length));
      i += length;
    }
    if (out.size() + piece.size() > max_bytes) {
      out.append(kEllipsis);
      return out;
    }
    out.append(piece);
  }
  return out;
}

absl::string_view StripUidPadding(absl::string_view uid) {
  while (!uid.empty() && (uid.back() == '\0' || uid.back() == ' ')) uid.remove_suffix(1);
  while (!uid.empty() && uid.front() == ' ') uid.remove_prefix(1);
  return uid;
}

absl::Status ValidateUid(absl::string_view uid) {
  uid = StripUidPadding(uid);
  if (uid.empty()) return absl::InvalidArgumentError("empty");
  if (uid.size() > 64) {
    return absl::InvalidArgumentError(absl::StrCat(uid.size(), " characters, more than 64"));
  }
  size_t component_start = 0;
  for (size_t i = 0; i <= uid.size(); ++i) {
    if (i == uid.size() || uid[i] == '.') {
      const size_t length = i - component_start;
      if (length == 0) return absl::InvalidArgumentError("an empty component");
      if (length > 1 && uid[component_start] == '0') {
        return absl::InvalidArgumentError("a component with a leading zero");
      }
      component_start = i + 1;
    } else if (uid[i] < '0' || uid[i] > '9') {
      return absl::InvalidArgumentError("a character other than a digit or a dot");
    }
  }
  return absl::OkStatus();
}

std::string DicomTagName(const DcmTagKey& tag) {
  DcmTag dcm_tag(tag);
  const char* name = dcm_tag.getTagName();
  if (name != nullptr && std::string(name) != DcmTag_ERROR_TagName) return name;
  return tag.toString().c_str();
}

absl::StatusOr<std::string> DicomUid(DcmItem& item, const DcmTagKey& tag, bool required) {
  // Every value at once: a UID is one value anyway (a backslash fails the rule).
  DcmElement* element = FindElement(item, tag);
  const std::string raw = element != nullptr ? RawValue(*element) : "";
  const absl::string_view uid = StripUidPadding(raw);
  if (uid.empty()) {
    if (!required) return std::string();
    return absl::InvalidArgumentError(absl::StrCat(DicomTagName(tag), " is missing"));
  }
  if (absl::Status valid = ValidateUid(uid); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(DicomTagName(tag), " is not a valid UID: '",
                                                   SafeText(uid), "' (", valid.message(), ")"));
  }
  return std::string(uid);
}

absl::StatusOr<std::string> DecodeDicomString(absl::string_view raw,
                                              absl::string_view specific_character_set,
                                              bool person_name) {
  const std::string charset(StripPadding(specific_character_set));
  // Nothing to convert: the default repertoire, or UTF-8 already (checked by the caller).
  bool ascii = true;
  for (char c : raw) ascii &= static_cast<uint8_t>(c) < 0x80 && c != '\x1B';
  if (ascii) return std::string(raw);
  if (charset == "ISO_IR 192") {
    if (IsValidUtf8(raw)) return std::string(raw);
    return absl::InvalidArgumentError("not valid UTF-8");
  }
  if (!DcmSpecificCharacterSet::isConversionAvailable()) {
    return absl::UnimplementedError("this DCMTK has no character set conversion");
  }
  DcmSpecificCharacterSet converter;
  OFCondition selected = converter.selectCharacterSet(OFString(charset.c_str()), "ISO_IR 192");
  OFString converted;
  OFCondition result = selected;
  if (selected.good()) {
    result =
        converter.convertString(raw.data(), raw.size(), converted, person_name ? "\\^=" : "\\");
  }
  if (result.bad()) {
    if (absl::StrContains(charset, "ISO 2022 IR 87") ||
        absl::StrContains(charset, "ISO 2022 IR 159") ||
        absl::StrContains(charset, "ISO 2022 IR 13")) {
      return DecodeJapanese(raw, person_name);
    }
    return absl::InvalidArgumentError(result.text());
  }
  std::string out(converted.c_str(), converted.length());
  if (!IsValidUtf8(out)) return absl::InternalError("conversion produced invalid UTF-8");
  return out;
}

std::string TrimmedDicomValues(DcmItem& item, const DcmTagKey& tag) {
  OFString value;
  if (item.findAndGetOFStringArray(tag, value).bad()) return "";
  return std::string(absl::StripAsciiWhitespace(absl::string_view(value.c_str(), value.length())));
}

std::string TrimmedFirstDicomValue(DcmItem* item, const DcmTagKey& tag) {
  OFString value;
  if (item == nullptr || item->findAndGetOFString(tag, value).bad()) return "";
  return std::string(absl::StripAsciiWhitespace(absl::string_view(value.c_str(), value.length())));
}

std::string EscapedDicomValue(DcmItem& item, const DcmTagKey& tag, size_t max_bytes) {
  OFString value;
  if (item.findAndGetOFString(tag, value).bad()) return "";
  return SafeText(absl::string_view(value.c_str(), value.length()), max_bytes);
}

std::string DicomText(DcmItem& item, const DcmTagKey& tag, DcmItem& charset_source,
                      size_t max_bytes) {
  DcmElement* element = FindElement(item, tag);
  if (element == nullptr) return "";
  const std::string raw = RawValue(*element);
  const absl::string_view value = StripPadding(raw);
  if (value.empty()) return "";
  if (IsCharsetVr(element->ident())) {
    OFString charset;
    charset_source.findAndGetOFStringArray(DCM_SpecificCharacterSet, charset);
    absl::StatusOr<std::string> decoded = DecodeDicomString(
        value, absl::string_view(charset.c_str(), charset.length()), element->ident() == EVR_PN);
    if (decoded.ok()) return SafeText(*decoded, max_bytes);
  }
  return SafeText(value, max_bytes);
}

}  // namespace miseg

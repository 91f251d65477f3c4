// Small helpers shared by the DICOM I/O library: DCMTK conditions to absl::Status (the one
// place that conversion happens), UID generation, Part-10 (de)serialisation in memory, and
// sequence items (functional groups) looked up.
// Internal to core/dicom: it includes DCMTK headers.
#ifndef MISEG_CORE_DICOM_DICOM_UTIL_H_
#define MISEG_CORE_DICOM_DICOM_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dctagkey.h>
#include <dcmtk/ofstd/ofcond.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace miseg {

// OK stays OK; anything else becomes `code` with "context: DCMTK's text".
absl::Status FromCondition(const OFCondition& condition, absl::string_view context,
                           absl::StatusCode code = absl::StatusCode::kInvalidArgument);

// A new globally unique UID: root + "." + a random 64-bit-derived suffix when root is set,
// otherwise 2.25.<random 128-bit UUID as decimal> (ISO/IEC 9834-8; needs no registration).
std::string NewUid(absl::string_view root = "");

// A deterministic UID under 2.25 (or root) derived from a name, e.g. for phantom studies
// that must get the same UIDs every time they are generated.
std::string DeterministicUid(absl::string_view name, absl::string_view root = "");

// A DS (decimal string) value of at most 16 characters, locale-independent: the most
// significant digits that fit, 9 when they do (enough to round-trip a float).
std::string FormatDs(double value);

// Parses a Part-10 buffer (or a raw dataset with no meta header). InvalidArgument naming
// `name` when it is not DICOM or is truncated. A deflated dataset is inflated first and
// refused when it would exceed max_inflated_bytes (a small file can inflate to gigabytes).
absl::StatusOr<std::unique_ptr<DcmFileFormat>> ParseDicom(
    const std::string& bytes, absl::string_view name,
    int64_t max_inflated_bytes = int64_t{1} << 30);

// ParseDicom for a file on disk, with the same messages, without reading it whole: values
// longer than DCM_MaxReadLength (4 KiB: pixel data, large private elements) are read from
// the file only when used, so the file must stay where it is while the result lives. A
// deflated file is read whole and inflated as ParseDicom does. Unavailable when the file
// cannot be opened or read (a failure of the machine, not of the input).
absl::StatusOr<std::unique_ptr<DcmFileFormat>> ParseDicomFile(
    const std::string& path, absl::string_view name,
    int64_t max_inflated_bytes = int64_t{1} << 30);

// The first item of sequence `tag` in `item`; nullptr when `item` is null or has no such
// sequence or item.
DcmItem* FirstSequenceItem(DcmItem* item, const DcmTagKey& tag);

// A functional-group macro's item for one frame (PS3.3 C.7.6.16: a macro sits in the
// frame's per-frame item or in the shared one): the first item of sequence `macro` in
// `per_frame`, else in `shared`; nullptr when neither has one. Either may be null.
DcmItem* FunctionalGroupMacro(DcmItem* per_frame, DcmItem* shared, const DcmTagKey& macro);

// Serialises to a Part-10 buffer in the given transfer syntax (explicit VR little endian by
// default).
absl::StatusOr<std::string> SerializeDicom(DcmFileFormat& file,
                                           E_TransferSyntax syntax = EXS_LittleEndianExplicit);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_DICOM_UTIL_H_

// Reads Part-10 buffers into image volumes: parse every buffer with DCMTK, keep the image
// instances, group them by study and series, expand multi-frame instances into frames, place
// every frame in patient space, check the frames form one regular stack, then decode the
// pixel data (whatever transfer syntax carried it) into real-world values. Geometry and
// sizes are checked before anything large is allocated or decoded, so a hostile header
// costs a parse and nothing more. The same path reads files on disk one at a time: parsed
// without their pixel data for the checks, parsed again to decode (InstanceSource).
#include "core/dicom/series_reader.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dcrleerg.h>
#include <dcmtk/dcmdata/dcsequen.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcvr.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpeg/djencode.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <dcmtk/dcmjpls/djencode.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "core/common/status_macros.h"
#include "core/dicom/dicom_text.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/encapsulated.h"
#include "core/dicom/jpeg2000.h"
#include "core/dicom/patient_space.h"

namespace miseg {
namespace {

using Vec3 = std::array<double, 3>;

// Tolerances of the consistency checks. Positions and orientations come as decimal strings
// of at most 16 characters, so exact comparison would refuse good series.
constexpr double kOrientationTolerance = 1e-4;    // per direction-cosine component
constexpr double kPixelSpacingTolerance = 1e-4;   // relative
constexpr double kSliceSpacingTolerance = 0.01;   // relative: 1% of the series' spacing
constexpr double kDuplicateTolerance_mm = 1e-3;   // two frames closer than this coincide
constexpr double kInPlaneDriftTolerance = 0.1;    // fraction of a pixel (gantry tilt, shear)

// How stored values become numbers: BitsAllocated / BitsStored / HighBit /
// PixelRepresentation and whether the image is MONOCHROME1.
struct PixelFormat {
  int bits_allocated = 16;
  int bits_stored = 16;
  int high_bit = 15;
  bool is_signed = false;
  bool monochrome1 = false;
  int bytes_per_sample() const { return bits_allocated / 8; }
};

// Everything known about one frame before its pixels are decoded.
struct FrameInfo {
  std::optional<Vec3> position;                     // ImagePositionPatient
  std::optional<std::array<double, 6>> orientation;  // ImageOrientationPatient
  std::optional<std::array<double, 2>> pixel_spacing;  // row spacing, column spacing
  std::optional<double> spacing_between_slices;     // or SliceThickness, for one slice
  double slope = 1.0;
  double intercept = 0.0;
  bool has_geometry() const { return position.has_value() && orientation.has_value(); }
};

// One image instance, parsed and checked, pixels not yet decoded.
struct Instance {
  std::string name;  // the buffer's name, for messages
  size_t index = 0;  // in its InstanceSource
  // The parsed file; null between the checks and the decoding for an instance on disk
  // (Release, Reload), so that a series of any size holds one parsed file at a time.
  std::unique_ptr<DcmFileFormat> file;
  DcmDataset* dataset = nullptr;
  std::string sop_instance_uid;
  std::string sop_class_uid;
  std::string study_uid;
  std::string series_uid;
  std::string frame_of_reference_uid;
  std::string modality;
  std::string series_description;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t frames = 1;
  PixelFormat format;
  std::vector<FrameInfo> frame_info;  // one per frame
  // JPEG 2000 (and HTJ2K, which DCMTK 3.6.7 does not know by UID) decoded by our codec.
  bool jpeg2000 = false;
  LossyCompression lossy;
};

// "name (SOP Instance UID x)": the words every message about an instance starts with.
// Both are escaped (SafeText): a name from a folder on disk and a UID not yet checked may
// hold any bytes.
std::string Describe(absl::string_view name, absl::string_view sop_instance_uid) {
  return absl::StrCat(SafeText(name, 256), " (SOP Instance UID ",
                      sop_instance_uid.empty() ? "absent" : SafeText(sop_instance_uid), ")");
}
std::string Describe(const Instance& instance) {
  return Describe(instance.name, instance.sop_instance_uid);
}
std::string Describe(const Instance& instance, int64_t frame) {
  if (instance.frames == 1) return Describe(instance);
  return absl::StrCat(Describe(instance), " frame ", frame + 1);
}

absl::Status Invalid(const Instance& instance, absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat(Describe(instance), ": ", reason));
}

// Attribute text quoted in a message: bounded and escaped, so a hostile value can neither
// flood logs nor put bytes that are not UTF-8 into a reply.
std::string Quote(absl::string_view text) { return absl::StrCat("'", SafeText(text, 40), "'"); }

std::string TagName(const DcmTagKey& tag) { return DicomTagName(tag); }

bool HasElement(DcmItem& item, const DcmTagKey& tag) {
  DcmElement* element = nullptr;
  return item.findAndGetElement(tag, element).good() && element != nullptr;
}

// A decimal-string or integer-string attribute with exactly `count` values. nullopt when
// absent or empty; InvalidArgument (naming the attribute) when present but malformed or not
// finite.
absl::StatusOr<std::optional<std::vector<double>>> GetNumbers(DcmItem& item,
                                                              const DcmTagKey& tag,
                                                              size_t count,
                                                              const Instance& instance) {
  if (!HasElement(item, tag)) return std::nullopt;
  const std::string text = TrimmedDicomValues(item, tag);
  if (text.empty()) return std::nullopt;
  std::vector<double> values;
  for (absl::string_view part : absl::StrSplit(text, '\\')) {
    double value = 0.0;
    if (values.size() == count || !absl::SimpleAtod(absl::StripAsciiWhitespace(part), &value) ||
        !std::isfinite(value)) {
      return Invalid(instance, absl::StrCat(TagName(tag), " ", Quote(text), " is not ", count,
                                            count == 1 ? " number" : " numbers"));
    }
    values.push_back(value);
  }
  if (values.size() != count) {
    return Invalid(instance, absl::StrCat(TagName(tag), " ", Quote(text), " has ", values.size(),
                                          " values, expected ", count));
  }
  return values;
}

// A single-valued number attribute (see GetNumbers).
absl::StatusOr<std::optional<double>> GetNumber(DcmItem& item, const DcmTagKey& tag,
                                                const Instance& instance) {
  ASSIGN_OR_RETURN(std::optional<std::vector<double>> values, GetNumbers(item, tag, 1, instance));
  if (!values.has_value()) return std::nullopt;
  return (*values)[0];
}

// An unsigned-short attribute (Rows, BitsAllocated, ...). nullopt when absent.
absl::StatusOr<std::optional<int>> GetUint16(DcmItem& item, const DcmTagKey& tag,
                                             const Instance& instance) {
  if (!HasElement(item, tag)) return std::nullopt;
  Uint16 value = 0;
  const OFCondition found = item.findAndGetUint16(tag, value);
  if (found.bad()) {
    return Invalid(instance, absl::StrCat(TagName(tag), " is not readable as an unsigned short (",
                                          found.text(), ")"));
  }
  return static_cast<int>(value);
}

// True when uid is root or lies under it ("root.x...").
bool UidUnder(absl::string_view uid, absl::string_view root) {
  return uid == root || (uid.size() > root.size() && absl::StartsWith(uid, root) &&
                         uid[root.size()] == '.');
}

// SOP classes that hold no image to read as a volume, even where they carry PixelData: a
// SEG's frames are labels, not intensities. Everything else with PixelData is read.
bool IsNonImageSopClass(absl::string_view uid) {
  static constexpr const char* kRoots[] = {
      "1.2.840.10008.5.1.4.1.1.66",   // raw data, registration, fiducials, SEG, surfaces
      "1.2.840.10008.5.1.4.1.1.67",   // real world value mapping
      "1.2.840.10008.5.1.4.1.1.68",   // surface scan mesh / point cloud
      "1.2.840.10008.5.1.4.1.1.88",   // structured reports, key object selection
      "1.2.840.10008.5.1.4.1.1.11",   // presentation states
      "1.2.840.10008.5.1.4.1.1.9",    // waveforms
      "1.2.840.10008.5.1.4.1.1.104",  // encapsulated PDF, CDA, STL, ...
  };
  for (const char* root : kRoots) {
    if (UidUnder(uid, root)) return true;
  }
  // Radiotherapy: RT Image (.1) and RT Dose (.2) are images; structures, plans and
  // treatment records are not.
  if (UidUnder(uid, "1.2.840.10008.5.1.4.1.1.481")) {
    return !(UidUnder(uid, "1.2.840.10008.5.1.4.1.1.481.1") ||
             UidUnder(uid, "1.2.840.10008.5.1.4.1.1.481.2"));
  }
  return false;
}

std::string SopClassName(const std::string& uid) {
  if (uid.empty()) return "no SOP Class UID";
  const char* name = dcmFindNameOfUID(uid.c_str(), nullptr);
  return name != nullptr ? absl::StrCat(name, " (", uid, ")") : SafeText(uid);
}

// The transfer syntaxes whose decoders RegisterDicomCodecs() installs (or that need none).
bool IsSupportedTransferSyntax(E_TransferSyntax syntax) {
  switch (syntax) {
    case EXS_LittleEndianImplicit:
    case EXS_LittleEndianExplicit:
    case EXS_BigEndianExplicit:
    case EXS_DeflatedLittleEndianExplicit:
    case EXS_JPEGProcess1:
    case EXS_JPEGProcess2_4:
    case EXS_JPEGProcess6_8:
    case EXS_JPEGProcess10_12:
    case EXS_JPEGProcess14:
    case EXS_JPEGProcess14SV1:
    case EXS_JPEGLSLossless:
    case EXS_JPEGLSLossy:
    case EXS_RLELossless:
      return true;
    default:
      return false;
  }
}

// Transfer syntaxes handed to our JPEG 2000 codec (jpeg2000.h): JPEG 2000 lossless-only and
// lossy, and HTJ2K lossless, lossless RPCL and lossy, whose HT code-blocks the codec refuses
// (a Part 1 codestream under them decodes). DCMTK 3.6.7 does not know the HTJ2K UIDs and
// reads such a file as explicit VR little endian, which it is, with encapsulated pixels.
bool IsJpeg2000Syntax(absl::string_view uid) {
  return uid == "1.2.840.10008.1.2.4.90" || uid == "1.2.840.10008.1.2.4.91" ||
         uid == "1.2.840.10008.1.2.4.201" || uid == "1.2.840.10008.1.2.4.202" ||
         uid == "1.2.840.10008.1.2.4.203";
}

// The LossyImageCompressionMethod (PS3.3 C.7.6.1.1.5.1) of a lossy transfer syntax; empty
// for a lossless one.
std::string LossyMethodOf(absl::string_view uid) {
  static constexpr const char* kJpegLossy[] = {
      "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.52",
      "1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.54", "1.2.840.10008.1.2.4.55",
      "1.2.840.10008.1.2.4.56", "1.2.840.10008.1.2.4.59", "1.2.840.10008.1.2.4.60",
      "1.2.840.10008.1.2.4.61", "1.2.840.10008.1.2.4.62", "1.2.840.10008.1.2.4.63",
      "1.2.840.10008.1.2.4.64"};
  for (const char* jpeg : kJpegLossy) {
    if (uid == jpeg) return "ISO_10918_1";
  }
  if (uid == "1.2.840.10008.1.2.4.81") return "ISO_14495_1";
  if (uid == "1.2.840.10008.1.2.4.91") return "ISO_15444_1";
  if (uid == "1.2.840.10008.1.2.4.203") return "ISO_15444_15";
  return "";
}

// The transfer syntax the file says it is in (its meta header), else the one DCMTK read.
std::string TransferSyntaxUid(DcmFileFormat& file) {
  OFString uid;
  if (file.getMetaInfo() != nullptr &&
      file.getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, uid).good() && !uid.empty()) {
    return std::string(absl::StripAsciiWhitespace(absl::string_view(uid.c_str(), uid.length())));
  }
  const char* id = DcmXfer(file.getDataset()->getOriginalXfer()).getXferID();
  return id != nullptr ? id : "";
}

// Fills the geometry and rescale of one frame from `item` (the dataset itself, or a
// functional-group macro's item), leaving what item lacks untouched.
absl::Status ReadPosition(DcmItem& item, const Instance& instance, FrameInfo* frame) {
  ASSIGN_OR_RETURN(auto position, GetNumbers(item, DCM_ImagePositionPatient, 3, instance));
  if (position) frame->position = Vec3{(*position)[0], (*position)[1], (*position)[2]};
  return absl::OkStatus();
}
absl::Status ReadOrientation(DcmItem& item, const Instance& instance, FrameInfo* frame) {
  ASSIGN_OR_RETURN(auto orientation, GetNumbers(item, DCM_ImageOrientationPatient, 6, instance));
  if (orientation) {
    std::array<double, 6> values;
    std::copy(orientation->begin(), orientation->end(), values.begin());
    frame->orientation = values;
  }
  return absl::OkStatus();
}
absl::Status ReadMeasures(DcmItem& item, const Instance& instance, FrameInfo* frame) {
  ASSIGN_OR_RETURN(auto spacing, GetNumbers(item, DCM_PixelSpacing, 2, instance));
  if (spacing) {
    if (!((*spacing)[0] > 0.0) || !((*spacing)[1] > 0.0)) {
      return Invalid(instance, "PixelSpacing is not positive");
    }
    frame->pixel_spacing = std::array<double, 2>{(*spacing)[0], (*spacing)[1]};
  }
  ASSIGN_OR_RETURN(auto between, GetNumber(item, DCM_SpacingBetweenSlices, instance));
  ASSIGN_OR_RETURN(auto thickness, GetNumber(item, DCM_SliceThickness, instance));
  if (between && *between > 0.0) {
    frame->spacing_between_slices = *between;
  } else if (thickness && *thickness > 0.0 && !frame->spacing_between_slices) {
    frame->spacing_between_slices = *thickness;
  }
  return absl::OkStatus();
}
absl::Status ReadRescale(DcmItem& item, const Instance& instance, FrameInfo* frame) {
  ASSIGN_OR_RETURN(auto slope, GetNumber(item, DCM_RescaleSlope, instance));
  ASSIGN_OR_RETURN(auto intercept, GetNumber(item, DCM_RescaleIntercept, instance));
  if (slope) {
    if (*slope == 0.0) return Invalid(instance, "RescaleSlope is 0");
    frame->slope = *slope;
  }
  if (intercept) frame->intercept = *intercept;
  return absl::OkStatus();
}

// Reads the pixel-format attributes and checks them against the limits, before anything is
// decoded or allocated.
absl::Status ReadImageAttributes(const SeriesReaderLimits& limits, Instance* instance) {
  DcmDataset& ds = *instance->dataset;
  const Instance& in = *instance;

  ASSIGN_OR_RETURN(std::optional<int> samples, GetUint16(ds, DCM_SamplesPerPixel, in));
  if (samples.value_or(1) != 1) {
    return Invalid(in, absl::StrCat("colour images are not supported (SamplesPerPixel ",
                                    *samples, ")"));
  }
  const std::string photometric = TrimmedDicomValues(ds, DCM_PhotometricInterpretation);
  if (photometric == "MONOCHROME1") {
    instance->format.monochrome1 = true;
  } else if (!photometric.empty() && photometric != "MONOCHROME2") {
    return Invalid(in, absl::StrCat("PhotometricInterpretation ", Quote(photometric),
                                    " is not supported (only MONOCHROME1 and MONOCHROME2)"));
  }

  ASSIGN_OR_RETURN(std::optional<int> rows, GetUint16(ds, DCM_Rows, in));
  ASSIGN_OR_RETURN(std::optional<int> cols, GetUint16(ds, DCM_Columns, in));
  if (!rows || !cols) return Invalid(in, "missing Rows or Columns");
  if (*rows <= 0 || *cols <= 0) return Invalid(in, "Rows or Columns is 0");
  if (*rows > limits.max_rows_or_cols || *cols > limits.max_rows_or_cols) {
    return Invalid(in, absl::StrCat("image of ", *rows, "x", *cols, " exceeds the limit of ",
                                    limits.max_rows_or_cols, " rows or columns"));
  }
  instance->rows = *rows;
  instance->cols = *cols;

  ASSIGN_OR_RETURN(std::optional<int> allocated, GetUint16(ds, DCM_BitsAllocated, in));
  if (!allocated) return Invalid(in, "missing BitsAllocated");
  if (*allocated != 8 && *allocated != 16 && *allocated != 32) {
    return Invalid(in, absl::StrCat("BitsAllocated ", *allocated,
                                    " is not supported (only 8, 16 and 32)"));
  }
  ASSIGN_OR_RETURN(std::optional<int> stored, GetUint16(ds, DCM_BitsStored, in));
  ASSIGN_OR_RETURN(std::optional<int> high_bit, GetUint16(ds, DCM_HighBit, in));
  ASSIGN_OR_RETURN(std::optional<int> representation, GetUint16(ds, DCM_PixelRepresentation, in));
  PixelFormat& format = instance->format;
  format.bits_allocated = *allocated;
  format.bits_stored = stored.value_or(*allocated);
  format.high_bit = high_bit.value_or(format.bits_stored - 1);
  if (format.bits_stored < 1 || format.bits_stored > format.bits_allocated ||
      format.high_bit < format.bits_stored - 1 || format.high_bit >= format.bits_allocated) {
    return Invalid(in, absl::StrCat("inconsistent pixel format: BitsAllocated ",
                                    format.bits_allocated, ", BitsStored ", format.bits_stored,
                                    ", HighBit ", format.high_bit));
  }
  if (representation.value_or(0) > 1) {
    return Invalid(in, absl::StrCat("PixelRepresentation ", *representation, " is not 0 or 1"));
  }
  format.is_signed = representation.value_or(0) == 1;

  // NumberOfFrames is an integer string; absent means one frame.
  const std::string frames_text = TrimmedDicomValues(ds, DCM_NumberOfFrames);
  int64_t frames = 1;
  if (!frames_text.empty() && !absl::SimpleAtoi(frames_text, &frames)) {
    return Invalid(in, absl::StrCat("NumberOfFrames ", Quote(frames_text), " is not a number"));
  }
  if (frames < 1) return Invalid(in, absl::StrCat("NumberOfFrames is ", frames));
  if (frames > limits.max_slices) {
    return Invalid(in, absl::StrCat(frames, " frames exceed the limit of ", limits.max_slices,
                                    " slices"));
  }
  if (instance->rows * instance->cols * frames > limits.max_voxels) {
    return Invalid(in, absl::StrCat(instance->rows, "x", instance->cols, "x", frames,
                                    " voxels exceed the limit of ", limits.max_voxels));
  }
  instance->frames = frames;
  return absl::OkStatus();
}

// The instance's lossy-compression history: its Lossy Image Compression attributes, plus
// the step of its own transfer syntax when that is lossy and not recorded yet (its ratio
// computed from the sizes of the decoded and the compressed pixel data).
void ReadLossy(absl::string_view syntax_uid, DcmPixelData& pixel_data, Instance* instance) {
  DcmDataset& ds = *instance->dataset;
  LossyCompression& lossy = instance->lossy;
  lossy.lossy = TrimmedDicomValues(ds, DCM_LossyImageCompression) == "01";
  const std::string methods = TrimmedDicomValues(ds, DCM_LossyImageCompressionMethod);
  const std::string ratios = TrimmedDicomValues(ds, DCM_LossyImageCompressionRatio);
  // Values are bounded and escaped: they go into a SEG and the API.
  for (absl::string_view v : absl::StrSplit(methods, '\\', absl::SkipEmpty())) {
    if (lossy.methods.size() < 8) lossy.methods.push_back(SafeText(absl::StripAsciiWhitespace(v), 16));
  }
  for (absl::string_view v : absl::StrSplit(ratios, '\\', absl::SkipEmpty())) {
    if (lossy.ratios.size() < 8) lossy.ratios.push_back(SafeText(absl::StripAsciiWhitespace(v), 16));
  }
  const std::string step = LossyMethodOf(syntax_uid);
  if (step.empty()) return;
  lossy.lossy = true;
  if (!lossy.methods.empty() && lossy.methods.back() == step) return;  // recorded already
  const std::optional<uint64_t> compressed = EncapsulatedBytes(pixel_data);
  const double decoded = static_cast<double>(instance->rows) * static_cast<double>(instance->cols) *
                         static_cast<double>(instance->frames) *
                         static_cast<double>(instance->format.bytes_per_sample());
  if (lossy.ratios.size() == lossy.methods.size() && compressed && *compressed > 0) {
    lossy.ratios.push_back(FormatDs(std::round(100.0 * decoded / static_cast<double>(*compressed)) / 100.0));
  }
  lossy.methods.push_back(step);
}

// The top-level attributes of an instance: the defaults every frame starts from.
absl::StatusOr<FrameInfo> ReadTopLevelGeometry(const Instance& in) {
  DcmDataset& ds = *in.dataset;
  FrameInfo top;
  RETURN_IF_ERROR(ReadPosition(ds, in, &top));
  RETURN_IF_ERROR(ReadOrientation(ds, in, &top));
  RETURN_IF_ERROR(ReadMeasures(ds, in, &top));
  RETURN_IF_ERROR(ReadRescale(ds, in, &top));
  // RT Dose scales its integers by DoseGridScaling instead of a rescale.
  if (in.sop_class_uid == UID_RTDoseStorage && !HasElement(ds, DCM_RescaleSlope)) {
    ASSIGN_OR_RETURN(std::optional<double> scaling, GetNumber(ds, DCM_DoseGridScaling, in));
    if (scaling) top.slope = *scaling;
  }
  return top;
}

// Overrides each frame's defaults with its functional groups (enhanced objects): per-frame
// macros first, then shared ones. `per_frame` has one item per frame, or is null.
absl::Status ReadFunctionalGroups(DcmSequenceOfItems* per_frame, DcmItem* shared,
                                  Instance* instance) {
  const Instance& in = *instance;
  for (int64_t f = 0; f < in.frames; ++f) {
    DcmItem* frame_item =
        per_frame != nullptr ? per_frame->getItem(static_cast<unsigned long>(f)) : nullptr;
    FrameInfo& frame = instance->frame_info[static_cast<size_t>(f)];
    if (in.frames > 1) frame.position.reset();  // one top-level position cannot be every frame's
    if (DcmItem* item = FunctionalGroupMacro(frame_item, shared, DCM_PlanePositionSequence)) {
      RETURN_IF_ERROR(ReadPosition(*item, in, &frame));
    }
    if (DcmItem* item = FunctionalGroupMacro(frame_item, shared, DCM_PlaneOrientationSequence)) {
      RETURN_IF_ERROR(ReadOrientation(*item, in, &frame));
    }
    if (DcmItem* item = FunctionalGroupMacro(frame_item, shared, DCM_PixelMeasuresSequence)) {
      RETURN_IF_ERROR(ReadMeasures(*item, in, &frame));
    }
    if (DcmItem* item =
            FunctionalGroupMacro(frame_item, shared, DCM_PixelValueTransformationSequence)) {
      RETURN_IF_ERROR(ReadRescale(*item, in, &frame));
    }
  }
  return absl::OkStatus();
}

// Where a legacy multi-frame's frames lie along the normal, relative to the first: by
// GridFrameOffsetVector or SpacingBetweenSlices.
absl::StatusOr<std::vector<double>> LegacyFrameOffsets(const Instance& in) {
  DcmDataset& ds = *in.dataset;
  std::vector<double> offsets;
  // Held in its StatusOr, not moved out: GCC 12 at -O3 then warns of a maybe-uninitialized
  // vector (a false positive) once this function is inlined.
  const absl::StatusOr<std::optional<std::vector<double>>> grid =
      GetNumbers(ds, DCM_GridFrameOffsetVector, static_cast<size_t>(in.frames), in);
  if (!grid.ok()) return grid.status();
  ASSIGN_OR_RETURN(std::optional<double> between, GetNumber(ds, DCM_SpacingBetweenSlices, in));
  if (grid->has_value()) {
    // RT Dose: offsets along the normal, relative to the first frame's (PS3.3 C.8.8.3.2).
    const std::vector<double>& values = **grid;
    for (double offset : values) offsets.push_back(offset - values[0]);
  } else if (between && *between > 0.0) {
    for (int64_t f = 0; f < in.frames; ++f) offsets.push_back(static_cast<double>(f) * *between);
  } else {
    return Invalid(in, absl::StrCat("multi-frame image of ", in.frames,
                                    " frames with one ImagePositionPatient and neither "
                                    "per-frame positions, GridFrameOffsetVector nor "
                                    "SpacingBetweenSlices: cannot place frames 2.."));
  }
  return offsets;
}

// Legacy multi-frame with one position (`top`'s): frames step along the normal.
absl::Status PlaceLegacyFrames(const FrameInfo& top, Instance* instance) {
  const Instance& in = *instance;
  const auto& o = *top.orientation;
  Vec3 normal = Cross({o[0], o[1], o[2]}, {o[3], o[4], o[5]});
  const double length = Norm(normal);
  if (!(length > 1e-6)) return Invalid(in, "ImageOrientationPatient has parallel vectors");
  for (double& v : normal) v /= length;
  ASSIGN_OR_RETURN(const std::vector<double> offsets, LegacyFrameOffsets(in));
  for (int64_t f = 0; f < in.frames; ++f) {
    FrameInfo& frame = instance->frame_info[static_cast<size_t>(f)];
    for (int a = 0; a < 3; ++a) {
      (*frame.position)[a] = (*top.position)[a] + offsets[static_cast<size_t>(f)] * normal[a];
    }
  }
  return absl::OkStatus();
}

// Places every frame: per-frame and shared functional groups (enhanced objects), or the
// top-level attributes (one frame, or a legacy multi-frame whose frames are spaced by
// GridFrameOffsetVector or SpacingBetweenSlices along the normal).
absl::Status ReadFrameGeometry(Instance* instance) {
  DcmDataset& ds = *instance->dataset;
  const Instance& in = *instance;
  ASSIGN_OR_RETURN(const FrameInfo top, ReadTopLevelGeometry(in));

  DcmItem* shared = FirstSequenceItem(&ds, DCM_SharedFunctionalGroupsSequence);
  DcmSequenceOfItems* per_frame = nullptr;
  if (ds.findAndGetSequence(DCM_PerFrameFunctionalGroupsSequence, per_frame).bad()) {
    per_frame = nullptr;
  }
  if (per_frame != nullptr && static_cast<int64_t>(per_frame->card()) != in.frames) {
    return Invalid(in, absl::StrCat("PerFrameFunctionalGroupsSequence has ", per_frame->card(),
                                    " items for ", in.frames, " frames"));
  }

  instance->frame_info.assign(static_cast<size_t>(in.frames), top);
  if (per_frame != nullptr || shared != nullptr) {
    return ReadFunctionalGroups(per_frame, shared, instance);
  }
  if (in.frames == 1 || !top.has_geometry()) return absl::OkStatus();
  return PlaceLegacyFrames(top, instance);
}

absl::Status ShortPixelData(const Instance& instance, uint64_t available, uint64_t needed) {
  return Invalid(instance, absl::StrCat("PixelData holds ", available, " bytes; ", instance.rows,
                                        " rows x ", instance.cols, " columns x ",
                                        instance.frames, " frames x ",
                                        instance.format.bytes_per_sample(), " bytes need ",
                                        needed));
}

// Where the instances' bytes are: buffers in memory, or files on disk. A file on disk is
// parsed without its long values (ParseDicomFile: its pixel data stays on disk), and parsed
// again when its pixels are decoded.
class InstanceSource {
 public:
  explicit InstanceSource(const std::vector<DicomBuffer>& buffers) : buffers_(&buffers) {}
  InstanceSource(const std::vector<std::string>& paths, const std::vector<std::string>& names)
      : paths_(&paths), names_(&names) {}

  size_t size() const { return on_disk() ? paths_->size() : buffers_->size(); }
  const std::string& name(size_t i) const {
    return on_disk() ? (*names_)[i] : (*buffers_)[i].name;
  }
  bool on_disk() const { return buffers_ == nullptr; }
  absl::StatusOr<std::unique_ptr<DcmFileFormat>> Parse(size_t i,
                                                       const SeriesReaderLimits& limits) const {
    if (on_disk()) return ParseDicomFile((*paths_)[i], (*names_)[i], limits.max_inflated_bytes);
    return ParseDicom((*buffers_)[i].bytes, (*buffers_)[i].name, limits.max_inflated_bytes);
  }

 private:
  const std::vector<DicomBuffer>* buffers_ = nullptr;
  const std::vector<std::string>* paths_ = nullptr;
  const std::vector<std::string>* names_ = nullptr;
};

// Drops the parsed file of an instance; what its checks found stays.
void Release(Instance* instance) {
  instance->file.reset();
  instance->dataset = nullptr;
}

// Parses a released instance again (a no-op for one that was not released).
absl::Status Reload(const InstanceSource& source, const SeriesReaderLimits& limits,
                    Instance* instance) {
  if (instance->file != nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(instance->file, source.Parse(instance->index, limits));
  instance->dataset = instance->file->getDataset();
  return absl::OkStatus();
}

// What became of one buffer: an image instance, or a reason it was skipped.
struct ParseOutcome {
  std::unique_ptr<Instance> instance;  // null when skipped
  std::string skip_reason;
};

// Reads the UIDs in `fields` into the instance. UIDs are checked where they are read
// (PS3.5 9.1): a series never carries one that is not.
absl::Status ReadUids(std::initializer_list<std::pair<DcmTagKey, std::string*>> fields,
                      Instance* instance) {
  for (auto [tag, field] : fields) {
    absl::StatusOr<std::string> uid = DicomUid(*instance->dataset, tag, /*required=*/false);
    if (!uid.ok()) return Invalid(*instance, uid.status().message());
    *field = *uid;
  }
  return absl::OkStatus();
}

// Native pixel data can be measured before the volume is allocated for it; the size of
// compressed data is only known once decoded.
absl::Status CheckNativePixelLength(const Instance& instance, E_TransferSyntax syntax,
                                    DcmElement& pixel_element) {
  if (instance.jpeg2000 || DcmXfer(syntax).isEncapsulated()) return absl::OkStatus();
  const uint64_t available = pixel_element.getLength();
  const uint64_t needed = static_cast<uint64_t>(instance.rows) *
                          static_cast<uint64_t>(instance.cols) *
                          static_cast<uint64_t>(instance.frames) *
                          static_cast<uint64_t>(instance.format.bytes_per_sample());
  if (available < needed) return ShortPixelData(instance, available, needed);
  return absl::OkStatus();
}

absl::StatusOr<ParseOutcome> ParseInstance(const InstanceSource& source, size_t index,
                                           const SeriesReaderLimits& limits) {
  ASSIGN_OR_RETURN(std::unique_ptr<DcmFileFormat> file, source.Parse(index, limits));
  auto instance = std::make_unique<Instance>();
  instance->name = source.name(index);
  instance->index = index;
  instance->dataset = file->getDataset();
  instance->file = std::move(file);
  DcmDataset& ds = *instance->dataset;
  RETURN_IF_ERROR(ReadUids({{DCM_SOPInstanceUID, &instance->sop_instance_uid},
                            {DCM_SOPClassUID, &instance->sop_class_uid}},
                           instance.get()));

  ParseOutcome outcome;
  if (IsNonImageSopClass(instance->sop_class_uid)) {
    outcome.skip_reason = absl::StrCat(SopClassName(instance->sop_class_uid), " is not an image");
    return outcome;
  }
  if (HasElement(ds, DCM_FloatPixelData) || HasElement(ds, DCM_DoubleFloatPixelData)) {
    return Invalid(*instance, "float pixel data is not supported");
  }
  DcmElement* pixel_element = nullptr;
  if (ds.findAndGetElement(DCM_PixelData, pixel_element).bad() || pixel_element == nullptr) {
    if (dcmIsImageStorageSOPClassUID(instance->sop_class_uid.c_str()) ||
        HasElement(ds, DCM_Rows)) {
      return Invalid(*instance, "missing PixelData");
    }
    outcome.skip_reason =
        absl::StrCat("no PixelData and not an image (", SopClassName(instance->sop_class_uid), ")");
    return outcome;
  }
  // A fuzzed file can give (7FE0,0010) any VR; only DcmPixelData is safe to decode.
  if (pixel_element->ident() != EVR_PixelData) {
    return Invalid(*instance, "PixelData has an invalid VR");
  }
  const E_TransferSyntax syntax = ds.getOriginalXfer();
  const std::string syntax_uid = TransferSyntaxUid(*instance->file);
  instance->jpeg2000 = IsJpeg2000Syntax(syntax_uid);
  if (!instance->jpeg2000 && !IsSupportedTransferSyntax(syntax)) {
    const DcmXfer xfer(syntax);
    return Invalid(*instance, absl::StrCat("unsupported transfer syntax ", xfer.getXferName(),
                                           " (", xfer.getXferID(), ")"));
  }

  RETURN_IF_ERROR(ReadUids({{DCM_StudyInstanceUID, &instance->study_uid},
                            {DCM_SeriesInstanceUID, &instance->series_uid},
                            {DCM_FrameOfReferenceUID, &instance->frame_of_reference_uid}},
                           instance.get()));
  // Text for the API: decoded by the Specific Character Set, escaped where it is not UTF-8.
  instance->modality = DicomText(ds, DCM_Modality, /*max_bytes=*/16);
  instance->series_description = DicomText(ds, DCM_SeriesDescription, /*max_bytes=*/256);
  RETURN_IF_ERROR(ReadImageAttributes(limits, instance.get()));
  if (instance->jpeg2000 && instance->format.bits_allocated > 16) {
    return Invalid(*instance, absl::StrCat("JPEG 2000 with BitsAllocated ",
                                           instance->format.bits_allocated,
                                           " is not supported (only 8 and 16)"));
  }
  ReadLossy(syntax_uid, *static_cast<DcmPixelData*>(pixel_element), instance.get());
  RETURN_IF_ERROR(CheckNativePixelLength(*instance, syntax, *pixel_element));
  RETURN_IF_ERROR(ReadFrameGeometry(instance.get()));
  outcome.instance = std::move(instance);
  return outcome;
}

// Byte order of the samples DCMTK hands back. DCMTK swaps big-endian pixel data in units of
// its VR (2 bytes for OW, none for OB), which is right for 8- and 16-bit OW samples but
// leaves 32-bit samples with their 16-bit halves exchanged, and OB-encoded wide samples
// big-endian (rtdose_expb.dcm, 32-bit OW, showed the first).
enum class SampleOrder { kLittle, kBig, kHalvesSwapped };

template <int kBytes, SampleOrder kOrder>
uint32_t LoadSample(const uint8_t* p) {
  if constexpr (kBytes == 1) {
    return p[0];
  } else if constexpr (kBytes == 2) {
    return kOrder == SampleOrder::kBig ? (uint32_t{p[0]} << 8) | p[1]
                                       : uint32_t{p[0]} | (uint32_t{p[1]} << 8);
  } else if constexpr (kOrder == SampleOrder::kBig) {
    return uint32_t{p[3]} | (uint32_t{p[2]} << 8) | (uint32_t{p[1]} << 16) |
           (uint32_t{p[0]} << 24);
  } else if constexpr (kOrder == SampleOrder::kHalvesSwapped) {
    return uint32_t{p[2]} | (uint32_t{p[3]} << 8) | (uint32_t{p[0]} << 16) |
           (uint32_t{p[1]} << 24);
  } else {
    return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) |
           (uint32_t{p[3]} << 24);
  }
}

// One loop per sample width and byte order, so the per-pixel work is a load, a mask, a
// sign extension and one multiply-add (this loop is most of ReadSeries' own time).
template <int kBytes, SampleOrder kOrder>
void ConvertSamples(const uint8_t* src, const PixelFormat& format, double slope,
                    double intercept, int64_t count, float* dst) {
  const int shift = format.high_bit + 1 - format.bits_stored;
  const uint32_t mask =
      format.bits_stored >= 32 ? 0xFFFFFFFFu : ((uint32_t{1} << format.bits_stored) - 1u);
  // Signed: flipping the sign bit and subtracting it sign-extends without a branch.
  const int64_t sign_bit = format.is_signed ? int64_t{1} << (format.bits_stored - 1) : 0;
  // MONOCHROME1: unsigned v -> mask - v; signed v -> -1 - v; i.e. value = flip_base - v.
  const bool invert = format.monochrome1;
  const int64_t flip_base = format.is_signed ? -1 : int64_t{mask};
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t raw = (LoadSample<kBytes, kOrder>(src + kBytes * i) >> shift) & mask;
    int64_t value = static_cast<int64_t>(raw ^ static_cast<uint32_t>(sign_bit)) - sign_bit;
    if (invert) value = flip_base - value;
    dst[i] = static_cast<float>(slope * static_cast<double>(value) + intercept);
  }
}

// Converts one frame of native samples into real-world values.
// MONOCHROME1 is inverted within the range BitsStored can hold, before the rescale:
// unsigned v becomes (2^BitsStored - 1) - v, signed v becomes -1 - v; each maps the range
// onto itself, so the real-world range stays the same and larger means brighter.
void ConvertFrame(const uint8_t* src, const PixelFormat& format, SampleOrder order,
                  double slope, double intercept, int64_t count, float* dst) {
  switch (format.bytes_per_sample()) {
    case 1:
      return ConvertSamples<1, SampleOrder::kLittle>(src, format, slope, intercept, count, dst);
    case 2:
      if (order == SampleOrder::kBig) {
        return ConvertSamples<2, SampleOrder::kBig>(src, format, slope, intercept, count, dst);
      }
      return ConvertSamples<2, SampleOrder::kLittle>(src, format, slope, intercept, count, dst);
    default:
      if (order == SampleOrder::kBig) {
        return ConvertSamples<4, SampleOrder::kBig>(src, format, slope, intercept, count, dst);
      }
      if (order == SampleOrder::kHalvesSwapped) {
        return ConvertSamples<4, SampleOrder::kHalvesSwapped>(src, format, slope, intercept,
                                                              count, dst);
      }
      return ConvertSamples<4, SampleOrder::kLittle>(src, format, slope, intercept, count, dst);
  }
}

// One instance's pixel data decoded to native samples (owned by the instance's dataset).
struct NativePixels {
  const uint8_t* data = nullptr;
  SampleOrder order = SampleOrder::kLittle;
  uint64_t frame_bytes = 0;
};

// Decodes one instance's pixel data, whatever transfer syntax carried it, and checks it
// holds every frame.
absl::StatusOr<NativePixels> DecodePixels(Instance& instance) {
  DcmDataset& ds = *instance.dataset;
  NativePixels pixels;
  if (ds.getOriginalXfer() == EXS_BigEndianExplicit && instance.format.bytes_per_sample() > 1) {
    DcmElement* element = nullptr;
    const bool as_words = ds.findAndGetElement(DCM_PixelData, element).good() &&
                          element != nullptr && element->getVR() == EVR_OW;
    if (!as_words) {
      pixels.order = SampleOrder::kBig;
    } else if (instance.format.bytes_per_sample() == 4) {
      pixels.order = SampleOrder::kHalvesSwapped;
    }
  }
  OFCondition decoded = EC_Normal;
  try {
    decoded = ds.chooseRepresentation(EXS_LittleEndianExplicit, nullptr);
  } catch (const std::exception& e) {
    // The codecs DCMTK bundles (CharLS among them) may throw, std::bad_alloc at least; none
    // of it may cross our boundary.
    return Invalid(instance, absl::StrCat("cannot decode pixel data: ", e.what()));
  }
  if (decoded.bad()) {
    return Invalid(instance, absl::StrCat("cannot decode pixel data (",
                                          DcmXfer(ds.getOriginalXfer()).getXferName(), "): ",
                                          decoded.text()));
  }
  DcmElement* element = nullptr;
  if (ds.findAndGetElement(DCM_PixelData, element).bad() || element == nullptr ||
      element->ident() != EVR_PixelData) {
    return Invalid(instance, "missing PixelData after decoding");
  }
  if (DcmXfer(ds.getCurrentXfer()).isEncapsulated()) {
    return Invalid(instance, "pixel data still compressed after decoding");
  }
  Uint8* data = nullptr;
  const OFCondition got = element->getUint8Array(data);
  const uint64_t available = element->getLength();
  pixels.frame_bytes = static_cast<uint64_t>(instance.rows) *
                       static_cast<uint64_t>(instance.cols) *
                       static_cast<uint64_t>(instance.format.bytes_per_sample());
  const uint64_t needed = pixels.frame_bytes * static_cast<uint64_t>(instance.frames);
  if (got.bad() || (data == nullptr && needed > 0) || available < needed) {
    return ShortPixelData(instance, available, needed);
  }
  pixels.data = data;
  return pixels;
}

// Check-only decoding of compressed pixel data: every frame decoded in order (which
// frame-wise decoding needs when a frame spans several fragments and the offset table is
// empty), one at a time into one frame's buffer, with DecodePixels' messages. The proof costs
// one decoded frame of memory, not the whole file's: a small compressed file may hold
// thousands of frames of zeros that decode to gigabytes (issue 13).
absl::Status CheckFramesDecode(Instance& instance) {
  DcmDataset& ds = *instance.dataset;
  const char* syntax = DcmXfer(ds.getOriginalXfer()).getXferName();
  DcmElement* element = nullptr;
  if (ds.findAndGetElement(DCM_PixelData, element).bad() || element == nullptr ||
      element->ident() != EVR_PixelData) {
    return Invalid(instance, "missing PixelData after decoding");
  }
  auto* pixel_data = static_cast<DcmPixelData*>(element);
  const uint64_t frame_bytes = static_cast<uint64_t>(instance.rows) *
                               static_cast<uint64_t>(instance.cols) *
                               static_cast<uint64_t>(instance.format.bytes_per_sample());
  Uint32 frame_size = 0;
  const OFCondition sized = pixel_data->getUncompressedFrameSize(&ds, frame_size);
  if (sized.bad()) {
    return Invalid(instance,
                   absl::StrCat("cannot decode pixel data (", syntax, "): ", sized.text()));
  }
  if (frame_size < frame_bytes) {
    return Invalid(instance, absl::StrCat("cannot decode pixel data (", syntax, "): a frame is ",
                                          frame_size, " bytes, ", frame_bytes, " expected"));
  }
  std::vector<Uint8> frame(frame_size + (frame_size & 1));  // the size must be even
  Uint32 start_fragment = 0;
  OFString colour_model;
  for (int64_t f = 0; f < instance.frames; ++f) {
    OFCondition decoded = EC_Normal;
    try {
      decoded = pixel_data->getUncompressedFrame(&ds, static_cast<Uint32>(f), start_fragment,
                                                 frame.data(), static_cast<Uint32>(frame.size()),
                                                 colour_model, nullptr);
    } catch (const std::exception& e) {
      return Invalid(instance, absl::StrCat("cannot decode pixel data: ", e.what()));
    }
    if (decoded.bad()) {
      return Invalid(instance,
                     absl::StrCat("cannot decode pixel data (", syntax, "): ", decoded.text()));
    }
  }
  return absl::OkStatus();
}

// JPEG 2000 pixel data through our codec, one frame at a time: each frame is decoded and
// converted into its slice (volume set) or only proved to decode (volume null), so memory
// is one decoded frame whatever the instance holds. The codec's limits are this instance's
// Rows and Columns: a codestream claiming more is refused before it is decoded.
absl::Status DecodeJpeg2000Instance(Instance& instance, const std::vector<int64_t>* slice_of_frame,
                                    ImageVolume* volume) {
  DcmElement* element = nullptr;
  if (instance.dataset->findAndGetElement(DCM_PixelData, element).bad() || element == nullptr ||
      element->ident() != EVR_PixelData) {
    return Invalid(instance, "missing PixelData");
  }
  absl::StatusOr<std::vector<FrameFragments>> frames =
      SplitFrames(*static_cast<DcmPixelData*>(element), instance.frames);
  if (!frames.ok()) return Invalid(instance, frames.status().message());
  Jpeg2000Limits limits;
  limits.max_rows_or_cols = std::max(instance.rows, instance.cols);
  limits.max_pixels = instance.rows * instance.cols;
  limits.max_components = 1;
  // A JPEG 2000 codestream holds the stored bits right-aligned (PS3.5 8.2.4).
  PixelFormat format = instance.format;
  format.high_bit = format.bits_stored - 1;
  std::string joined;
  for (int64_t f = 0; f < instance.frames; ++f) {
    const FrameFragments& fragments = (*frames)[static_cast<size_t>(f)];
    absl::StatusOr<Jpeg2000Image> image = DecodeJpeg2000(
        JoinFragments(fragments, &joined), limits, instance.format.bytes_per_sample());
    if (!image.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Describe(instance, f), ": cannot decode pixel data: ", image.status().message()));
    }
    if (image->header.rows != instance.rows || image->header.cols != instance.cols) {
      return absl::InvalidArgumentError(absl::StrCat(
          Describe(instance, f), ": the JPEG 2000 image is ", image->header.rows, "x",
          image->header.cols, " where Rows and Columns say ", instance.rows, "x", instance.cols));
    }
    if (volume == nullptr) continue;
    const FrameInfo& info = instance.frame_info[static_cast<size_t>(f)];
    const int64_t slice_size = volume->geometry.slice_size();
    ConvertFrame(image->samples.data(), format, SampleOrder::kLittle, info.slope, info.intercept,
                 slice_size,
                 volume->voxels.data() + (*slice_of_frame)[static_cast<size_t>(f)] * slice_size);
  }
  return absl::OkStatus();
}

// Writes frame f of a decoded instance into slice slice_of_frame[f] of volume.
void ConvertInstance(const Instance& instance, const NativePixels& pixels,
                     const std::vector<int64_t>& slice_of_frame, ImageVolume* volume) {
  const int64_t slice_size = volume->geometry.slice_size();
  for (int64_t f = 0; f < instance.frames; ++f) {
    const FrameInfo& frame = instance.frame_info[static_cast<size_t>(f)];
    ConvertFrame(pixels.data + static_cast<size_t>(f) * pixels.frame_bytes, instance.format,
                 pixels.order, frame.slope, frame.intercept, slice_size,
                 volume->voxels.data() + slice_of_frame[static_cast<size_t>(f)] * slice_size);
  }
}

// One frame of one instance, as a candidate slice of the volume.
struct SliceRef {
  Instance* instance;
  int64_t frame;
  double distance = 0.0;  // position along the normal
};

// Normalised row and column directions from an orientation; InvalidArgument when they are
// not two orthogonal unit vectors (to the precision DICOM strings carry).
absl::StatusOr<std::pair<Vec3, Vec3>> Directions(const std::array<double, 6>& o,
                                                 const Instance& instance, int64_t frame) {
  Vec3 row = {o[0], o[1], o[2]};
  Vec3 col = {o[3], o[4], o[5]};
  const double row_norm = Norm(row), col_norm = Norm(col);
  if (std::abs(row_norm - 1.0) > 1e-2 || std::abs(col_norm - 1.0) > 1e-2 ||
      std::abs(Dot(row, col)) > 1e-2) {
    return absl::InvalidArgumentError(absl::StrCat(
        Describe(instance, frame), ": ImageOrientationPatient is not two orthogonal unit vectors"));
  }
  for (int a = 0; a < 3; ++a) {
    row[a] /= row_norm;
    col[a] /= col_norm;
  }
  return std::make_pair(row, col);
}

// Checks that the instances of one series have one image size, one frame of reference and
// distinct SOP Instance UIDs, and stay within the limits together; returns their frames.
absl::StatusOr<int64_t> CheckInstances(const std::vector<Instance*>& instances,
                                       const SeriesReaderLimits& limits) {
  const Instance& first = *instances.front();
  std::map<std::string, const Instance*> by_uid;
  int64_t total_frames = 0;
  for (const Instance* instance : instances) {
    if (instance->rows != first.rows || instance->cols != first.cols) {
      return Invalid(*instance, absl::StrCat("image size ", instance->rows, "x", instance->cols,
                                             " differs from ", first.rows, "x", first.cols,
                                             " of ", Describe(first)));
    }
    if (!instance->sop_instance_uid.empty()) {
      auto [it, inserted] = by_uid.emplace(instance->sop_instance_uid, instance);
      if (!inserted) {
        return Invalid(*instance, absl::StrCat("same SOP Instance UID as ", it->second->name));
      }
    }
    if (instance->frame_of_reference_uid != first.frame_of_reference_uid) {
      return Invalid(*instance, absl::StrCat("FrameOfReferenceUID differs from that of ",
                                             Describe(first)));
    }
    total_frames += instance->frames;
  }
  if (total_frames > limits.max_slices) {
    return absl::InvalidArgumentError(absl::StrCat(
        "series ", first.series_uid, ": ", total_frames, " slices exceed the limit of ",
        limits.max_slices));
  }
  if (total_frames * first.rows * first.cols > limits.max_voxels) {
    return absl::InvalidArgumentError(absl::StrCat(
        "series ", first.series_uid, ": ", first.rows, "x", first.cols, "x", total_frames,
        " voxels exceed the limit of ", limits.max_voxels));
  }
  return total_frames;
}

// The slices of one series in volume order, and the geometry they span.
struct Placement {
  VolumeGeometry geometry;
  std::vector<SliceRef> slices;
};

const FrameInfo& FrameOf(const SliceRef& slice) {
  return slice.instance->frame_info[static_cast<size_t>(slice.frame)];
}

// Without positions there is no order to trust, except within one instance: a single
// image, or one multi-frame instance with no geometry at all (an XA cine, a secondary
// capture), whose frames are stacked in stored order. Both get the identity geometry with
// PixelSpacing if present and a slice spacing of 1 mm.
absl::Status PlaceUnplaced(const std::vector<Instance*>& instances, bool none_positioned,
                           Placement* placement) {
  const int64_t total_frames = placement->geometry.slices;
  const bool single_unplaced = instances.size() == 1 && (total_frames == 1 || none_positioned);
  if (!single_unplaced) {
    for (const SliceRef& slice : placement->slices) {
      if (!FrameOf(slice).has_geometry()) {
        return absl::InvalidArgumentError(absl::StrCat(
            Describe(*slice.instance, slice.frame),
            ": missing ImagePositionPatient or ImageOrientationPatient in a series of ",
            total_frames, " slices; cannot place the slice"));
      }
    }
  }
  const FrameInfo& first_frame = instances.front()->frame_info.front();
  if (first_frame.pixel_spacing) {
    placement->geometry.row_spacing_mm = (*first_frame.pixel_spacing)[0];
    placement->geometry.col_spacing_mm = (*first_frame.pixel_spacing)[1];
  }
  return absl::OkStatus();
}

// Every frame must share the first frame's orientation and pixel spacing.
absl::Status CheckSameOrientation(const std::vector<SliceRef>& slices, const Instance& first) {
  const FrameInfo& first_frame = first.frame_info.front();
  for (const SliceRef& slice : slices) {
    const FrameInfo& frame = FrameOf(slice);
    for (int a = 0; a < 6; ++a) {
      if (std::abs((*frame.orientation)[a] - (*first_frame.orientation)[a]) >
          kOrientationTolerance) {
        return absl::InvalidArgumentError(absl::StrCat(
            Describe(*slice.instance, slice.frame), ": ImageOrientationPatient differs from ",
            Describe(first), "'s"));
      }
    }
    const bool same_spacing =
        frame.pixel_spacing.has_value() == first_frame.pixel_spacing.has_value() &&
        (!frame.pixel_spacing ||
         (std::abs((*frame.pixel_spacing)[0] - (*first_frame.pixel_spacing)[0]) <=
              kPixelSpacingTolerance * (*first_frame.pixel_spacing)[0] &&
          std::abs((*frame.pixel_spacing)[1] - (*first_frame.pixel_spacing)[1]) <=
              kPixelSpacingTolerance * (*first_frame.pixel_spacing)[1]));
    if (!same_spacing) {
      return absl::InvalidArgumentError(absl::StrCat(Describe(*slice.instance, slice.frame),
                                                     ": PixelSpacing differs from ",
                                                     Describe(first), "'s"));
    }
  }
  return absl::OkStatus();
}

// The slices (sorted along the normal, more than one) must be evenly spaced: returns the
// series' spacing, or names the gap or the irregular step.
absl::StatusOr<double> CheckSteps(const std::vector<SliceRef>& slices, const Instance& first) {
  std::vector<double> steps;
  for (size_t k = 1; k < slices.size(); ++k) {
    const double step = slices[k].distance - slices[k - 1].distance;
    if (step < kDuplicateTolerance_mm) {
      return absl::InvalidArgumentError(absl::StrCat(
          Describe(*slices[k].instance, slices[k].frame), ": duplicate position: same "
          "ImagePositionPatient along the normal as ",
          Describe(*slices[k - 1].instance, slices[k - 1].frame)));
    }
    steps.push_back(step);
  }
  // The median step is the series' spacing: a missing slice shows as a step of twice it.
  std::vector<double> sorted_steps = steps;
  std::nth_element(sorted_steps.begin(), sorted_steps.begin() + sorted_steps.size() / 2,
                   sorted_steps.end());
  const double expected = sorted_steps[sorted_steps.size() / 2];
  for (size_t k = 0; k < steps.size(); ++k) {
    if (std::abs(steps[k] - expected) <= kSliceSpacingTolerance * expected) continue;
    const std::string between = absl::StrCat(
        Describe(*slices[k].instance, slices[k].frame), " and ",
        Describe(*slices[k + 1].instance, slices[k + 1].frame));
    // A step of (nearly) a whole multiple of the spacing is slices left out.
    const double multiple = std::round(steps[k] / expected);
    if (multiple >= 2.0 &&
        std::abs(steps[k] - multiple * expected) <= kSliceSpacingTolerance * expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gap in series ", first.series_uid, ": missing slice between ", between, " (",
          steps[k], " mm apart where the series' spacing is ", expected, " mm)"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "irregular slice spacing in series ", first.series_uid, " between ", between, " (",
        steps[k], " mm apart where the series' spacing is ", expected, " mm)"));
  }
  return (slices.back().distance - slices.front().distance) / static_cast<double>(steps.size());
}

// Every slice must sit on the normal through the first: a tilted gantry or a sheared stack
// does not fit origin + k * spacing * normal.
absl::Status CheckDrift(const std::vector<SliceRef>& slices, const VolumeGeometry& geometry) {
  const double drift_tolerance =
      kInPlaneDriftTolerance * std::min(geometry.row_spacing_mm, geometry.col_spacing_mm);
  const Vec3& origin = geometry.origin_mm;
  const Vec3& normal = geometry.slice_direction;
  for (const SliceRef& slice : slices) {
    const Vec3& p = *FrameOf(slice).position;
    const double along = slice.distance - slices.front().distance;
    Vec3 off;
    for (int a = 0; a < 3; ++a) off[a] = p[a] - origin[a] - along * normal[a];
    if (Norm(off) > drift_tolerance) {
      return absl::InvalidArgumentError(absl::StrCat(
          Describe(*slice.instance, slice.frame), ": ImagePositionPatient is ", Norm(off),
          " mm off the normal through the first slice (gantry tilt or sheared stack)"));
    }
  }
  return absl::OkStatus();
}

// Orders the slices (every one placed) along the normal of the first's orientation and
// checks they form one regular stack.
absl::Status PlaceAlongNormal(const Instance& first, Placement* placement) {
  const FrameInfo& first_frame = first.frame_info.front();
  std::vector<SliceRef>& slices = placement->slices;
  VolumeGeometry& geometry = placement->geometry;
  ASSIGN_OR_RETURN(auto directions, Directions(*first_frame.orientation, first, 0));
  const auto& [row_dir, col_dir] = directions;
  RETURN_IF_ERROR(CheckSameOrientation(slices, first));
  const Vec3 normal = Cross(row_dir, col_dir);
  for (SliceRef& slice : slices) slice.distance = Dot(*FrameOf(slice).position, normal);
  // Stable: ties keep input order, so the duplicate reported is deterministic.
  std::stable_sort(slices.begin(), slices.end(), [](const SliceRef& a, const SliceRef& b) {
    return a.distance < b.distance;
  });
  if (first_frame.pixel_spacing) {
    geometry.row_spacing_mm = (*first_frame.pixel_spacing)[0];
    geometry.col_spacing_mm = (*first_frame.pixel_spacing)[1];
  }
  geometry.row_direction = row_dir;
  geometry.col_direction = col_dir;
  geometry.slice_direction = normal;
  geometry.origin_mm = *FrameOf(slices.front()).position;
  if (slices.size() == 1) {
    geometry.slice_spacing_mm = first_frame.spacing_between_slices.value_or(1.0);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(geometry.slice_spacing_mm, CheckSteps(slices, first));
  return CheckDrift(slices, geometry);
}

// Places every frame of one series: its slices in volume order and the geometry. Reads
// only what the instances' checks found, never their datasets.
absl::StatusOr<Placement> PlaceSlices(const std::vector<Instance*>& instances,
                                      int64_t total_frames) {
  const Instance& first = *instances.front();
  Placement placement;
  placement.slices.reserve(static_cast<size_t>(total_frames));
  bool all_placed = true, none_positioned = true;
  for (Instance* instance : instances) {
    for (int64_t f = 0; f < instance->frames; ++f) {
      const FrameInfo& frame = instance->frame_info[static_cast<size_t>(f)];
      all_placed = all_placed && frame.has_geometry();
      none_positioned = none_positioned && !frame.position.has_value();
      placement.slices.push_back({instance, f});
    }
  }
  placement.geometry.rows = first.rows;
  placement.geometry.cols = first.cols;
  placement.geometry.slices = total_frames;
  if (!all_placed) {
    RETURN_IF_ERROR(PlaceUnplaced(instances, none_positioned, &placement));
  } else {
    RETURN_IF_ERROR(PlaceAlongNormal(first, &placement));
  }
  return placement;
}

// What reading a series does with the pixel data: real-world values in the volume, or only
// the proof that every instance decodes (the volume then has its geometry and no voxels).
enum class PixelMode { kVolume, kCheckOnly };

// Decodes every instance of a placed series, one at a time (a released instance is parsed
// again, then released), into series->image (allocated here for kVolume), and takes the
// reference header from the first slice's instance.
absl::Status DecodeSeries(const std::vector<Instance*>& instances, const Placement& placement,
                          const InstanceSource& source, PixelMode mode,
                          const SeriesReaderLimits& limits, SeriesVolume* series) {
  // Checked before: rows, columns and slices are within the limits, so this is bounded.
  if (mode == PixelMode::kVolume) {
    series->image = ImageVolume(placement.geometry);
  } else {
    series->image.geometry = placement.geometry;
  }
  const std::vector<SliceRef>& slices = placement.slices;
  std::map<Instance*, std::vector<int64_t>> slice_of_frame;
  series->slices.reserve(slices.size());
  for (size_t k = 0; k < slices.size(); ++k) {
    Instance* instance = slices[k].instance;
    auto& mapping = slice_of_frame[instance];
    if (mapping.empty()) mapping.assign(static_cast<size_t>(instance->frames), -1);
    mapping[static_cast<size_t>(slices[k].frame)] = static_cast<int64_t>(k);
    series->slices.push_back({instance->sop_instance_uid, instance->sop_class_uid,
                              static_cast<int32_t>(slices[k].frame + 1)});
  }
  const Instance* reference = slices.front().instance;
  absl::StatusOr<std::string> header;
  for (Instance* instance : instances) {
    RETURN_IF_ERROR(Reload(source, limits, instance));
    if (instance->jpeg2000) {
      RETURN_IF_ERROR(DecodeJpeg2000Instance(
          *instance, &slice_of_frame[instance],
          mode == PixelMode::kVolume ? &series->image : nullptr));
    } else if (mode == PixelMode::kCheckOnly &&
        DcmXfer(instance->dataset->getOriginalXfer()).isEncapsulated()) {
      RETURN_IF_ERROR(CheckFramesDecode(*instance));
    } else {
      ASSIGN_OR_RETURN(NativePixels pixels, DecodePixels(*instance));
      if (mode == PixelMode::kVolume) {
        ConvertInstance(*instance, pixels, slice_of_frame[instance], &series->image);
      }
    }
    // The decoded pixels are in the volume now (or were only checked); keep memory to one
    // copy.
    delete instance->dataset->remove(DCM_PixelData);
    if (instance == reference) header = SerializeDicom(*instance->file);
    if (source.on_disk()) Release(instance);
  }
  if (!header.ok()) {
    // What DCMTK read but cannot write back is malformed input, not our failure.
    return Invalid(*reference, absl::StrCat("cannot re-encode the header: ",
                                            header.status().message()));
  }
  series->reference_header = *std::move(header);
  return absl::OkStatus();
}

// Assembles one series (instances sharing study and series UIDs) into a volume.
absl::StatusOr<SeriesVolume> AssembleSeries(const std::vector<Instance*>& instances,
                                            const InstanceSource& source, PixelMode mode,
                                            const SeriesReaderLimits& limits) {
  ASSIGN_OR_RETURN(const int64_t total_frames, CheckInstances(instances, limits));
  ASSIGN_OR_RETURN(const Placement placement, PlaceSlices(instances, total_frames));
  SeriesVolume series;
  RETURN_IF_ERROR(DecodeSeries(instances, placement, source, mode, limits, &series));
  const Instance& reference = *placement.slices.front().instance;
  series.study_instance_uid = reference.study_uid;
  series.series_instance_uid = reference.series_uid;
  series.frame_of_reference_uid = reference.frame_of_reference_uid;
  series.modality = reference.modality;
  series.series_description = reference.series_description;
  for (const Instance* instance : instances) {
    if (instance->lossy.lossy) {
      series.lossy = instance->lossy;
      break;
    }
  }
  return series;
}

// ReadSeries over any source: every instance parsed and checked first (an instance on disk
// is then released), then each series placed and decoded.
absl::StatusOr<std::vector<SeriesVolume>> ReadFromSource(const InstanceSource& source,
                                                         PixelMode mode,
                                                         std::vector<std::string>* skipped,
                                                         const SeriesReaderLimits& limits) {
  RegisterDicomCodecs();
  std::vector<std::unique_ptr<Instance>> instances;
  std::vector<std::string> skip_reasons;
  for (size_t i = 0; i < source.size(); ++i) {
    ASSIGN_OR_RETURN(ParseOutcome outcome, ParseInstance(source, i, limits));
    if (outcome.instance == nullptr) {
      skip_reasons.push_back(absl::StrCat(SafeText(source.name(i), 256), ": ", outcome.skip_reason));
      continue;
    }
    if (source.on_disk()) Release(outcome.instance.get());
    instances.push_back(std::move(outcome.instance));
  }
  if (skipped != nullptr) *skipped = skip_reasons;
  if (instances.empty()) {
    std::string message = absl::StrCat("no image instance among ", source.size(), " files");
    if (!skip_reasons.empty()) absl::StrAppend(&message, " (skipped: ", skip_reasons.front(),
                                               skip_reasons.size() > 1 ? ", ..." : "", ")");
    return absl::InvalidArgumentError(message);
  }

  // Group by study and series, series in order of first appearance.
  std::vector<std::vector<Instance*>> groups;
  std::map<std::pair<std::string, std::string>, size_t> group_of;
  for (const auto& instance : instances) {
    auto key = std::make_pair(instance->study_uid, instance->series_uid);
    auto [it, inserted] = group_of.emplace(key, groups.size());
    if (inserted) groups.emplace_back();
    groups[it->second].push_back(instance.get());
  }
  std::vector<SeriesVolume> volumes;
  volumes.reserve(groups.size());
  for (const auto& group : groups) {
    ASSIGN_OR_RETURN(SeriesVolume volume, AssembleSeries(group, source, mode, limits));
    volumes.push_back(std::move(volume));
  }
  return volumes;
}

absl::Status CheckPathsAndNames(const std::vector<std::string>& paths,
                                const std::vector<std::string>& names) {
  if (paths.size() == names.size()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(paths.size(), " paths but ", names.size(),
                                                 " names"));
}

}  // namespace

void RegisterDicomCodecs() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Decoders never assign new SOP Instance UIDs (their default); neither do the encoders
    // here, which only tests use, so that a re-encoded instance stays the same instance.
    DJDecoderRegistration::registerCodecs();
    DJLSDecoderRegistration::registerCodecs();
    DcmRLEDecoderRegistration::registerCodecs();
    DJEncoderRegistration::registerCodecs(ECC_lossyYCbCr, EUC_never);
    DJLSEncoderRegistration::registerCodecs(0, 0, 0, 0, /*preferCookedEncoding=*/OFFalse, 0, OFTrue,
                                            EJLSUC_never);
    DcmRLEEncoderRegistration::registerCodecs();
    // Explicit-VR files re-encoded from implicit VR by some tools (gdcmconv wrote pydicom's
    // rtdose_rle.dcm) label every element UN; PS3.5 6.2.2 lets a reader use the
    // dictionary's VR for a known tag, as pydicom does. Process-wide, like the codecs.
    dcmEnableUnknownVRConversion.set(OFTrue);
  });
}

absl::StatusOr<std::vector<SeriesVolume>> ReadSeries(const std::vector<DicomBuffer>& files,
                                                    std::vector<std::string>* skipped,
                                                    const SeriesReaderLimits& limits) {
  return ReadFromSource(InstanceSource(files), PixelMode::kVolume, skipped, limits);
}

absl::StatusOr<std::vector<SeriesVolume>> ReadSeriesFromFiles(
    const std::vector<std::string>& paths, const std::vector<std::string>& names,
    const SeriesReaderLimits& limits) {
  RETURN_IF_ERROR(CheckPathsAndNames(paths, names));
  return ReadFromSource(InstanceSource(paths, names), PixelMode::kVolume, nullptr, limits);
}

absl::StatusOr<std::vector<SeriesVolume>> CheckSeriesFiles(
    const std::vector<std::string>& paths, const std::vector<std::string>& names,
    std::vector<std::string>* skipped, const SeriesReaderLimits& limits) {
  RETURN_IF_ERROR(CheckPathsAndNames(paths, names));
  return ReadFromSource(InstanceSource(paths, names), PixelMode::kCheckOnly, skipped, limits);
}

absl::StatusOr<std::vector<DicomBuffer>> LoadDicomFolder(const std::string& folder) {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::file_status status = fs::status(folder, error);
  if (error || !fs::exists(status)) {
    return absl::NotFoundError(absl::StrCat("folder not found: ", folder));
  }
  if (!fs::is_directory(status)) {
    return absl::InvalidArgumentError(absl::StrCat("not a folder: ", folder));
  }
  std::vector<fs::path> paths;
  fs::recursive_directory_iterator it(folder, fs::directory_options::skip_permission_denied,
                                      error);
  for (; !error && it != fs::recursive_directory_iterator(); it.increment(error)) {
    std::error_code type_error;
    if (it->is_regular_file(type_error) && !type_error) paths.push_back(it->path());
  }
  if (error) {
    return absl::UnavailableError(absl::StrCat("cannot list ", folder, ": ", error.message()));
  }
  // Sorted by path so that the same folder always yields the same order.
  std::sort(paths.begin(), paths.end());
  std::vector<DicomBuffer> buffers;
  buffers.reserve(paths.size());
  for (const fs::path& path : paths) {
    std::error_code size_error;
    const uintmax_t size = fs::file_size(path, size_error);
    std::ifstream in(path, std::ios::binary);
    if (size_error || !in) {
      return absl::UnavailableError(absl::StrCat("cannot read ", path.string()));
    }
    std::string bytes(static_cast<size_t>(size), '\0');
    if (size > 0 && !in.read(bytes.data(), static_cast<std::streamsize>(size))) {
      return absl::UnavailableError(absl::StrCat("cannot read ", path.string()));
    }
    buffers.push_back({path.string(), std::move(bytes)});
  }
  return buffers;
}

}  // namespace miseg

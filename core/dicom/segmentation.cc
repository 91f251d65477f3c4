// DICOM SEG out (DCMTK's dcmseg builds the object) and in (read straight from the dataset,
// so that every malformed input gets a specific message instead of a generic dcmseg
// failure, and nothing is allocated before the sizes are checked against the pixel data).
//
// Choices made here, for whoever reads our SEGs:
// - Segments: one per foreground class, SegmentLabel = the class name as given,
//   SegmentAlgorithmType AUTOMATIC, SegmentAlgorithmName "miseg". Codes: category SCT
//   123037004 "Anatomical Structure"; types SCT 53085002 "Right ventricle", 74281007
//   "Myocardium", 87878005 "Left ventricle" (the whole structures, as the phantom labels
//   the ventricular cavities under those names). Other classes: category SCT 91723000
//   "Anatomical Structure", type SCT 85756007 "Tissue", told apart only by their label.
// - Algorithm identification (per segment): family DCM 123110 "Artificial Intelligence",
//   AlgorithmName "miseg", AlgorithmVersion = the miseg version, AlgorithmParameters
//   "model_version=<model version>" when one is given.
// - Frames: for each segment, one frame per source slice where the segment is present; an
//   empty segment gets one all-zero frame on slice 0 (so that it is not a segment without
//   frames, which some readers refuse). Dimensions: ReferencedSegmentNumber, then
//   ImagePositionPatient.
// - Reading: overlapping segments resolve to the higher segment number (later wins).
#include "core/dicom/segmentation.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmfg/fgderimg.h>
#include <dcmtk/dcmfg/fgfracon.h>
#include <dcmtk/dcmfg/fgpixmsr.h>
#include <dcmtk/dcmfg/fgplanor.h>
#include <dcmtk/dcmfg/fgplanpo.h>
#include <dcmtk/dcmiod/iodmacro.h>
#include <dcmtk/dcmiod/iodrules.h>
#include <dcmtk/dcmseg/segdoc.h>
#include <dcmtk/dcmseg/segment.h>
#include <dcmtk/ofstd/ofstd.h>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/common/status_macros.h"
#include "core/dicom/dicom_text.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/patient_space.h"
#include "core/dicom/series_reader.h"

namespace miseg {
namespace {

struct Code {
  const char* value;
  const char* scheme;
  const char* meaning;
};

constexpr Code kCardiacCategory = {"123037004", "SCT", "Anatomical Structure"};
constexpr Code kGenericCategory = {"91723000", "SCT", "Anatomical Structure"};
constexpr Code kGenericType = {"85756007", "SCT", "Tissue"};
constexpr Code kAlgorithmFamily = {"123110", "DCM", "Artificial Intelligence"};

struct CardiacClass {
  const char* name;  // normalised class name
  Code type;
};
constexpr CardiacClass kCardiacClasses[] = {
    {"right ventricle", {"53085002", "SCT", "Right ventricle"}},
    {"myocardium", {"74281007", "SCT", "Myocardium"}},
    {"left ventricle", {"87878005", "SCT", "Left ventricle"}},
};

// Lower case, '_' and '-' as spaces, runs of spaces collapsed, trimmed: "Left_Ventricle"
// and "left ventricle" are the same class.
std::string Normalise(const std::string& name) {
  std::string out;
  for (char c : name) {
    char d = (c == '_' || c == '-') ? ' ' : absl::ascii_tolower(static_cast<unsigned char>(c));
    if (d == ' ' && (out.empty() || out.back() == ' ')) continue;
    out.push_back(d);
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

const CardiacClass* FindCardiac(const std::string& class_name) {
  std::string n = Normalise(class_name);
  if (n == "rv") n = "right ventricle";
  if (n == "lv") n = "left ventricle";
  if (n == "myo" || n == "lv myocardium" || n == "left ventricular myocardium") n = "myocardium";
  for (const CardiacClass& c : kCardiacClasses) {
    if (n == c.name) return &c;
  }
  return nullptr;
}

CodedConceptText TextOf(const Code& code) { return {code.value, code.scheme, code.meaning}; }

}  // namespace

SegmentCodes SegmentCodesFor(const std::string& class_name) {
  const CardiacClass* cardiac = FindCardiac(class_name);
  return {TextOf(cardiac != nullptr ? kCardiacCategory : kGenericCategory),
          TextOf(cardiac != nullptr ? cardiac->type : kGenericType)};
}

namespace {

bool IsMultiFrameClass(const std::string& sop_class) {
  static const std::set<std::string> kClasses = {UID_EnhancedMRImageStorage,
                                                 UID_EnhancedCTImageStorage,
                                                 UID_EnhancedMRColorImageStorage,
                                                 UID_LegacyConvertedEnhancedMRImageStorage,
                                                 UID_LegacyConvertedEnhancedCTImageStorage,
                                                 UID_EnhancedPETImageStorage,
                                                 UID_LegacyConvertedEnhancedPETImageStorage};
  return kClasses.count(sop_class) > 0;
}

CodeSequenceMacro MakeCode(const Code& code) {
  return CodeSequenceMacro(code.value, code.scheme, code.meaning);
}

}  // namespace

namespace {

// The longest value (in characters) of a VR whose values PS3.5 6.2 bounds; 0 otherwise.
size_t MaxValueLength(DcmEVR vr) {
  switch (vr) {
    case EVR_AE: case EVR_CS: case EVR_DS: case EVR_SH: case EVR_TM: return 16;
    case EVR_AS: return 4;
    case EVR_DA: return 8;
    case EVR_DT: return 26;
    case EVR_IS: return 12;
    case EVR_LO: case EVR_UI: return 64;
    default: return 0;
  }
}

// A derived object from lossy-compressed images must say so (PS3.3 C.7.6.1.1.5): "01" with
// the source's methods and ratios, one per compression step. Values that are not a valid
// CS or DS are left out rather than failing the SEG (they came from the source as text).
// Written into the SEG's dataset after dcmseg's writeDataset, which in 3.6.7 sets "00"
// whatever setLossyImageCompressionFlag said.
absl::Status PutLossyCompression(const LossyCompression& lossy, DcmItem& dataset) {
  std::vector<std::string> methods, ratios;
  for (const std::string& method : lossy.methods) {
    const bool valid = !method.empty() && method.size() <= 16 &&
                       std::all_of(method.begin(), method.end(), [](char c) {
                         return std::isupper(static_cast<unsigned char>(c)) ||
                                std::isdigit(static_cast<unsigned char>(c)) || c == '_' || c == ' ';
                       });
    if (valid) methods.push_back(method);
  }
  for (const std::string& ratio : lossy.ratios) {
    double value = 0;
    if (ratio.size() <= 16 && absl::SimpleAtod(ratio, &value) && std::isfinite(value)) {
      ratios.push_back(ratio);
    }
  }
  OFCondition put = dataset.putAndInsertString(DCM_LossyImageCompression, "01");
  if (put.good() && !methods.empty()) {
    put = dataset.putAndInsertString(DCM_LossyImageCompressionMethod,
                                     absl::StrJoin(methods, "\\").c_str());
  }
  if (put.good() && !ratios.empty()) {
    put = dataset.putAndInsertString(DCM_LossyImageCompressionRatio,
                                     absl::StrJoin(ratios, "\\").c_str());
  }
  return FromCondition(put, "Lossy Image Compression", absl::StatusCode::kInternal);
}

// Makes a source's header fit to be copied into a SEG (importHierarchy takes its patient,
// study and frame of reference modules): a value that breaks its VR (DCMTK's checkValue: a
// fuzzed date, a control character in a name), a UID that breaks PS3.5 9.1, or text not
// valid in the declared Specific Character Set is blanked, as a type 2 or 3 attribute may be
// empty. The type 1 attributes copied (Study Instance UID, Frame of Reference UID) cannot
// be blanked: InvalidArgument naming the attribute. Sequences are left as they are (the
// modules copied hold none that a fuzzed file can make unwritable in our tests).
absl::Status RepairSourceHeader(DcmDataset& hds) {
  OFString charset_value;
  hds.findAndGetOFStringArray(DCM_SpecificCharacterSet, charset_value);
  const std::string charset(charset_value.c_str(), charset_value.length());
  for (unsigned long i = 0; i < hds.card(); ++i) {
    DcmElement* element = hds.getElement(i);
    if (element == nullptr || !element->isLeaf() || element->getLength() == 0) continue;
    const DcmTagKey tag = element->getTag().getXTag();
    if (tag.getGroup() == 0x7FE0) continue;
    std::string why;
    if (OFCondition checked = element->checkValue(); checked.bad()) why = checked.text();
    const DcmEVR vr = element->ident();
    if (why.empty() && (vr == EVR_UI || vr == EVR_SH || vr == EVR_LO || vr == EVR_ST ||
                        vr == EVR_LT || vr == EVR_UT || vr == EVR_PN || vr == EVR_UC)) {
      char* bytes = nullptr;
      Uint32 length = 0;
      if (element->getString(bytes, length).good() && bytes != nullptr) {
        const std::string raw(bytes, length);
        if (vr == EVR_UI) {
          if (absl::Status valid = ValidateUid(raw); !valid.ok()) why = std::string(valid.message());
        } else if (absl::StatusOr<std::string> decoded =
                       DecodeDicomString(raw, charset, vr == EVR_PN);
                   !decoded.ok()) {
          why = std::string(decoded.status().message());
        }
      }
    }
    // DCMTK 3.6.7's checkValue does not check lengths; dciodvfy does.
    if (const size_t max = MaxValueLength(vr); why.empty() && max > 0) {
      OFString value;
      element->getOFStringArray(value);
      for (absl::string_view part :
           absl::StrSplit(absl::string_view(value.c_str(), value.length()), '\\')) {
        size_t characters = 0;
        for (char c : part) characters += (static_cast<uint8_t>(c) & 0xC0) != 0x80;
        if (characters > max) why = absl::StrCat("a value longer than ", max, " characters");
      }
    }
    if (why.empty()) continue;
    if (tag == DCM_StudyInstanceUID || tag == DCM_FrameOfReferenceUID) {
      OFString value;
      element->getOFStringArray(value);
      return absl::InvalidArgumentError(absl::StrCat(
          "the source's ", DicomTagName(tag), " '", SafeText(value.c_str()),
          "' cannot be copied into a DICOM SEG: ", SafeText(why, 128)));
    }
    element->clear();
  }
  return absl::OkStatus();
}

// The source's reference header, parsed (an empty dataset when it has none) and repaired.
absl::StatusOr<std::unique_ptr<DcmFileFormat>> SourceHeader(const SeriesVolume& source) {
  std::unique_ptr<DcmFileFormat> header;
  if (!source.reference_header.empty()) {
    ASSIGN_OR_RETURN(header, ParseDicom(source.reference_header, "the source's reference header"));
  } else {
    header = std::make_unique<DcmFileFormat>();
  }
  RETURN_IF_ERROR(RepairSourceHeader(*header->getDataset()));
  return header;
}

}  // namespace

absl::Status CheckSegmentationSource(const SeriesVolume& source) {
  for (const auto& [uid, name] : {std::pair{&source.study_instance_uid, "StudyInstanceUID"},
                                  std::pair{&source.frame_of_reference_uid, "FrameOfReferenceUID"}}) {
    if (uid->empty()) continue;
    if (absl::Status valid = ValidateUid(*uid); !valid.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("the source's ", name, " '", SafeText(*uid),
                                                     "' is not a valid UID: ", valid.message()));
    }
  }
  return SourceHeader(source).status();
}

namespace {

// Refuses a source and labels that cannot make a SEG, before anything is built.
absl::Status CheckWriteInputs(const SeriesVolume& source, const LabelVolume& labels,
                              const SegmentationWriteOptions& options) {
  const VolumeGeometry& g = source.image.geometry;
  if (!source.image.consistent()) {
    return absl::InvalidArgumentError(
        "WriteSegmentation: the source volume's voxels do not match its geometry");
  }
  if (!labels.consistent() || !labels.geometry.SameGrid(g)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WriteSegmentation: labels (", labels.geometry.slices, "x", labels.geometry.rows, "x",
        labels.geometry.cols, ") are not on the source series' grid (", g.slices, "x", g.rows, "x",
        g.cols, ")"));
  }
  if (source.slices.size() != static_cast<size_t>(g.slices)) {
    return absl::InvalidArgumentError(
        "WriteSegmentation: the source has not one SliceSource per slice");
  }
  if (g.rows > 65535 || g.cols > 65535) {
    return absl::InvalidArgumentError("WriteSegmentation: frames beyond 65535 rows or columns");
  }
  if (options.class_names.size() < 2 || options.class_names.size() > 256) {
    return absl::InvalidArgumentError("WriteSegmentation: need background plus 1 to 255 classes");
  }
  const size_t num_classes = options.class_names.size();
  for (uint8_t v : labels.voxels) {
    if (v >= num_classes) {
      return absl::InvalidArgumentError(absl::StrCat("WriteSegmentation: label ",
                                                     static_cast<int>(v), " has no class name (",
                                                     num_classes, " classes)"));
    }
  }
  for (const SliceSource& s : source.slices) {
    if (s.sop_instance_uid.empty() || s.sop_class_uid.empty()) {
      return absl::InvalidArgumentError(
          "WriteSegmentation: a source slice lacks its SOP Class or Instance UID");
    }
  }
  return absl::OkStatus();
}

// Patient, study and frame of reference come from the source's first instance, with
// values that cannot be copied blanked (or refused). Sets `for_uid` to the SEG's frame of
// reference, "" when neither the source nor its header has one.
absl::StatusOr<std::unique_ptr<DcmFileFormat>> HeaderForSeg(const SeriesVolume& source,
                                                            std::string* for_uid) {
  ASSIGN_OR_RETURN(std::unique_ptr<DcmFileFormat> header, SourceHeader(source));
  DcmDataset& hds = *header->getDataset();
  OFString text;
  if (hds.findAndGetOFString(DCM_StudyInstanceUID, text).bad() || text.empty()) {
    if (source.study_instance_uid.empty()) {
      return absl::InvalidArgumentError("WriteSegmentation: the source has no Study Instance UID");
    }
    hds.putAndInsertString(DCM_StudyInstanceUID, source.study_instance_uid.c_str());
  }
  *for_uid = source.frame_of_reference_uid;
  if (for_uid->empty() && hds.findAndGetOFString(DCM_FrameOfReferenceUID, text).good())
    *for_uid = text.c_str();
  if (!for_uid->empty()) hds.putAndInsertString(DCM_FrameOfReferenceUID, for_uid->c_str());
  return header;
}

// The SEG's own series: new UIDs unless the options give them, number and description.
absl::Status SetSeries(const SegmentationWriteOptions& options, DcmSegmentation& seg) {
  const std::string series_uid =
      options.series_instance_uid.empty() ? NewUid(options.uid_root) : options.series_instance_uid;
  const std::string sop_uid =
      options.sop_instance_uid.empty() ? NewUid(options.uid_root) : options.sop_instance_uid;
  RETURN_IF_ERROR(FromCondition(seg.getSeries().setSeriesInstanceUID(series_uid.c_str()),
                                "Series Instance UID"));
  RETURN_IF_ERROR(
      FromCondition(seg.getSOPCommon().setSOPInstanceUID(sop_uid.c_str()), "SOP Instance UID"));
  RETURN_IF_ERROR(
      FromCondition(seg.getSeries().setSeriesNumber(absl::StrCat(options.series_number).c_str()),
                    "Series Number"));
  if (!options.series_description.empty()) {
    RETURN_IF_ERROR(
        FromCondition(seg.getSeries().setSeriesDescription(options.series_description.c_str()),
                      "Series Description"));
  }
  return absl::OkStatus();
}

// A binary SEG of the source's frame size with patient and study from `hds` (and its frame
// of reference when `has_for`), our equipment, and its own series; no segments yet.
absl::StatusOr<std::unique_ptr<DcmSegmentation>> CreateSeg(
    const VolumeGeometry& g, DcmDataset& hds, bool has_for,
    const SegmentationWriteOptions& options) {
  const IODGeneralEquipmentModule::EquipmentInfo equipment(
      "miseg", "miseg", "0",
      options.algorithm_version.empty() ? "unknown" : options.algorithm_version);
  const ContentIdentificationMacro content("1", "MISEG", options.series_description, "miseg^");
  DcmSegmentation* raw = nullptr;
  RETURN_IF_ERROR(FromCondition(
      DcmSegmentation::createBinarySegmentation(raw, static_cast<Uint16>(g.rows),
                                                static_cast<Uint16>(g.cols), equipment, content),
      "creating the SEG", absl::StatusCode::kInternal));
  std::unique_ptr<DcmSegmentation> seg(raw);
  // DCMTK 3.6.7 runs its dimension check on a dataset that has no per-frame groups yet, so
  // it checks nothing and only logs a warning on every write; the frames are consistent by
  // construction (one FrameContent per frame, both index values always set).
  seg->setCheckDimensionsOnWrite(OFFalse);
  RETURN_IF_ERROR(FromCondition(
      seg->importHierarchy(hds, /*readPatient=*/OFTrue, /*readStudy=*/OFTrue,
                           /*readFoR=*/has_for ? OFTrue : OFFalse, /*readSeries=*/OFFalse),
      "importing patient and study from the source"));
  if (!has_for) {
    // dcmseg insists on a Frame of Reference; the SEG IOD needs one only when frames carry
    // no Derivation Image references, and ours always do. A new UID would claim a spatial
    // frame the source never had, so the module is left out instead.
    for (const DcmTagKey& tag : {DCM_FrameOfReferenceUID, DCM_PositionReferenceIndicator}) {
      if (IODRule* rule = seg->getRules()->getByTag(tag)) rule->setType("3");
    }
  }
  // importHierarchy also takes over the source's equipment: the SEG's is ours.
  RETURN_IF_ERROR(FromCondition(seg->setEquipmentInfo(equipment), "setting equipment",
                                absl::StatusCode::kInternal));
  RETURN_IF_ERROR(SetSeries(options, *seg));
  return seg;
}

// The segment of class `c`, named `name`: its codes and algorithm identification.
absl::StatusOr<std::unique_ptr<DcmSegment>> MakeSegment(const std::string& name, size_t c,
                                                        const SegmentationWriteOptions& options) {
  const CardiacClass* cardiac = FindCardiac(name);
  const CodeSequenceMacro category =
      MakeCode(cardiac != nullptr ? kCardiacCategory : kGenericCategory);
  const CodeSequenceMacro type = MakeCode(cardiac != nullptr ? cardiac->type : kGenericType);
  std::string label = name.empty() ? absl::StrCat("class ", c) : name.substr(0, 64);
  DcmSegment* segment = nullptr;
  RETURN_IF_ERROR(FromCondition(DcmSegment::create(segment, label.c_str(), category, type,
                                                   DcmSegTypes::SAT_AUTOMATIC, "miseg"),
                                absl::StrCat("creating segment for class ", c)));
  std::unique_ptr<DcmSegment> owned(segment);
  AlgorithmIdentificationMacro algorithm;
  algorithm.getAlgorithmFamilyCode().set(kAlgorithmFamily.value, kAlgorithmFamily.scheme,
                                         kAlgorithmFamily.meaning);
  algorithm.setAlgorithmName("miseg");
  algorithm.setAlgorithmVersion(
      options.algorithm_version.empty() ? "unknown" : options.algorithm_version.c_str());
  if (!options.model_version.empty()) {
    algorithm.setAlgorithmParameters(absl::StrCat("model_version=", options.model_version).c_str(),
                                     OFFalse);
  }
  RETURN_IF_ERROR(FromCondition(owned->setSegmentationAlgorithmIdentification(algorithm),
                                absl::StrCat("algorithm identification of class ", c)));
  if (cardiac != nullptr) owned->setSegmentDescription(cardiac->type.meaning);
  return owned;
}

// One segment per foreground class. The segment number of each class (0 for background).
absl::StatusOr<std::vector<Uint16>> AddSegments(const SegmentationWriteOptions& options,
                                                DcmSegmentation& seg) {
  std::vector<Uint16> segment_numbers(options.class_names.size(), 0);
  for (size_t c = 1; c < options.class_names.size(); ++c) {
    ASSIGN_OR_RETURN(std::unique_ptr<DcmSegment> owned,
                     MakeSegment(options.class_names[c], c, options));
    RETURN_IF_ERROR(FromCondition(seg.addSegment(owned.get(), segment_numbers[c]),
                                  absl::StrCat("adding segment for class ", c),
                                  absl::StatusCode::kInternal));
    owned.release();  // the SEG owns it now
  }
  return segment_numbers;
}

// Shared functional groups: pixel measures and orientation (only with a frame of
// reference: without one, patient-space geometry means nothing to the SEG).
absl::Status AddSharedGroups(const VolumeGeometry& g, bool has_for, DcmSegmentation& seg) {
  FGPixelMeasures measures;
  measures.setPixelSpacing(
      absl::StrCat(FormatDs(g.row_spacing_mm), "\\", FormatDs(g.col_spacing_mm)).c_str());
  measures.setSliceThickness(FormatDs(g.slice_spacing_mm).c_str());
  measures.setSpacingBetweenSlices(FormatDs(g.slice_spacing_mm).c_str());
  RETURN_IF_ERROR(
      FromCondition(seg.addForAllFrames(measures), "pixel measures", absl::StatusCode::kInternal));
  if (has_for) {
    FGPlaneOrientationPatient orientation;
    orientation.setImageOrientationPatient(
        FormatDs(g.row_direction[0]).c_str(), FormatDs(g.row_direction[1]).c_str(),
        FormatDs(g.row_direction[2]).c_str(), FormatDs(g.col_direction[0]).c_str(),
        FormatDs(g.col_direction[1]).c_str(), FormatDs(g.col_direction[2]).c_str());
    RETURN_IF_ERROR(FromCondition(seg.addForAllFrames(orientation), "plane orientation",
                                  absl::StatusCode::kInternal));
  }
  return absl::OkStatus();
}

// Dimensions: ReferencedSegmentNumber, then ImagePositionPatient (InStackPositionNumber
// without a frame of reference).
absl::Status AddDimensions(bool has_for, const std::string& uid_root, DcmSegmentation& seg) {
  const std::string dimension_uid = NewUid(uid_root);
  IODMultiframeDimensionModule& dims = seg.getDimensions();
  RETURN_IF_ERROR(FromCondition(
      dims.addDimensionIndex(DCM_ReferencedSegmentNumber, dimension_uid.c_str(),
                             DCM_SegmentIdentificationSequence, "ReferencedSegmentNumber"),
      "dimension index", absl::StatusCode::kInternal));
  if (has_for) {
    RETURN_IF_ERROR(
        FromCondition(dims.addDimensionIndex(DCM_ImagePositionPatient, dimension_uid.c_str(),
                                             DCM_PlanePositionSequence, "ImagePositionPatient"),
                      "dimension index", absl::StatusCode::kInternal));
  } else {
    // No patient-space positions: the second dimension is the slice's place in the stack.
    RETURN_IF_ERROR(
        FromCondition(dims.addDimensionIndex(DCM_InStackPositionNumber, dimension_uid.c_str(),
                                             DCM_FrameContentSequence, "InStackPositionNumber"),
                      "dimension index", absl::StatusCode::kInternal));
  }
  return absl::OkStatus();
}

// The slices of `labels` where class `c` is present, in order.
std::vector<int64_t> SlicesWithClass(const LabelVolume& labels, size_t c) {
  const int64_t slice_size = labels.geometry.slice_size();
  std::vector<int64_t> slices_with_class;
  for (int64_t k = 0; k < labels.geometry.slices; ++k) {
    const uint8_t* slice = labels.voxels.data() + k * slice_size;
    if (std::find(slice, slice + slice_size, static_cast<uint8_t>(c)) != slice + slice_size) {
      slices_with_class.push_back(k);
    }
  }
  return slices_with_class;
}

// Appends a frame's bits (one byte per pixel, 0 or 1) to `packed`, right after the
// `*count` bits already there, as PS3.5 8.1.1 packs frames: contiguously, without padding.
void AppendPackedBits(const std::vector<Uint8>& frame, std::vector<uint8_t>* packed,
                      uint64_t* count) {
  packed->resize((*count + frame.size() + 7) / 8, 0);
  for (size_t i = 0; i < frame.size(); ++i, ++*count) {
    if (frame[i]) (*packed)[*count / 8] |= static_cast<uint8_t>(1u << (*count % 8));
  }
}

// A frame's reference to its source image: with a frame number when the source instance
// is multi-frame (`frames_per_instance`: how many slices each source instance gives).
absl::Status AddSourceReference(const SliceSource& src,
                                const std::map<std::string, int>& frames_per_instance,
                                OFVector<ImageSOPInstanceReferenceMacro>* references) {
  ImageSOPInstanceReferenceMacro reference;
  reference.setReferencedSOPClassUID(src.sop_class_uid.c_str());
  reference.setReferencedSOPInstanceUID(src.sop_instance_uid.c_str());
  if (frames_per_instance.at(src.sop_instance_uid) > 1 || src.frame_number > 1 ||
      IsMultiFrameClass(src.sop_class_uid)) {
    if (src.frame_number < 1 || src.frame_number > 65535) {
      return absl::InvalidArgumentError("WriteSegmentation: a source frame number is out of range");
    }
    reference.addReferencedFrameNumber(static_cast<Uint16>(src.frame_number));
  }
  references->push_back(reference);
  return absl::OkStatus();
}

// Adds `frame` as the frame of segment `segment_number` on source slice `k`, with its
// per-frame groups: plane position (with a frame of reference), frame content and the
// derivation image that references the source slice.
absl::Status AddFrame(const SeriesVolume& source,
                      const std::map<std::string, int>& frames_per_instance, bool has_for,
                      Uint16 segment_number, int64_t k, std::vector<Uint8>& frame,
                      DcmSegmentation& seg) {
  const SliceSource& src = source.slices[static_cast<size_t>(k)];
  OFVector<FGBase*> per_frame;
  std::unique_ptr<FGPlanePosPatient> position;
  if (has_for) {
    const std::array<double, 3> p = SlicePosition(source.image.geometry, k);
    position.reset(FGPlanePosPatient::createMinimal(FormatDs(p[0]).c_str(), FormatDs(p[1]).c_str(),
                                                    FormatDs(p[2]).c_str()));
    if (position == nullptr) return absl::InternalError("WriteSegmentation: plane position");
    per_frame.push_back(position.get());
  }
  FGFrameContent frame_content;
  frame_content.setDimensionIndexValues(segment_number, 0);
  frame_content.setDimensionIndexValues(static_cast<Uint32>(k + 1), 1);
  if (!has_for) {
    frame_content.setStackID("1");
    frame_content.setInStackPositionNumber(static_cast<Uint32>(k + 1));
  }
  per_frame.push_back(&frame_content);

  OFVector<ImageSOPInstanceReferenceMacro> references;
  RETURN_IF_ERROR(AddSourceReference(src, frames_per_instance, &references));
  std::unique_ptr<FGDerivationImage> derivation(
      DcmSegmentation::createDerivationImageFG(references, "Segmentation by miseg"));
  if (derivation == nullptr)
    return absl::InternalError("WriteSegmentation: derivation image functional group");
  per_frame.push_back(derivation.get());

  return FromCondition(seg.addFrame(frame.data(), segment_number, per_frame),
                       absl::StrCat("adding frame for slice ", k), absl::StatusCode::kInternal);
}

// Frames: for each segment, one per source slice where it is present (one all-zero frame
// on slice 0 for an empty segment). Returns every frame's bits in order, packed
// contiguously as PS3.5 8.1.1 asks: DCMTK 3.6.7 pads each frame to a whole byte, which
// shifts every later frame when rows x columns is not a multiple of 8 (the standard's
// readers, ours and pydicom's, then see scrambled masks).
absl::StatusOr<std::vector<uint8_t>> AddFrames(const SeriesVolume& source,
                                               const LabelVolume& labels,
                                               const std::vector<Uint16>& segment_numbers,
                                               bool has_for, DcmSegmentation& seg) {
  // Which source instances are multi-frame (their references need a frame number).
  std::map<std::string, int> frames_per_instance;
  for (const SliceSource& s : source.slices) ++frames_per_instance[s.sop_instance_uid];

  const int64_t slice_size = source.image.geometry.slice_size();
  std::vector<Uint8> frame(static_cast<size_t>(slice_size));
  std::vector<uint8_t> packed_bits;
  uint64_t packed_count = 0;
  for (size_t c = 1; c < segment_numbers.size(); ++c) {
    std::vector<int64_t> slices_with_class = SlicesWithClass(labels, c);
    const bool empty_segment = slices_with_class.empty();
    if (empty_segment) slices_with_class.push_back(0);
    for (int64_t k : slices_with_class) {
      const uint8_t* slice = labels.voxels.data() + k * slice_size;
      for (int64_t i = 0; i < slice_size; ++i) {
        frame[static_cast<size_t>(i)] = (!empty_segment && slice[i] == c) ? 1 : 0;
      }
      AppendPackedBits(frame, &packed_bits, &packed_count);
      RETURN_IF_ERROR(
          AddFrame(source, frames_per_instance, has_for, segment_numbers[c], k, frame, seg));
    }
  }
  return packed_bits;
}

// Referenced Series Sequence: every source instance, once.
absl::Status AddReferencedSeries(const SeriesVolume& source, DcmSegmentation& seg) {
  auto* series_item = new IODSeriesAndInstanceReferenceMacro::ReferencedSeriesItem;
  seg.getCommonInstanceReference().getReferencedSeriesItems().push_back(series_item);  // owns it
  RETURN_IF_ERROR(
      FromCondition(series_item->setSeriesInstanceUID(source.series_instance_uid.c_str()),
                    "referenced Series Instance UID"));
  std::set<std::string> referenced;
  for (const SliceSource& s : source.slices) {
    if (!referenced.insert(s.sop_instance_uid).second) continue;
    RETURN_IF_ERROR(FromCondition(
        series_item->addReference(s.sop_class_uid.c_str(), s.sop_instance_uid.c_str()),
        "referenced instance"));
  }
  return absl::OkStatus();
}

// The SEG as a Part-10 buffer: dcmseg's dataset, with the source's lossy compression
// history and our contiguously packed frames (see AddFrames) in place of DCMTK's.
absl::StatusOr<std::string> SerializeSeg(DcmSegmentation& seg, const SeriesVolume& source,
                                         std::vector<uint8_t> packed_bits, bool has_for) {
  DcmFileFormat file;
  RETURN_IF_ERROR(FromCondition(seg.writeDataset(*file.getDataset()), "writing the SEG",
                                absl::StatusCode::kInternal));
  if (source.lossy.lossy) RETURN_IF_ERROR(PutLossyCompression(source.lossy, *file.getDataset()));
  if (packed_bits.size() % 2 == 1) packed_bits.push_back(0);  // OB values have even length
  RETURN_IF_ERROR(FromCondition(
      file.getDataset()->putAndInsertUint8Array(DCM_PixelData, packed_bits.data(),
                                                static_cast<unsigned long>(packed_bits.size())),
      "packing the SEG's frames", absl::StatusCode::kInternal));
  if (!has_for) {
    // Without plane orientations, the General Image module wants Patient Orientation (2C).
    file.getDataset()->insertEmptyElement(DCM_PatientOrientation);
  }
  return SerializeDicom(file);
}

}  // namespace

absl::StatusOr<std::string> WriteSegmentation(const SeriesVolume& source, const LabelVolume& labels,
                                              const SegmentationWriteOptions& options) {
  RETURN_IF_ERROR(CheckWriteInputs(source, labels, options));
  std::string for_uid;
  ASSIGN_OR_RETURN(std::unique_ptr<DcmFileFormat> header, HeaderForSeg(source, &for_uid));
  const bool has_for = !for_uid.empty();
  ASSIGN_OR_RETURN(std::unique_ptr<DcmSegmentation> seg,
                   CreateSeg(source.image.geometry, *header->getDataset(), has_for, options));
  ASSIGN_OR_RETURN(const std::vector<Uint16> segment_numbers, AddSegments(options, *seg));
  RETURN_IF_ERROR(AddSharedGroups(source.image.geometry, has_for, *seg));
  RETURN_IF_ERROR(AddDimensions(has_for, options.uid_root, *seg));
  ASSIGN_OR_RETURN(std::vector<uint8_t> packed_bits,
                   AddFrames(source, labels, segment_numbers, has_for, *seg));
  RETURN_IF_ERROR(AddReferencedSeries(source, *seg));
  return SerializeSeg(*seg, source, std::move(packed_bits), has_for);
}

// ---------------------------------------------------------------------------------------
// Reading.
namespace {

struct SegError {
  std::string seg_uid;
  absl::Status operator()(const std::string& what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("SEG ", seg_uid.empty() ? "(no SOP Instance UID)" : seg_uid, ": ", what));
  }
};

std::optional<std::vector<double>> GetDoubles(DcmItem* item, const DcmTagKey& tag, size_t count) {
  if (item == nullptr) return std::nullopt;
  std::vector<double> out(count);
  for (size_t i = 0; i < count; ++i) {
    Float64 v = 0;
    if (item->findAndGetFloat64(tag, v, static_cast<unsigned long>(i)).bad() || !std::isfinite(v)) {
      return std::nullopt;
    }
    out[i] = v;
  }
  return out;
}

struct SegmentInfo {
  std::string label;
  int class_index = -1;
};

// What the SEG's header says about its frames, checked against the source's grid.
struct SegFormat {
  std::string type;  // BINARY or FRACTIONAL
  bool fractional = false;
  Uint16 rows = 0, cols = 0;
  Uint16 max_fraction = 255;
  uint64_t frames = 0;
  uint64_t frame_pixels() const { return static_cast<uint64_t>(rows) * cols; }
};

absl::StatusOr<SegFormat> ReadSegFormat(DcmDataset& ds, const VolumeGeometry& g,
                                        const SegError& error) {
  const std::string sop_class = EscapedDicomValue(ds, DCM_SOPClassUID);
  if (sop_class != UID_SegmentationStorage) {
    return error(absl::StrCat("not a DICOM Segmentation (SOP Class UID '", sop_class, "')"));
  }
  SegFormat format;
  format.type = EscapedDicomValue(ds, DCM_SegmentationType);
  format.fractional = format.type == "FRACTIONAL";
  if (format.type != "BINARY" && !format.fractional) {
    return error(absl::StrCat("Segmentation Type '", format.type,
                              "' is not supported (only BINARY and FRACTIONAL)"));
  }
  Uint16 bits_allocated = 0, samples = 1;
  if (ds.findAndGetUint16(DCM_Rows, format.rows).bad() ||
      ds.findAndGetUint16(DCM_Columns, format.cols).bad()) {
    return error("no Rows or Columns");
  }
  if (format.rows != g.rows || format.cols != g.cols) {
    return error(absl::StrCat("frame size ", format.rows, "x", format.cols,
                              " does not match the series' ", g.rows, "x", g.cols));
  }
  ds.findAndGetUint16(DCM_BitsAllocated, bits_allocated);
  ds.findAndGetUint16(DCM_SamplesPerPixel, samples);
  if (samples != 1 || bits_allocated != (format.fractional ? 8 : 1)) {
    return error(absl::StrCat("Bits Allocated ", bits_allocated, " and Samples per Pixel ", samples,
                              " do not fit a ", format.type, " segmentation"));
  }
  if (format.fractional) {
    ds.findAndGetUint16(DCM_MaximumFractionalValue, format.max_fraction);
    if (format.max_fraction == 0 || format.max_fraction > 255)
      return error("Maximum Fractional Value must be 1..255");
  }
  Sint32 number_of_frames = 0;
  if (ds.findAndGetSint32(DCM_NumberOfFrames, number_of_frames).bad() || number_of_frames < 1) {
    return error("no valid Number of Frames");
  }
  format.frames = static_cast<uint64_t>(number_of_frames);
  return format;
}

// The class a segment item stands for: by its label (`class_by_name`: normalised name to
// class index), else by its property type's code for the cardiac classes; -1 when none.
int ClassOfSegment(DcmItem& item, const std::string& label,
                   const std::map<std::string, int>& class_by_name,
                   const std::vector<std::string>& class_names) {
  auto by_name = class_by_name.find(Normalise(label));
  if (by_name != class_by_name.end()) return by_name->second;
  DcmItem* code = FirstSequenceItem(&item, DCM_SegmentedPropertyTypeCodeSequence);
  if (code == nullptr) return -1;
  const std::string value = EscapedDicomValue(*code, DCM_CodeValue);
  const std::string scheme = EscapedDicomValue(*code, DCM_CodingSchemeDesignator);
  for (size_t c = 1; c < class_names.size(); ++c) {
    const CardiacClass* cardiac = FindCardiac(class_names[c]);
    if (cardiac != nullptr && value == cardiac->type.value &&
        (scheme == "SCT" || scheme == "SRT")) {  // SRT: SNOMED's designator before 2019
      return static_cast<int>(c);
    }
  }
  return -1;
}

// The SEG's segments by number, and their labels in the order of the Segment Sequence.
struct Segments {
  std::map<Uint16, SegmentInfo> by_number;
  std::vector<std::string> labels;
};

absl::StatusOr<Segments> ReadSegments(DcmDataset& ds, const std::vector<std::string>& class_names,
                                      const SegError& error) {
  Segments out;
  std::map<std::string, int> class_by_name;
  for (size_t i = 1; i < class_names.size(); ++i)
    class_by_name.emplace(Normalise(class_names[i]), static_cast<int>(i));
  DcmSequenceOfItems* segment_sequence = nullptr;
  if (ds.findAndGetSequence(DCM_SegmentSequence, segment_sequence).bad() ||
      segment_sequence == nullptr || segment_sequence->card() == 0) {
    return error("no Segment Sequence");
  }
  for (unsigned long i = 0; i < segment_sequence->card(); ++i) {
    DcmItem* item = segment_sequence->getItem(i);
    Uint16 number = 0;
    if (item == nullptr || item->findAndGetUint16(DCM_SegmentNumber, number).bad() || number == 0) {
      return error(absl::StrCat("segment item ", i + 1, " has no Segment Number"));
    }
    SegmentInfo info;
    info.label = EscapedDicomValue(*item, DCM_SegmentLabel);
    info.class_index = ClassOfSegment(*item, info.label, class_by_name, class_names);
    if (info.class_index < 0) {
      return error(absl::StrCat("segment ", number, " ('", info.label,
                                "') matches none of the classes (",
                                absl::StrJoin(class_names, ", "), ")"));
    }
    if (!out.by_number.emplace(number, info).second)
      return error(absl::StrCat("segment number ", number, " appears twice"));
    out.labels.push_back(info.label);
  }
  return out;
}

// The SEG's pixel data, uncompressed, long enough for every frame. Owned by `ds`.
absl::StatusOr<const Uint8*> ReadSegPixels(DcmDataset& ds, const SegFormat& format,
                                           const SegError& error) {
  const E_TransferSyntax original = ds.getOriginalXfer();
  if (DcmXfer(original).isEncapsulated()) {
    RegisterDicomCodecs();
    if (ds.chooseRepresentation(EXS_LittleEndianExplicit, nullptr).bad() ||
        !ds.canWriteXfer(EXS_LittleEndianExplicit)) {
      return error(absl::StrCat("compressed pixel data (", DcmXfer(original).getXferName(),
                                ") could not be decoded"));
    }
  }
  DcmElement* pixel_element = nullptr;
  if (ds.findAndGetElement(DCM_PixelData, pixel_element).bad() || pixel_element == nullptr) {
    return error("no Pixel Data");
  }
  Uint8* pixels = nullptr;
  if (pixel_element->getUint8Array(pixels).bad() || pixels == nullptr)
    return error("unreadable Pixel Data");
  const uint64_t pixel_bytes = pixel_element->getLength();
  const uint64_t frames = format.frames, frame_pixels = format.frame_pixels();
  const uint64_t needed =
      format.fractional ? frames * frame_pixels : (frames * frame_pixels + 7) / 8;
  if (pixel_bytes < needed) {
    return error(absl::StrCat("truncated: Pixel Data has ", pixel_bytes, " bytes, ", frames,
                              " frames need ", needed));
  }
  return pixels;
}

// Which segment a frame paints, onto which slice.
struct FrameTarget {
  Uint16 segment;
  int64_t slice;
  uint64_t frame;
};

// What the SEG's frames are matched against: the source series' slices and grid.
struct SliceMatcher {
  const SeriesVolume& source;
  std::map<std::string, std::map<int32_t, int64_t>> slice_by_instance;  // uid -> frame -> slice
  std::string seg_for;  // the SEG's Frame of Reference UID
  double tolerance;     // mm a plane position may lie off its slice
  const SegError& error;
};

// The frame's orientation, when it has one, must be the series' slices'.
absl::Status CheckFrameOrientation(DcmItem* orientation_item, const VolumeGeometry& g,
                                   const std::string& where, const SegError& error) {
  if (orientation_item == nullptr) return absl::OkStatus();
  const auto iop = GetDoubles(orientation_item, DCM_ImageOrientationPatient, 6);
  if (!iop) return error(absl::StrCat(where, " has an unreadable Image Orientation (Patient)"));
  for (int i = 0; i < 3; ++i) {
    if (std::abs((*iop)[i] - g.row_direction[i]) > 1e-3 ||
        std::abs((*iop)[3 + i] - g.col_direction[i]) > 1e-3) {
      return error(absl::StrCat(where, " is not in the plane of the series' slices"));
    }
  }
  return absl::OkStatus();
}

// 1. The slice a frame's source image references name. nullopt when none resolves to one
// (the plane position decides then); an error when a reference names a frame or an
// instance that is not in the series.
absl::StatusOr<std::optional<int64_t>> SliceFromReferences(DcmItem* derivation,
                                                           const SliceMatcher& m,
                                                           const std::string& where) {
  std::optional<int64_t> slice;
  bool unresolved_reference = false;  // a reference to a multi-frame instance without frame number
  std::string missing;
  DcmSequenceOfItems* sources = nullptr;
  if (derivation == nullptr ||
      derivation->findAndGetSequence(DCM_SourceImageSequence, sources).bad() ||
      sources == nullptr) {
    return slice;
  }
  for (unsigned long s = 0; s < sources->card() && !slice; ++s) {
    DcmItem* ref = sources->getItem(s);
    if (ref == nullptr) continue;
    const std::string uid = EscapedDicomValue(*ref, DCM_ReferencedSOPInstanceUID);
    auto instance = m.slice_by_instance.find(uid);
    if (instance == m.slice_by_instance.end()) {
      if (missing.empty()) missing = uid;
      continue;
    }
    Sint32 frame_number = 0;
    if (ref->findAndGetSint32(DCM_ReferencedFrameNumber, frame_number).good()) {
      auto hit = instance->second.find(frame_number);
      if (hit == instance->second.end()) {
        return m.error(absl::StrCat(where, " references frame ", frame_number, " of SOP Instance ",
                                    uid, " which is not in the series"));
      }
      slice = hit->second;
    } else if (instance->second.size() == 1) {
      slice = instance->second.begin()->second;
    } else {
      unresolved_reference = true;
    }
  }
  if (!slice && !missing.empty() && !unresolved_reference) {
    return m.error(
        absl::StrCat(where, " references SOP Instance ", missing, " which is not in the series"));
  }
  return slice;
}

// 2. The slice a frame's plane position lies on.
absl::StatusOr<int64_t> SliceFromPosition(DcmItem* position_item, const SliceMatcher& m,
                                          const std::string& where) {
  const VolumeGeometry& g = m.source.image.geometry;
  const auto position = GetDoubles(position_item, DCM_ImagePositionPatient, 3);
  if (!position) {
    return m.error(
        absl::StrCat(where, " has neither a usable source image reference nor a plane position"));
  }
  if (!m.seg_for.empty() && !m.source.frame_of_reference_uid.empty() &&
      m.seg_for != m.source.frame_of_reference_uid) {
    return m.error(
        "its Frame of Reference UID differs from the series', so plane positions cannot be "
        "matched");
  }
  double along = 0;
  for (int i = 0; i < 3; ++i) along += ((*position)[i] - g.origin_mm[i]) * g.slice_direction[i];
  const double k_real = along / g.slice_spacing_mm;
  const int64_t k =
      static_cast<int64_t>(std::llround(std::clamp(k_real, -1.0, static_cast<double>(g.slices))));
  double distance2 = 0;
  if (k >= 0 && k < g.slices) {
    const std::array<double, 3> expected = SlicePosition(g, k);
    for (int i = 0; i < 3; ++i)
      distance2 += ((*position)[i] - expected[i]) * ((*position)[i] - expected[i]);
  }
  if (k < 0 || k >= g.slices || std::sqrt(distance2) > m.tolerance) {
    return m.error(absl::StrCat(where, " at (", FormatDs((*position)[0]), ", ",
                                FormatDs((*position)[1]), ", ", FormatDs((*position)[2]),
                                ") mm lies on no slice of the series"));
  }
  return k;
}

// Frame `f` (per-frame item `item`): its segment, and its slice by source image reference,
// else by plane position.
absl::StatusOr<FrameTarget> LocateFrame(DcmItem* item, DcmItem* shared, uint64_t f,
                                        const std::map<Uint16, SegmentInfo>& segments,
                                        const SliceMatcher& m) {
  const std::string where = absl::StrCat("frame ", f + 1);
  Uint16 segment_number = 0;
  DcmItem* segment_id = FunctionalGroupMacro(item, shared, DCM_SegmentIdentificationSequence);
  if (segment_id == nullptr ||
      segment_id->findAndGetUint16(DCM_ReferencedSegmentNumber, segment_number).bad()) {
    return m.error(absl::StrCat(where, " has no Referenced Segment Number"));
  }
  if (segments.count(segment_number) == 0) {
    return m.error(absl::StrCat(where, " belongs to segment ", segment_number,
                                " which the Segment Sequence lacks"));
  }
  RETURN_IF_ERROR(
      CheckFrameOrientation(FunctionalGroupMacro(item, shared, DCM_PlaneOrientationSequence),
                            m.source.image.geometry, where, m.error));
  ASSIGN_OR_RETURN(std::optional<int64_t> slice,
                   SliceFromReferences(
                       FunctionalGroupMacro(item, shared, DCM_DerivationImageSequence), m, where));
  if (!slice) {
    ASSIGN_OR_RETURN(
        slice,
        SliceFromPosition(FunctionalGroupMacro(item, shared, DCM_PlanePositionSequence), m, where));
  }
  return FrameTarget{segment_number, *slice, f};
}

// Every frame's segment and slice, in frame order.
absl::StatusOr<std::vector<FrameTarget>> LocateFrames(DcmDataset& ds, const SeriesVolume& source,
                                                      uint64_t frames,
                                                      const std::map<Uint16, SegmentInfo>& segments,
                                                      const SegError& error) {
  DcmItem* shared = FirstSequenceItem(&ds, DCM_SharedFunctionalGroupsSequence);
  DcmSequenceOfItems* per_frame_sequence = nullptr;
  if (ds.findAndGetSequence(DCM_PerFrameFunctionalGroupsSequence, per_frame_sequence).bad() ||
      per_frame_sequence == nullptr || per_frame_sequence->card() != frames) {
    return error(
        absl::StrCat("Per-Frame Functional Groups Sequence does not have one item per frame (",
                     frames, " frames)"));
  }
  const VolumeGeometry& g = source.image.geometry;
  const double min_spacing = std::min({g.row_spacing_mm, g.col_spacing_mm, g.slice_spacing_mm});
  const double tolerance = std::max(1e-3 * min_spacing, 1e-5);
  const std::string seg_for = EscapedDicomValue(ds, DCM_FrameOfReferenceUID);
  SliceMatcher matcher{source, {}, seg_for, tolerance, error};
  for (size_t k = 0; k < source.slices.size(); ++k) {
    matcher.slice_by_instance[source.slices[k].sop_instance_uid][source.slices[k].frame_number] =
        static_cast<int64_t>(k);
  }
  std::vector<FrameTarget> targets;
  targets.reserve(frames);
  for (uint64_t f = 0; f < frames; ++f) {
    DcmItem* item = per_frame_sequence->getItem(static_cast<unsigned long>(f));
    ASSIGN_OR_RETURN(FrameTarget target, LocateFrame(item, shared, f, segments, matcher));
    targets.push_back(target);
  }
  return targets;
}

// Paints the frames onto the source grid, lowest segment number first so that later
// segments win where they overlap.
LabelVolume PaintFrames(std::vector<FrameTarget> targets, const Uint8* pixels,
                        const SegFormat& format, const std::map<Uint16, SegmentInfo>& segments,
                        const VolumeGeometry& g) {
  std::stable_sort(targets.begin(), targets.end(), [](const FrameTarget& a, const FrameTarget& b) {
    return a.segment < b.segment;
  });
  LabelVolume labels(g);
  const int64_t slice_size = g.slice_size();
  const uint64_t frame_pixels = format.frame_pixels();
  for (const FrameTarget& t : targets) {
    const uint8_t value = static_cast<uint8_t>(segments.at(t.segment).class_index);
    uint8_t* slice = labels.voxels.data() + t.slice * slice_size;
    const uint64_t first = t.frame * frame_pixels;
    for (uint64_t i = 0; i < frame_pixels; ++i) {
      bool inside;
      if (format.fractional) {
        inside = 2u * pixels[first + i] >= format.max_fraction;
      } else {
        const uint64_t bit = first + i;
        inside = (pixels[bit >> 3] >> (bit & 7)) & 1u;
      }
      if (inside) slice[i] = value;
    }
  }
  return labels;
}

}  // namespace

absl::StatusOr<SegmentationLabels> ReadSegmentation(const DicomBuffer& seg_buffer,
                                                    const SeriesVolume& source,
                                                    const std::vector<std::string>& class_names) {
  const VolumeGeometry& g = source.image.geometry;
  // Only the source's geometry and slices are read, never its voxels: a series checked
  // without them (CheckSeriesFiles, an upload before it is committed) will do.
  const bool voxels_fit = source.image.voxels.empty() || source.image.consistent();
  if (g.slices <= 0 || g.rows <= 0 || g.cols <= 0 || !voxels_fit ||
      source.slices.size() != static_cast<size_t>(g.slices)) {
    return absl::InvalidArgumentError("ReadSegmentation: the source volume is inconsistent");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<DcmFileFormat> file,
                   ParseDicom(seg_buffer.bytes, seg_buffer.name));
  DcmDataset& ds = *file->getDataset();
  const SegError error{EscapedDicomValue(ds, DCM_SOPInstanceUID)};
  ASSIGN_OR_RETURN(const SegFormat format, ReadSegFormat(ds, g, error));
  ASSIGN_OR_RETURN(Segments segments, ReadSegments(ds, class_names, error));
  ASSIGN_OR_RETURN(const Uint8* pixels, ReadSegPixels(ds, format, error));
  ASSIGN_OR_RETURN(std::vector<FrameTarget> targets,
                   LocateFrames(ds, source, format.frames, segments.by_number, error));

  SegmentationLabels out;
  out.labels = PaintFrames(std::move(targets), pixels, format, segments.by_number, g);
  out.segment_labels = std::move(segments.labels);
  out.sop_instance_uid = error.seg_uid;
  if (DcmItem* series = FirstSequenceItem(&ds, DCM_ReferencedSeriesSequence)) {
    out.referenced_series_instance_uid = EscapedDicomValue(*series, DCM_SeriesInstanceUID);
  }
  return out;
}

absl::StatusOr<LabeledSeries> ReadLabeledSeries(const std::vector<DicomBuffer>& images,
                                                const std::optional<DicomBuffer>& segmentation,
                                                const std::vector<std::string>& class_names,
                                                const std::string& series_uid) {
  absl::StatusOr<std::vector<SeriesVolume>> volumes = ReadSeries(images);
  if (!volumes.ok()) return volumes.status();
  if (volumes->size() != 1) {
    return absl::DataLossError(absl::StrCat("stored series ", series_uid, " is not one volume"));
  }
  LabeledSeries read{std::move(volumes->front()), std::nullopt};
  if (segmentation) {
    absl::StatusOr<SegmentationLabels> labels =
        ReadSegmentation(*segmentation, read.series, class_names);
    if (!labels.ok()) return labels.status();
    read.labels = std::move(labels->labels);
  }
  return read;
}

}  // namespace miseg

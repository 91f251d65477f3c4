// DICOM Segmentation (SEG) reading and writing with DCMTK's dcmseg: how labels leave miseg
// (inference results stored next to their source series in a PACS) and how labeled studies
// come in (a SEG drawn elsewhere, mapped back onto its source series' grid). Errors are
// InvalidArgument naming the SEG by SOP Instance UID; nothing here crashes on bad input.
#ifndef MISEG_CORE_DICOM_SEGMENTATION_H_
#define MISEG_CORE_DICOM_SEGMENTATION_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/volume/dicom_series.h"

namespace miseg {

struct SegmentationWriteOptions {
  // class_names[0] is background (never written); one segment per foreground class.
  std::vector<std::string> class_names;
  std::string algorithm_version = "0.1.0";  // miseg version
  std::string model_version;                // e.g. "job-12/step-2000"; may be empty
  std::string series_description = "miseg segmentation";
  int32_t series_number = 900;
  std::string uid_root;  // empty: 2.25.<random UUID> UIDs
  // The SEG's own UIDs; empty ones are generated (under uid_root). Set them for
  // reproducible output, e.g. the phantom studies.
  std::string series_instance_uid;
  std::string sop_instance_uid;
};

// A BINARY SEG for labels (on source.image's grid) referencing source: one segment per
// foreground class (empty segments included), SNOMED CT codes for the cardiac classes
// (right_ventricle, myocardium, left_ventricle, also matched case-insensitively with spaces)
// and a generic fallback otherwise, per-frame Derivation Image references to the source
// instances, ReferencedSeriesSequence, frame of reference. Algorithm identification per
// segment: AlgorithmName "miseg", AlgorithmVersion = algorithm_version, AlgorithmParameters
// "model_version=<model_version>", family DCM 123110 "Artificial Intelligence". A source
// without a Frame of Reference UID gives a SEG without one (and without plane positions
// and orientations: frames are located by their source references alone). Returns the
// Part-10 bytes (explicit VR little endian). InvalidArgument when labels are not on the
// source's grid or hold values without a class name.
absl::StatusOr<std::string> WriteSegmentation(const SeriesVolume& source, const LabelVolume& labels,
                                              const SegmentationWriteOptions& options);

// The coded segmented property category and type WriteSegmentation gives the segment of a
// foreground class (exported models list them in their model.json).
struct CodedConceptText {
  std::string value, scheme, meaning;
};
struct SegmentCodes {
  CodedConceptText category, type;
};
SegmentCodes SegmentCodesFor(const std::string& class_name);

// Whether a SEG can be written for `source`, checked before any inference is spent on it:
// InvalidArgument naming the attribute when a type 1 attribute the SEG copies (Study
// Instance UID, Frame of Reference UID) is not a valid UID. Other patient and study values
// that break their VR or character set do not refuse the source: WriteSegmentation blanks
// them (they are type 2 or 3 in the SEG).
absl::Status CheckSegmentationSource(const SeriesVolume& source);

// Reads a BINARY or FRACTIONAL SEG onto source's grid. Frames are matched through their
// referenced SOP Instance UIDs (and frame numbers), or failing that their plane positions.
// Segments map to class_names (index = label) by SegmentLabel or by the coded segmented
// property type (SNOMED CT codes of the cardiac classes); fractional values >= 0.5 count as
// inside; where segments overlap the higher segment number wins. Unmatched segments are
// InvalidArgument; a SEG referencing instances absent from source is InvalidArgument naming
// the missing UID. Only source's geometry, slices and UIDs are read: a series checked
// without its voxels (CheckSeriesFiles) will do; voxels, when present, must fit the geometry.
absl::StatusOr<SegmentationLabels> ReadSegmentation(const DicomBuffer& seg,
                                                    const SeriesVolume& source,
                                                    const std::vector<std::string>& class_names);

// A stored study read back: its one volume and, when a SEG came with it, its labels.
struct LabeledSeries {
  SeriesVolume series;
  std::optional<LabelVolume> labels;
};

// `images` as one volume (DataLoss naming series_uid when they are not exactly one) and, with
// `segmentation`, its labels for class_names (ReadSegmentation's errors).
absl::StatusOr<LabeledSeries> ReadLabeledSeries(const std::vector<DicomBuffer>& images,
                                                const std::optional<DicomBuffer>& segmentation,
                                                const std::vector<std::string>& class_names,
                                                const std::string& series_uid);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_SEGMENTATION_H_

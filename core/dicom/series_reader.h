// Reading image series from Part-10 files: grouping by study and series, ordering slices
// along the normal, decoding every supported transfer syntax, checking the series is one
// consistent volume. Errors are InvalidArgument with a message naming the instance (by
// buffer name and SOP Instance UID) and the reason; nothing here crashes on bad input.
#ifndef MISEG_CORE_DICOM_SERIES_READER_H_
#define MISEG_CORE_DICOM_SERIES_READER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/volume/dicom_series.h"

namespace miseg {

struct SeriesReaderLimits {
  int64_t max_voxels = int64_t{1} << 31;  // refuse absurd sizes before allocating
  int64_t max_rows_or_cols = 8192;
  int64_t max_slices = 8192;
  int64_t max_inflated_bytes = int64_t{1} << 30;  // a deflated dataset, once inflated
};

// Registers DCMTK's JPEG, JPEG-LS and RLE decoders (and encoders, for tests) once per
// process; safe to call from any thread, any number of times. Also turns on DCMTK's
// conversion of UN elements with a known tag to their dictionary VR (process-wide), which
// files re-encoded from implicit VR by some tools need.
void RegisterDicomCodecs();

// Reads every image series in the buffers, one SeriesVolume per (StudyInstanceUID,
// SeriesInstanceUID) in order of first appearance. Safe to call from several threads at
// once. Non-image instances (SEG, SR, RT structures and plans, presentation states, ...) are
// skipped and reported in *skipped ("name: reason") when skipped is not null; a set with no
// image at all is InvalidArgument. Fails on any buffer that is not DICOM and on the first
// series that is not one consistent volume.
//
// Geometry: slices (frames of multi-frame instances included) are ordered by
// ImagePositionPatient projected on the normal of ImageOrientationPatient (row x column), so
// slice_direction is that normal and slice_spacing_mm > 0. Legacy multi-frame instances with
// one position are placed by GridFrameOffsetVector or SpacingBetweenSlices, and refused
// without either. Where no geometry can be had, only one instance may be read: a single
// image, or one multi-frame instance with no ImagePositionPatient anywhere (an XA run, a
// secondary capture), its frames stacked in stored order; both get origin 0, identity
// directions, PixelSpacing if present (else 1 mm) and a slice spacing of 1 mm.
//
// Values: RescaleSlope/RescaleIntercept (per frame for enhanced objects; 1 and 0 when
// absent; DoseGridScaling for RT Dose). MONOCHROME1 is inverted within the range BitsStored
// can hold before rescaling (unsigned v -> 2^BitsStored - 1 - v, signed v -> -1 - v), so
// larger is brighter and the real-world range is unchanged.
absl::StatusOr<std::vector<SeriesVolume>> ReadSeries(const std::vector<DicomBuffer>& files,
                                                    std::vector<std::string>* skipped = nullptr,
                                                    const SeriesReaderLimits& limits = {});

// ReadSeries for files on disk, named by names[i] in messages (paths and names of the same
// length), with the same results and messages, holding one file's bytes at a time besides
// the volumes: each file is parsed without its pixel data to check it, then parsed again
// when its pixels are decoded into the volume (see ParseDicomFile). Unavailable when a file
// cannot be read. The files must not change during the call.
absl::StatusOr<std::vector<SeriesVolume>> ReadSeriesFromFiles(
    const std::vector<std::string>& paths, const std::vector<std::string>& names,
    const SeriesReaderLimits& limits = {});

// ReadSeriesFromFiles without the voxels: every check ReadSeries makes, each file's pixel
// data decoded on its own to prove it decodes and then freed, and the same results
// (geometry, slices, UIDs, reference_header) except that image.voxels is empty
// (image.consistent() is false). Memory: one file's pixel data at a time (compressed pixel
// data is decoded one frame at a time, so a small file of many compressed frames costs one
// decoded frame), plus a few hundred bytes per frame of the series. For checking an upload
// before it is committed; ReadSegmentation accepts the result.
absl::StatusOr<std::vector<SeriesVolume>> CheckSeriesFiles(
    const std::vector<std::string>& paths, const std::vector<std::string>& names,
    std::vector<std::string>* skipped = nullptr, const SeriesReaderLimits& limits = {});

// Loads every regular file below folder (recursively, symbolic links to files included),
// sorted by path so the same folder always gives the same order, as buffers named by path
// for ReadSeries. NotFound if the folder does not exist.
absl::StatusOr<std::vector<DicomBuffer>> LoadDicomFolder(const std::string& folder);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_SERIES_READER_H_

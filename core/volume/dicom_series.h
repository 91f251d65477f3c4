// Types the DICOM I/O library (core/dicom) reads and writes: an image series read into a
// volume with everything needed to write a DICOM Segmentation that references it. Plain C++
// types only, beside the volumes they hold, so the server, the client and the training
// core's callers can pass them around without including DCMTK.
#ifndef MISEG_CORE_VOLUME_DICOM_SERIES_H_
#define MISEG_CORE_VOLUME_DICOM_SERIES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/volume/volume.h"

namespace miseg {

// One Part-10 file held in memory; `name` is only used in error messages (a file path, or
// "upload #3"), never to locate anything.
struct DicomBuffer {
  std::string name;
  std::string bytes;
};

// Where one slice of a volume came from.
struct SliceSource {
  std::string sop_instance_uid;
  std::string sop_class_uid;
  int32_t frame_number = 1;  // 1-based frame within a multi-frame instance; 1 otherwise
};

// Lossy compression in the history of a series' images (PS3.3 C.7.6.1.1.5): a source
// instance with LossyImageCompression "01", or in a lossy transfer syntax (JPEG baseline and
// extended, JPEG-LS near-lossless, JPEG 2000 irreversible, HTJ2K lossy). A model trained or
// run on such images may behave differently, and objects derived from them must say so.
struct LossyCompression {
  bool lossy = false;
  // One value per lossy step, oldest first, as LossyImageCompressionMethod (e.g.
  // "ISO_15444_1") and LossyImageCompressionRatio (e.g. "9.75"; computed from the pixel
  // data's sizes for a step the source did not record). Either may be empty when a source
  // says "01" without them.
  std::vector<std::string> methods;
  std::vector<std::string> ratios;
};

// An image series as one consistent volume. `image` is in real-world units (after
// RescaleSlope / RescaleIntercept; MONOCHROME1 inverted so that larger is brighter) with the
// geometry from ImagePositionPatient / ImageOrientationPatient / PixelSpacing; slices are
// ordered by position along the slice normal, slice 0 first.
struct SeriesVolume {
  std::string study_instance_uid;
  std::string series_instance_uid;
  std::string frame_of_reference_uid;  // may be empty when the source lacks it
  std::string modality;                // e.g. "MR", "CT"
  std::string series_description;     // may be empty
  ImageVolume image;
  std::vector<SliceSource> slices;  // one per slice of image, same order
  // The first instance's dataset without its pixel data, as a Part-10 buffer: patient,
  // study and equipment attributes that a derived object (a SEG) must carry over.
  std::string reference_header;
  // The first lossy-compressed instance's history, if any instance was.
  LossyCompression lossy;
};

// A DICOM Segmentation read back onto the grid of its source series.
struct SegmentationLabels {
  LabelVolume labels;                     // 0 background, 1..K-1 as mapped to class_names
  std::vector<std::string> segment_labels;  // SegmentLabel of each segment found, in order
  std::string referenced_series_instance_uid;
  std::string sop_instance_uid;  // of the SEG itself
};

}  // namespace miseg

#endif  // MISEG_CORE_VOLUME_DICOM_SERIES_H_

// libFuzzer target for the SEG reader (core/dicom/segmentation.h, ReadSegmentation): any
// bytes, read as a DICOM SEG onto a fixed source series (a small phantom study made at
// start), must give labels on the source's grid or InvalidArgument, never a crash, a hang or
// a sanitizer report. Every input is read twice: onto the series as read (voxels, Frame of
// Reference UID, the phantom's class names) and onto the same series checked without its
// voxels and without a Frame of Reference UID, with the class names spelled differently
// (matching ignores case, hyphens and underscores), as an upload checks a SEG.
//
// The seeds (tests/core/dicom/segmentation_fuzzer_seeds) are SEGs of that source: binary,
// without a frame of reference, fractional, located by plane positions only, RLE and
// deflated. The fuzzer writes them again when MISEG_FUZZ_WRITE_SEEDS names a folder:
//   MISEG_FUZZ_WRITE_SEEDS=tests/core/dicom/segmentation_fuzzer_seeds \
//     build/tests/core/fuzz/miseg-fuzz-segmentation -runs=0
// Built with clang's -fsanitize=fuzzer,address,undefined by tests/core/CMakeLists.txt
// (miseg-fuzz-segmentation).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dctk.h>
#include <dcmtk/oflog/oflog.h>

#include "core/dicom/dicom_text.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/phantom_study.h"
#include "core/dicom/segmentation.h"
#include "core/dicom/series_reader.h"
#include "core/phantom/phantom.h"

namespace {

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

struct Source {
  miseg::SeriesVolume series;
  std::vector<std::string> class_names;
};

// The phantom study the seeds were written for: 3 slices of 32 x 32, deterministic UIDs.
miseg::PhantomStudy MakeStudy() {
  miseg::PhantomOptions options;
  options.min_slices = options.max_slices = 3;
  options.min_matrix = options.max_matrix = 32;
  options.min_pixel_mm = options.max_pixel_mm = 4.0;
  absl::StatusOr<miseg::PhantomStudy> study =
      miseg::MakePhantomStudy(miseg::GeneratePhantomSubject(13, 0, options), "fuzz-seg", true);
  if (!study.ok() || !study->segmentation) abort();
  return *std::move(study);
}

const std::vector<Source>& Sources() {
  static const std::vector<Source> sources = [] {
    const miseg::PhantomStudy study = MakeStudy();
    Source as_read{study.series, miseg::PhantomClassNames()};
    Source checked = as_read;
    checked.series.image.voxels.clear();
    checked.series.frame_of_reference_uid.clear();
    checked.class_names = {"Background", "Right Ventricle", "MYOCARDIUM", "left ventricle"};
    return std::vector<Source>{as_read, checked};
  }();
  return sources;
}

void CheckRead(const absl::StatusOr<miseg::SegmentationLabels>& read, const Source& source) {
  if (!read.ok()) {
    // Bad input is InvalidArgument, nothing else; its message may reach a client.
    if (!absl::IsInvalidArgument(read.status()) || !miseg::IsValidUtf8(read.status().message())) {
      fprintf(stderr, "unexpected error: %s\n", miseg::SafeText(read.status().ToString(), 4096).c_str());
      __builtin_trap();
    }
    return;
  }
  const miseg::VolumeGeometry& g = source.series.image.geometry;
  const miseg::LabelVolume& labels = read->labels;
  Check(labels.geometry.slices == g.slices && labels.geometry.rows == g.rows &&
        labels.geometry.cols == g.cols);
  Check(labels.voxels.size() == static_cast<size_t>(g.slices * g.rows * g.cols));
  for (uint8_t v : labels.voxels) Check(v < source.class_names.size());
  Check(!read->segment_labels.empty());
  for (const std::string& label : read->segment_labels) Check(miseg::IsValidUtf8(label));
  Check(miseg::IsValidUtf8(read->sop_instance_uid));
  Check(miseg::IsValidUtf8(read->referenced_series_instance_uid));
}

// ---- seeds ------------------------------------------------------------------------------

// Every seed is a SEG both sources read.
void WriteSeed(const std::string& dir, const std::string& name, const std::string& bytes) {
  for (const Source& source : Sources()) {
    if (!miseg::ReadSegmentation({name, bytes}, source.series, source.class_names).ok()) abort();
  }
  std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
}

std::string Serialize(DcmFileFormat& file, E_TransferSyntax syntax = EXS_LittleEndianExplicit) {
  absl::StatusOr<std::string> bytes = miseg::SerializeDicom(file, syntax);
  if (!bytes.ok()) abort();
  return *bytes;
}

std::unique_ptr<DcmFileFormat> Parse(const std::string& bytes) {
  absl::StatusOr<std::unique_ptr<DcmFileFormat>> file = miseg::ParseDicom(bytes, "seed");
  if (!file.ok()) abort();
  return *std::move(file);
}

// The binary SEG as a FRACTIONAL one: a byte per pixel, 0 or 255.
void MakeFractional(DcmDataset& ds) {
  Uint16 rows = 0, cols = 0;
  Sint32 frames = 0;
  ds.findAndGetUint16(DCM_Rows, rows);
  ds.findAndGetUint16(DCM_Columns, cols);
  ds.findAndGetSint32(DCM_NumberOfFrames, frames);
  const Uint8* bits = nullptr;
  ds.findAndGetUint8Array(DCM_PixelData, bits);
  const size_t count = static_cast<size_t>(rows) * cols * static_cast<size_t>(frames);
  std::vector<Uint8> bytes(count);
  for (size_t i = 0; i < count; ++i) bytes[i] = ((bits[i >> 3] >> (i & 7)) & 1) ? 255 : 0;
  ds.putAndInsertString(DCM_SegmentationType, "FRACTIONAL");
  ds.putAndInsertString(DCM_SegmentationFractionalType, "PROBABILITY");
  ds.putAndInsertUint16(DCM_MaximumFractionalValue, 255);
  ds.putAndInsertUint16(DCM_BitsAllocated, 8);
  ds.putAndInsertUint16(DCM_BitsStored, 8);
  ds.putAndInsertUint16(DCM_HighBit, 7);
  ds.putAndInsertUint8Array(DCM_PixelData, bytes.data(), static_cast<unsigned long>(bytes.size()));
}

void WriteSeeds(const std::string& dir) {
  const miseg::PhantomStudy study = MakeStudy();
  const std::string& binary = study.segmentation->bytes;
  WriteSeed(dir, "binary.dcm", binary);

  // Written for the source without a frame of reference: frames located by references only.
  miseg::SeriesVolume no_for = study.series;
  no_for.frame_of_reference_uid.clear();
  miseg::SegmentationWriteOptions options;
  options.class_names = miseg::PhantomClassNames();
  options.series_instance_uid = miseg::DeterministicUid("fuzz-seg/no-for/series");
  options.sop_instance_uid = miseg::DeterministicUid("fuzz-seg/no-for/sop");
  absl::StatusOr<miseg::SegmentationLabels> labels =
      miseg::ReadSegmentation(*study.segmentation, study.series, options.class_names);
  if (!labels.ok()) abort();
  absl::StatusOr<std::string> no_for_seg =
      miseg::WriteSegmentation(no_for, labels->labels, options);
  if (!no_for_seg.ok()) abort();
  WriteSeed(dir, "no_frame_of_reference.dcm", *no_for_seg);

  std::unique_ptr<DcmFileFormat> fractional = Parse(binary);
  MakeFractional(*fractional->getDataset());
  WriteSeed(dir, "fractional.dcm", Serialize(*fractional));

  // Plane positions only: no Derivation Image Sequence in any frame.
  std::unique_ptr<DcmFileFormat> positions = Parse(binary);
  DcmSequenceOfItems* per_frame = nullptr;
  positions->getDataset()->findAndGetSequence(DCM_PerFrameFunctionalGroupsSequence, per_frame);
  for (unsigned long i = 0; per_frame != nullptr && i < per_frame->card(); ++i) {
    per_frame->getItem(i)->findAndDeleteElement(DCM_DerivationImageSequence);
  }
  WriteSeed(dir, "plane_positions_only.dcm", Serialize(*positions));

  // Compressed: the fractional one as RLE, the binary one deflated.
  miseg::RegisterDicomCodecs();
  std::unique_ptr<DcmFileFormat> rle = Parse(Serialize(*fractional));
  if (rle->getDataset()->chooseRepresentation(EXS_RLELossless, nullptr).bad()) abort();
  WriteSeed(dir, "fractional_rle.dcm", Serialize(*rle, EXS_RLELossless));
  std::unique_ptr<DcmFileFormat> deflated = Parse(binary);
  WriteSeed(dir, "binary_deflated.dcm", Serialize(*deflated, EXS_DeflatedLittleEndianExplicit));
}

}  // namespace

// As in the series reader's fuzzer: DCMTK allocates what a header claims before it finds
// the data missing; refusing allocations over 256 MiB keeps the fuzzer fast.
extern "C" const char* __asan_default_options() {
  return "max_allocation_size_mb=256:allocator_may_return_null=1";
}

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
  miseg::RegisterDicomCodecs();
  if (const char* dir = std::getenv("MISEG_FUZZ_WRITE_SEEDS")) WriteSeeds(dir);
  Sources();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const miseg::DicomBuffer seg{"fuzz-seg", std::string(reinterpret_cast<const char*>(data), size)};
  for (const Source& source : Sources()) {
    CheckRead(miseg::ReadSegmentation(seg, source.series, source.class_names), source);
  }
  return 0;
}

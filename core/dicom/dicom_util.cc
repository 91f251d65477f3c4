// DCMTK glue: status conversion, UIDs, in-memory Part-10 buffers.
#include "core/dicom/dicom_util.h"

#include <array>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <vector>

#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcistrmb.h>
#include <dcmtk/dcmdata/dcistrmf.h>
#include <dcmtk/ofstd/ofstd.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcostrmb.h>
#include <dcmtk/dcmdata/dcwcache.h>
#include <dcmtk/dcmdata/dcxfer.h>

#include "absl/numeric/int128.h"
#include "absl/strings/str_cat.h"
#include "core/dicom/dicom_text.h"

namespace miseg {
namespace {

std::string Decimal(absl::uint128 value) {
  if (value == 0) return "0";
  std::string digits;
  while (value != 0) {
    digits.insert(digits.begin(), static_cast<char>('0' + static_cast<int>(value % 10)));
    value /= 10;
  }
  return digits;
}

// FNV-1a, twice with different offsets: a stable 128-bit digest of a name (not for
// security, only for reproducible UIDs).
absl::uint128 Digest(absl::string_view name) {
  uint64_t h1 = 1469598103934665603ULL, h2 = 0x84222325CBF29CE4ULL;
  for (unsigned char c : name) {
    h1 = (h1 ^ c) * 1099511628211ULL;
    h2 = (h2 ^ c) * 0x100000001B3ULL + 0x9E3779B97F4A7C15ULL;
  }
  return absl::MakeUint128(h1, h2);
}

std::string FromRoot(absl::uint128 value, absl::string_view root) {
  if (root.empty()) {
    // 2.25.<UUID>: set the version (4) and variant bits as a UUID would carry them.
    value = (value & ~(absl::MakeUint128(0xF000, 0) )) | absl::MakeUint128(0x4000, 0);
    return absl::StrCat("2.25.", Decimal(value));
  }
  // 64 bits keep root + suffix within the 64 characters a UID may have.
  std::string uid = absl::StrCat(root, ".", Decimal(absl::Uint128Low64(value) >> 1 | 1));
  if (uid.size() > 64) uid.resize(64);
  while (!uid.empty() && (uid.back() == '.' )) uid.pop_back();
  return uid;
}

}  // namespace

std::string FormatDs(double value) {
  if (value == 0.0) return "0";
  for (int precision = 9; precision >= 1; --precision) {
    char buffer[64];
    OFStandard::ftoa(buffer, sizeof(buffer), value, 0, 0, precision);
    if (std::strlen(buffer) <= 16) return buffer;
  }
  return "0";  // unreachable for finite values
}

absl::Status FromCondition(const OFCondition& condition, absl::string_view context,
                           absl::StatusCode code) {
  if (condition.good()) return absl::OkStatus();
  return absl::Status(code, absl::StrCat(context, ": ", condition.text()));
}

std::string NewUid(absl::string_view root) {
  static thread_local std::mt19937_64 engine{std::random_device{}()};
  return FromRoot(absl::MakeUint128(engine(), engine()), root);
}

std::string DeterministicUid(absl::string_view name, absl::string_view root) {
  return FromRoot(Digest(name), root);
}

namespace {

// Reads a deflated Part-10 file: the meta header as it is, the dataset after inflating it
// ourselves with a cap. Left to DCMTK, the dataset is read straight from the inflating
// stream, where no element length can be checked against what remains: a few megabytes of
// deflated zeros claiming a 4 GiB element fill 4 GiB. Returns the condition of the read.
OFCondition ReadDeflated(const std::string& bytes, int64_t max_inflated_bytes,
                         DcmFileFormat* file, bool* too_large) {
  *too_large = false;
  DcmInputBufferStream meta_stream;
  meta_stream.setBuffer(bytes.data(), static_cast<offile_off_t>(bytes.size()));
  meta_stream.setEos();
  DcmMetaInfo* meta = file->getMetaInfo();
  meta->transferInit();
  OFCondition read = meta->read(meta_stream, EXS_Unknown, EGL_noChange, DCM_MaxReadLength);
  meta->transferEnd();
  if (read.bad()) return read;
  const offile_off_t offset = meta_stream.tell();
  if (offset <= 0 || static_cast<size_t>(offset) > bytes.size()) return EC_InvalidStream;

  DcmInputBufferStream deflated;
  deflated.setBuffer(bytes.data() + offset, static_cast<offile_off_t>(bytes.size()) - offset);
  deflated.setEos();
  read = deflated.installCompressionFilter(ESC_zlib);
  if (read.bad()) return read;
  std::string inflated;
  std::vector<char> chunk(size_t{1} << 16);
  while (!deflated.eos()) {
    const offile_off_t got = deflated.read(chunk.data(), static_cast<offile_off_t>(chunk.size()));
    if (got <= 0) break;  // corrupt or cut short: the dataset read below says which
    if (static_cast<int64_t>(inflated.size()) + got > max_inflated_bytes) {
      *too_large = true;
      return EC_IllegalCall;
    }
    inflated.append(chunk.data(), static_cast<size_t>(got));
  }
  DcmInputBufferStream plain;
  plain.setBuffer(inflated.data(), static_cast<offile_off_t>(inflated.size()));
  plain.setEos();
  DcmDataset* dataset = file->getDataset();
  dataset->transferInit();
  read = dataset->read(plain, EXS_LittleEndianExplicit, EGL_noChange, DCM_MaxReadLength);
  dataset->transferEnd();
  return read;
}

// What ParseDicom and ParseDicomFile make of a read: the file, or InvalidArgument naming it.
absl::StatusOr<std::unique_ptr<DcmFileFormat>> CheckRead(std::unique_ptr<DcmFileFormat> file,
                                                         const OFCondition& read, bool part10,
                                                         absl::string_view name) {
  if (read.bad()) {
    // What was read before the failure may name the instance; a UID is no patient data.
    std::string who(name);
    OFString uid;
    if (file->getDataset() != nullptr &&
        file->getDataset()->findAndGetOFString(DCM_SOPInstanceUID, uid).good() && !uid.empty()) {
      // Escaped: the message may reach a client or a log (issue 18), the bytes are anyone's.
      absl::StrAppend(&who, " (SOP Instance UID ",
                      SafeText(absl::string_view(uid.c_str(), uid.length()), 80), ")");
    }
    // Without the Part-10 "DICM" marker DCMTK guesses a bare dataset, and anything that is
    // not one fails that guess: say "not DICOM" rather than blame the stream.
    if (!part10) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": not DICOM (no Part-10 header, and not a readable bare dataset: ", read.text(),
          ")"));
    }
    // With the whole buffer given (setEos), "suspension" can only mean the data ended early;
    // DCMTK says "invalid stream" when an element claims more bytes than remain.
    if (read == EC_StreamNotifyClient || read == EC_InvalidStream) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": truncated or corrupt (", read.text(), ")"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": not readable as DICOM (", read.text(), ")"));
  }
  if (file->getDataset() == nullptr || file->getDataset()->card() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not DICOM (no data elements)"));
  }
  return file;
}

// True when the meta header at the start of stream names a deflated transfer syntax.
bool MetaSaysDeflated(DcmInputStream& stream) {
  DcmMetaInfo meta;
  meta.transferInit();
  OFString syntax;
  const bool deflated = meta.read(stream, EXS_Unknown, EGL_noChange, DCM_MaxReadLength).good() &&
                        meta.findAndGetOFString(DCM_TransferSyntaxUID, syntax).good() &&
                        DcmXfer(syntax.c_str()).getStreamCompression() == ESC_zlib;
  meta.transferEnd();
  return deflated;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DcmFileFormat>> ParseDicom(const std::string& bytes,
                                                          absl::string_view name,
                                                          int64_t max_inflated_bytes) {
  if (bytes.empty()) return absl::InvalidArgumentError(absl::StrCat(name, ": empty file"));
  const bool part10 = bytes.size() >= 132 && bytes.compare(128, 4, "DICM") == 0;
  auto file = std::make_unique<DcmFileFormat>();
  OFCondition read = EC_Normal;
  bool deflated = false;
  if (part10) {
    // Peek at the transfer syntax: the meta header is small and always explicit LE.
    DcmInputBufferStream stream;
    stream.setBuffer(bytes.data(), static_cast<offile_off_t>(bytes.size()));
    stream.setEos();
    deflated = MetaSaysDeflated(stream);
  }
  if (deflated) {
    bool too_large = false;
    read = ReadDeflated(bytes, max_inflated_bytes, file.get(), &too_large);
    if (too_large) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": deflated dataset inflates beyond the limit of ", max_inflated_bytes, " bytes"));
    }
  } else {
    DcmInputBufferStream stream;
    stream.setBuffer(bytes.data(), static_cast<offile_off_t>(bytes.size()));
    stream.setEos();
    file->transferInit();
    read = file->read(stream, EXS_Unknown, EGL_noChange, DCM_MaxReadLength);
    file->transferEnd();
  }
  return CheckRead(std::move(file), read, part10, name);
}

absl::StatusOr<std::unique_ptr<DcmFileFormat>> ParseDicomFile(const std::string& path,
                                                              absl::string_view name,
                                                              int64_t max_inflated_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::UnavailableError(absl::StrCat("cannot open ", path, " (", name, ")"));
  }
  char head[132];
  in.read(head, sizeof(head));
  const std::streamsize got = in.gcount();
  if (got == 0) return absl::InvalidArgumentError(absl::StrCat(name, ": empty file"));
  const bool part10 = got == 132 && std::memcmp(head + 128, "DICM", 4) == 0;
  bool deflated = false;
  if (part10) {
    DcmInputFileStream stream(path.c_str());
    deflated = stream.good() && MetaSaysDeflated(stream);
  }
  // Read whole and parsed as ParseDicom would: a deflated file (inflated under a cap, in
  // memory: DCMTK cannot seek in a deflated stream anyway), and a file that does not parse.
  // DCMTK words some failures of a file stream differently ("premature end of stream" where
  // a buffer gives "invalid stream"), and bad input must get one message however it came.
  auto parse_whole = [&]() -> absl::StatusOr<std::unique_ptr<DcmFileFormat>> {
    in.clear();
    in.seekg(0);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) return absl::UnavailableError(absl::StrCat("cannot read ", path));
    return ParseDicom(bytes, name, max_inflated_bytes);
  };
  if (deflated) return parse_whole();
  DcmInputFileStream stream(path.c_str());
  if (!stream.good()) {
    return absl::UnavailableError(absl::StrCat("cannot open ", path, " (", name, "): ",
                                               stream.status().text()));
  }
  auto file = std::make_unique<DcmFileFormat>();
  // Values longer than DCM_MaxReadLength are skipped now and read from the file when used.
  file->transferInit();
  const OFCondition read = file->read(stream, EXS_Unknown, EGL_noChange, DCM_MaxReadLength);
  file->transferEnd();
  absl::StatusOr<std::unique_ptr<DcmFileFormat>> parsed =
      CheckRead(std::move(file), read, part10, name);
  if (!parsed.ok()) return parse_whole();
  return parsed;
}

absl::StatusOr<std::string> SerializeDicom(DcmFileFormat& file, E_TransferSyntax syntax) {
  file.validateMetaInfo(syntax);
  // Written in chunks: the size up front is unknown for deflated syntaxes (incompressible
  // data grows a little), and a fixed buffer would cut such files short.
  std::string out;
  std::vector<char> chunk(size_t{1} << 20);
  DcmOutputBufferStream stream(chunk.data(), static_cast<offile_off_t>(chunk.size()));
  auto drain = [&stream, &out] {
    void* buffer = nullptr;
    offile_off_t size = 0;
    stream.flushBuffer(buffer, size);
    if (size > 0) out.append(static_cast<const char*>(buffer), static_cast<size_t>(size));
    return size;
  };
  file.transferInit();
  OFCondition written = EC_StreamNotifyClient;
  while (written == EC_StreamNotifyClient) {
    written = file.write(stream, syntax, EET_ExplicitLength, nullptr);
    drain();
  }
  if (written.good()) {
    // Push out what a compression filter still holds.
    int idle = 0;
    while (!stream.isFlushed() && idle < 2) {
      stream.flush();
      idle = drain() > 0 ? 0 : idle + 1;
    }
    if (!stream.isFlushed()) written = EC_IllegalCall;
  }
  file.transferEnd();
  if (written.bad()) return FromCondition(written, "serialising DICOM", absl::StatusCode::kInternal);
  return out;
}

DcmItem* FirstSequenceItem(DcmItem* item, const DcmTagKey& tag) {
  if (item == nullptr) return nullptr;
  DcmItem* out = nullptr;
  if (item->findAndGetSequenceItem(tag, out, 0).bad()) return nullptr;
  return out;
}

DcmItem* FunctionalGroupMacro(DcmItem* per_frame, DcmItem* shared, const DcmTagKey& macro) {
  DcmItem* item = FirstSequenceItem(per_frame, macro);
  return item != nullptr ? item : FirstSequenceItem(shared, macro);
}

}  // namespace miseg

// libFuzzer target for the assembly of an upload stream (server/domain/ingest.h: IngestSession over
// FileReceiver), against a real SQLite store and file store on tmpfs: a sequence of chunks
// of several files, as a client streams them, then the end of the stream and Finish.
//
// An input is a control part, then each file's bytes, separated by kSeparator (the series
// reader fuzzer's). The control part drives the stream: its first byte the study's role and
// the limits, then one byte per file how that file is cut into chunks and named (on the
// first chunk, on every chunk, none, path separators, a long multi-byte name, the previous
// file's name, a NUL, another name in the middle), whether its last chunk says so, and
// whether empty chunks come between; a missing byte is 0 (whole file, named once).
//
// Whatever the input: AddChunk returns OK, InvalidArgument or ResourceExhausted (naming
// the limit), and once it failed every later call returns that same error; Finish returns
// InvalidArgument for a stream that ended inside a file or holds no files, else one result
// per file sent, in order, each with valid UTF-8 text (the names a client sent, cut to 256
// bytes, or "file #n"); what it stored is exactly what the file store holds; no staged file
// is left behind. Built with clang's -fsanitize=fuzzer,address,undefined by
// tests/server/CMakeLists.txt (miseg-fuzz-upload-stream). Seeds: small phantom studies
// (tests/server/upload_stream_fuzzer_seeds), written again by
//   MISEG_FUZZ_WRITE_SEEDS=tests/server/upload_stream_fuzzer_seeds \
//     build/tests/server/fuzz/miseg-fuzz-upload-stream -runs=0
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/oflog/oflog.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "core/dicom/dicom_text.h"
#include "core/dicom/phantom_study.h"
#include "core/phantom/phantom.h"
#include "server/domain/ingest.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace {

namespace fs = std::filesystem;

constexpr absl::string_view kSeparator = "\nMISEG-NEXT-BUFFER\n";
constexpr size_t kMaxFiles = 8;  // files of one input (more are ignored)

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

// MISEG_FUZZ_VERBOSE=1: what each input did (for checking seeds by hand).
bool Verbose() {
  static const bool verbose = getenv("MISEG_FUZZ_VERBOSE") != nullptr;
  return verbose;
}

miseg::SeriesReaderLimits FuzzLimits() {
  miseg::SeriesReaderLimits limits;
  limits.max_voxels = int64_t{1} << 22;
  limits.max_rows_or_cols = 1024;
  limits.max_slices = 64;
  limits.max_inflated_bytes = int64_t{16} << 20;
  return limits;
}

struct Env {
  std::string root;
  std::unique_ptr<miseg::Store> store;
  std::unique_ptr<miseg::FileStore> files;
  int64_t datasets = 0;
};

Env& TheEnv() {
  static Env* env = [] {
    auto* e = new Env;
    // tmpfs when there is one: the store fsyncs every commit.
    const std::string base = fs::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    std::string pattern = base + "/miseg-fuzz-upload-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) abort();
    e->root = pattern;
    auto store = miseg::Store::Open(e->root + "/miseg.db");
    auto files = miseg::FileStore::Open(e->root + "/files");
    if (!store.ok() || !files.ok()) abort();
    e->store = *std::move(store);
    e->files = std::make_unique<miseg::FileStore>(*std::move(files));
    return e;
  }();
  return *env;
}

void RemoveEnv() {
  Env& env = TheEnv();
  env.store.reset();
  std::error_code ignored;
  fs::remove_all(env.root, ignored);
}

size_t StagedCount() {
  size_t n = 0;
  std::error_code ignored;
  for (auto it = fs::directory_iterator(TheEnv().root + "/files/staging", ignored);
       it != fs::directory_iterator(); ++it) {
    ++n;
  }
  return n;
}

// The bytes left of the control part, 0 once it runs out.
class Control {
 public:
  explicit Control(absl::string_view bytes) : bytes_(bytes) {}
  uint8_t Next() {
    if (bytes_.empty()) return 0;
    const uint8_t b = static_cast<uint8_t>(bytes_.front());
    bytes_.remove_prefix(1);
    return b;
  }

 private:
  absl::string_view bytes_;
};

struct Chunk {
  std::string name;
  std::string data;
  bool last = false;
};

// A name as the proto layer lets it through (valid UTF-8, NUL included).
std::string NameFor(int mode, size_t i, const std::string& previous) {
  switch (mode) {
    case 3: return absl::StrCat("../../../etc/", i, "/..\\passwd");
    case 4: return std::string(255, 'n') + "\xC3\xA9" + std::to_string(i);  // é across byte 256
    case 5: return previous.empty() ? "same.dcm" : previous;
    case 6: return absl::StrCat("nul", std::string(1, '\0'), i, ".dcm");
    default: return absl::StrCat("file", i, ".dcm");
  }
}

std::vector<Chunk> ChunksOf(const std::vector<std::string>& files, Control& control) {
  static constexpr size_t kSizes[8] = {0, 1, 7, 100, 1024, 4096, 65536, 0};
  std::vector<Chunk> chunks;
  std::string previous;
  for (size_t i = 0; i < files.size(); ++i) {
    const uint8_t c = control.Next();
    const size_t size = kSizes[c & 7] == 0 ? std::max<size_t>(files[i].size(), 1) : kSizes[c & 7];
    const int mode = (c >> 3) & 7;
    const bool omit_last = (c >> 6) & 1;
    const bool empty_between = (c >> 7) & 1;
    const std::string name = mode == 2 ? "" : NameFor(mode, i, previous);
    const std::string& data = files[i];
    size_t offset = 0;
    int piece = 0;
    do {
      Chunk chunk;
      chunk.data = data.substr(offset, size);
      offset += chunk.data.size();
      // Who names the chunk: the first one always (mode 1: every one; mode 7: a stranger
      // in the middle, which the receiver must refuse).
      if (piece == 0 || mode == 1) chunk.name = name;
      if (mode == 7 && piece == 1) chunk.name = "stranger.dcm";
      chunk.last = offset >= data.size() && !omit_last;
      chunks.push_back(std::move(chunk));
      if (empty_between && offset < data.size()) chunks.push_back(Chunk{"", "", false});
      ++piece;
    } while (offset < data.size());
    previous = name;
  }
  return chunks;
}

bool SameStatus(const absl::Status& a, const absl::Status& b) {
  return a.code() == b.code() && a.message() == b.message();
}

void CheckResult(const miseg::IngestResult& result, const std::vector<std::string>& sent_names,
                 const miseg::DatasetRecord& dataset) {
  Env& env = TheEnv();
  Check(result.files.size() == sent_names.size());
  size_t stored_files = 0;
  for (size_t i = 0; i < result.files.size(); ++i) {
    const miseg::IngestFileResult& r = result.files[i];
    // The name as sent, cut to 256 bytes at a character boundary, or "file #n".
    const std::string& sent = sent_names[i];
    if (sent.empty()) {
      Check(r.file_name == absl::StrCat("file #", i + 1));
    } else {
      Check(!r.file_name.empty() && r.file_name.size() <= 256);
      Check(absl::StartsWith(sent, r.file_name));
    }
    Check(miseg::IsValidUtf8(r.file_name) && miseg::IsValidUtf8(r.reason) &&
          miseg::IsValidUtf8(r.sop_instance_uid) && miseg::IsValidUtf8(r.series_instance_uid));
    switch (r.outcome) {
      case miseg::IngestOutcome::kStored:
        ++stored_files;
        Check(r.reason.empty());
        Check(miseg::ValidateUid(r.sop_instance_uid).ok());
        Check(miseg::ValidateUid(r.series_instance_uid).ok());
        break;
      case miseg::IngestOutcome::kDuplicate:
      case miseg::IngestOutcome::kRefused:
        Check(!r.reason.empty());
        break;
      default:
        Check(false);
    }
  }
  // What was stored: these studies, and in the file store exactly their files.
  size_t stored_instances = 0;
  std::set<std::string> hashes;
  for (const miseg::StudyRecord& study : result.stored) {
    Check(study.dataset_id == dataset.id);
    Check(study.slices > 0 && study.rows > 0 && study.columns > 0);
    Check(miseg::IsValidUtf8(study.series_description));
    for (const miseg::InstanceRecord& instance : study.instances) {
      ++stored_instances;
      hashes.insert(instance.object_hash);
      Check(env.files->Contains(instance.object_hash));
    }
  }
  Check(stored_instances == stored_files);
  absl::StatusOr<std::vector<std::string>> objects = env.files->List();
  Check(objects.ok());
  Check(std::set<std::string>(objects->begin(), objects->end()) == hashes);
  absl::StatusOr<std::vector<miseg::StudyRecord>> listed =
      env.store->ListStudies(dataset.id, std::nullopt);
  Check(listed.ok() && listed->size() == result.stored.size());
}

// Removes what an input stored, so that the next one starts from an empty file store.
void CleanUp(const miseg::DatasetRecord& dataset) {
  Env& env = TheEnv();
  absl::StatusOr<std::vector<miseg::StudyRecord>> studies =
      env.store->ListStudies(dataset.id, std::nullopt);
  Check(studies.ok());
  for (const miseg::StudyRecord& study : *studies) {
    int64_t deleted = 0;
    absl::StatusOr<std::vector<std::string>> unreferenced =
        env.store->DeleteStudy(dataset.id, study.series_instance_uid, &deleted);
    Check(unreferenced.ok());
    for (const std::string& hash : *unreferenced) Check(env.files->Remove(hash).ok());
  }
  absl::StatusOr<std::vector<std::string>> objects = env.files->List();
  Check(objects.ok() && objects->empty());
}

// ---- seeds ------------------------------------------------------------------------------

void WriteSeeds(const std::string& dir) {
  miseg::PhantomOptions options;
  options.min_slices = options.max_slices = 3;
  options.min_matrix = options.max_matrix = 32;
  options.min_pixel_mm = options.max_pixel_mm = 4.0;
  auto study = [&](int index) {
    absl::StatusOr<miseg::PhantomStudy> s = miseg::MakePhantomStudy(
        miseg::GeneratePhantomSubject(17, index, options), absl::StrCat("fuzz-upload-", index),
        true);
    if (!s.ok()) abort();
    return *std::move(s);
  };
  // control is a literal that may hold NULs: every byte of it counts.
  auto write = [&](const std::string& name, absl::string_view control,
                   const std::vector<std::string>& files) {
    std::string bytes(control);
    for (const std::string& f : files) absl::StrAppend(&bytes, kSeparator, f);
    std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
  };
  const miseg::PhantomStudy a = study(0), b = study(1);
  std::vector<std::string> labeled, unlabeled;
  for (const miseg::DicomBuffer& f : a.image_files) labeled.push_back(f.bytes);
  labeled.push_back(a.segmentation->bytes);
  for (const miseg::DicomBuffer& f : b.image_files) unlabeled.push_back(f.bytes);
  // Role byte: 0 labeled, 1 unlabeled, 2 validation; +4 small limits.
  write("labeled_whole_files", absl::string_view("\x00", 1), labeled);
  write("unlabeled_1k_chunks_named_each", absl::string_view("\x01\x0c\x0c\x0c", 4), unlabeled);
  write("validation_odd_chunks_empty_between", absl::string_view("\x02\x82\x83\x85\x86", 5), labeled);
  write("labeled_names_hostile", absl::string_view("\x00\x18\x20\x28\x30\x10", 6), labeled);
  write("unlabeled_unfinished_file", absl::string_view("\x01\x00\x00\x40", 4), unlabeled);
  write("unlabeled_stranger_inside", absl::string_view("\x01\x3b", 2), unlabeled);
  write("small_limits", absl::string_view("\x04\x00\x00\x00", 4), labeled);
  write("labeled_without_seg", absl::string_view("\x00", 1),
        std::vector<std::string>(labeled.begin(), labeled.end() - 1));
  write("two_studies_unlabeled", absl::string_view("\x01", 1), [&] {
    std::vector<std::string> both = unlabeled;
    for (const miseg::DicomBuffer& f : a.image_files) both.push_back(f.bytes);
    return both;
  }());
  write("not_dicom", absl::string_view("\x01", 1), {"plain text, not DICOM", std::string(200, '\0')});
}

}  // namespace

extern "C" const char* __asan_default_options() {
  return "max_allocation_size_mb=256:allocator_may_return_null=1";
}

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
  miseg::RegisterDicomCodecs();
  if (const char* dir = getenv("MISEG_FUZZ_WRITE_SEEDS")) WriteSeeds(dir);
  TheEnv();
  atexit(RemoveEnv);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Env& env = TheEnv();
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<absl::string_view> parts = absl::StrSplit(input, kSeparator);
  Control control(parts.front());
  std::vector<std::string> files;
  for (size_t i = 1; i < parts.size() && files.size() < kMaxFiles; ++i) {
    files.emplace_back(parts[i]);
  }

  const uint8_t head = control.Next();
  static constexpr miseg::StoredRole kRoles[4] = {
      miseg::StoredRole::kLabeled, miseg::StoredRole::kUnlabeled, miseg::StoredRole::kValidation,
      miseg::StoredRole::kLabeled};
  const miseg::StoredRole role = kRoles[head & 3];
  const miseg::ChunkLimits limits = (head >> 2) & 1 ? miseg::ChunkLimits{16 << 10, 3}
                                                    : miseg::ChunkLimits{64 << 20, 64};
  miseg::DatasetRecord record;
  record.name = absl::StrCat("fuzz", ++env.datasets);
  record.class_names = miseg::PhantomClassNames();
  record.modality = "MR";
  absl::StatusOr<miseg::DatasetRecord> dataset = env.store->CreateDataset(record);
  Check(dataset.ok());

  const std::vector<Chunk> chunks = ChunksOf(files, control);
  {
    miseg::IngestSession session(env.store.get(), env.files.get(), *dataset, role, limits,
                                 FuzzLimits());
    absl::Status first_error;
    std::vector<std::string> completed_names;  // as sent, of each file a last chunk closed
    std::string open_name;                     // of the file being sent
    bool inside_file = false;
    for (const Chunk& chunk : chunks) {
      const absl::Status added = session.AddChunk(chunk.name, chunk.data, chunk.last);
      if (!first_error.ok()) {
        Check(SameStatus(added, first_error));  // spent: the same error every time
        continue;
      }
      if (!added.ok()) {
        Check(absl::IsInvalidArgument(added) || absl::IsResourceExhausted(added));
        if (absl::IsResourceExhausted(added)) {
          Check(absl::StrContains(added.message(), "bytes") ||
                absl::StrContains(added.message(), "files"));
        }
        first_error = added;
        continue;
      }
      if (!inside_file) open_name = chunk.name;
      inside_file = !chunk.last;
      if (chunk.last) completed_names.push_back(open_name);
    }
    absl::StatusOr<miseg::IngestResult> result = session.Finish();
    if (Verbose()) {
      fprintf(stderr, "%zu chunks, first error: %s, finish: %s\n", chunks.size(),
              first_error.ToString().c_str(), result.status().ToString().c_str());
      for (const miseg::IngestFileResult& r : result.ok() ? result->files
                                                           : std::vector<miseg::IngestFileResult>{}) {
        fprintf(stderr, "  %s: %d %s\n", miseg::SafeText(r.file_name, 40).c_str(),
                static_cast<int>(r.outcome), r.reason.c_str());
      }
    }
    if (!first_error.ok()) {
      Check(SameStatus(result.status(), first_error));
    } else if (inside_file) {
      Check(absl::IsInvalidArgument(result.status()));
    } else if (completed_names.empty()) {
      Check(absl::IsInvalidArgument(result.status()));
    } else {
      Check(result.ok());
      CheckResult(*result, completed_names, *dataset);
    }
    // A finished session takes nothing more.
    Check(absl::IsFailedPrecondition(session.AddChunk("late.dcm", "x", true)));
    Check(absl::IsFailedPrecondition(session.Finish().status()));
    Check(StagedCount() == 0);
  }
  Check(StagedCount() == 0);
  CleanUp(*dataset);
  return 0;
}

// miseg-load: drives a running miseg-server the way a busy site would, and measures it.
// Uploaders stream generated MR studies of the asked size (fresh UIDs every time, read from
// disk file by file, so this program holds one file per uploader whatever the study's size),
// watchers follow one training job with WatchJob and check that they saw every event in
// order through the end, segmenters call Segment on a small study over and over. Everything
// runs at once; meanwhile the server's resident memory and thread count are sampled every
// 100 ms from its /metrics (or /proc/PID). It prints throughput, latency percentiles per RPC,
// errors by status code and the server's idle, peak and delta figures; --json prints one
// JSON object. With --orthanc it uploads the very same bytes to Orthanc's REST API instead,
// for an ingest rate beside miseg's on the same files (bench/load.sh runs both).
//
// The studies: one template series is generated with the phantom and WriteImageSeries and
// written to --work_dir (kept and reused when the directory is given); each upload sends it
// with its Study, Series, Frame of Reference and SOP Instance UIDs re-stamped: the last 12
// digits of each UID replaced, in place, by digits derived from the upload's number. The UIDs
// keep their length, so the files stay valid Part-10 byte for byte elsewhere, and generating
// a fresh study costs a pass over its headers instead of a phantom and a DICOM encoding,
// which would compete with the server for the CPU being measured.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <curl/curl.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "core/common/status_macros.h"
#include "core/dicom/phantom_study.h"
#include "core/dicom/series_writer.h"
#include "core/phantom/phantom.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50051", "miseg-server gRPC address (HOST:PORT)");
ABSL_FLAG(std::string, token, "", "bearer token; an admin's when datasets are to be created");
ABSL_FLAG(std::string, metrics, "",
          "the server's /metrics address (HOST:PORT): RSS and threads sampled every 100 ms");
ABSL_FLAG(int, pid, 0, "sample RSS and threads from /proc/PID instead of --metrics");
ABSL_FLAG(int, uploaders, 0, "concurrent upload streams");
ABSL_FLAG(int64_t, study_mib, 8, "size of each uploaded study in MiB (16-bit MR slices)");
ABSL_FLAG(int, matrix, 512, "rows and columns of the uploaded studies' slices");
ABSL_FLAG(int, uploads_per_client, 0,
          "studies each uploader sends, then stops; 0: fresh studies until --seconds");
ABSL_FLAG(int, watchers, 0, "concurrent WatchJob streams on one training job");
ABSL_FLAG(int64_t, job, 0,
          "the job to watch; 0: the tool trains one on a small labeled phantom dataset");
ABSL_FLAG(int64_t, job_steps, 400, "steps of the job the tool starts (about steps + 5 events)");
ABSL_FLAG(int64_t, job_grid, 32, "model grid of the job the tool starts");
ABSL_FLAG(std::vector<std::string>, job_widths, std::vector<std::string>({"8", "16"}),
          "U-Net widths of the job the tool starts, one per level (the server's default: "
          "16,32,64,128,256)");
ABSL_FLAG(int, watch_timeout, 1800, "seconds a watcher waits for the job to end");
ABSL_FLAG(int, segmenters, 0, "concurrent callers of Segment");
ABSL_FLAG(std::string, segment_dataset, "",
          "dataset whose active model the segmenters use (needed with --segmenters)");
ABSL_FLAG(int, seconds, 30, "how long uploaders (without --uploads_per_client) and segmenters run");
ABSL_FLAG(std::string, work_dir, "",
          "where the template study is written (kept and reused); empty: a temporary "
          "directory, removed at the end");
ABSL_FLAG(uint64_t, seed, 1, "seed of the phantom and of the UIDs (same seed, same files)");
ABSL_FLAG(std::string, orthanc, "",
          "HOST:PORT of an Orthanc REST API: upload the same files there (POST /instances) "
          "instead of to miseg; uploads only");
ABSL_FLAG(std::string, write_studies, "",
          "write the files of the uploads (uploaders x uploads_per_client) into this folder "
          "and exit: the exact bytes the uploads send");
ABSL_FLAG(bool, json, false, "print one JSON object");

namespace miseg {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---------------------------------------------------------------------------------------
// What happened: latencies per RPC, errors by code, counters. Thread-safe.

struct Percentiles {
  int64_t count = 0;
  double min = 0, p50 = 0, p99 = 0, max = 0;
};

Percentiles Summarise(std::vector<double> values) {
  Percentiles p;
  p.count = static_cast<int64_t>(values.size());
  if (values.empty()) return p;
  std::sort(values.begin(), values.end());
  auto rank = [&](double q) {  // nearest rank
    const size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
    return values[std::min(values.size() - 1, i == 0 ? 0 : i - 1)];
  };
  p.min = values.front();
  p.p50 = rank(0.50);
  p.p99 = rank(0.99);
  p.max = values.back();
  return p;
}

class Recorder {
 public:
  void Latency(const std::string& what, double seconds) {
    absl::MutexLock lock(&mutex_);
    latencies_[what].push_back(seconds);
  }
  void Error(const std::string& rpc, const absl::Status& status) {
    absl::MutexLock lock(&mutex_);
    ++errors_[rpc][absl::StatusCodeToString(status.code())];
    // The first few distinct errors, to say what the codes meant.
    std::string text = absl::StrCat(rpc, ": ", status.ToString());
    if (first_errors_.size() < 5 &&
        std::find(first_errors_.begin(), first_errors_.end(), text) == first_errors_.end()) {
      first_errors_.push_back(std::move(text));
    }
  }
  void Add(const std::string& counter, int64_t n) {
    absl::MutexLock lock(&mutex_);
    counters_[counter] += n;
  }
  // The activity `what` completed something at this time (seconds since the start).
  void Finished(const std::string& what, double seconds) {
    absl::MutexLock lock(&mutex_);
    double& end = ends_[what];
    end = std::max(end, seconds);
  }
  double End(const std::string& what) const {
    absl::MutexLock lock(&mutex_);
    auto it = ends_.find(what);
    return it == ends_.end() ? 0 : it->second;
  }
  void Note(const std::string& text) {
    absl::MutexLock lock(&mutex_);
    if (notes_.size() < 10) notes_.push_back(text);
  }

  Percentiles LatencyOf(const std::string& what) const {
    absl::MutexLock lock(&mutex_);
    auto it = latencies_.find(what);
    return it == latencies_.end() ? Percentiles{} : Summarise(it->second);
  }
  int64_t Count(const std::string& counter) const {
    absl::MutexLock lock(&mutex_);
    auto it = counters_.find(counter);
    return it == counters_.end() ? 0 : it->second;
  }
  std::map<std::string, std::map<std::string, int64_t>> errors() const {
    absl::MutexLock lock(&mutex_);
    return errors_;
  }
  std::vector<std::string> notes() const {
    absl::MutexLock lock(&mutex_);
    std::vector<std::string> all = first_errors_;
    all.insert(all.end(), notes_.begin(), notes_.end());
    return all;
  }

 private:
  mutable absl::Mutex mutex_;
  std::map<std::string, std::vector<double>> latencies_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, std::map<std::string, int64_t>> errors_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, int64_t> counters_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, double> ends_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::string> first_errors_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::string> notes_ ABSL_GUARDED_BY(mutex_);
};

// ---------------------------------------------------------------------------------------
// HTTP (libcurl): the /metrics scrape and Orthanc's REST API.

size_t AppendToString(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}

// One handle per thread, reused (keep-alive).
class Http {
 public:
  Http() : curl_(curl_easy_init()) {}
  ~Http() {
    if (curl_ != nullptr) curl_easy_cleanup(curl_);
  }
  Http(const Http&) = delete;
  Http& operator=(const Http&) = delete;

  // GET (body empty) or POST; the reply's body, or an error naming the HTTP status.
  absl::StatusOr<std::string> Request(const std::string& url, const std::string* body) {
    if (curl_ == nullptr) return absl::InternalError("curl_easy_init failed");
    std::string reply;
    curl_slist* headers = nullptr;
    curl_easy_reset(curl_);
    curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl_, CURLOPT_TIMEOUT, 600L);
    curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &AppendToString);
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &reply);
    if (body != nullptr) {
      headers = curl_slist_append(headers, "Content-Type: application/dicom");
      headers = curl_slist_append(headers, "Expect:");
      curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, headers);
      curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, body->data());
      curl_easy_setopt(curl_, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
    }
    const CURLcode code = curl_easy_perform(curl_);
    long http_status = 0;
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &http_status);
    curl_slist_free_all(headers);
    if (code != CURLE_OK) {
      return absl::UnavailableError(absl::StrCat(url, ": ", curl_easy_strerror(code)));
    }
    if (http_status / 100 != 2) {
      return absl::InternalError(absl::StrCat(url, ": HTTP ", http_status, ": ", reply));
    }
    return reply;
  }

 private:
  CURL* curl_;
};

// ---------------------------------------------------------------------------------------
// The server's resident memory and threads, every 100 ms, from /metrics or /proc/PID.

struct ProcessSample {
  double rss_bytes = 0;
  double threads = 0;
};

std::optional<double> ExpositionValue(const std::string& text, absl::string_view name) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, name) || !absl::ConsumePrefix(&line, " ")) continue;
    double value = 0;
    if (absl::SimpleAtod(line, &value)) return value;
  }
  return std::nullopt;
}

class ServerSampler {
 public:
  // metrics: HOST:PORT of /metrics; pid > 0: /proc/PID instead. Neither: no samples.
  ServerSampler(std::string metrics, int pid) : metrics_(std::move(metrics)), pid_(pid) {}
  ~ServerSampler() { Stop(); }

  bool enabled() const { return !metrics_.empty() || pid_ > 0; }
  std::string source() const {
    return pid_ > 0 ? absl::StrCat("/proc/", pid_) : absl::StrCat("http://", metrics_, "/metrics");
  }

  // The idle figures: one sample now, before the load starts; then every 100 ms.
  absl::Status Start() {
    if (!enabled()) return absl::OkStatus();
    ASSIGN_OR_RETURN(ProcessSample first, Sample());
    {
      absl::MutexLock lock(&mutex_);
      idle_ = peak_ = last_ = first;
      samples_ = 1;
    }
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        Record(Sample());
      }
    });
    return absl::OkStatus();
  }

  // Stops sampling after one last sample (a run shorter than 100 ms still has two).
  void Stop() {
    if (stop_.exchange(true) || !thread_.joinable()) return;
    thread_.join();
    Record(Sample());
  }

  struct Figures {
    ProcessSample idle, peak, last;
    int64_t samples = 0, failures = 0;
  };
  Figures figures() const {
    absl::MutexLock lock(&mutex_);
    return {idle_, peak_, last_, samples_, failures_};
  }

 private:
  void Record(const absl::StatusOr<ProcessSample>& s) {
    absl::MutexLock lock(&mutex_);
    if (!s.ok()) {
      ++failures_;
      return;
    }
    ++samples_;
    last_ = *s;
    peak_.rss_bytes = std::max(peak_.rss_bytes, s->rss_bytes);
    peak_.threads = std::max(peak_.threads, s->threads);
  }

  absl::StatusOr<ProcessSample> Sample() {
    ProcessSample s;
    if (pid_ > 0) {
      std::ifstream status(absl::StrCat("/proc/", pid_, "/status"));
      std::string line;
      while (std::getline(status, line)) {
        double value = 0;
        std::vector<std::string> parts =
            absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
        if (parts.size() < 2 || !absl::SimpleAtod(parts[1], &value)) continue;
        if (parts[0] == "VmRSS:") s.rss_bytes = value * 1024;
        if (parts[0] == "Threads:") s.threads = value;
      }
      if (s.threads == 0) return absl::NotFoundError(absl::StrCat("no process ", pid_));
      return s;
    }
    ASSIGN_OR_RETURN(std::string text,
                     http_.Request(absl::StrCat("http://", metrics_, "/metrics"), nullptr));
    std::optional<double> rss = ExpositionValue(text, "process_resident_memory_bytes");
    std::optional<double> threads = ExpositionValue(text, "process_threads");
    if (!rss || !threads) {
      return absl::NotFoundError(
          "/metrics has no process_resident_memory_bytes or process_threads");
    }
    s.rss_bytes = *rss;
    s.threads = *threads;
    return s;
  }

  const std::string metrics_;
  const int pid_;
  Http http_;  // used by one thread at a time: Start, the sampling thread, then Stop
  std::thread thread_;
  std::atomic<bool> stop_{false};
  mutable absl::Mutex mutex_;
  ProcessSample idle_ ABSL_GUARDED_BY(mutex_);
  ProcessSample peak_ ABSL_GUARDED_BY(mutex_);
  ProcessSample last_ ABSL_GUARDED_BY(mutex_);
  int64_t samples_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t failures_ ABSL_GUARDED_BY(mutex_) = 0;
};

// ---------------------------------------------------------------------------------------
// The template study on disk, and fresh copies of it by re-stamping UIDs.

constexpr int kStampDigits = 12;

// 2.25.<38 digits>: a UUID-derived UID (no registered root needed; below 2^128 as a UUID
// must be), from a seed and a name.
std::string MakeUid(uint64_t seed, absl::string_view name) {
  uint64_t a = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  for (char c : name) a = (a ^ static_cast<unsigned char>(c)) * 0x100000001B3ull;
  const uint64_t b = (a ^ (a >> 29)) * 0xBF58476D1CE4E5B9ull;
  return absl::StrFormat("2.25.%d%018d%019d", 1 + a % 9, a % 1000000000000000000ull,
                         b % 10000000000000000000ull);
}

struct TemplateFile {
  std::string path;
  std::string sop_instance_uid;
  int64_t bytes = 0;
};

struct StudyTemplate {
  std::string study_uid, series_uid, frame_of_reference_uid;
  std::vector<TemplateFile> files;
  int64_t bytes = 0;
  int64_t pixel_bytes_per_file = 0;  // at each file's end: never re-stamped
};

std::string ManifestKey(int64_t mib, int matrix, uint64_t seed) {
  return absl::StrCat("miseg-load template v2 mib=", mib, " matrix=", matrix, " seed=", seed);
}

// The manifest: the key line, the three series UIDs, the pixel bytes per file, then one
// "<sop uid> <file name>" line per file.
absl::StatusOr<StudyTemplate> LoadTemplate(const std::string& dir, const std::string& key) {
  std::ifstream in(dir + "/manifest.txt");
  std::string line;
  if (!std::getline(in, line) || line != key) return absl::NotFoundError("no template");
  StudyTemplate t;
  std::string pixel_bytes;
  if (!std::getline(in, t.study_uid) || !std::getline(in, t.series_uid) ||
      !std::getline(in, t.frame_of_reference_uid) || !std::getline(in, pixel_bytes) ||
      !absl::SimpleAtoi(pixel_bytes, &t.pixel_bytes_per_file)) {
    return absl::DataLossError(dir + "/manifest.txt is truncated");
  }
  while (std::getline(in, line)) {
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    if (parts.size() != 2) continue;
    TemplateFile f{dir + "/" + parts[1], parts[0], 0};
    std::error_code ec;
    f.bytes = static_cast<int64_t>(std::filesystem::file_size(f.path, ec));
    if (ec) return absl::DataLossError(absl::StrCat("missing ", f.path));
    t.bytes += f.bytes;
    t.files.push_back(std::move(f));
  }
  if (t.files.empty()) return absl::DataLossError(dir + "/manifest.txt lists no file");
  return t;
}

// A phantom MR series of matrix x matrix 16-bit slices, as many as make `mib` MiB of pixels.
// Generating it holds the phantom, its float volume and the encoded files at once: a peak of
// about 11 times the study (715 MiB for 64 MiB, 7 s), once, before the load starts; the
// template is then reused from the work directory.
absl::StatusOr<StudyTemplate> MakeTemplate(const std::string& dir, int64_t mib, int matrix,
                                           uint64_t seed) {
  const std::string key = ManifestKey(mib, matrix, seed);
  if (absl::StatusOr<StudyTemplate> found = LoadTemplate(dir, key); found.ok()) return found;
  const int64_t slice_bytes = int64_t{matrix} * matrix * 2;
  const int slices =
      static_cast<int>(std::max<int64_t>(2, ((mib << 20) + slice_bytes - 1) / slice_bytes));
  PhantomOptions options;
  options.min_slices = options.max_slices = slices;
  options.min_matrix = options.max_matrix = matrix;
  options.min_pixel_mm = options.max_pixel_mm = 360.0 / matrix;  // a 36 cm field of view
  options.min_slice_mm = options.max_slice_mm = std::min(8.0, 400.0 / slices);
  PhantomSubject subject = GeneratePhantomSubject(seed, 0, options);
  subject.labels = LabelVolume();  // not needed: free it before encoding
  ImageSeriesInfo info;
  info.patient_id = absl::StrCat("LOAD-", seed);
  info.patient_name = absl::StrCat("LOAD^", seed);
  info.study_instance_uid = MakeUid(seed, "study");
  info.series_instance_uid = MakeUid(seed, "series");
  info.frame_of_reference_uid = MakeUid(seed, "frame-of-reference");
  info.study_description = "miseg-load";
  info.series_description = absl::StrCat("miseg-load ", mib, " MiB");
  ASSIGN_OR_RETURN(std::vector<DicomBuffer> files, WriteImageSeries(subject.image, info));
  subject = PhantomSubject();

  std::filesystem::create_directories(dir);
  StudyTemplate t;
  t.study_uid = info.study_instance_uid;
  t.series_uid = info.series_instance_uid;
  t.frame_of_reference_uid = info.frame_of_reference_uid;
  t.pixel_bytes_per_file = slice_bytes;
  std::string manifest = absl::StrCat(key, "\n", t.study_uid, "\n", t.series_uid, "\n",
                                      t.frame_of_reference_uid, "\n", slice_bytes, "\n");
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string name = absl::StrFormat("slice%05d.dcm", i);
    absl::string_view sop = files[i].name;  // WriteImageSeries names a file "<SOP UID>.dcm"
    if (!absl::ConsumeSuffix(&sop, ".dcm")) return absl::InternalError("unexpected file name");
    std::ofstream out(dir + "/" + name, std::ios::binary | std::ios::trunc);
    out.write(files[i].bytes.data(), static_cast<std::streamsize>(files[i].bytes.size()));
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", dir, "/", name));
    absl::StrAppend(&manifest, sop, " ", name, "\n");
    std::string().swap(files[i].bytes);
  }
  std::ofstream out(dir + "/manifest.txt", std::ios::trunc);
  out << manifest;
  if (!out) return absl::InternalError("cannot write the manifest");
  out.close();
  return LoadTemplate(dir, key);
}

// The UID with its last kStampDigits digits replaced by those of (digits + stamp); same
// length, still a valid UID (the last component keeps its first digit).
absl::StatusOr<std::string> StampUid(const std::string& uid, uint64_t stamp) {
  const size_t dot = uid.rfind('.');
  if (dot == std::string::npos || uid.size() - dot - 1 <= kStampDigits) {
    return absl::InvalidArgumentError(absl::StrCat("UID too short to re-stamp: ", uid));
  }
  uint64_t tail = 0;
  if (!absl::SimpleAtoi(uid.substr(uid.size() - kStampDigits), &tail)) {
    return absl::InvalidArgumentError(absl::StrCat("not a UID: ", uid));
  }
  constexpr uint64_t kModulus = 1000000000000ull;  // 10^kStampDigits
  return absl::StrCat(uid.substr(0, uid.size() - kStampDigits),
                      absl::StrFormat("%012d", (tail + stamp) % kModulus));
}

// Replaces every occurrence of `from` by `to` (same length) in bytes[0, end); the count.
int ReplaceAll(std::string* bytes, size_t end, const std::string& from, const std::string& to) {
  int n = 0;
  for (size_t at = bytes->find(from); at != std::string::npos && at + from.size() <= end;
       at = bytes->find(from, at + from.size())) {
    bytes->replace(at, from.size(), to);
    ++n;
  }
  return n;
}

// The files of the template re-stamped with `stamp` (> 0: a study of its own), read from
// disk one at a time: a client::FileSource.
class StampedStudy {
 public:
  StampedStudy(const StudyTemplate& t, uint64_t stamp) : template_(t), stamp_(stamp) {}

  // The next file, valid until the following call; nullptr after the last.
  absl::StatusOr<const DicomBuffer*> Next() {
    if (next_ >= template_.files.size()) return nullptr;
    if (next_ == 0) {
      ASSIGN_OR_RETURN(study_, StampUid(template_.study_uid, stamp_));
      ASSIGN_OR_RETURN(series_, StampUid(template_.series_uid, stamp_));
      ASSIGN_OR_RETURN(frame_, StampUid(template_.frame_of_reference_uid, stamp_));
    }
    const TemplateFile& f = template_.files[next_++];
    std::ifstream in(f.path, std::ios::binary);
    file_.name = f.path;
    file_.bytes.resize(static_cast<size_t>(f.bytes));
    in.read(file_.bytes.data(), f.bytes);
    if (!in) return absl::DataLossError(absl::StrCat("cannot read ", f.path));
    // The pixel data ends the file: only the header before it holds UIDs.
    const size_t header_end = file_.bytes.size() - static_cast<size_t>(std::min<int64_t>(
                                                       template_.pixel_bytes_per_file, f.bytes));
    ASSIGN_OR_RETURN(std::string sop, StampUid(f.sop_instance_uid, stamp_));
    const int replaced[] = {
        ReplaceAll(&file_.bytes, header_end, template_.study_uid, study_),
        ReplaceAll(&file_.bytes, header_end, template_.series_uid, series_),
        ReplaceAll(&file_.bytes, header_end, template_.frame_of_reference_uid, frame_),
        // The meta header's MediaStorageSOPInstanceUID and the dataset's SOPInstanceUID.
        ReplaceAll(&file_.bytes, header_end, f.sop_instance_uid, sop)};
    if (replaced[0] < 1 || replaced[1] < 1 || replaced[2] < 1 || replaced[3] < 2) {
      return absl::InternalError(absl::StrCat(f.path, ": a UID to re-stamp is missing"));
    }
    return &file_;
  }

  client::FileSource AsSource() {
    return [this]() { return Next(); };
  }

 private:
  const StudyTemplate& template_;
  const uint64_t stamp_;
  size_t next_ = 0;
  std::string study_, series_, frame_;
  DicomBuffer file_;
};

// Upload u of uploader i: a stamp of its own, the same in every run with the same seed.
uint64_t UploadStamp(int uploader, int upload) {
  return 1 + static_cast<uint64_t>(uploader) * 1000000 + static_cast<uint64_t>(upload);
}

// ---------------------------------------------------------------------------------------
// The workers.

struct Run {
  client::ConnectionOptions connection;
  const StudyTemplate* study = nullptr;
  std::string dataset;  // uploads go here
  std::string orthanc;  // HOST:PORT: uploads go to Orthanc instead
  int uploads_per_client = 0;
  Clock::time_point start, deadline;
  Recorder* recorder = nullptr;
};

absl::StatusOr<std::unique_ptr<client::Client>> Connect(const Run& run) {
  client::ConnectionOptions options = run.connection;
  options.own_connection = true;  // as separate clients would
  options.call_timeout_seconds = 600;
  return client::Client::Connect(options);
}

bool MoreUploads(const Run& run, int done) {
  return run.uploads_per_client > 0 ? done < run.uploads_per_client : Clock::now() < run.deadline;
}

// One upload's accounting: a study is whole when every file was stored, none refused or
// duplicate, and they made one study of all of them.
void CountUpload(const Run& run, const v1::UploadResponse& r) {
  const int64_t files = static_cast<int64_t>(run.study->files.size());
  const bool whole = r.stored_instances() == files && r.refused_instances() == 0 &&
                     r.duplicate_instances() == 0 && r.stored_size() == 1 &&
                     r.stored(0).instances() == files;
  run.recorder->Add(whole ? "upload.whole" : "upload.incomplete", 1);
  run.recorder->Add("upload.instances", r.stored_instances());
  run.recorder->Add("upload.bytes", r.bytes_received());
  if (!whole) {
    run.recorder->Note(absl::StrCat("incomplete upload: stored ", r.stored_instances(), " of ",
                                    files, ", duplicate ", r.duplicate_instances(), ", refused ",
                                    r.refused_instances()));
  }
}

void Uploader(const Run& run, int index) {
  absl::StatusOr<std::unique_ptr<client::Client>> client = Connect(run);
  if (!client.ok()) return run.recorder->Error("Upload", client.status());
  for (int done = 0; MoreUploads(run, done); ++done) {
    StampedStudy study(*run.study, UploadStamp(index, done));
    const Clock::time_point started = Clock::now();
    absl::StatusOr<v1::UploadResponse> response = (*client)->UploadFrom(
        run.dataset, v1::STUDY_ROLE_UNLABELED, study.AsSource(), run.study->bytes);
    run.recorder->Add("upload.calls", 1);
    if (!response.ok()) {
      run.recorder->Error("Upload", response.status());
      // A refusal (e.g. too many streams) comes at once: do not spin on it until --seconds.
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    run.recorder->Latency("Upload", SecondsSince(started));
    CountUpload(run, *response);
    run.recorder->Finished("upload", SecondsSince(run.start));
  }
}

// The same files to Orthanc: one POST /instances per file, the study's files in order.
void OrthancUploader(const Run& run, int index) {
  Http http;
  const std::string url = absl::StrCat("http://", run.orthanc, "/instances");
  const int64_t files = static_cast<int64_t>(run.study->files.size());
  for (int done = 0; MoreUploads(run, done); ++done) {
    StampedStudy study(*run.study, UploadStamp(index, done));
    const Clock::time_point started = Clock::now();
    run.recorder->Add("upload.calls", 1);
    int64_t stored = 0, bytes = 0;
    absl::Status failed = absl::OkStatus();
    while (failed.ok()) {
      absl::StatusOr<const DicomBuffer*> file = study.Next();
      if (!file.ok()) failed = file.status();
      if (!failed.ok() || *file == nullptr) break;
      const Clock::time_point posted = Clock::now();
      absl::StatusOr<std::string> reply = http.Request(url, &(*file)->bytes);
      if (!reply.ok()) {
        failed = reply.status();
        break;
      }
      run.recorder->Latency("POST /instances", SecondsSince(posted));
      bytes += static_cast<int64_t>((*file)->bytes.size());
      if (absl::StrContains(*reply, "\"Success\"")) ++stored;
    }
    if (!failed.ok()) {
      run.recorder->Error("POST /instances", failed);
      continue;
    }
    run.recorder->Latency("Upload", SecondsSince(started));  // the whole study
    run.recorder->Add(stored == files ? "upload.whole" : "upload.incomplete", 1);
    run.recorder->Add("upload.instances", stored);
    run.recorder->Add("upload.bytes", bytes);
    run.recorder->Finished("upload", SecondsSince(run.start));
  }
}

// Follows the job from its first event; checks sequences 1, 2, 3, ... through a terminal
// state with nothing after it.
void Watcher(const Run& run, int64_t job_id, std::chrono::seconds timeout) {
  absl::StatusOr<std::unique_ptr<client::Client>> client = Connect(run);
  if (!client.ok()) return run.recorder->Error("WatchJob", client.status());
  const Clock::time_point started = Clock::now();
  int64_t events = 0, expected_sequence = 1;
  bool in_order = true, ended = false, after_end = false;
  std::string problem;
  client::WatchOptions options;
  options.timeout = timeout;
  absl::Status status = (*client)->WatchJob(job_id, options, [&](const v1::JobEvent& event) {
    if (events++ == 0) run.recorder->Latency("WatchJob first event", SecondsSince(started));
    if (ended) after_end = true;
    if (event.sequence() != expected_sequence && in_order) {
      in_order = false;
      problem =
          absl::StrCat("sequence ", event.sequence(), " where ", expected_sequence, " was due");
    }
    expected_sequence = event.sequence() + 1;
    const v1::JobState state =
        event.has_state() ? event.state().state() : v1::JOB_STATE_UNSPECIFIED;
    if (state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
        state == v1::JOB_STATE_CANCELLED) {
      ended = true;
    }
  });
  run.recorder->Add("watch.events", events);
  run.recorder->Latency("watch.events", static_cast<double>(events));
  if (!status.ok()) {
    run.recorder->Error("WatchJob", status);
    run.recorder->Add("watch.failed", 1);
    return;
  }
  run.recorder->Latency("WatchJob", SecondsSince(started));
  if (!in_order || !ended || after_end) {
    run.recorder->Add("watch.failed", 1);
    run.recorder->Note(absl::StrCat("watcher: ", !problem.empty() ? problem
                                                 : !ended         ? "no terminal state"
                                                                  : "events after the end"));
    return;
  }
  run.recorder->Add("watch.complete", 1);
}

void Segmenter(const Run& run, const std::string& dataset, const std::vector<DicomBuffer>& files) {
  absl::StatusOr<std::unique_ptr<client::Client>> client = Connect(run);
  if (!client.ok()) return run.recorder->Error("Segment", client.status());
  v1::SegmentHeader header;
  header.set_dataset(dataset);
  while (Clock::now() < run.deadline) {
    const Clock::time_point started = Clock::now();
    absl::StatusOr<client::SegmentResult> result = (*client)->Segment(header, files);
    run.recorder->Add("segment.calls", 1);
    if (!result.ok()) {
      run.recorder->Error("Segment", result.status());
      // A full queue answers at once; do not spin on it.
      if (absl::IsResourceExhausted(result.status())) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      continue;
    }
    run.recorder->Latency("Segment", SecondsSince(started));
    run.recorder->Add("segment.ok", 1);
    run.recorder->Finished("segment", SecondsSince(run.start));
  }
}

// ---------------------------------------------------------------------------------------
// Setting up: the datasets, the job to watch, the study to segment.

v1::Hyperparameters SmallJob(int64_t steps, uint64_t seed) {
  v1::Hyperparameters h;
  h.set_total_steps(steps);
  h.set_checkpoint_every(std::max<int64_t>(1, steps / 4));
  h.set_validate_every(std::max<int64_t>(1, steps / 4));
  h.set_grid_size(absl::GetFlag(FLAGS_job_grid));
  for (const std::string& width : absl::GetFlag(FLAGS_job_widths)) {
    int64_t w = 0;
    if (absl::SimpleAtoi(width, &w)) h.add_widths(w);  // the server refuses bad widths
  }
  h.set_labeled_batch(2);
  h.set_unlabeled_batch(2);
  h.set_warmup_steps(1);
  h.set_rampup_steps(2);
  h.set_seed(seed);
  return h;
}

// A dataset of small labeled and unlabeled phantom studies, enough to train on.
absl::Status FillTrainingDataset(client::Client& client, const std::string& dataset,
                                 uint64_t seed) {
  RETURN_IF_ERROR(client.CreateDataset(dataset, PhantomClassNames(), "MR").status());
  for (int i = 0; i < 6; ++i) {
    const bool labeled = i < 4;
    const PhantomSubject subject = GeneratePhantomSubject(seed, 100 + i, SmallPhantomOptions());
    ASSIGN_OR_RETURN(PhantomStudy study,
                     MakePhantomStudy(subject, absl::StrCat("load-", seed, "-", i), labeled));
    if (study.segmentation) study.image_files.push_back(*study.segmentation);
    ASSIGN_OR_RETURN(
        v1::UploadResponse response,
        client.Upload(dataset, labeled ? v1::STUDY_ROLE_LABELED : v1::STUDY_ROLE_UNLABELED,
                      study.image_files));
    if (response.refused_instances() > 0) {
      return absl::InternalError(
          absl::StrCat("the server refused a training study: ", response.DebugString()));
    }
  }
  return absl::OkStatus();
}

// The stored events of a finished job: what every watcher should have seen.
absl::StatusOr<int64_t> StoredEvents(client::Client& client, int64_t job_id) {
  int64_t events = 0;
  client::WatchOptions options;
  options.follow = false;
  RETURN_IF_ERROR(client.WatchJob(job_id, options, [&](const v1::JobEvent&) { ++events; }));
  return events;
}

absl::StatusOr<std::vector<DicomBuffer>> StudyToSegment(uint64_t seed) {
  const PhantomSubject subject = GeneratePhantomSubject(seed, 200, SmallPhantomOptions());
  ASSIGN_OR_RETURN(PhantomStudy study,
                   MakePhantomStudy(subject, absl::StrCat("load-", seed, "-segment"), false));
  return std::move(study.image_files);
}

// --write_studies: the exact files the uploads send, one folder per upload.
absl::Status WriteStudies(const StudyTemplate& t, const std::string& dir, int uploaders,
                          int uploads_per_client) {
  for (int i = 0; i < uploaders; ++i) {
    for (int u = 0; u < uploads_per_client; ++u) {
      const std::string folder = absl::StrFormat("%s/upload-%03d-%03d", dir, i, u);
      std::filesystem::create_directories(folder);
      StampedStudy study(t, UploadStamp(i, u));
      for (int n = 0;; ++n) {
        ASSIGN_OR_RETURN(const DicomBuffer* file, study.Next());
        if (file == nullptr) break;
        const std::string path = absl::StrFormat("%s/%05d.dcm", folder, n);
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(file->bytes.data(), static_cast<std::streamsize>(file->bytes.size()));
        if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
      }
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// The report.

std::string Quote(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppendFormat(&out, "\\u%04x", static_cast<int>(static_cast<unsigned char>(c)));
    } else {
      out.push_back(c);
    }
  }
  return out + "\"";
}

std::string Number(double v) {
  if (!std::isfinite(v)) return "null";
  if (v == std::floor(v) && std::fabs(v) < 9e15) return absl::StrFormat("%.0f", v);
  return absl::StrFormat("%.6g", v);
}

std::string Object(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::vector<std::string> parts;
  for (const auto& [key, value] : fields) parts.push_back(Quote(key) + ": " + value);
  return "{" + absl::StrJoin(parts, ", ") + "}";
}

std::string LatencyJson(const Percentiles& p) {
  return Object({{"count", Number(static_cast<double>(p.count))},
                 {"p50", Number(p.p50)},
                 {"p99", Number(p.p99)},
                 {"max", Number(p.max)}});
}

std::string LatencyText(const Percentiles& p) {
  return absl::StrFormat("p50 %.3f s, p99 %.3f s, max %.3f s (%d calls)", p.p50, p.p99, p.max,
                         p.count);
}

struct Report {
  std::string target, address;
  int uploaders = 0, uploads_per_client = 0, watchers = 0, segmenters = 0, seconds = 0;
  const StudyTemplate* study = nullptr;
  int64_t study_mib = 0;
  double template_seconds = 0;
  int64_t job_id = 0;
  int64_t job_events = -1;  // stored events of the watched job; -1: unknown
  std::string job_state;
  std::string trained_dataset;  // the dataset of the job this run trained, its model active
  const Recorder* recorder = nullptr;
  const ServerSampler* sampler = nullptr;
};

double PerSecond(double amount, double seconds) { return seconds > 0 ? amount / seconds : 0; }

std::string UploadJson(const Report& r) {
  const Recorder& rec = *r.recorder;
  const double seconds = rec.End("upload");
  const double bytes = static_cast<double>(rec.Count("upload.bytes"));
  const double instances = static_cast<double>(rec.Count("upload.instances"));
  return Object(
      {{"study_mib", Number(static_cast<double>(r.study_mib))},
       {"study_files", Number(static_cast<double>(r.study->files.size()))},
       {"study_bytes", Number(static_cast<double>(r.study->bytes))},
       {"template_seconds", Number(r.template_seconds)},
       {"calls", Number(static_cast<double>(rec.Count("upload.calls")))},
       {"studies_whole", Number(static_cast<double>(rec.Count("upload.whole")))},
       {"studies_incomplete", Number(static_cast<double>(rec.Count("upload.incomplete")))},
       {"instances", Number(instances)},
       {"bytes", Number(bytes)},
       {"seconds", Number(seconds)},
       {"mib_per_s", Number(PerSecond(bytes / (1 << 20), seconds))},
       {"instances_per_s", Number(PerSecond(instances, seconds))},
       {"latency_s", LatencyJson(rec.LatencyOf("Upload"))}});
}

// Every watcher ended normally, in order, with as many events as the job stored.
bool AllSawEveryEvent(const Report& r) {
  const Percentiles events = r.recorder->LatencyOf("watch.events");
  return r.recorder->Count("watch.complete") == r.watchers && events.count == r.watchers &&
         r.job_events > 0 && events.min == static_cast<double>(r.job_events) &&
         events.max == static_cast<double>(r.job_events);
}

std::string WatchJson(const Report& r) {
  const Recorder& rec = *r.recorder;
  const Percentiles events = rec.LatencyOf("watch.events");
  return Object({{"job_id", Number(static_cast<double>(r.job_id))},
                 {"job_state", Quote(r.job_state)},
                 {"trained_dataset", Quote(r.trained_dataset)},
                 {"job_events", Number(static_cast<double>(r.job_events))},
                 {"watchers", Number(r.watchers)},
                 {"complete", Number(static_cast<double>(rec.Count("watch.complete")))},
                 {"failed", Number(static_cast<double>(rec.Count("watch.failed")))},
                 {"all_saw_every_event", AllSawEveryEvent(r) ? "true" : "false"},
                 {"events_per_watcher_min", Number(events.min)},
                 {"events_per_watcher_max", Number(events.max)},
                 {"events_total", Number(static_cast<double>(rec.Count("watch.events")))},
                 {"first_event_latency_s", LatencyJson(rec.LatencyOf("WatchJob first event"))},
                 {"stream_s", LatencyJson(rec.LatencyOf("WatchJob"))}});
}

std::string SegmentJson(const Report& r) {
  const Recorder& rec = *r.recorder;
  const double seconds = rec.End("segment");
  const double ok = static_cast<double>(rec.Count("segment.ok"));
  return Object({{"segmenters", Number(r.segmenters)},
                 {"calls", Number(static_cast<double>(rec.Count("segment.calls")))},
                 {"ok", Number(ok)},
                 {"seconds", Number(seconds)},
                 {"per_s", Number(PerSecond(ok, seconds))},
                 {"latency_s", LatencyJson(rec.LatencyOf("Segment"))}});
}

std::string ServerJson(const Report& r) {
  if (!r.sampler->enabled()) return "null";
  const ServerSampler::Figures f = r.sampler->figures();
  auto figure = [](double idle, double peak) {
    return Object({{"idle", Number(idle)}, {"peak", Number(peak)}, {"delta", Number(peak - idle)}});
  };
  return Object({{"source", Quote(r.sampler->source())},
                 {"samples", Number(static_cast<double>(f.samples))},
                 {"failed_samples", Number(static_cast<double>(f.failures))},
                 {"rss_bytes", figure(f.idle.rss_bytes, f.peak.rss_bytes)},
                 {"threads", figure(f.idle.threads, f.peak.threads)}});
}

std::string ErrorsJson(const Recorder& rec) {
  std::vector<std::pair<std::string, std::string>> by_rpc;
  for (const auto& [rpc, codes] : rec.errors()) {
    std::vector<std::pair<std::string, std::string>> counts;
    for (const auto& [code, n] : codes) counts.emplace_back(code, Number(static_cast<double>(n)));
    by_rpc.emplace_back(rpc, Object(counts));
  }
  return Object(by_rpc);
}

void PrintJson(const Report& r) {
  std::vector<std::string> notes;
  for (const std::string& n : r.recorder->notes()) notes.push_back(Quote(n));
  std::vector<std::pair<std::string, std::string>> fields = {
      {"target", Quote(r.target)},        {"address", Quote(r.address)},
      {"uploaders", Number(r.uploaders)}, {"uploads_per_client", Number(r.uploads_per_client)},
      {"watchers", Number(r.watchers)},   {"segmenters", Number(r.segmenters)},
      {"seconds", Number(r.seconds)}};
  if (r.uploaders > 0) fields.emplace_back("upload", UploadJson(r));
  if (r.watchers > 0) fields.emplace_back("watch", WatchJson(r));
  if (r.segmenters > 0) fields.emplace_back("segment", SegmentJson(r));
  fields.emplace_back("errors", ErrorsJson(*r.recorder));
  fields.emplace_back("server", ServerJson(r));
  fields.emplace_back("notes", "[" + absl::StrJoin(notes, ", ") + "]");
  std::cout << Object(fields) << "\n";
}

void PrintText(const Report& r) {
  const Recorder& rec = *r.recorder;
  std::cout << "miseg-load against " << r.target << " at " << r.address << "\n";
  if (r.uploaders > 0) {
    const double seconds = rec.End("upload");
    const double mib = static_cast<double>(rec.Count("upload.bytes")) / (1 << 20);
    const double instances = static_cast<double>(rec.Count("upload.instances"));
    std::cout << absl::StrFormat(
        "upload   %d uploaders, studies of %d MiB (%d files, generated in %.1f s): %d calls, "
        "%d stored whole, %d incomplete\n"
        "         %.1f MiB and %.0f instances in %.2f s: %.1f MiB/s, %.1f instances/s\n"
        "         Upload %s\n",
        r.uploaders, r.study_mib, r.study->files.size(), r.template_seconds,
        rec.Count("upload.calls"), rec.Count("upload.whole"), rec.Count("upload.incomplete"), mib,
        instances, seconds, PerSecond(mib, seconds), PerSecond(instances, seconds),
        LatencyText(rec.LatencyOf("Upload")));
    if (rec.LatencyOf("POST /instances").count > 0) {
      std::cout << "         POST /instances " << LatencyText(rec.LatencyOf("POST /instances"))
                << "\n";
    }
  }
  if (r.watchers > 0) {
    const Percentiles events = rec.LatencyOf("watch.events");
    std::cout << absl::StrFormat(
        "watch    %d watchers of job %d (%s, %d events stored): %d complete and in order, %d "
        "failed; events per watcher min %.0f, max %.0f; all saw every event: %s\n"
        "         first event %s\n"
        "         whole stream %s\n",
        r.watchers, r.job_id, r.job_state, r.job_events, rec.Count("watch.complete"),
        rec.Count("watch.failed"), events.min, events.max, AllSawEveryEvent(r) ? "yes" : "NO",
        LatencyText(rec.LatencyOf("WatchJob first event")), LatencyText(rec.LatencyOf("WatchJob")));
    if (!r.trained_dataset.empty()) {
      std::cout << "         its model is now the active model of dataset " << r.trained_dataset
                << "\n";
    }
  }
  if (r.segmenters > 0) {
    const double seconds = rec.End("segment");
    std::cout << absl::StrFormat(
        "segment  %d segmenters: %d calls, %d ok in %.2f s: %.2f segmentations/s\n"
        "         Segment %s\n",
        r.segmenters, rec.Count("segment.calls"), rec.Count("segment.ok"), seconds,
        PerSecond(static_cast<double>(rec.Count("segment.ok")), seconds),
        LatencyText(rec.LatencyOf("Segment")));
  }
  for (const auto& [rpc, codes] : rec.errors()) {
    std::vector<std::string> counts;
    for (const auto& [code, n] : codes) counts.push_back(absl::StrCat(code, " ", n));
    std::cout << "errors   " << rpc << ": " << absl::StrJoin(counts, ", ") << "\n";
  }
  for (const std::string& note : rec.notes()) std::cout << "note     " << note << "\n";
  if (r.sampler->enabled()) {
    const ServerSampler::Figures f = r.sampler->figures();
    std::cout << absl::StrFormat(
        "server   RSS idle %.1f MiB, peak %.1f MiB, delta %+.1f MiB; threads idle %.0f, peak "
        "%.0f, delta %+.0f (%d samples from %s, %d failed)\n",
        f.idle.rss_bytes / (1 << 20), f.peak.rss_bytes / (1 << 20),
        (f.peak.rss_bytes - f.idle.rss_bytes) / (1 << 20), f.idle.threads, f.peak.threads,
        f.peak.threads - f.idle.threads, f.samples, r.sampler->source(), f.failures);
  }
}

// ---------------------------------------------------------------------------------------

void Log(const std::string& line) { std::cerr << "miseg-load: " << line << std::endl; }

// A temporary directory removed at the end, unless the user named one.
class WorkDir {
 public:
  WorkDir() {
    const std::string given = absl::GetFlag(FLAGS_work_dir);
    if (!given.empty()) {
      path_ = given;
      return;
    }
    std::string pattern = (std::filesystem::temp_directory_path() / "miseg-load-XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) {
      path_ = pattern;
      owned_ = true;
    }
  }
  ~WorkDir() {
    std::error_code ignored;
    if (owned_) std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool owned_ = false;
};

absl::Status CheckFlags() {
  const bool orthanc = !absl::GetFlag(FLAGS_orthanc).empty();
  if (absl::GetFlag(FLAGS_uploaders) < 0 || absl::GetFlag(FLAGS_watchers) < 0 ||
      absl::GetFlag(FLAGS_segmenters) < 0 || absl::GetFlag(FLAGS_uploads_per_client) < 0) {
    return absl::InvalidArgumentError("counts must not be negative");
  }
  if (absl::GetFlag(FLAGS_study_mib) < 1 || absl::GetFlag(FLAGS_matrix) < 32) {
    return absl::InvalidArgumentError("--study_mib must be >= 1 and --matrix >= 32");
  }
  if (orthanc && (absl::GetFlag(FLAGS_watchers) > 0 || absl::GetFlag(FLAGS_segmenters) > 0)) {
    return absl::InvalidArgumentError("--orthanc measures uploads only");
  }
  if (absl::GetFlag(FLAGS_segmenters) > 0 && absl::GetFlag(FLAGS_segment_dataset).empty()) {
    return absl::InvalidArgumentError(
        "--segmenters needs --segment_dataset (a dataset with an active model)");
  }
  if (absl::GetFlag(FLAGS_uploaders) + absl::GetFlag(FLAGS_watchers) +
              absl::GetFlag(FLAGS_segmenters) ==
          0 &&
      absl::GetFlag(FLAGS_write_studies).empty()) {
    return absl::InvalidArgumentError(
        "nothing to do: give --uploaders, --watchers or --segmenters");
  }
  return absl::OkStatus();
}

// Every worker on its own thread, all at once; returns when all are done.
void RunWorkers(const Run& run, int uploaders, int watchers, int64_t job_id, int segmenters,
                const std::vector<DicomBuffer>& to_segment) {
  std::vector<std::thread> threads;
  for (int i = 0; i < uploaders; ++i) {
    threads.emplace_back(run.orthanc.empty() ? Uploader : OrthancUploader, std::cref(run), i);
  }
  const std::chrono::seconds watch_timeout(absl::GetFlag(FLAGS_watch_timeout));
  for (int i = 0; i < watchers; ++i) {
    threads.emplace_back(Watcher, std::cref(run), job_id, watch_timeout);
  }
  for (int i = 0; i < segmenters; ++i) {
    threads.emplace_back(Segmenter, std::cref(run), absl::GetFlag(FLAGS_segment_dataset),
                         std::cref(to_segment));
  }
  for (std::thread& t : threads) t.join();
}

// The watched job as it ended: its stored events (what each watcher should have seen) and
// state. The model of a job this run started becomes its dataset's active model, ready for a
// later run's --segment_dataset.
void DescribeJob(client::Client& admin, int64_t job_id, bool started_here, Report* report) {
  absl::StatusOr<int64_t> stored = StoredEvents(admin, job_id);
  if (stored.ok()) report->job_events = *stored;
  absl::StatusOr<v1::Job> job = admin.GetJob(job_id);
  if (!job.ok()) return;
  report->job_state = v1::JobState_Name(job->state());
  if (started_here && job->model_id() > 0 && admin.PromoteModel(job->model_id()).ok()) {
    report->trained_dataset = job->dataset();
  }
}

// The template study the uploads stamp (with --uploaders or --write_studies); its seconds.
absl::StatusOr<double> MakeUploadTemplate(const WorkDir& work, StudyTemplate* study) {
  const Clock::time_point t0 = Clock::now();
  ASSIGN_OR_RETURN(*study, MakeTemplate(work.path() + "/template", absl::GetFlag(FLAGS_study_mib),
                                        absl::GetFlag(FLAGS_matrix), absl::GetFlag(FLAGS_seed)));
  const double seconds = SecondsSince(t0);
  Log(absl::StrFormat("template study: %d files, %.1f MiB in %s/template (%.1f s)",
                      study->files.size(), static_cast<double>(study->bytes) / (1 << 20),
                      work.path(), seconds));
  return seconds;
}

// What the workers share, from the flags.
Run MakeRun(const StudyTemplate* study, Recorder* recorder) {
  Run run;
  run.connection.address = absl::GetFlag(FLAGS_address);
  run.connection.token = absl::GetFlag(FLAGS_token);
  run.study = study;
  run.orthanc = absl::GetFlag(FLAGS_orthanc);
  run.uploads_per_client = absl::GetFlag(FLAGS_uploads_per_client);
  run.recorder = recorder;
  return run;
}

// On a miseg-server, before the clock starts: the upload dataset, the training data of the
// job to watch, the study to segment. Returns the admin connection.
absl::StatusOr<std::unique_ptr<client::Client>> PrepareServer(
    Run& run, const std::string& prefix, bool train, std::vector<DicomBuffer>* to_segment) {
  ASSIGN_OR_RETURN(std::unique_ptr<client::Client> admin, client::Client::Connect(run.connection));
  if (absl::GetFlag(FLAGS_uploaders) > 0) {
    run.dataset = prefix;
    RETURN_IF_ERROR(admin->CreateDataset(run.dataset, PhantomClassNames(), "MR").status());
  }
  if (train) {
    Log("filling a small labeled dataset to train on");
    RETURN_IF_ERROR(FillTrainingDataset(*admin, prefix + "-train", absl::GetFlag(FLAGS_seed)));
  }
  if (absl::GetFlag(FLAGS_segmenters) > 0) {
    ASSIGN_OR_RETURN(*to_segment, StudyToSegment(absl::GetFlag(FLAGS_seed)));
  }
  return admin;
}

Report MakeReport(const Run& run, const StudyTemplate& study, double template_seconds,
                  int64_t job_id, const Recorder& recorder, const ServerSampler& sampler) {
  Report report;
  report.target = run.orthanc.empty() ? "miseg" : "orthanc";
  report.address = run.orthanc.empty() ? run.connection.address : run.orthanc;
  report.uploaders = absl::GetFlag(FLAGS_uploaders);
  report.uploads_per_client = run.uploads_per_client;
  report.watchers = absl::GetFlag(FLAGS_watchers);
  report.segmenters = absl::GetFlag(FLAGS_segmenters);
  report.seconds = absl::GetFlag(FLAGS_seconds);
  report.study = &study;
  report.study_mib = absl::GetFlag(FLAGS_study_mib);
  report.template_seconds = template_seconds;
  report.job_id = job_id;
  report.recorder = &recorder;
  report.sampler = &sampler;
  return report;
}

absl::Status Main() {
  RETURN_IF_ERROR(CheckFlags());
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const int uploaders = absl::GetFlag(FLAGS_uploaders);
  const int watchers = absl::GetFlag(FLAGS_watchers);
  const int segmenters = absl::GetFlag(FLAGS_segmenters);
  const bool write_studies = !absl::GetFlag(FLAGS_write_studies).empty();

  WorkDir work;
  if (work.path().empty()) return absl::InternalError("cannot create a temporary directory");
  StudyTemplate study;
  double template_seconds = 0;
  if (uploaders > 0 || write_studies) {
    ASSIGN_OR_RETURN(template_seconds, MakeUploadTemplate(work, &study));
  }
  if (write_studies) {
    return WriteStudies(study, absl::GetFlag(FLAGS_write_studies), std::max(1, uploaders),
                        std::max(1, absl::GetFlag(FLAGS_uploads_per_client)));
  }

  Recorder recorder;
  Run run = MakeRun(&study, &recorder);
  std::unique_ptr<client::Client> admin;
  int64_t job_id = absl::GetFlag(FLAGS_job);
  const std::string prefix = absl::StrCat("load-", getpid());
  std::vector<DicomBuffer> to_segment;
  if (run.orthanc.empty()) {
    ASSIGN_OR_RETURN(admin, PrepareServer(run, prefix, watchers > 0 && job_id == 0, &to_segment));
  }

  ServerSampler sampler(absl::GetFlag(FLAGS_metrics), absl::GetFlag(FLAGS_pid));
  RETURN_IF_ERROR(sampler.Start());
  run.start = Clock::now();
  run.deadline = run.start + std::chrono::seconds(absl::GetFlag(FLAGS_seconds));
  if (watchers > 0 && job_id == 0) {
    ASSIGN_OR_RETURN(v1::Job job,
                     admin->StartJob(prefix + "-train", SmallJob(absl::GetFlag(FLAGS_job_steps),
                                                                 absl::GetFlag(FLAGS_seed))));
    job_id = job.id();
  }
  Log(absl::StrCat("running: ", uploaders, " uploaders, ", watchers, " watchers",
                   watchers > 0 ? absl::StrCat(" of job ", job_id) : "", ", ", segmenters,
                   " segmenters"));
  RunWorkers(run, uploaders, watchers, job_id, segmenters, to_segment);
  sampler.Stop();

  Report report = MakeReport(run, study, template_seconds, job_id, recorder, sampler);
  if (watchers > 0) {
    DescribeJob(*admin, job_id, /*started_here=*/absl::GetFlag(FLAGS_job) == 0, &report);
  }
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(report);
  } else {
    PrintText(report);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace miseg

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "miseg-load --address HOST:PORT [--token T] [--metrics HOST:PORT] --uploaders N "
      "--study-mib M [--uploads-per-client K] --watchers W [--job ID] --segmenters S "
      "--segment-dataset NAME --seconds T [--json]\n"
      "  drives a running miseg-server (or Orthanc, with --orthanc) and prints its figures; "
      "flags take - or _ alike");
  absl::FlagsUsageConfig usage;  // --help lists this program's flags, not Abseil's
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "miseg_load.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  // The spelling (--study-mib) as well as Abseil's (--study_mib).
  std::vector<std::string> args(argv, argv + argc);
  std::vector<char*> pointers;
  for (std::string& arg : args) {
    if (absl::StartsWith(arg, "--")) {
      const size_t end = std::min(arg.find('='), arg.size());
      std::replace(arg.begin() + 2, arg.begin() + static_cast<std::ptrdiff_t>(end), '-', '_');
    }
    pointers.push_back(arg.data());
  }
  absl::ParseCommandLine(static_cast<int>(pointers.size()), pointers.data());
  absl::Status status = miseg::Main();
  if (!status.ok()) {
    miseg::Log(status.ToString());
    return 1;
  }
  return 0;
}

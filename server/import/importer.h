// Imports from a PACS: durable jobs (the store's imports table) run on a bounded pool of
// the server's threads. An import lists its study at the source once and records every
// instance to fetch; each instance fetched goes into the file store and is recorded in its
// own transaction before the next is asked for, so a server killed half way resumes where
// it stopped without fetching anything twice. A labeled (or validation) import fetches the
// study's DICOM SEGs first and keeps the series they reference (and the SEG of the series
// asked for). Once everything is fetched the study is checked and stored exactly as an
// upload is (server/domain/ingest.h), so the same refusals apply and importing again stores
// nothing twice: instances already in the dataset are not even fetched.
//
// Thread safety: every public method may be called from any thread (gRPC's). Imports run
// on the importer's own pool of `threads`; Shutdown stops them at their next instance and
// puts them back in the queue for the next start.
#ifndef MISEG_SERVER_IMPORT_IMPORTER_H_
#define MISEG_SERVER_IMPORT_IMPORTER_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/dicom/series_reader.h"
#include "server/import/import_sources.h"
#include "server/store/file_store.h"
#include "server/store/store.h"
#include "server/domain/work_pool.h"

namespace miseg {

struct ImporterOptions {
  int threads = 2;  // imports that run at once
  SeriesReaderLimits reader_limits;
  // Tests only: after this many instances fetched by this process, the importer logs
  // "import test hook: paused after N instances" and fetches nothing more until Shutdown
  // (so a test can kill the server at a known point), or until that import is cancelled.
  // 0: never.
  int64_t test_pause_after = 0;
};

struct ImportRequest {
  std::string source;
  StoredRole role = StoredRole::kUnlabeled;
  std::string study_instance_uid, series_instance_uid;
  std::string query;  // instead of a study: every study it matches
};

class Importer {
 public:
  Importer(Store* store, FileStore* files, std::vector<ImportSourceSpec> sources,
           ImporterOptions options);
  ~Importer();  // Shutdown()
  Importer(const Importer&) = delete;
  Importer& operator=(const Importer&) = delete;

  // Requeues the imports a crash left running and schedules every queued one.
  absl::Status Start();
  // Stops the running imports at their next instance, waits for them, and requeues them.
  void Shutdown();

  // Creates (or finds again, see Store::CreateImport) one import per study and schedules
  // them. InvalidArgument for a request naming no study or query, or both, or a bad query;
  // NotFound for a source that is not configured; the source's errors for a query.
  absl::StatusOr<std::vector<ImportRecord>> StartImports(const DatasetRecord& dataset,
                                                         const ImportRequest& request);
  // Store::RequestImportCancel, and the running import stops before its next instance.
  absl::StatusOr<ImportRecord> Cancel(int64_t id);

  const std::vector<ImportSourceSpec>& sources() const { return sources_; }

 private:
  enum class Outcome { kSucceeded, kFailed, kCancelled, kStopped };
  struct Result {
    Outcome outcome = Outcome::kSucceeded;
    std::string error, message;
    std::vector<std::string> stored_series;
  };
  class Run;  // one import's run (importer.cc)

  void Schedule(int64_t id);
  void RunImport(int64_t id);
  const ImportSourceSpec* FindSource(const std::string& name) const;
  // Called after each instance of import `id` is recorded: the test hook's pause (until
  // Shutdown, or until that import is cancelled).
  void CountFetched(int64_t id);
  bool StopRequested(int64_t id);

  Store* const store_;
  FileStore* const files_;
  const std::vector<ImportSourceSpec> sources_;
  const ImporterOptions options_;

  absl::Mutex mutex_;
  std::set<int64_t> scheduled_ ABSL_GUARDED_BY(mutex_);  // in the pool's queue or running
  std::set<int64_t> cancelled_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  int64_t fetched_here_ ABSL_GUARDED_BY(mutex_) = 0;

  std::unique_ptr<WorkPool> pool_;  // last: joined first, by Shutdown
};

}  // namespace miseg

#endif  // MISEG_SERVER_IMPORT_IMPORTER_H_

// A real Orthanc (Debian's 1.10.1, optionally with its DICOMweb plugin) for the tests of the
// DICOM networking layer: the PACS miseg-server talks to. Started on free ports (HTTP and
// DICOM; Orthanc binds every interface, tests talk to it on 127.0.0.1) with its storage in a
// directory of the test's, synchronised on its own "Orthanc has started" log line and then
// one answered GET /system (no sleeps), stopped with SIGTERM or SIGKILL, restartable on the
// same storage and ports. REST helpers use libcurl.
#ifndef MISEG_TESTS_SERVER_ORTHANC_PROCESS_H_
#define MISEG_TESTS_SERVER_ORTHANC_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/server/child_process.h"

namespace miseg::testing {

// A fresh temporary directory, removed with everything in it on destruction. (Own name so
// that it never clashes with server_process.h's TempDir in one binary.)

// The Orthanc binary and DICOMweb plugin the harness uses (Debian's paths).
inline constexpr char kOrthancBinary[] = "/usr/sbin/Orthanc";
inline constexpr char kOrthancDicomWebPlugin[] = "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7";

struct OrthancModality {
  std::string ae_title;
  std::string host = "127.0.0.1";
  int port = 0;
};

struct OrthancOptions {
  std::string dicom_aet = "ORTHANC";
  std::map<std::string, OrthancModality> modalities;  // name -> where /modalities/name/store goes
  bool enable_dicomweb = true;
  std::vector<std::string> lua_scripts;  // paths, Orthanc's "LuaScripts" (e.g. a request log)
};

struct HttpReply {
  long status = 0;
  std::string body;
};

class OrthancProcess {
 public:
  // Writes dir/orthanc.json (storage and index in dir/storage) and starts Orthanc; returns
  // once it serves REST and DICOM, or an error holding its log when it exits or stays silent
  // for 60 s.
  static absl::StatusOr<std::unique_ptr<OrthancProcess>> Start(const std::string& dir,
                                                               const OrthancOptions& options = {});
  ~OrthancProcess();  // SIGKILL if still running

  int http_port() const { return http_port_; }
  int dicom_port() const { return dicom_port_; }
  const std::string& dicom_aet() const { return options_.dicom_aet; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(http_port_); }
  std::string dicomweb_studies_url() const { return base_url() + "/dicom-web/studies"; }
  bool running() const { return child_ != nullptr && !child_->exited(); }
  std::string log() const;

  // SIGTERM and wait (up to timeout, then SIGKILL): Internal when it had to be killed.
  absl::Status Stop(std::chrono::seconds timeout = std::chrono::seconds(30));
  void Kill();  // SIGKILL, reaped
  // Stops it if running, then starts it again with the same configuration, storage and ports.
  absl::Status Restart();

  // REST. Request returns any HTTP status; Get / Post return the body of a 2xx reply and
  // an error naming the status and body otherwise (Unavailable when nothing answers).
  absl::StatusOr<HttpReply> Request(const std::string& method, const std::string& path,
                                    const std::string& body = "",
                                    const std::string& content_type = "application/json") const;
  absl::StatusOr<std::string> Get(const std::string& path) const;
  absl::StatusOr<std::string> Post(const std::string& path, const std::string& body,
                                   const std::string& content_type = "application/json") const;

  // GET /statistics: CountInstances.
  absl::StatusOr<int> CountInstances() const;
  // POST /tools/lookup: the Orthanc IDs of the resources with this DICOM UID (patient, study,
  // series or instance), with their types ("Study", "Series", "Instance").
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Lookup(
      const std::string& dicom_uid) const;
  // The Orthanc ID of the series with this SeriesInstanceUID (NotFound when absent).
  absl::StatusOr<std::string> FindSeries(const std::string& series_instance_uid) const;
  // The Orthanc IDs of the series' instances (NotFound when the series is absent).
  absl::StatusOr<std::vector<std::string>> SeriesInstances(
      const std::string& series_instance_uid) const;
  // GET /instances/ID/file: the stored Part-10 file.
  absl::StatusOr<std::string> DownloadInstance(const std::string& orthanc_id) const;
  // POST /instances: the new instance's Orthanc ID.
  absl::StatusOr<std::string> UploadInstance(const std::string& part10) const;
  // POST /modalities/NAME/store {"Resources": ids, "Synchronous": true}: OK when Orthanc
  // reports no failed instance; the number of instances sent.
  absl::StatusOr<int> StoreToModality(const std::string& modality,
                                      const std::vector<std::string>& orthanc_ids) const;

 private:
  OrthancProcess() = default;
  absl::Status Launch();

  std::string dir_, config_path_;
  OrthancOptions options_;
  int http_port_ = 0, dicom_port_ = 0;
  std::unique_ptr<ChildProcess> child_;  // the current launch
  std::string earlier_logs_;             // of launches before a Restart
};

// Small JSON helpers for Orthanc's replies (no JSON library in the image): the string or
// number value of the first "key" : value, and the strings of the first "key" : [ ... ].
std::string JsonString(const std::string& json, const std::string& key);
long long JsonNumber(const std::string& json, const std::string& key, long long fallback = -1);
std::vector<std::string> JsonStringArray(const std::string& json, const std::string& key);

}  // namespace miseg::testing

#endif  // MISEG_TESTS_SERVER_ORTHANC_PROCESS_H_

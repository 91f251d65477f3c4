#include "tests/server/orthanc_process.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>

#include <curl/curl.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace miseg::testing {

namespace {

// A port the kernel chose on 127.0.0.1, held by an open (bound, not listening) socket until
// Release(), just before the process that will bind it starts.
class PortReservation {
 public:
  PortReservation() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;
    socklen_t length = sizeof(address);
    if (fd_ >= 0 && bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
        getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
      port_ = ntohs(address.sin_port);
    }
  }
  ~PortReservation() { Release(); }
  int port() const { return port_; }
  void Release() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  int port_ = 0;
};

std::string JsonQuote(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

size_t Append(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

void InitCurl() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// The position just after `"key"` and the colon that follows it, or npos.
size_t ValueStart(const std::string& json, const std::string& key, size_t from = 0) {
  const std::string quoted = "\"" + key + "\"";
  size_t at = json.find(quoted, from);
  while (at != std::string::npos) {
    size_t i = json.find_first_not_of(" \t\r\n", at + quoted.size());
    if (i != std::string::npos && json[i] == ':') {
      return json.find_first_not_of(" \t\r\n", i + 1);
    }
    at = json.find(quoted, at + 1);
  }
  return std::string::npos;
}

// Reads a JSON string starting at json[i] == '"'; sets *end past it.
std::string ReadString(const std::string& json, size_t i, size_t* end) {
  std::string out;
  for (++i; i < json.size() && json[i] != '"'; ++i) {
    if (json[i] == '\\' && i + 1 < json.size()) ++i;
    out.push_back(json[i]);
  }
  *end = i + 1;
  return out;
}

}  // namespace

std::string JsonString(const std::string& json, const std::string& key) {
  const size_t i = ValueStart(json, key);
  if (i == std::string::npos || json[i] != '"') return "";
  size_t end = 0;
  return ReadString(json, i, &end);
}

long long JsonNumber(const std::string& json, const std::string& key, long long fallback) {
  size_t i = ValueStart(json, key);
  if (i == std::string::npos) return fallback;
  if (json[i] == '"') ++i;  // Orthanc quotes some sizes
  char* end = nullptr;
  const long long value = strtoll(json.c_str() + i, &end, 10);
  return end == json.c_str() + i ? fallback : value;
}

std::vector<std::string> JsonStringArray(const std::string& json, const std::string& key) {
  std::vector<std::string> out;
  size_t i = ValueStart(json, key);
  if (i == std::string::npos || json[i] != '[') return out;
  for (++i; i < json.size() && json[i] != ']'; ++i) {
    if (json[i] == '"') {
      size_t end = 0;
      out.push_back(ReadString(json, i, &end));
      i = end - 1;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<OrthancProcess>> OrthancProcess::Start(
    const std::string& dir, const OrthancOptions& options) {
  if (access(kOrthancBinary, X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(kOrthancBinary, " is not installed"));
  }
  std::unique_ptr<OrthancProcess> orthanc(new OrthancProcess());
  orthanc->dir_ = dir;
  orthanc->options_ = options;
  orthanc->config_path_ = dir + "/orthanc.json";
  const std::string storage = dir + "/storage";
  std::error_code error;
  std::filesystem::create_directories(storage, error);
  if (error) return absl::InternalError(absl::StrCat("cannot create ", storage));

  PortReservation http, dicom;
  if (http.port() == 0 || dicom.port() == 0) return absl::InternalError("no free port");
  orthanc->http_port_ = http.port();
  orthanc->dicom_port_ = dicom.port();

  std::vector<std::string> lua_scripts;
  for (const std::string& script : options.lua_scripts) lua_scripts.push_back(JsonQuote(script));
  std::vector<std::string> modalities;
  for (const auto& [name, m] : options.modalities) {
    modalities.push_back(absl::StrCat("    ", JsonQuote(name), ": [", JsonQuote(m.ae_title), ", ",
                                      JsonQuote(m.host), ", ", m.port, "]"));
  }
  const std::string config = absl::StrCat(
      "{\n", "  \"Name\": \"miseg-test-pacs\",\n", "  \"HttpPort\": ", orthanc->http_port_, ",\n",
      "  \"DicomPort\": ", orthanc->dicom_port_, ",\n",
      "  \"DicomAet\": ", JsonQuote(options.dicom_aet), ",\n",
      "  \"RemoteAccessAllowed\": false,\n", "  \"AuthenticationEnabled\": false,\n",
      "  \"StorageDirectory\": ", JsonQuote(storage), ",\n",
      "  \"IndexDirectory\": ", JsonQuote(storage), ",\n", "  \"Plugins\": [",
      options.enable_dicomweb ? JsonQuote(kOrthancDicomWebPlugin) : "", "],\n",
      "  \"DicomWeb\": {\"Enable\": ", options.enable_dicomweb ? "true" : "false",
      ", \"Root\": \"/dicom-web/\"},\n", "  \"DicomAlwaysAllowStore\": true,\n",
      "  \"DicomCheckCalledAet\": false,\n", "  \"SaveJobs\": false,\n",
      "  \"LuaScripts\": [", absl::StrJoin(lua_scripts, ", "), "],\n",
      "  \"DicomModalities\": {\n", absl::StrJoin(modalities, ",\n"), "\n  }\n", "}\n");
  {
    std::ofstream out(orthanc->config_path_, std::ios::trunc);
    out << config;
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", orthanc->config_path_));
  }
  // The ports are free again only now, just before Orthanc binds them.
  http.Release();
  dicom.Release();
  absl::Status launched = orthanc->Launch();
  if (!launched.ok()) return launched;
  return orthanc;
}

absl::Status OrthancProcess::Launch() {
  if (child_ != nullptr) earlier_logs_ += child_->log();
  absl::StatusOr<std::unique_ptr<ChildProcess>> child =
      ChildProcess::Spawn({kOrthancBinary, config_path_});
  if (!child.ok()) return child.status();
  child_ = *std::move(child);
  if (!child_->WaitForLog("Orthanc has started", std::chrono::seconds(60))) {
    Kill();
    return absl::UnavailableError(absl::StrCat("Orthanc did not start:\n", log()));
  }
  // The log line comes after both servers listen; one request confirms the REST side.
  absl::StatusOr<std::string> system = Get("/system");
  if (!system.ok()) {
    Kill();
    return absl::UnavailableError(absl::StrCat("Orthanc logged its start but GET /system failed: ",
                                               system.status().message(), "\n", log()));
  }
  return absl::OkStatus();
}

OrthancProcess::~OrthancProcess() { Kill(); }

std::string OrthancProcess::log() const {
  return earlier_logs_ + (child_ != nullptr ? child_->log() : "");
}

void OrthancProcess::Kill() {
  if (child_ != nullptr) child_->Kill();
}

absl::Status OrthancProcess::Stop(std::chrono::seconds timeout) {
  if (child_ == nullptr || child_->exited()) return absl::OkStatus();
  if (child_->Terminate(timeout) < 0) {
    return absl::InternalError("Orthanc did not exit on SIGTERM; killed");
  }
  return absl::OkStatus();
}

absl::Status OrthancProcess::Restart() {
  absl::Status stopped = Stop();
  if (!stopped.ok()) return stopped;
  return Launch();
}

absl::StatusOr<HttpReply> OrthancProcess::Request(const std::string& method,
                                                  const std::string& path, const std::string& body,
                                                  const std::string& content_type) const {
  InitCurl();
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  HttpReply reply;
  curl_slist* headers = nullptr;
  const std::string url = base_url() + path;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (method == "POST" || method == "PUT") {
    headers = curl_slist_append(headers, ("Content-Type: " + content_type).c_str());
    headers = curl_slist_append(headers, "Expect:");
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &Append);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply.body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 120L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  const CURLcode code = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &reply.status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  if (code != CURLE_OK) {
    return absl::UnavailableError(absl::StrCat(method, " ", url, ": ", curl_easy_strerror(code)));
  }
  return reply;
}

absl::StatusOr<std::string> OrthancProcess::Get(const std::string& path) const {
  absl::StatusOr<HttpReply> reply = Request("GET", path);
  if (!reply.ok()) return reply.status();
  if (reply->status / 100 != 2) {
    if (reply->status == 404) {
      return absl::NotFoundError(absl::StrCat("GET ", path, ": HTTP 404: ", reply->body));
    }
    return absl::InternalError(
        absl::StrCat("GET ", path, ": HTTP ", reply->status, ": ", reply->body));
  }
  return reply->body;
}

absl::StatusOr<std::string> OrthancProcess::Post(const std::string& path, const std::string& body,
                                                 const std::string& content_type) const {
  absl::StatusOr<HttpReply> reply = Request("POST", path, body, content_type);
  if (!reply.ok()) return reply.status();
  if (reply->status / 100 != 2) {
    return absl::InternalError(
        absl::StrCat("POST ", path, ": HTTP ", reply->status, ": ", reply->body));
  }
  return reply->body;
}

absl::StatusOr<int> OrthancProcess::CountInstances() const {
  absl::StatusOr<std::string> statistics = Get("/statistics");
  if (!statistics.ok()) return statistics.status();
  const long long count = JsonNumber(*statistics, "CountInstances");
  if (count < 0) return absl::InternalError("no CountInstances in /statistics: " + *statistics);
  return static_cast<int>(count);
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> OrthancProcess::Lookup(
    const std::string& dicom_uid) const {
  absl::StatusOr<std::string> reply = Post("/tools/lookup", dicom_uid, "text/plain");
  if (!reply.ok()) return reply.status();
  std::vector<std::pair<std::string, std::string>> found;
  size_t at = 0;
  while ((at = reply->find("\"ID\"", at)) != std::string::npos) {
    const std::string rest = reply->substr(at);
    const size_t end = rest.find('}');
    const std::string object = rest.substr(0, end);
    found.emplace_back(JsonString(object, "ID"), JsonString(object, "Type"));
    at += 4;
  }
  return found;
}

absl::StatusOr<std::string> OrthancProcess::FindSeries(
    const std::string& series_instance_uid) const {
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> found =
      Lookup(series_instance_uid);
  if (!found.ok()) return found.status();
  for (const auto& [id, type] : *found) {
    if (type == "Series") return id;
  }
  return absl::NotFoundError(absl::StrCat("no series ", series_instance_uid, " in Orthanc"));
}

absl::StatusOr<std::vector<std::string>> OrthancProcess::SeriesInstances(
    const std::string& series_instance_uid) const {
  absl::StatusOr<std::string> id = FindSeries(series_instance_uid);
  if (!id.ok()) return id.status();
  absl::StatusOr<std::string> series = Get("/series/" + *id);
  if (!series.ok()) return series.status();
  return JsonStringArray(*series, "Instances");
}

absl::StatusOr<std::string> OrthancProcess::DownloadInstance(const std::string& orthanc_id) const {
  return Get("/instances/" + orthanc_id + "/file");
}

absl::StatusOr<std::string> OrthancProcess::UploadInstance(const std::string& part10) const {
  absl::StatusOr<std::string> reply = Post("/instances", part10, "application/dicom");
  if (!reply.ok()) return reply.status();
  const std::string id = JsonString(*reply, "ID");
  if (id.empty()) return absl::InternalError("POST /instances: no ID in " + *reply);
  return id;
}

absl::StatusOr<int> OrthancProcess::StoreToModality(
    const std::string& modality, const std::vector<std::string>& orthanc_ids) const {
  std::vector<std::string> quoted;
  for (const std::string& id : orthanc_ids) quoted.push_back(JsonQuote(id));
  const std::string body =
      absl::StrCat("{\"Resources\": [", absl::StrJoin(quoted, ", "), "], \"Synchronous\": true}");
  absl::StatusOr<std::string> reply = Post("/modalities/" + modality + "/store", body);
  if (!reply.ok()) return reply.status();
  const long long failed = JsonNumber(*reply, "FailedInstancesCount");
  const long long sent = JsonNumber(*reply, "InstancesCount");
  if (failed != 0 || sent < 0) {
    return absl::InternalError(absl::StrCat("store to ", modality, ": ", *reply));
  }
  return static_cast<int>(sent);
}

}  // namespace miseg::testing

// The import sources' clients: DICOMweb (QIDO-RS to list and find, WADO-RS to fetch) and a
// DICOM peer (C-FIND, C-GET).
#include "server/import/source_client.h"

#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/common/status_macros.h"
#include "core/dicom/net/http_client.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace miseg {
namespace {

constexpr size_t kMaxInstanceBytes = size_t{1} << 30;
constexpr size_t kMaxListingBytes = size_t{64} << 20;

// Percent-encoding of a URL component (RFC 3986 unreserved characters kept).
std::string Escape(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

// The first string of a DICOM JSON attribute ("0020000E": {"vr": "UI", "Value": ["..."]}).
std::string JsonValue(const google::protobuf::Struct& object, const char* tag) {
  auto attribute = object.fields().find(tag);
  if (attribute == object.fields().end() || !attribute->second.has_struct_value()) return "";
  const auto& fields = attribute->second.struct_value().fields();
  auto value = fields.find("Value");
  if (value == fields.end() || !value->second.has_list_value() ||
      value->second.list_value().values().empty()) {
    return "";
  }
  return value->second.list_value().values(0).string_value();
}

class DicomWebClient final : public ImportSourceClient {
 public:
  explicit DicomWebClient(ImportSourceSpec spec) : spec_(std::move(spec)) {}

  absl::StatusOr<std::vector<RemoteInstance>> ListStudy(const std::string& study_uid) override {
    ASSIGN_OR_RETURN(google::protobuf::ListValue list,
                     Qido(absl::StrCat("/studies/", Escape(study_uid),
                                       "/instances?includefield=00080060")));
    std::vector<RemoteInstance> out;
    for (const google::protobuf::Value& v : list.values()) {
      if (!v.has_struct_value()) continue;
      const google::protobuf::Struct& o = v.struct_value();
      out.push_back({study_uid, JsonValue(o, "0020000E"), JsonValue(o, "00080018"),
                     JsonValue(o, "00080016"), JsonValue(o, "00080060")});
    }
    if (out.empty()) {
      return absl::NotFoundError(absl::StrCat("study ", study_uid, " is not at source '",
                                              spec_.name, "'"));
    }
    return out;
  }

  absl::StatusOr<std::vector<std::string>> FindStudies(
      const std::vector<std::pair<std::string, std::string>>& keys) override {
    std::string query = "/series?includefield=0020000D";
    for (const auto& [key, value] : keys) absl::StrAppend(&query, "&", key, "=", Escape(value));
    ASSIGN_OR_RETURN(google::protobuf::ListValue list, Qido(query));
    std::vector<std::string> studies;
    std::set<std::string> seen;
    for (const google::protobuf::Value& v : list.values()) {
      if (!v.has_struct_value()) continue;
      const std::string study = JsonValue(v.struct_value(), "0020000D");
      if (!study.empty() && seen.insert(study).second) studies.push_back(study);
    }
    return studies;
  }

  absl::Status Fetch(
      const std::vector<RemoteInstance>& instances,
      const std::function<absl::Status(const RemoteInstance&, std::string)>& on_instance,
      const std::function<bool()>& cancelled) override {
    for (const RemoteInstance& i : instances) {
      if (cancelled && cancelled()) return absl::CancelledError("the import was cancelled");
      HttpRequest request = Request(absl::StrCat(
          "/studies/", Escape(i.study_instance_uid), "/series/", Escape(i.series_instance_uid),
          "/instances/", Escape(i.sop_instance_uid)));
      request.headers = {"Accept: multipart/related; type=\"application/dicom\""};
      request.max_response_bytes = kMaxInstanceBytes;
      request.cancelled = cancelled;
      const std::string what = absl::StrCat("WADO-RS of instance ", i.sop_instance_uid,
                                            " from source '", spec_.name, "'");
      ASSIGN_OR_RETURN(HttpResponse reply, PerformHttp(request, what));
      if (reply.status != 200) return HttpError(what, reply);
      absl::StatusOr<std::vector<absl::string_view>> parts =
          SplitMultipart(reply.content_type, reply.body);
      if (!parts.ok() || parts->size() != 1) {
        return absl::FailedPreconditionError(absl::StrCat(
            what, ": expected one application/dicom part",
            parts.ok() ? absl::StrCat(", got ", parts->size()) : absl::StrCat(": ",
                                                                    parts.status().message())));
      }
      RETURN_IF_ERROR(on_instance(i, std::string(parts->front())));
    }
    return absl::OkStatus();
  }

 private:
  HttpRequest Request(const std::string& path) const {
    HttpRequest request;
    request.url = spec_.dicomweb.url + path;
    request.bearer_token = spec_.dicomweb.bearer_token;
    request.basic_auth = spec_.dicomweb.basic_auth;
    request.timeout = spec_.timeout;
    return request;
  }

  // A QIDO-RS search: the DICOM JSON array (204 No Content: empty).
  absl::StatusOr<google::protobuf::ListValue> Qido(const std::string& path) const {
    HttpRequest request = Request(path);
    request.headers = {"Accept: application/dicom+json"};
    request.max_response_bytes = kMaxListingBytes;
    const std::string what = absl::StrCat("QIDO-RS at source '", spec_.name, "' (",
                                          spec_.dicomweb.url, ")");
    ASSIGN_OR_RETURN(HttpResponse reply, PerformHttp(request, what));
    google::protobuf::ListValue list;
    if (reply.status == 204 || (reply.status == 200 && reply.body.empty())) return list;
    if (reply.status != 200) return HttpError(what, reply);
    const auto parsed = google::protobuf::util::JsonStringToMessage(reply.body, &list);
    if (!parsed.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": the reply is not a DICOM JSON array: ",
                       parsed.message().as_string()));
    }
    return list;
  }

  const ImportSourceSpec spec_;
};

class DicomPeerClient final : public ImportSourceClient {
 public:
  explicit DicomPeerClient(ImportSourceSpec spec)
      : spec_(std::move(spec)),
        peer_{spec_.dicom.ae_title, spec_.dicom.host, spec_.dicom.port} {}

  absl::StatusOr<std::vector<RemoteInstance>> ListStudy(const std::string& study_uid) override {
    absl::StatusOr<std::vector<RemoteInstance>> found =
        FindStudyInstances(peer_, spec_.dicom.calling_ae_title, study_uid, spec_.timeout);
    if (!found.ok()) {
      return absl::Status(found.status().code(), absl::StrCat("source '", spec_.name, "': ",
                                                              found.status().message()));
    }
    std::vector<RemoteInstance> out = *std::move(found);
    if (out.empty()) {
      return absl::NotFoundError(absl::StrCat("study ", study_uid, " is not at source '",
                                              spec_.name, "'"));
    }
    return out;
  }

  absl::StatusOr<std::vector<std::string>> FindStudies(
      const std::vector<std::pair<std::string, std::string>>& keys) override {
    // A study-level C-FIND: the series' Modality is the study's ModalitiesInStudy there.
    std::vector<std::pair<std::string, std::string>> study_keys;
    for (const auto& [key, value] : keys) {
      study_keys.emplace_back(key == "Modality" ? "ModalitiesInStudy" : key, value);
    }
    return miseg::FindStudies(peer_, spec_.dicom.calling_ae_title, study_keys, spec_.timeout);
  }

  absl::Status Fetch(
      const std::vector<RemoteInstance>& instances,
      const std::function<absl::Status(const RemoteInstance&, std::string)>& on_instance,
      const std::function<bool()>& cancelled) override {
    return GetInstances(peer_, spec_.dicom.calling_ae_title, instances, spec_.timeout,
                        on_instance, cancelled);
  }

 private:
  const ImportSourceSpec spec_;
  const DicomPeer peer_;
};

}  // namespace

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseImportQuery(
    const std::string& query) {
  static const auto* const kKeys = new std::set<std::string>{
      "PatientID", "StudyDate", "Modality", "AccessionNumber", "StudyDescription",
      "StudyInstanceUID"};
  std::vector<std::pair<std::string, std::string>> out;
  if (query.empty()) return absl::InvalidArgumentError("the query is empty");
  for (absl::string_view part : absl::StrSplit(query, '&')) {
    const size_t eq = part.find('=');
    if (eq == absl::string_view::npos || eq + 1 == part.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("query part '", part, "' is not Key=value"));
    }
    std::string key(part.substr(0, eq)), value(part.substr(eq + 1));
    if (!kKeys->count(key)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "query key '", key, "' is not one of PatientID, StudyDate, Modality, "
          "AccessionNumber, StudyDescription, StudyInstanceUID"));
    }
    for (unsigned char c : value) {
      if (c < 0x20 || c == 0x7f) {
        return absl::InvalidArgumentError("a query value holds a control character");
      }
    }
    out.emplace_back(std::move(key), std::move(value));
  }
  return out;
}

std::unique_ptr<ImportSourceClient> MakeImportSourceClient(const ImportSourceSpec& spec) {
  if (spec.is_dicomweb) return std::make_unique<DicomWebClient>(spec);
  return std::make_unique<DicomPeerClient>(spec);
}

}  // namespace miseg

// The STOW-RS client on libcurl (http_client.h).
#include "core/dicom/net/stow_client.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "core/common/status_macros.h"
#include "core/dicom/net/http_client.h"
#include "core/dicom/net/net_text.h"

namespace miseg {
namespace {

using dicom_net_internal::OneLine;

std::string RandomBoundary() {
  static thread_local std::mt19937_64 random(std::random_device{}());
  return absl::StrFormat("miseg-%016x%016x", random(), random());
}

// Whether a DICOM JSON response lists failed SOPs: FailedSOPSequence (0008,1198) with a
// non-empty "Value" array. Orthanc always sends the attribute, without "Value" on success.
bool HasFailedSops(const std::string& json) {
  const size_t key = json.find("\"00081198\"");
  if (key == std::string::npos) return false;
  size_t open = json.find('{', key);
  if (open == std::string::npos) return false;
  int depth = 0;
  bool in_string = false;
  size_t close = std::string::npos;
  for (size_t i = open; i < json.size(); ++i) {
    const char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') in_string = true;
    if (c == '{' || c == '[') ++depth;
    if (c == '}' || c == ']') {
      if (--depth == 0) {
        close = i;
        break;
      }
    }
  }
  const std::string object =
      json.substr(open, close == std::string::npos ? std::string::npos : close - open + 1);
  const size_t value = object.find("\"Value\"");
  if (value == std::string::npos) return false;
  const size_t bracket = object.find('[', value);
  if (bracket == std::string::npos) return false;
  const size_t next = object.find_first_not_of(" \t\r\n", bracket + 1);
  return next != std::string::npos && object[next] != ']';
}

}  // namespace

absl::Status SendByStowRs(const std::string& studies_url, const std::string& bearer_token,
                          const std::vector<std::string>& part10_files,
                          std::chrono::seconds timeout) {
  if (studies_url.empty()) return absl::InvalidArgumentError("STOW-RS: empty URL");
  if (bearer_token.find_first_of("\r\n") != std::string::npos) {
    return absl::InvalidArgumentError("STOW-RS: the bearer token holds a line break");
  }
  if (part10_files.empty()) return absl::OkStatus();

  // A boundary that occurs in no file.
  std::string boundary;
  for (int attempt = 0; attempt < 8; ++attempt) {
    boundary = RandomBoundary();
    const std::string delimiter = "--" + boundary;
    bool clash = false;
    for (const std::string& f : part10_files) {
      if (f.find(delimiter) != std::string::npos) {
        clash = true;
        break;
      }
    }
    if (!clash) break;
    boundary.clear();
  }
  if (boundary.empty()) return absl::InternalError("STOW-RS: no usable multipart boundary");

  const std::string part_head =
      absl::StrCat("--", boundary, "\r\nContent-Type: application/dicom\r\n\r\n");
  const std::string part_tail = "\r\n";
  const std::string closing = absl::StrCat("--", boundary, "--\r\n");
  std::vector<absl::string_view> pieces;
  for (const std::string& f : part10_files) {
    pieces.push_back(part_head);
    pieces.push_back(f);
    pieces.push_back(part_tail);
  }
  pieces.push_back(closing);

  HttpRequest request;
  request.method = "POST";
  request.url = studies_url;
  request.headers = {
      absl::StrCat("Content-Type: multipart/related; type=\"application/dicom\"; boundary=",
                   boundary),
      "Accept: application/dicom+json"};
  request.body = std::move(pieces);
  request.bearer_token = bearer_token;
  request.timeout = std::chrono::seconds(std::max<int64_t>(1, timeout.count()));
  const std::string where = absl::StrCat("STOW-RS to ", studies_url);
  ASSIGN_OR_RETURN(HttpResponse reply, PerformHttp(request, where));
  const std::string& response = reply.body;
  const long http = reply.status;
  const std::string excerpt = OneLine(response, 300);
  if (http == 200) {
    if (HasFailedSops(response)) {
      return absl::FailedPreconditionError(
          absl::StrCat(where, ": HTTP 200 but the response lists failed SOP instances: ", excerpt));
    }
    return absl::OkStatus();
  }
  // 404 stays FailedPrecondition here (a wrong STOW-RS URL is a configuration matter).
  if (http == 404) {
    return absl::FailedPreconditionError(absl::StrCat(where, ": HTTP 404: ", excerpt));
  }
  return HttpError(where, reply);
}

}  // namespace miseg

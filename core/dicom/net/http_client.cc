// HTTP on libcurl for the DICOMweb clients (STOW-RS out, QIDO-RS and WADO-RS in).
#include "core/dicom/net/http_client.h"

#include <algorithm>
#include <cstring>
#include <mutex>  // std::call_once

#include <curl/curl.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/dicom/net/net_text.h"

namespace miseg {
namespace {

void InitCurlOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// The request body as a list of pieces, read by libcurl without concatenating them.
struct BodyReader {
  std::vector<absl::string_view> pieces;
  size_t total = 0;
  size_t piece = 0, offset = 0;

  static size_t Read(char* buffer, size_t size, size_t count, void* user) {
    auto* self = static_cast<BodyReader*>(user);
    const size_t capacity = size * count;
    size_t written = 0;
    while (written < capacity && self->piece < self->pieces.size()) {
      const absl::string_view p = self->pieces[self->piece];
      const size_t n = std::min(capacity - written, p.size() - self->offset);
      std::memcpy(buffer + written, p.data() + self->offset, n);
      written += n;
      self->offset += n;
      if (self->offset == p.size()) {
        ++self->piece;
        self->offset = 0;
      }
    }
    return written;
  }

  static int Seek(void* user, curl_off_t position, int origin) {
    auto* self = static_cast<BodyReader*>(user);
    if (origin != SEEK_SET || position < 0 || static_cast<size_t>(position) > self->total) {
      return CURL_SEEKFUNC_CANTSEEK;
    }
    size_t left = static_cast<size_t>(position);
    self->piece = 0;
    self->offset = 0;
    while (self->piece < self->pieces.size() && left >= self->pieces[self->piece].size()) {
      left -= self->pieces[self->piece].size();
      ++self->piece;
    }
    self->offset = left;
    return CURL_SEEKFUNC_OK;
  }
};

struct ResponseSink {
  std::string body;
  size_t limit = 0;
  bool overflowed = false;

  static size_t Write(char* data, size_t size, size_t count, void* user) {
    auto* self = static_cast<ResponseSink*>(user);
    const size_t n = size * count;
    if (self->body.size() + n > self->limit) {
      self->overflowed = true;
      return 0;  // makes curl stop with CURLE_WRITE_ERROR
    }
    self->body.append(data, n);
    return n;
  }
};

int Progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  const auto* cancelled = static_cast<const std::function<bool()>*>(user);
  return (*cancelled && (*cancelled)()) ? 1 : 0;
}

// The value of a parameter of a header value ("boundary" of a Content-Type), unquoted.
std::string HeaderParameter(absl::string_view value, absl::string_view name) {
  for (absl::string_view part : absl::StrSplit(value, ';')) {
    part = absl::StripAsciiWhitespace(part);
    const size_t eq = part.find('=');
    if (eq == absl::string_view::npos) continue;
    if (!absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(part.substr(0, eq)), name)) continue;
    absl::string_view v = absl::StripAsciiWhitespace(part.substr(eq + 1));
    if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
    return std::string(v);
  }
  return "";
}

}  // namespace

std::string OneLineExcerpt(absl::string_view text, size_t max_chars) {
  return dicom_net_internal::OneLine(text, max_chars);
}

namespace {

// The request's headers, ours added: the caller frees them (curl_slist_free_all).
curl_slist* RequestHeaders(const HttpRequest& request) {
  curl_slist* headers = nullptr;
  for (const std::string& h : request.headers) headers = curl_slist_append(headers, h.c_str());
  headers = curl_slist_append(headers, "Expect:");  // no 100-continue round trip
  if (!request.bearer_token.empty()) {
    headers = curl_slist_append(
        headers, absl::StrCat("Authorization: Bearer ", request.bearer_token).c_str());
  }
  return headers;
}

// Everything curl is told about the request; body, sink, headers and curl_error must outlive
// the transfer.
void SetRequestOptions(CURL* curl, const HttpRequest& request, BodyReader* body, ResponseSink* sink,
                       curl_slist* headers, char* curl_error) {
  const long timeout_ms = static_cast<long>(std::max<int64_t>(1, request.timeout.count()) * 1000);
  curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
  if (request.method == "POST") {
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, &BodyReader::Read);
    curl_easy_setopt(curl, CURLOPT_READDATA, body);
    curl_easy_setopt(curl, CURLOPT_SEEKFUNCTION, &BodyReader::Seek);
    curl_easy_setopt(curl, CURLOPT_SEEKDATA, body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->total));
  }
  if (!request.basic_auth.empty()) {
    curl_easy_setopt(curl, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(curl, CURLOPT_USERPWD, request.basic_auth.c_str());
  }
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &ResponseSink::Write);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, sink);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  if (request.cancelled) {
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &Progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &request.cancelled);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  }
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_error);
}

// The status for a transfer that failed (code is not CURLE_OK).
absl::Status TransportError(CURLcode code, const char* curl_error, const ResponseSink& sink,
                            const HttpRequest& request, absl::string_view what) {
  const std::string message =
      absl::StrCat(what, ": ", curl_easy_strerror(code), curl_error[0] ? ": " : "", curl_error);
  if (code == CURLE_URL_MALFORMAT || code == CURLE_UNSUPPORTED_PROTOCOL) {
    return absl::InvalidArgumentError(message);
  }
  if (code == CURLE_ABORTED_BY_CALLBACK) {
    return absl::CancelledError(absl::StrCat(what, ": cancelled"));
  }
  if (sink.overflowed) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": the response exceeds ", request.max_response_bytes, " bytes"));
  }
  return absl::UnavailableError(message);
}

}  // namespace

absl::StatusOr<HttpResponse> PerformHttp(const HttpRequest& request, absl::string_view what) {
  if (request.url.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": empty URL"));
  if (request.bearer_token.find_first_of("\r\n") != std::string::npos ||
      request.basic_auth.find_first_of("\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": a credential holds a line break"));
  }
  InitCurlOnce();
  BodyReader body;
  body.pieces = request.body;
  for (absl::string_view p : body.pieces) body.total += p.size();
  ResponseSink sink;
  sink.limit = request.max_response_bytes;

  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::InternalError(absl::StrCat(what, ": curl_easy_init failed"));
  curl_slist* headers = RequestHeaders(request);
  char curl_error[CURL_ERROR_SIZE] = {};
  SetRequestOptions(curl, request, &body, &sink, headers, curl_error);
  const CURLcode code = curl_easy_perform(curl);
  HttpResponse response;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  char* content_type = nullptr;
  curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &content_type);
  if (content_type != nullptr) response.content_type = content_type;
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);

  if (code != CURLE_OK) return TransportError(code, curl_error, sink, request, what);
  response.body = std::move(sink.body);
  return response;
}

absl::Status HttpError(absl::string_view what, const HttpResponse& response) {
  const std::string excerpt = OneLineExcerpt(response.body, 300);
  const std::string message =
      absl::StrCat(what, ": HTTP ", response.status, excerpt.empty() ? "" : ": ", excerpt);
  const long http = response.status;
  if (http >= 500 || http == 408 || http == 429) return absl::UnavailableError(message);
  if (http == 404) return absl::NotFoundError(message);
  if (http == 400 || http == 413 || http == 415) return absl::InvalidArgumentError(message);
  return absl::FailedPreconditionError(message);
}

absl::StatusOr<std::vector<absl::string_view>> SplitMultipart(absl::string_view content_type,
                                                              absl::string_view body) {
  if (!absl::StartsWithIgnoreCase(absl::StripLeadingAsciiWhitespace(content_type),
                                  "multipart/")) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a multipart response (Content-Type '", content_type, "')"));
  }
  const std::string boundary = HeaderParameter(content_type, "boundary");
  if (boundary.empty()) {
    return absl::InvalidArgumentError("a multipart response without a boundary");
  }
  const std::string delimiter = absl::StrCat("--", boundary);
  std::vector<absl::string_view> parts;
  size_t at = body.find(delimiter);
  while (at != absl::string_view::npos) {
    size_t after = at + delimiter.size();
    if (body.substr(after, 2) == "--") return parts;  // the closing delimiter
    const size_t headers_end = body.find("\r\n\r\n", after);
    if (headers_end == absl::string_view::npos) break;
    const size_t start = headers_end + 4;
    // A part's body ends with the CRLF before the next delimiter.
    const size_t next = body.find(absl::StrCat("\r\n", delimiter), start);
    if (next == absl::string_view::npos) break;
    parts.push_back(body.substr(start, next - start));
    at = next + 2;
  }
  return absl::InvalidArgumentError("a multipart response without its closing delimiter");
}

}  // namespace miseg

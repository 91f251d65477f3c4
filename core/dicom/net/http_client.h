// One HTTP request on libcurl, shared by the STOW-RS sender and the DICOMweb import source
// (QIDO-RS, WADO-RS): the body is sent from the caller's pieces without concatenating them,
// the response is kept up to a limit, and a transport failure is an absl::Status. Also the
// reading of a multipart/related response (WADO-RS). libcurl and Abseil only.
#ifndef MISEG_CORE_DICOM_NET_HTTP_CLIENT_H_
#define MISEG_CORE_DICOM_NET_HTTP_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace miseg {

struct HttpRequest {
  std::string method = "GET";  // GET or POST
  std::string url;
  std::vector<std::string> headers;        // "Name: value"
  std::vector<absl::string_view> body;     // POST: the pieces, in order (not copied)
  std::string bearer_token;                // "Authorization: Bearer ..." when set
  std::string basic_auth;                  // "user:password" when set
  std::chrono::seconds timeout{60};        // the whole request, connecting included
  size_t max_response_bytes = size_t{16} << 20;  // more: ResourceExhausted
  // Polled while the transfer runs: true aborts it (Cancelled).
  std::function<bool()> cancelled;
};

struct HttpResponse {
  long status = 0;
  std::string content_type;
  std::string body;
};

// Performs the request. Any HTTP status is a response; errors are the transport's:
// InvalidArgument for a malformed URL, an unsupported scheme or a credential holding a line
// break; ResourceExhausted for a response over the limit; Cancelled when `cancelled` said
// so; Unavailable for everything else (refused, reset, timed out), the message naming
// `what` and curl's reason. Thread-safe.
absl::StatusOr<HttpResponse> PerformHttp(const HttpRequest& request, absl::string_view what);

// The status for an HTTP reply that is not the one expected: Unavailable for 5xx, 408 and
// 429 (worth retrying); NotFound for 404; InvalidArgument for 400, 413, 415;
// FailedPrecondition otherwise (401, 403, ...). The message holds the status and the body's
// first 300 characters on one line.
absl::Status HttpError(absl::string_view what, const HttpResponse& response);

// The body on one line, at most max_chars characters (for messages).
std::string OneLineExcerpt(absl::string_view text, size_t max_chars);

// The parts' bodies of a multipart/related body, given its Content-Type (whose boundary
// parameter is required). InvalidArgument for a content type that is not multipart or has
// no boundary, or a body without its closing delimiter. The views point into `body`.
absl::StatusOr<std::vector<absl::string_view>> SplitMultipart(absl::string_view content_type,
                                                              absl::string_view body);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_NET_HTTP_CLIENT_H_

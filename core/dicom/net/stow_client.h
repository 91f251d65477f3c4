// The STOW-RS client of the DICOM networking layer: results back to a PACS over DICOMweb
// (libcurl, through http_client.h, and Abseil). What it sends comes from the caller's
// buffers, not copied.
#ifndef MISEG_CORE_DICOM_NET_STOW_CLIENT_H_
#define MISEG_CORE_DICOM_NET_STOW_CLIENT_H_

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace miseg {

// Sends Part-10 files with one STOW-RS request (PS3.18 10.5): POST studies_url (e.g.
// "http://pacs:8042/dicom-web/studies") with a multipart/related; type="application/dicom"
// body, one part per file (streamed from the caller's buffers, not copied), Accept:
// application/dicom+json, and Authorization: Bearer <token> when bearer_token is not empty.
// OK for HTTP 200 whose response has no failed SOP (FailedSOPSequence (0008,1198) absent or
// empty). Errors carry the HTTP status and the response body's first 300 characters:
//   Unavailable: connection errors and timeouts, 5xx, 408, 429;
//   InvalidArgument: 400, 413, 415, an empty URL, a token with a line break;
//   FailedPrecondition: other 4xx (401, 403, 404, 409, ...), 202 or 200 with failed SOPs,
//     other unexpected statuses.
// timeout bounds the whole request. An empty list sends nothing and returns OK. Thread-safe.
absl::Status SendByStowRs(const std::string& studies_url, const std::string& bearer_token,
                          const std::vector<std::string>& part10_files,
                          std::chrono::seconds timeout);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_NET_STOW_CLIENT_H_

// The C-STORE sender of the DICOM networking layer: results back to a PACS as a C-STORE
// SCU. DCMTK (dcmnet) and Abseil only; no DCMTK type in this header. What it sends comes
// from the caller's buffers.
#ifndef MISEG_CORE_DICOM_NET_CSTORE_SENDER_H_
#define MISEG_CORE_DICOM_NET_CSTORE_SENDER_H_

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/dicom/net/dicom_peer.h"

namespace miseg {

// Sends Part-10 files to a peer over one association: proposes, for every SOP class among the
// files, explicit and implicit VR little endian, plus each file's own transfer syntax when it
// is another (compressed, big endian, deflated); sends each file in its own syntax when the
// peer accepted it, otherwise decompressed/re-encoded in the accepted uncompressed one.
// Every file is parsed before connecting: InvalidArgument (nothing sent) when one is not
// DICOM or lacks SOP Class / Instance UID, or more than 127 presentation contexts would be
// needed. Files are sent in order and sending stops at the first failure (the earlier ones
// are stored). OK only when every C-STORE response is Success or a Warning (0x0001, 0xBxxx).
// Errors name the peer (AE@host:port) and, for a response, the SOP Instance UID, the status
// and its Error Comment:
//   Unavailable: connection refused or failed, timeouts, the association aborted or dropped,
//     a transient association rejection, a response status 0xA7xx (out of resources);
//   FailedPrecondition: a permanent association rejection (e.g. AE title not recognized), or
//     the peer accepted no presentation context for a file's SOP class;
//   Internal: any other failure status (0xA9xx, 0xCxxx, 0x01xx, ...);
//   DeadlineExceeded: timeout elapsed between files.
// timeout bounds the TCP connect, the association negotiation, each C-STORE response wait,
// and the whole call (checked between files). An empty list sends nothing and returns OK.
// Thread-safe, with one process-wide caveat: the TCP connect timeout is DCMTK's global
// dcmConnectionTimeout, which this call sets to `timeout` (concurrent calls with different
// timeouts may use each other's value for the connect only).
absl::Status SendByCStore(const DicomPeer& peer, const std::string& calling_ae_title,
                          const std::vector<std::string>& part10_files,
                          std::chrono::seconds timeout);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_NET_CSTORE_SENDER_H_

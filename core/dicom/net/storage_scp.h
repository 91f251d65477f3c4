// The storage SCP of the DICOM networking layer: what a PACS sends images to (C-ECHO,
// C-STORE). DCMTK (dcmnet) and Abseil only: no protobuf, no LibTorch, and no DCMTK type in
// this header. Nothing here keeps data: what the SCP receives is handed to a callback.
#ifndef MISEG_CORE_DICOM_NET_STORAGE_SCP_H_
#define MISEG_CORE_DICOM_NET_STORAGE_SCP_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace miseg {

// One entry of the SCP's allow list: an association is accepted only when its calling AE
// title equals calling_ae_title (case-sensitive, surrounding spaces ignored) and its peer
// address is host. host is an IPv4 literal ("10.0.0.5") or a name, resolved (getaddrinfo,
// IPv4) each time an association from that AE title arrives, so a changed DNS entry is seen
// without a restart; a name that does not resolve matches nothing.
struct AllowedPeer {
  std::string calling_ae_title;
  std::string host;
};

// One instance received by C-STORE.
struct ReceivedInstance {
  // Unique within one StorageScp, increasing (from 1; not contiguous: every accepted
  // connection takes one, rejected ones too).
  uint64_t association_id = 0;
  std::string calling_ae_title;
  std::string called_ae_title;
  std::string peer_host;  // the peer's IPv4 address as text, e.g. "127.0.0.1"
  // A Part-10 file: meta header + dataset, in the transfer syntax it arrived in (the
  // presentation context's; compressed pixel data is kept compressed, never transcoded).
  std::string bytes;
};

// The SOP classes a StorageScp accepts by default (besides Verification, always accepted):
// MR Image, Enhanced MR Image, Legacy Converted Enhanced MR Image, CT Image, Enhanced CT
// Image, Legacy Converted Enhanced CT Image Storage.
std::vector<std::string> DefaultStorageSopClasses();

// The transfer syntaxes a StorageScp accepts, those the series reader decodes, in the order
// it prefers them when one presentation context proposes several: lossless compressed (so a
// sender need not decompress; JPEG 2000 lossless included), then uncompressed (explicit LE,
// implicit LE, explicit BE, deflated), then lossy JPEG 2000 / JPEG-LS / JPEG (chosen only
// when a sender proposes nothing else).
std::vector<std::string> StorageTransferSyntaxes();

struct StorageScpOptions {
  std::string ae_title = "MISEG";  // the called AE title associations must address
  int port = 104;                  // 0: any free port, see StorageScp::port()
  // The IPv4 address the listening socket is bound to: "127.0.0.1" (default) accepts only
  // local peers, "0.0.0.0" every interface. IPv6 is not supported (DCMTK 3.6.7's acceptor
  // is IPv4-only).
  std::string bind_address = "127.0.0.1";
  // Who may associate; empty: nobody (every association is rejected).
  std::vector<AllowedPeer> allowed_peers;
  // Associations served at once, each on its own thread; one more is rejected (A-ASSOCIATE-RJ,
  // transient, local limit exceeded). Up to 4 more connections may be negotiating at the same
  // time; connections beyond that are closed unread.
  int max_associations = 8;
  // ACSE: the whole A-ASSOCIATE-RQ must have arrived within it after the connection was
  // accepted (else the connection is closed), and the release. DIMSE: waiting for the next
  // command or data; an association idle for longer is aborted.
  std::chrono::seconds acse_timeout{30};
  std::chrono::seconds dimse_timeout{60};
  // SOP classes accepted for C-STORE (add kSegmentationStorageUid from
  // core/dicom/instance_info.h to receive DICOM SEG too).
  std::vector<std::string> sop_classes = DefaultStorageSopClasses();
};

struct StorageScpCallbacks {
  // Called once per C-STORE, on the association's thread, before the response is sent. OK:
  // the response is Success (0x0000). An error: the response is a failure and the instance
  // must be considered not kept: InvalidArgument or FailedPrecondition -> 0xC000 (Error:
  // cannot understand), anything else -> 0xA700 (Refused: out of resources). The status
  // message (its first 64 characters) travels as the response's Error Comment.
  // Instances that fail the SCP's own checks never reach it: a dataset without SOP Class,
  // SOP Instance, Study Instance or Series Instance UID, or whose SOP Class / Instance UID
  // differ from the C-STORE command's, gets 0xA900 (Error: data set does not match SOP class);
  // one that cannot be re-encoded as a Part-10 file gets 0xC000.
  // Required (Start fails without it).
  std::function<absl::Status(const ReceivedInstance&)> on_instance;
  // Called once per accepted association after it ended (released, aborted or timed out)
  // and its connection was closed, on the association's thread; never for an association
  // that was rejected. Its slot among max_associations is already free. Optional.
  std::function<void(uint64_t association_id, const std::string& calling_ae,
                     const std::string& called_ae)>
      on_association_end;
};

// A storage SCP: one listening thread that only accepts connections, and one thread per
// connection, which waits (at most acse_timeout) for the peer's whole A-ASSOCIATE-RQ before
// dcmnet reads it, so that a silent, slow or non-DICOM peer holds up nobody else, then
// negotiates and serves the association (DcmThreadSCP). A connection whose first PDU is not
// an A-ASSOCIATE-RQ, or announces one over 60000 bytes, is closed unanswered.
//
// Thread safety: Start, port and Stop may be called from any thread, but not concurrently
// with each other on the same object. The callbacks run on association threads, several at
// once when several associations are open: they must be thread-safe, and must not call Stop
// or destroy the StorageScp (that would wait for the very thread calling it).
//
// Process-wide effects: Start turns off DCMTK's reverse DNS lookup of accepted peers
// (dcmDisableGethostbyaddr). Accepted connections reach dcmnet through its process-wide
// dcmExternalSocketHandle, set and reset under a lock shared by every StorageScp in the
// process; other code that runs a DCMTK acceptor (ASC_initializeNetwork(NET_ACCEPTOR...),
// ASC_receiveAssociation) in the same process could see it set for those instants.
class StorageScp {
 public:
  StorageScp(StorageScpOptions options, StorageScpCallbacks callbacks);
  ~StorageScp();  // Stop()
  StorageScp(const StorageScp&) = delete;
  StorageScp& operator=(const StorageScp&) = delete;

  // Binds, listens and starts the listening thread; returns once associations can be made.
  // InvalidArgument for bad options (empty or over-long AE title, port outside 0..65535,
  // bind_address not an IPv4 literal, max_associations < 1, no on_instance), Unavailable when
  // the port cannot be bound, FailedPrecondition when already started.
  absl::Status Start();
  // The bound port (the kernel's choice when options.port was 0); 0 before Start.
  int port() const;
  // Stops accepting (the listening socket is closed, new connections are refused, and
  // connections still waiting for their A-ASSOCIATE-RQ are closed), then waits for the
  // running associations to end by themselves (a peer's release or abort, or dimse_timeout
  // of idleness) and returns. Idempotent; Start may be called again afterwards.
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_NET_STORAGE_SCP_H_

// The storage SCP on DCMTK's DcmThreadSCP: one thread per connection, behind our own
// listening socket and thread.
#include "core/dicom/net/storage_scp.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <thread>
#include <utility>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmnet/assoc.h>
#include <dcmtk/dcmnet/dimse.h>
#include <dcmtk/dcmnet/dul.h>
#include <dcmtk/dcmnet/scpthrd.h>

#include "absl/base/const_init.h"
#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "core/common/status_macros.h"
#include "core/dicom/dicom_text.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/net/net_text.h"

namespace miseg {
namespace {

using dicom_net_internal::OneLine;
using dicom_net_internal::Trim;
using dicom_net_internal::ValidAeTitle;

constexpr Uint32 kMaxReceivePdu = ASC_MAXIMUMPDUSIZE;  // 128 KiB

// The IPv4 address of a connected socket's peer, as text ("" if unknown).
std::string PeerAddress(int fd) {
  sockaddr_storage address;
  socklen_t length = sizeof(address);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0 ||
      address.ss_family != AF_INET) {
    return "";
  }
  char text[INET_ADDRSTRLEN] = {};
  const auto* v4 = reinterpret_cast<const sockaddr_in*>(&address);
  return inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text)) != nullptr ? text : "";
}

// dcmnet takes an already accepted connection only through the process-wide
// dcmExternalSocketHandle, which ASC_initializeNetwork and ASC_receiveAssociation read: every
// use of it (by every StorageScp of the process) holds this lock, and leaves it invalid.
// It also guards each StorageScp's dcmnet acceptor network (Impl::network).
ABSL_CONST_INIT absl::Mutex adopted_socket_mutex(absl::kConstInit);
constexpr DcmNativeSocketType kNoSocket = static_cast<DcmNativeSocketType>(-1);

// The largest A-ASSOCIATE-RQ waited for in full before dcmnet reads it (128 presentation
// contexts with a dozen transfer syntaxes each stay well below).
constexpr uint32_t kMaxAssociateRequest = 60000;

// Whether host (an IPv4 literal or a name) denotes peer_ip.
bool HostMatches(const std::string& host, const std::string& peer_ip) {
  in_addr peer{};
  if (inet_pton(AF_INET, peer_ip.c_str(), &peer) != 1) return false;
  in_addr literal{};
  if (inet_pton(AF_INET, host.c_str(), &literal) == 1) return literal.s_addr == peer.s_addr;
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0) return false;
  bool match = false;
  for (addrinfo* a = found; a != nullptr && !match; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      match = reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr.s_addr == peer.s_addr;
    }
  }
  freeaddrinfo(found);
  return match;
}

OFList<OFString> ToOFList(const std::vector<std::string>& values) {
  OFList<OFString> list;
  for (const std::string& v : values) list.push_back(OFString(v.c_str()));
  return list;
}

}  // namespace

std::vector<std::string> DefaultStorageSopClasses() {
  return {
      UID_MRImageStorage, UID_EnhancedMRImageStorage, UID_LegacyConvertedEnhancedMRImageStorage,
      UID_CTImageStorage, UID_EnhancedCTImageStorage, UID_LegacyConvertedEnhancedCTImageStorage};
}

std::vector<std::string> StorageTransferSyntaxes() {
  return {// Lossless compressed: taken as they come.
          UID_JPEGLSLosslessTransferSyntax, UID_JPEG2000LosslessOnlyTransferSyntax,
          UID_JPEGProcess14SV1TransferSyntax, UID_JPEGProcess14TransferSyntax,
          UID_RLELosslessTransferSyntax,
          // Uncompressed.
          UID_LittleEndianExplicitTransferSyntax, UID_LittleEndianImplicitTransferSyntax,
          UID_BigEndianExplicitTransferSyntax, UID_DeflatedExplicitVRLittleEndianTransferSyntax,
          // Lossy: only when nothing else is proposed. JPEG 2000 (lossless or lossy, the
          // series reader's own codec) first; the study is then flagged lossy. HTJ2K (.201-.203)
          // is not here: DCMTK 3.6.7's DIMSE layer cannot receive a syntax it does not know.
          UID_JPEG2000TransferSyntax, UID_JPEGLSLossyTransferSyntax,
          UID_JPEGProcess1TransferSyntax, UID_JPEGProcess2_4TransferSyntax};
}

// ---------------------------------------------------------------------------------------
// StorageScp

namespace {

// What association threads read: fixed while the SCP runs.
struct ScpShared {
  StorageScpOptions options;
  StorageScpCallbacks callbacks;

  bool IsAllowed(const std::string& calling_ae, const std::string& peer_ip) const {
    for (const AllowedPeer& peer : options.allowed_peers) {
      if (Trim(peer.calling_ae_title) != calling_ae) continue;
      if (HostMatches(Trim(peer.host), peer_ip)) return true;
    }
    return false;
  }
};

}  // namespace

// Thread safety: the listening thread and the connection threads share threads, finished,
// connections and active, guarded by mutex. network is guarded by adopted_socket_mutex (every
// StorageScp's connection threads hand it to dcmnet). The options and callbacks (ScpShared),
// config, listen_fd, the wake pipe, started and listener are written only by Start (before
// the listening thread starts) and Stop (after the threads that read them are joined): constant
// for the listening and connection threads. bound_port is atomic.
struct StorageScp::Impl : ScpShared {
  DcmSharedSCPConfig config;
  T_ASC_Network* network ABSL_GUARDED_BY(adopted_socket_mutex) = nullptr;
  int listen_fd = -1;
  // Written once by Stop and never read: readable from then on, it wakes every poll.
  int wake_read = -1, wake_write = -1;
  std::atomic<int> bound_port{0};
  bool started = false;
  std::thread listener;

  // Unique across the process's restarts too (microseconds since the epoch at start): the
  // DICOM node's inbox keeps association ids across a crash, and a new association must
  // never pass for an ended one of the earlier process (its series would look complete).
  std::atomic<uint64_t> next_association_id{static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count())};
  absl::Mutex mutex;
  // One per accepted connection.
  std::map<uint64_t, std::thread> threads ABSL_GUARDED_BY(mutex);
  std::vector<uint64_t> finished ABSL_GUARDED_BY(mutex);  // threads done, to be joined
  int connections ABSL_GUARDED_BY(mutex) = 0;  // connection threads alive
  int active ABSL_GUARDED_BY(mutex) = 0;       // associations past negotiation

  void ListenLoop() ABSL_LOCKS_EXCLUDED(mutex);
  void RunConnection(uint64_t id, int fd, std::string peer_ip)
      ABSL_LOCKS_EXCLUDED(mutex, adopted_socket_mutex);
  bool WaitForAssociateRequest(int fd) const;
  T_ASC_Association* ReceiveAssociation(int fd) ABSL_LOCKS_EXCLUDED(adopted_socket_mutex);
  bool AdmitAssociation(T_ASC_Association* assoc, const std::string& calling,
                        const std::string& called, const std::string& peer_ip)
      ABSL_LOCKS_EXCLUDED(mutex);
  void ServeAssociation(uint64_t id, T_ASC_Association* assoc, const std::string& peer_ip,
                        const std::string& calling, const std::string& called)
      ABSL_LOCKS_EXCLUDED(mutex);
  absl::Status InitAcceptorNetwork() ABSL_LOCKS_EXCLUDED(adopted_socket_mutex);
  absl::Status OpenWakePipe() ABSL_LOCKS_EXCLUDED(adopted_socket_mutex);
  void ReapFinished() ABSL_LOCKS_EXCLUDED(mutex);
  void CloseDescriptors();
};

namespace {

// One association: negotiation (our checks), then C-ECHO and C-STORE.
class AssociationWorker : public DcmThreadSCP {
 public:
  AssociationWorker(const ScpShared* scp, uint64_t id, std::string peer_ip, std::string calling,
                    std::string called)
      : scp_(scp),
        id_(id),
        peer_ip_(std::move(peer_ip)),
        calling_(std::move(calling)),
        called_(std::move(called)) {}

  bool acknowledged() const { return acknowledged_; }

 protected:
  // DCMTK 3.6.7 passes the *called* presentation address here; the host is checked together
  // with the calling AE title below, from the socket's peer address.
  OFBool checkCallingHostAccepted(const OFString&) override { return OFTrue; }

  OFBool checkCalledAETitleAccepted(const OFString& called_ae) override {
    return Trim(called_ae.c_str()) == Trim(scp_->options.ae_title);
  }

  OFBool checkCallingAETitleAccepted(const OFString& calling_ae) override {
    return scp_->IsAllowed(Trim(calling_ae.c_str()), peer_ip_);
  }

  void notifyAssociationAcknowledge() override { acknowledged_ = true; }

  OFCondition handleIncomingCommand(T_DIMSE_Message* message,
                                    const DcmPresentationContextInfo& info) override {
    if (message->CommandField == DIMSE_C_STORE_RQ) return HandleStore(message->msg.CStoreRQ, info);
    return DcmThreadSCP::handleIncomingCommand(message, info);  // C-ECHO, or an error
  }

 private:
  OFCondition HandleStore(T_DIMSE_C_StoreRQ& request, const DcmPresentationContextInfo& info) {
    DcmDataset* received = nullptr;
    OFCondition cond = receiveSTORERequest(request, info.presentationContextID, received);
    std::unique_ptr<DcmDataset> dataset(received);
    if (cond.bad()) return cond;  // the association is aborted
    std::string comment;
    const Uint16 status = Evaluate(request, info, std::move(dataset), &comment);
    std::unique_ptr<DcmDataset> detail;
    if (status != STATUS_Success && !comment.empty()) {
      detail = std::make_unique<DcmDataset>();
      detail->putAndInsertString(DCM_ErrorComment, OneLine(comment, 64).c_str());
    }
    return sendSTOREResponse(info.presentationContextID, request.MessageID,
                             request.AffectedSOPClassUID, request.AffectedSOPInstanceUID, status,
                             detail.get());
  }

  Uint16 Evaluate(const T_DIMSE_C_StoreRQ& request, const DcmPresentationContextInfo& info,
                  std::unique_ptr<DcmDataset> dataset, std::string* comment) {
    if (dataset == nullptr) {
      *comment = "no data set";
      return STATUS_STORE_Error_CannotUnderstand;
    }
    const std::pair<DcmTagKey, const char*> required[] = {
        {DCM_SOPClassUID, "SOP Class UID"},
        {DCM_SOPInstanceUID, "SOP Instance UID"},
        {DCM_StudyInstanceUID, "Study Instance UID"},
        {DCM_SeriesInstanceUID, "Series Instance UID"}};
    std::string values[4];
    for (int i = 0; i < 4; ++i) {
      values[i] = TrimmedFirstDicomValue(dataset.get(), required[i].first);
      if (values[i].empty()) {
        *comment = absl::StrCat("missing ", required[i].second);
        return STATUS_STORE_Error_DataSetDoesNotMatchSOPClass;
      }
    }
    if (values[0] != Trim(request.AffectedSOPClassUID) ||
        values[1] != Trim(request.AffectedSOPInstanceUID)) {
      *comment = "SOP Class/Instance UID differ from the C-STORE request's";
      return STATUS_STORE_Error_DataSetDoesNotMatchSOPClass;
    }
    const E_TransferSyntax syntax = DcmXfer(info.acceptedTransferSyntax.c_str()).getXfer();
    if (syntax == EXS_Unknown) {
      *comment = "unknown transfer syntax";
      return STATUS_STORE_Error_CannotUnderstand;
    }
    auto file = std::make_unique<DcmFileFormat>(dataset.release(), /*deepCopy=*/OFFalse);
    absl::StatusOr<std::string> bytes = SerializeDicom(*file, syntax);
    file.reset();  // only the encoded copy is kept while the callback runs
    if (!bytes.ok()) {
      *comment = "cannot encode as a Part-10 file";
      return STATUS_STORE_Error_CannotUnderstand;
    }
    ReceivedInstance instance;
    instance.association_id = id_;
    instance.calling_ae_title = calling_;
    instance.called_ae_title = called_;
    instance.peer_host = peer_ip_;
    instance.bytes = std::move(*bytes);
    absl::Status verdict;
    try {
      verdict = scp_->callbacks.on_instance(instance);
    } catch (const std::exception& e) {
      verdict = absl::InternalError(absl::StrCat("on_instance threw: ", e.what()));
    } catch (...) {
      verdict = absl::InternalError("on_instance threw");
    }
    if (verdict.ok()) return STATUS_Success;
    *comment = std::string(verdict.message());
    if (verdict.code() == absl::StatusCode::kInvalidArgument ||
        verdict.code() == absl::StatusCode::kFailedPrecondition) {
      return STATUS_STORE_Error_CannotUnderstand;
    }
    return STATUS_STORE_Refused_OutOfResources;
  }

  const ScpShared* scp_;
  uint64_t id_;
  std::string peer_ip_, calling_, called_;
  bool acknowledged_ = false;
};

}  // namespace

void StorageScp::Impl::ReapFinished() {
  std::vector<std::thread> done;
  {
    absl::MutexLock lock(&mutex);
    for (uint64_t id : finished) {
      auto it = threads.find(id);
      if (it == threads.end()) continue;
      done.push_back(std::move(it->second));
      threads.erase(it);
    }
    finished.clear();
  }
  for (std::thread& t : done) t.join();
}

void StorageScp::Impl::ListenLoop() {
  // Connections still negotiating, beyond the associations served: a few, so that one too
  // many gets its A-ASSOCIATE-RJ; past that, connections are closed unread.
  const int max_connections = options.max_associations + 4;
  while (true) {
    pollfd fds[2] = {{listen_fd, POLLIN, 0}, {wake_read, POLLIN, 0}};
    const int ready = poll(fds, 2, -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[1].revents != 0) break;  // Stop()
    ReapFinished();
    if ((fds[0].revents & (POLLERR | POLLNVAL)) != 0) break;
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::string peer_ip = PeerAddress(fd);
    absl::MutexLock lock(&mutex);
    if (connections >= max_connections || peer_ip.empty()) {
      close(fd);
      continue;
    }
    const uint64_t id = next_association_id.fetch_add(1);
    try {
      threads.emplace(id, std::thread(&Impl::RunConnection, this, id, fd, std::move(peer_ip)));
      ++connections;
    } catch (const std::system_error&) {
      close(fd);
    }
  }
}

bool StorageScp::Impl::WaitForAssociateRequest(int fd) const {
  const auto deadline = std::chrono::steady_clock::now() + options.acse_timeout;
  // Waits until `bytes` bytes are buffered (SO_RCVLOWAT makes poll say so), the deadline
  // passes, the peer closes, or Stop is called. The kernel caps the low-water mark at half
  // the receive buffer (64 KiB by default); a request larger than the cap is waited for up
  // to the cap, and dcmnet reads the rest as it comes.
  auto buffered = [&](int bytes) {
    setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof(bytes));
    int effective = bytes;
    socklen_t size = sizeof(effective);
    if (getsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &effective, &size) == 0 && effective > 0) {
      bytes = std::min(bytes, effective);
    }
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd fds[2] = {{fd, POLLIN, 0}, {wake_read, POLLIN, 0}};
      const int ready = poll(fds, 2, static_cast<int>(left.count()));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0 || fds[1].revents != 0) return false;
      int available = 0;
      return ioctl(fd, FIONREAD, &available) == 0 && available >= bytes;
    }
  };
  bool complete = false;
  unsigned char head[6];
  if (buffered(6) && recv(fd, head, sizeof(head), MSG_PEEK) == 6 && head[0] == 0x01) {
    const uint32_t length = (uint32_t{head[2]} << 24) | (uint32_t{head[3]} << 16) |
                            (uint32_t{head[4]} << 8) | uint32_t{head[5]};
    complete = length <= kMaxAssociateRequest && buffered(static_cast<int>(6 + length));
  }
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
  return complete;
}


namespace {

// Rejects a received association, drops its connection and frees it.
void RejectAssociation(T_ASC_Association* assoc, T_ASC_RejectParametersResult result,
                       T_ASC_RejectParametersSource source, T_ASC_RejectParametersReason reason) {
  T_ASC_RejectParameters reject;
  reject.result = result;
  reject.source = source;
  reject.reason = reason;
  ASC_rejectAssociation(assoc, &reject);
  ASC_dropAssociation(assoc);
  ASC_destroyAssociation(&assoc);
}

}  // namespace

// dcmnet reads the A-ASSOCIATE-RQ from the adopted socket. nullptr when it fails (the
// connection is closed then).
T_ASC_Association* StorageScp::Impl::ReceiveAssociation(int fd) {
  T_ASC_Association* assoc = nullptr;
  OFCondition cond;
  {
    absl::MutexLock lock(&adopted_socket_mutex);
    dcmExternalSocketHandle.set(fd);
    cond = ASC_receiveAssociation(network, &assoc, kMaxReceivePdu, nullptr, nullptr, OFFalse,
                                  DUL_NOBLOCK, static_cast<int>(options.acse_timeout.count()));
    dcmExternalSocketHandle.set(kNoSocket);
  }
  if (cond.good()) return assoc;
  if (assoc != nullptr && assoc->DULassociation != nullptr) {
    ASC_dropAssociation(assoc);  // dcmnet took the socket over: this closes it
    ASC_destroyAssociation(&assoc);
  } else {
    if (assoc != nullptr) ASC_destroyAssociation(&assoc);
    close(fd);
  }
  return nullptr;
}

// Whether the association takes one of the max_associations slots; when not, it has been
// rejected and freed.
bool StorageScp::Impl::AdmitAssociation(T_ASC_Association* assoc, const std::string& calling,
                                        const std::string& called, const std::string& peer_ip) {
  // Who may not associate at all is refused before the limit is consulted (with the reject
  // the worker's own checks would give): a flood of strangers, or of liars about their AE
  // title, must not hold the slots of the peers, whom a transient "local limit exceeded"
  // would turn away while the refused associations wind down (issue 13).
  const bool called_us = called == Trim(options.ae_title);
  if (!called_us || !IsAllowed(calling, peer_ip)) {
    RejectAssociation(assoc, ASC_RESULT_REJECTEDPERMANENT, ASC_SOURCE_SERVICEUSER,
                      called_us ? ASC_REASON_SU_CALLINGAETITLENOTRECOGNIZED
                                : ASC_REASON_SU_CALLEDAETITLENOTRECOGNIZED);
    return false;
  }

  bool admitted = false;
  {
    absl::MutexLock lock(&mutex);
    if (active < options.max_associations) {
      ++active;
      admitted = true;
    }
  }
  if (!admitted) {
    RejectAssociation(assoc, ASC_RESULT_REJECTEDTRANSIENT,
                      ASC_SOURCE_SERVICEPROVIDER_PRESENTATION_RELATED,
                      ASC_REASON_SP_PRES_LOCALLIMITEXCEEDED);
  }
  return admitted;
}

// Negotiates and serves an admitted association to its end, then frees its slot and tells
// on_association_end.
void StorageScp::Impl::ServeAssociation(uint64_t id, T_ASC_Association* assoc,
                                        const std::string& peer_ip, const std::string& calling,
                                        const std::string& called) {
  bool acknowledged = false;
  {
    AssociationWorker worker(this, id, peer_ip, calling, called);
    worker.setSharedConfig(config);
    worker.run(assoc);  // negotiates, serves or refuses; the worker owns assoc from here
    acknowledged = worker.acknowledged();
  }  // the worker's destructor drops the association and closes the connection
  {
    absl::MutexLock lock(&mutex);
    --active;  // the slot is free before on_association_end runs
  }
  if (acknowledged && callbacks.on_association_end) {
    try {
      callbacks.on_association_end(id, calling, called);
    } catch (...) {
      // A throwing callback must not take the process down.
    }
  }
}

void StorageScp::Impl::RunConnection(uint64_t id, int fd, std::string peer_ip) {
  auto done = [this, id] {
    absl::MutexLock lock(&mutex);
    --connections;
    finished.push_back(id);
  };
  // The whole A-ASSOCIATE-RQ first, read by nobody yet: a silent, slow or non-DICOM peer
  // costs this thread only, at most acse_timeout.
  if (!WaitForAssociateRequest(fd)) {
    close(fd);
    done();
    return;
  }
  T_ASC_Association* assoc = ReceiveAssociation(fd);
  if (assoc == nullptr) {
    done();
    return;
  }
  const std::string calling = Trim(assoc->params->DULparams.callingAPTitle);
  const std::string called = Trim(assoc->params->DULparams.calledAPTitle);
  if (AdmitAssociation(assoc, calling, called, peer_ip)) {
    ServeAssociation(id, assoc, peer_ip, calling, called);
  }
  done();
}

void StorageScp::Impl::CloseDescriptors() {
  for (int* fd : {&listen_fd, &wake_read, &wake_write}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

StorageScp::StorageScp(StorageScpOptions options, StorageScpCallbacks callbacks)
    : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  impl_->callbacks = std::move(callbacks);
}

StorageScp::~StorageScp() { Stop(); }

int StorageScp::port() const { return impl_->bound_port.load(); }


namespace {

// InvalidArgument for options Start cannot use; bind_ip gets the address to bind.
absl::Status ValidateOptions(const StorageScpOptions& o, const StorageScpCallbacks& callbacks,
                             in_addr* bind_ip) {
  if (!ValidAeTitle(o.ae_title)) {
    return absl::InvalidArgumentError(
        absl::StrCat("StorageScp: AE title '", o.ae_title, "' must have 1 to 16 characters"));
  }
  if (o.port < 0 || o.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("StorageScp: port ", o.port, " out of range"));
  }
  if (inet_pton(AF_INET, o.bind_address.c_str(), bind_ip) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("StorageScp: bind address '", o.bind_address, "' is not an IPv4 literal"));
  }
  if (o.max_associations < 1) {
    return absl::InvalidArgumentError("StorageScp: max_associations must be at least 1");
  }
  if (!callbacks.on_instance) {
    return absl::InvalidArgumentError("StorageScp: on_instance callback missing");
  }
  if (o.acse_timeout.count() < 1 || o.dimse_timeout.count() < 1) {
    return absl::InvalidArgumentError("StorageScp: timeouts must be at least 1 s");
  }
  return absl::OkStatus();
}

// What every association negotiates and is served with: Verification, and the SOP classes
// in every transfer syntax the SCP accepts.
absl::Status BuildScpConfig(const StorageScpOptions& o, DcmSharedSCPConfig* shared) {
  DcmSCPConfig config;
  config.setAETitle(Trim(o.ae_title).c_str());
  config.setRespondWithCalledAETitle(OFFalse);
  config.setMaxReceivePDULength(kMaxReceivePdu);
  config.setACSETimeout(static_cast<Uint32>(o.acse_timeout.count()));
  config.setDIMSEBlockingMode(DIMSE_NONBLOCKING);
  config.setDIMSETimeout(static_cast<Uint32>(o.dimse_timeout.count()));
  config.setHostLookupEnabled(OFFalse);
  config.setProgressNotificationMode(OFFalse);
  OFCondition cond = config.addPresentationContext(
      UID_VerificationSOPClass,
      ToOFList({UID_LittleEndianExplicitTransferSyntax, UID_LittleEndianImplicitTransferSyntax,
                UID_BigEndianExplicitTransferSyntax}));
  const OFList<OFString> syntaxes = ToOFList(StorageTransferSyntaxes());
  for (const std::string& sop_class : o.sop_classes) {
    if (cond.bad()) break;
    cond = config.addPresentationContext(sop_class.c_str(), syntaxes);
  }
  if (cond.bad()) return FromCondition(cond, "StorageScp: presentation contexts");
  *shared = DcmSharedSCPConfig(config);
  return absl::OkStatus();
}

// Our own listening socket, bound where asked (DCMTK 3.6.7 would bind every interface).
// Non-blocking: accept never waits for a connection that vanished after poll saw it. port
// gets the bound port.
absl::StatusOr<int> OpenListeningSocket(const StorageScpOptions& o, in_addr bind_ip, int* port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("StorageScp: socket: ", strerror(errno)));
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // A connection is accepted once its peer has sent something: port probes cost nothing.
  const int defer = static_cast<int>(o.acse_timeout.count());
  setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr = bind_ip;
  address.sin_port = htons(static_cast<uint16_t>(o.port));
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      listen(fd, 64) != 0) {
    const std::string error = strerror(errno);
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("StorageScp: cannot listen on ", o.bind_address, ":", o.port, ": ", error));
  }
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  *port = ntohs(address.sin_port);
  return fd;
}

}  // namespace

absl::Status StorageScp::Impl::InitAcceptorNetwork() {
  // dcmnet's acceptor network, without a listening socket of its own: with an external
  // socket set, ASC_initializeNetwork opens none.
  OFCondition cond;
  {
    absl::MutexLock lock(&adopted_socket_mutex);
    dcmExternalSocketHandle.set(listen_fd);
    cond = ASC_initializeNetwork(NET_ACCEPTOR, 0, static_cast<int>(options.acse_timeout.count()),
                                 &network);
    dcmExternalSocketHandle.set(kNoSocket);
    if (cond.bad()) network = nullptr;
  }
  if (cond.bad()) {
    CloseDescriptors();
    return FromCondition(cond, "StorageScp: ASC_initializeNetwork", absl::StatusCode::kInternal);
  }
  return absl::OkStatus();
}

absl::Status StorageScp::Impl::OpenWakePipe() {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    {
      absl::MutexLock lock(&adopted_socket_mutex);
      ASC_dropNetwork(&network);
    }
    CloseDescriptors();
    return absl::InternalError(absl::StrCat("StorageScp: pipe: ", strerror(errno)));
  }
  wake_read = pipe_fds[0];
  wake_write = pipe_fds[1];
  return absl::OkStatus();
}

absl::Status StorageScp::Start() {
  Impl& s = *impl_;
  if (s.started) return absl::FailedPreconditionError("StorageScp already started");
  in_addr bind_ip{};
  RETURN_IF_ERROR(ValidateOptions(s.options, s.callbacks, &bind_ip));
  // dcmnet would look every peer up in reverse DNS while the adopted-socket lock is held.
  dcmDisableGethostbyaddr.set(OFTrue);
  RETURN_IF_ERROR(BuildScpConfig(s.options, &s.config));
  int bound_port = 0;
  ASSIGN_OR_RETURN(s.listen_fd, OpenListeningSocket(s.options, bind_ip, &bound_port));
  RETURN_IF_ERROR(s.InitAcceptorNetwork());
  RETURN_IF_ERROR(s.OpenWakePipe());
  s.bound_port = bound_port;
  s.started = true;
  s.listener = std::thread(&Impl::ListenLoop, &s);
  return absl::OkStatus();
}

void StorageScp::Stop() {
  Impl& s = *impl_;
  if (!s.started) return;
  const char byte = 'x';
  while (write(s.wake_write, &byte, 1) < 0 && errno == EINTR) {
  }
  if (s.listener.joinable()) s.listener.join();
  close(s.listen_fd);  // new connections are refused from here
  s.listen_fd = -1;
  // Connections still negotiating see the wake-up and close; associations run to their end.
  std::map<uint64_t, std::thread> running;
  {
    absl::MutexLock lock(&s.mutex);
    running.swap(s.threads);
  }
  for (auto& [id, thread] : running) thread.join();
  {
    absl::MutexLock lock(&s.mutex);
    s.finished.clear();
  }
  {
    // No connection thread of ours is left; another StorageScp's may hold the lock briefly.
    absl::MutexLock lock(&adopted_socket_mutex);
    ASC_dropNetwork(&s.network);
    s.network = nullptr;
  }
  s.CloseDescriptors();
  s.bound_port = 0;
  s.started = false;
}

}  // namespace miseg

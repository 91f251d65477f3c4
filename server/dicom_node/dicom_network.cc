// The DICOM networking layer: a storage SCP on DCMTK's DcmThreadSCP (one thread per
// connection, behind our own listening socket and thread), a C-STORE SCU on dcmnet's
// ASC/DIMSE calls, and a STOW-RS client on libcurl (http_client.h).
#include "server/dicom_node/dicom_network.h"

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
#include <cctype>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>  // std::call_once
#include <random>
#include <thread>
#include <utility>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmnet/assoc.h>
#include <dcmtk/dcmnet/dimse.h>
#include <dcmtk/dcmnet/diutil.h>
#include <dcmtk/dcmnet/dul.h>
#include <dcmtk/dcmnet/scpthrd.h>
#include <dcmtk/ofstd/ofstd.h>


#include "absl/base/const_init.h"
#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/series_reader.h"
#include "core/common/status_macros.h"
#include "server/dicom_node/http_client.h"

namespace miseg {
namespace {

constexpr Uint32 kMaxReceivePdu = ASC_MAXIMUMPDUSIZE;  // 128 KiB
constexpr size_t kMaxAeTitle = 16;

std::string Trim(absl::string_view text) { return std::string(absl::StripAsciiWhitespace(text)); }

std::string StatusHex(Uint16 status) { return absl::StrFormat("0x%04X", status); }

// Text safe for a one-line message or an LO element: no control characters, no backslash.
std::string OneLine(absl::string_view text, size_t max_chars) {
  std::string out;
  for (char c : text.substr(0, max_chars)) {
    const unsigned char u = static_cast<unsigned char>(c);
    out.push_back((u < 0x20 || u == 0x7F || c == '\\') ? ' ' : c);
  }
  return out;
}

bool ValidAeTitle(absl::string_view ae) {
  const std::string trimmed = Trim(ae);
  if (trimmed.empty() || trimmed.size() > kMaxAeTitle) return false;
  for (char c : trimmed) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7F || c == '\\') return false;
  }
  return true;
}

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
      OFString value;
      values[i] = dataset->findAndGetOFString(required[i].first, value).good() ? Trim(value.c_str())
                                                                               : std::string();
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
  T_ASC_Association* assoc = nullptr;
  OFCondition cond;
  {
    absl::MutexLock lock(&adopted_socket_mutex);
    dcmExternalSocketHandle.set(fd);
    cond = ASC_receiveAssociation(network, &assoc, kMaxReceivePdu, nullptr, nullptr, OFFalse,
                                  DUL_NOBLOCK, static_cast<int>(options.acse_timeout.count()));
    dcmExternalSocketHandle.set(kNoSocket);
  }
  if (cond.bad()) {
    if (assoc != nullptr && assoc->DULassociation != nullptr) {
      ASC_dropAssociation(assoc);  // dcmnet took the socket over: this closes it
      ASC_destroyAssociation(&assoc);
    } else {
      if (assoc != nullptr) ASC_destroyAssociation(&assoc);
      close(fd);
    }
    done();
    return;
  }
  const std::string calling = Trim(assoc->params->DULparams.callingAPTitle);
  const std::string called = Trim(assoc->params->DULparams.calledAPTitle);

  // Who may not associate at all is refused before the limit is consulted (with the reject
  // the worker's own checks would give): a flood of strangers, or of liars about their AE
  // title, must not hold the slots of the peers, whom a transient "local limit exceeded"
  // would turn away while the refused associations wind down (issue 13).
  const bool called_us = called == Trim(options.ae_title);
  if (!called_us || !IsAllowed(calling, peer_ip)) {
    T_ASC_RejectParameters reject;
    reject.result = ASC_RESULT_REJECTEDPERMANENT;
    reject.source = ASC_SOURCE_SERVICEUSER;
    reject.reason = called_us ? ASC_REASON_SU_CALLINGAETITLENOTRECOGNIZED
                              : ASC_REASON_SU_CALLEDAETITLENOTRECOGNIZED;
    ASC_rejectAssociation(assoc, &reject);
    ASC_dropAssociation(assoc);
    ASC_destroyAssociation(&assoc);
    done();
    return;
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
    T_ASC_RejectParameters reject;
    reject.result = ASC_RESULT_REJECTEDTRANSIENT;
    reject.source = ASC_SOURCE_SERVICEPROVIDER_PRESENTATION_RELATED;
    reject.reason = ASC_REASON_SP_PRES_LOCALLIMITEXCEEDED;
    ASC_rejectAssociation(assoc, &reject);
    ASC_dropAssociation(assoc);
    ASC_destroyAssociation(&assoc);
    done();
    return;
  }

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

absl::Status StorageScp::Start() {
  Impl& s = *impl_;
  if (s.started) return absl::FailedPreconditionError("StorageScp already started");
  const StorageScpOptions& o = s.options;
  if (!ValidAeTitle(o.ae_title)) {
    return absl::InvalidArgumentError(
        absl::StrCat("StorageScp: AE title '", o.ae_title, "' must have 1 to 16 characters"));
  }
  if (o.port < 0 || o.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("StorageScp: port ", o.port, " out of range"));
  }
  in_addr bind_ip{};
  if (inet_pton(AF_INET, o.bind_address.c_str(), &bind_ip) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("StorageScp: bind address '", o.bind_address, "' is not an IPv4 literal"));
  }
  if (o.max_associations < 1) {
    return absl::InvalidArgumentError("StorageScp: max_associations must be at least 1");
  }
  if (!s.callbacks.on_instance) {
    return absl::InvalidArgumentError("StorageScp: on_instance callback missing");
  }
  if (o.acse_timeout.count() < 1 || o.dimse_timeout.count() < 1) {
    return absl::InvalidArgumentError("StorageScp: timeouts must be at least 1 s");
  }

  // dcmnet would look every peer up in reverse DNS while the adopted-socket lock is held.
  dcmDisableGethostbyaddr.set(OFTrue);

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
  s.config = DcmSharedSCPConfig(config);

  // Our own listening socket, bound where asked (DCMTK 3.6.7 would bind every interface).
  // Non-blocking: accept never waits for a connection that vanished after poll saw it.
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
  s.listen_fd = fd;

  // dcmnet's acceptor network, without a listening socket of its own: with an external
  // socket set, ASC_initializeNetwork opens none.
  {
    absl::MutexLock lock(&adopted_socket_mutex);
    dcmExternalSocketHandle.set(fd);
    cond = ASC_initializeNetwork(NET_ACCEPTOR, 0, static_cast<int>(o.acse_timeout.count()),
                                 &s.network);
    dcmExternalSocketHandle.set(kNoSocket);
    if (cond.bad()) s.network = nullptr;
  }
  if (cond.bad()) {
    s.CloseDescriptors();
    return FromCondition(cond, "StorageScp: ASC_initializeNetwork", absl::StatusCode::kInternal);
  }
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    {
      absl::MutexLock lock(&adopted_socket_mutex);
      ASC_dropNetwork(&s.network);
    }
    s.CloseDescriptors();
    return absl::InternalError(absl::StrCat("StorageScp: pipe: ", strerror(errno)));
  }
  s.wake_read = pipe_fds[0];
  s.wake_write = pipe_fds[1];
  s.bound_port = ntohs(address.sin_port);
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

// ---------------------------------------------------------------------------------------
// C-STORE SCU

namespace {

struct OutgoingFile {
  std::unique_ptr<DcmFileFormat> file;
  std::string sop_class_uid;
  std::string sop_instance_uid;
  std::string syntax_uid;  // the file's transfer syntax
};

bool IsPlainLittleEndian(const std::string& syntax) {
  return syntax == UID_LittleEndianExplicitTransferSyntax ||
         syntax == UID_LittleEndianImplicitTransferSyntax;
}

std::string SopName(const std::string& uid) { return dcmFindNameOfUID(uid.c_str(), uid.c_str()); }

// Owns the dcmnet structures of one requested association.
class ScuAssociation {
 public:
  ~ScuAssociation() {
    if (assoc_ != nullptr && established_) {
      if (release_) {
        ASC_releaseAssociation(assoc_);
      } else {
        ASC_abortAssociation(assoc_);
      }
    }
    if (params_ != nullptr) {
      ASC_destroyAssociationParameters(&params_);
      if (assoc_ != nullptr) assoc_->params = nullptr;
    }
    if (assoc_ != nullptr) ASC_destroyAssociation(&assoc_);
    if (network_ != nullptr) ASC_dropNetwork(&network_);
  }

  T_ASC_Network* network_ = nullptr;
  T_ASC_Parameters* params_ = nullptr;
  T_ASC_Association* assoc_ = nullptr;
  bool established_ = false;
  bool release_ = false;  // release (true) or abort (false) on destruction
};

int SecondsLeft(std::chrono::steady_clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::seconds>(deadline - std::chrono::steady_clock::now());
  return static_cast<int>(std::max<int64_t>(1, left.count()));
}

}  // namespace

absl::Status SendByCStore(const DicomPeer& peer, const std::string& calling_ae_title,
                          const std::vector<std::string>& part10_files,
                          std::chrono::seconds timeout) {
  const std::string who = absl::StrCat(Trim(peer.ae_title), "@", peer.host, ":", peer.port);
  if (!ValidAeTitle(peer.ae_title) || !ValidAeTitle(calling_ae_title)) {
    return absl::InvalidArgumentError(
        absl::StrCat("C-STORE to ", who, ": AE titles must have 1 to 16 characters (called '",
                     peer.ae_title, "', calling '", calling_ae_title, "')"));
  }
  if (peer.host.empty() || peer.host.size() > 50 || peer.port < 1 || peer.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("C-STORE to ", who, ": bad host or port"));
  }
  if (part10_files.empty()) return absl::OkStatus();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const int timeout_s = static_cast<int>(std::max<int64_t>(1, timeout.count()));
  RegisterDicomCodecs();  // decoders, for a peer that only takes uncompressed data

  // Every file parsed first: a bad one sends nothing.
  std::vector<OutgoingFile> files;
  files.reserve(part10_files.size());
  for (size_t i = 0; i < part10_files.size(); ++i) {
    const std::string name = absl::StrCat("file #", i);
    absl::StatusOr<std::unique_ptr<DcmFileFormat>> parsed = ParseDicom(part10_files[i], name);
    if (!parsed.ok()) return parsed.status();
    OutgoingFile out;
    out.file = std::move(*parsed);
    DcmDataset* dataset = out.file->getDataset();
    OFString value;
    if (dataset->findAndGetOFString(DCM_SOPClassUID, value).good())
      out.sop_class_uid = Trim(value.c_str());
    if (dataset->findAndGetOFString(DCM_SOPInstanceUID, value).good()) {
      out.sop_instance_uid = Trim(value.c_str());
    }
    if (out.sop_class_uid.empty() || out.sop_instance_uid.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": no SOP Class UID or SOP Instance UID"));
    }
    if (out.file->getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, value).good() &&
        !value.empty()) {
      out.syntax_uid = Trim(value.c_str());
    } else {
      out.syntax_uid = DcmXfer(dataset->getOriginalXfer()).getXferID();
    }
    if (DcmXfer(out.syntax_uid.c_str()).getXfer() == EXS_Unknown) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": unknown transfer syntax ", out.syntax_uid));
    }
    files.push_back(std::move(out));
  }

  // Presentation contexts: (SOP class, {explicit LE, implicit LE}) for every class, plus
  // (SOP class, {the file's syntax}) for every other syntax found.
  struct Proposed {
    T_ASC_PresentationContextID id;
    std::string sop_class_uid;
    std::vector<std::string> syntaxes;
  };
  std::vector<Proposed> proposed;
  std::map<std::pair<std::string, std::string>, size_t> index;  // (class, syntax or "") -> i
  auto propose = [&](const std::string& sop, const std::string& key,
                     std::vector<std::string> syntaxes) {
    if (index.count({sop, key}) != 0) return;
    index[{sop, key}] = proposed.size();
    proposed.push_back({static_cast<T_ASC_PresentationContextID>(2 * proposed.size() + 1), sop,
                        std::move(syntaxes)});
  };
  for (const OutgoingFile& f : files) {
    if (!IsPlainLittleEndian(f.syntax_uid)) propose(f.sop_class_uid, f.syntax_uid, {f.syntax_uid});
    propose(f.sop_class_uid, "",
            {UID_LittleEndianExplicitTransferSyntax, UID_LittleEndianImplicitTransferSyntax});
  }
  if (proposed.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("C-STORE to ", who, ": the files need ", proposed.size(),
                     " presentation contexts, more than the 128 one association can carry"));
  }

  ScuAssociation a;
  // The TCP connect timeout is process-wide in DCMTK 3.6.7.
  dcmConnectionTimeout.set(timeout_s);
  OFCondition cond = ASC_initializeNetwork(NET_REQUESTOR, 0, timeout_s, &a.network_);
  if (cond.bad()) {
    return FromCondition(cond, absl::StrCat("C-STORE to ", who, ": network"),
                         absl::StatusCode::kInternal);
  }
  cond = ASC_createAssociationParameters(&a.params_, ASC_DEFAULTMAXPDU);
  if (cond.bad()) {
    return FromCondition(cond, absl::StrCat("C-STORE to ", who, ": parameters"),
                         absl::StatusCode::kInternal);
  }
  ASC_setAPTitles(a.params_, Trim(calling_ae_title).c_str(), Trim(peer.ae_title).c_str(), nullptr);
  const std::string peer_address = absl::StrCat(peer.host, ":", peer.port);
  ASC_setPresentationAddresses(a.params_, OFStandard::getHostName().c_str(), peer_address.c_str());
  for (const Proposed& p : proposed) {
    std::vector<const char*> syntaxes;
    for (const std::string& s : p.syntaxes) syntaxes.push_back(s.c_str());
    cond = ASC_addPresentationContext(a.params_, p.id, p.sop_class_uid.c_str(), syntaxes.data(),
                                      static_cast<int>(syntaxes.size()));
    if (cond.bad()) {
      return FromCondition(cond, absl::StrCat("C-STORE to ", who, ": presentation context"),
                           absl::StatusCode::kInternal);
    }
  }

  cond = ASC_requestAssociation(a.network_, a.params_, &a.assoc_);
  if (cond.bad()) {
    if (cond == DUL_ASSOCIATIONREJECTED) {
      T_ASC_RejectParameters reject;
      ASC_getRejectParameters(a.params_, &reject);
      OFString text;
      ASC_printRejectParameters(text, &reject);
      const std::string message = absl::StrCat("C-STORE to ", who, ": association rejected (",
                                               OneLine(text.c_str(), 300), ")");
      if (reject.result == ASC_RESULT_REJECTEDPERMANENT) {
        return absl::FailedPreconditionError(message);
      }
      return absl::UnavailableError(message);
    }
    return absl::UnavailableError(absl::StrCat(
        "C-STORE to ", who, ": association request failed: ", OneLine(cond.text(), 300)));
  }
  a.established_ = true;
  if (ASC_countAcceptedPresentationContexts(a.params_) == 0) {
    a.release_ = true;
    return absl::FailedPreconditionError(absl::StrCat(
        "C-STORE to ", who, ": the peer accepted none of the proposed presentation contexts"));
  }

  auto accepted = [&](const std::string& sop, const std::string& key,
                      std::string* syntax) -> T_ASC_PresentationContextID {
    auto it = index.find({sop, key});
    if (it == index.end()) return 0;
    T_ASC_PresentationContext pc;
    if (ASC_findAcceptedPresentationContext(a.params_, proposed[it->second].id, &pc).bad() ||
        pc.resultReason != ASC_P_ACCEPTANCE) {
      return 0;
    }
    *syntax = pc.acceptedTransferSyntax;
    return pc.presentationContextID;
  };

  for (size_t i = 0; i < files.size(); ++i) {
    OutgoingFile& f = files[i];
    const std::string what = absl::StrCat("C-STORE to ", who, " of file #", i,
                                          " (SOP Instance UID ", f.sop_instance_uid, ")");
    if (std::chrono::steady_clock::now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": not sent, the timeout of ", timeout.count(), " s elapsed"));
    }
    std::string syntax;
    T_ASC_PresentationContextID pcid = 0;
    if (!IsPlainLittleEndian(f.syntax_uid)) pcid = accepted(f.sop_class_uid, f.syntax_uid, &syntax);
    if (pcid == 0) pcid = accepted(f.sop_class_uid, "", &syntax);
    if (pcid == 0) {
      a.release_ = true;
      return absl::FailedPreconditionError(absl::StrCat(
          what, ": the peer accepts no presentation context for ", SopName(f.sop_class_uid)));
    }
    DcmDataset* dataset = f.file->getDataset();
    const E_TransferSyntax target = DcmXfer(syntax.c_str()).getXfer();
    if (syntax != f.syntax_uid) {
      if (dataset->chooseRepresentation(target, nullptr).bad() ||
          !dataset->canWriteXfer(target, dataset->getOriginalXfer())) {
        a.release_ = true;
        return absl::FailedPreconditionError(
            absl::StrCat(what, ": the peer accepts ", SopName(f.sop_class_uid), " only as ", syntax,
                         ", and the file's ", f.syntax_uid, " cannot be converted to it"));
      }
    }
    T_DIMSE_C_StoreRQ request;
    std::memset(&request, 0, sizeof(request));
    request.MessageID = a.assoc_->nextMsgID++;
    OFStandard::strlcpy(request.AffectedSOPClassUID, f.sop_class_uid.c_str(),
                        sizeof(request.AffectedSOPClassUID));
    OFStandard::strlcpy(request.AffectedSOPInstanceUID, f.sop_instance_uid.c_str(),
                        sizeof(request.AffectedSOPInstanceUID));
    request.DataSetType = DIMSE_DATASET_PRESENT;
    request.Priority = DIMSE_PRIORITY_MEDIUM;
    T_DIMSE_C_StoreRSP response;
    std::memset(&response, 0, sizeof(response));
    DcmDataset* detail_raw = nullptr;
    cond = DIMSE_storeUser(a.assoc_, pcid, &request, nullptr, dataset, nullptr, nullptr,
                           DIMSE_NONBLOCKING, SecondsLeft(deadline), &response, &detail_raw);
    std::unique_ptr<DcmDataset> detail(detail_raw);
    if (cond.bad()) {
      return absl::UnavailableError(
          absl::StrCat(what, ": ", OneLine(cond.text(), 300)));  // aborted on return
    }
    f.file.reset();  // sent: free it early
    const Uint16 status = response.DimseStatus;
    const bool success = status == STATUS_Success;
    const bool warning = status == 0x0001 || (status & 0xF000) == 0xB000;
    if (success || warning) continue;
    std::string comment;
    OFString text;
    if (detail != nullptr && detail->findAndGetOFString(DCM_ErrorComment, text).good()) {
      comment = absl::StrCat(": ", OneLine(text.c_str(), 200));
    }
    a.release_ = true;
    const std::string message = absl::StrCat(what, " failed with status ", StatusHex(status), " (",
                                             DU_cstoreStatusString(status), ")", comment);
    if ((status & 0xFF00) == 0xA700) return absl::UnavailableError(message);
    return absl::InternalError(message);
  }
  a.release_ = true;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// STOW-RS

namespace {

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

// The C-STORE SCU on dcmnet's ASC/DIMSE calls.
#include "core/dicom/net/cstore_sender.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
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
#include <dcmtk/ofstd/ofstd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/common/status_macros.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/net/net_text.h"
#include "core/dicom/series_reader.h"

namespace miseg {
namespace {

using dicom_net_internal::OneLine;
using dicom_net_internal::Trim;
using dicom_net_internal::ValidAeTitle;

std::string StatusHex(Uint16 status) { return absl::StrFormat("0x%04X", status); }

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

// InvalidArgument for AE titles, host or port no association could be requested with.
absl::Status CheckAddressing(const DicomPeer& peer, const std::string& calling_ae_title,
                             const std::string& who) {
  if (!ValidAeTitle(peer.ae_title) || !ValidAeTitle(calling_ae_title)) {
    return absl::InvalidArgumentError(
        absl::StrCat("C-STORE to ", who, ": AE titles must have 1 to 16 characters (called '",
                     peer.ae_title, "', calling '", calling_ae_title, "')"));
  }
  if (peer.host.empty() || peer.host.size() > 50 || peer.port < 1 || peer.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("C-STORE to ", who, ": bad host or port"));
  }
  return absl::OkStatus();
}

// One file parsed, with the UIDs and the transfer syntax it is sent by.
absl::StatusOr<OutgoingFile> ParseOutgoingFile(const std::string& bytes, const std::string& name) {
  absl::StatusOr<std::unique_ptr<DcmFileFormat>> parsed = ParseDicom(bytes, name);
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
    return absl::InvalidArgumentError(absl::StrCat(name, ": no SOP Class UID or SOP Instance UID"));
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
  return out;
}

// The presentation contexts to propose: (SOP class, {explicit LE, implicit LE}) for every
// class, plus (SOP class, {the file's syntax}) for every other syntax found.
struct ContextPlan {
  struct Proposed {
    T_ASC_PresentationContextID id;
    std::string sop_class_uid;
    std::vector<std::string> syntaxes;
  };
  std::vector<Proposed> proposed;
  std::map<std::pair<std::string, std::string>, size_t> index;  // (class, syntax or "") -> i

  void Propose(const std::string& sop, const std::string& key, std::vector<std::string> syntaxes) {
    if (index.count({sop, key}) != 0) return;
    index[{sop, key}] = proposed.size();
    proposed.push_back({static_cast<T_ASC_PresentationContextID>(2 * proposed.size() + 1), sop,
                        std::move(syntaxes)});
  }
};

ContextPlan PlanContexts(const std::vector<OutgoingFile>& files) {
  ContextPlan plan;
  for (const OutgoingFile& f : files) {
    if (!IsPlainLittleEndian(f.syntax_uid)) {
      plan.Propose(f.sop_class_uid, f.syntax_uid, {f.syntax_uid});
    }
    plan.Propose(f.sop_class_uid, "",
                 {UID_LittleEndianExplicitTransferSyntax, UID_LittleEndianImplicitTransferSyntax});
  }
  return plan;
}

// The requestor network and the association parameters, with every planned context.
absl::Status PrepareAssociation(const DicomPeer& peer, const std::string& calling_ae_title,
                                const ContextPlan& plan, int timeout_s, const std::string& who,
                                ScuAssociation& a) {
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
  for (const ContextPlan::Proposed& p : plan.proposed) {
    std::vector<const char*> syntaxes;
    for (const std::string& s : p.syntaxes) syntaxes.push_back(s.c_str());
    cond = ASC_addPresentationContext(a.params_, p.id, p.sop_class_uid.c_str(), syntaxes.data(),
                                      static_cast<int>(syntaxes.size()));
    if (cond.bad()) {
      return FromCondition(cond, absl::StrCat("C-STORE to ", who, ": presentation context"),
                           absl::StatusCode::kInternal);
    }
  }
  return absl::OkStatus();
}

// Requests the association and checks that the peer accepted some context.
absl::Status Associate(const std::string& who, ScuAssociation& a) {
  OFCondition cond = ASC_requestAssociation(a.network_, a.params_, &a.assoc_);
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
  return absl::OkStatus();
}

// The accepted context proposed for (SOP class, syntax key), 0 if none; syntax gets its
// transfer syntax.
T_ASC_PresentationContextID AcceptedContext(const ScuAssociation& a, const ContextPlan& plan,
                                            const std::string& sop, const std::string& key,
                                            std::string* syntax) {
  auto it = plan.index.find({sop, key});
  if (it == plan.index.end()) return 0;
  T_ASC_PresentationContext pc;
  if (ASC_findAcceptedPresentationContext(a.params_, plan.proposed[it->second].id, &pc).bad() ||
      pc.resultReason != ASC_P_ACCEPTANCE) {
    return 0;
  }
  *syntax = pc.acceptedTransferSyntax;
  return pc.presentationContextID;
}

// The context a file goes by: in its own syntax when the peer accepted that, else in the
// accepted uncompressed one, the dataset converted to it.
absl::StatusOr<T_ASC_PresentationContextID> ChooseContext(ScuAssociation& a,
                                                          const ContextPlan& plan, OutgoingFile& f,
                                                          const std::string& what) {
  std::string syntax;
  T_ASC_PresentationContextID pcid = 0;
  if (!IsPlainLittleEndian(f.syntax_uid)) {
    pcid = AcceptedContext(a, plan, f.sop_class_uid, f.syntax_uid, &syntax);
  }
  if (pcid == 0) pcid = AcceptedContext(a, plan, f.sop_class_uid, "", &syntax);
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
  return pcid;
}

// One C-STORE and its response: OK for Success or a Warning.
absl::Status StoreFile(ScuAssociation& a, T_ASC_PresentationContextID pcid, OutgoingFile& f,
                       const std::string& what, std::chrono::steady_clock::time_point deadline) {
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
  OFCondition cond =
      DIMSE_storeUser(a.assoc_, pcid, &request, nullptr, f.file->getDataset(), nullptr, nullptr,
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
  if (success || warning) return absl::OkStatus();
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

}  // namespace

absl::Status SendByCStore(const DicomPeer& peer, const std::string& calling_ae_title,
                          const std::vector<std::string>& part10_files,
                          std::chrono::seconds timeout) {
  const std::string who = absl::StrCat(Trim(peer.ae_title), "@", peer.host, ":", peer.port);
  RETURN_IF_ERROR(CheckAddressing(peer, calling_ae_title, who));
  if (part10_files.empty()) return absl::OkStatus();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const int timeout_s = static_cast<int>(std::max<int64_t>(1, timeout.count()));
  RegisterDicomCodecs();  // decoders, for a peer that only takes uncompressed data

  // Every file parsed first: a bad one sends nothing.
  std::vector<OutgoingFile> files;
  files.reserve(part10_files.size());
  for (size_t i = 0; i < part10_files.size(); ++i) {
    ASSIGN_OR_RETURN(OutgoingFile out,
                     ParseOutgoingFile(part10_files[i], absl::StrCat("file #", i)));
    files.push_back(std::move(out));
  }
  const ContextPlan plan = PlanContexts(files);
  if (plan.proposed.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("C-STORE to ", who, ": the files need ", plan.proposed.size(),
                     " presentation contexts, more than the 128 one association can carry"));
  }

  ScuAssociation a;
  RETURN_IF_ERROR(PrepareAssociation(peer, calling_ae_title, plan, timeout_s, who, a));
  RETURN_IF_ERROR(Associate(who, a));
  for (size_t i = 0; i < files.size(); ++i) {
    OutgoingFile& f = files[i];
    const std::string what = absl::StrCat("C-STORE to ", who, " of file #", i,
                                          " (SOP Instance UID ", f.sop_instance_uid, ")");
    if (std::chrono::steady_clock::now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": not sent, the timeout of ", timeout.count(), " s elapsed"));
    }
    ASSIGN_OR_RETURN(const T_ASC_PresentationContextID pcid, ChooseContext(a, plan, f, what));
    RETURN_IF_ERROR(StoreFile(a, pcid, f, what, deadline));
  }
  a.release_ = true;
  return absl::OkStatus();
}

}  // namespace miseg

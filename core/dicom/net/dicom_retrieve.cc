// C-FIND and C-GET against a DICOM peer on DCMTK's DcmSCU: the SCU receives the C-GET's
// C-STORE sub-operations in memory (handleSTORERequest), re-encoded as Part-10 files in the
// transfer syntax they arrived in, one at a time.
#include "core/dicom/net/dicom_retrieve.h"

#include <memory>
#include <set>
#include <utility>

#include <dcmtk/config/osconfig.h>  // must come first
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcdict.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmnet/diutil.h>
#include <dcmtk/dcmnet/scu.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/common/status_macros.h"
#include "core/dicom/dicom_text.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/net/storage_scp.h"
#include "core/dicom/series_reader.h"

namespace miseg {
namespace {

std::string Who(const DicomPeer& peer) {
  return absl::StrCat(peer.ae_title, "@", peer.host, ":", peer.port);
}

bool IsPending(Uint16 status) { return status == 0xFF00 || status == 0xFF01; }
bool IsSuccessOrWarning(Uint16 status) {
  return status == 0x0000 || status == 0x0001 || (status & 0xF000) == 0xB000;
}

// A DcmSCU that keeps the C-GET's sub-operation instances in memory.
class RetrieveScu : public DcmSCU {
 public:
  std::string received;  // the last instance, Part-10; cleared by the caller
  std::string received_sop;
  std::string receive_error;

  OFCondition handleSTORERequest(const T_ASC_PresentationContextID, DcmDataset* incoming,
                                 OFBool& continue_session, Uint16& status) override {
    continue_session = OFTrue;
    if (incoming == nullptr) {
      status = STATUS_STORE_Error_CannotUnderstand;
      return EC_IllegalParameter;
    }
    const E_TransferSyntax syntax = incoming->getOriginalXfer();
    received_sop = TrimmedFirstDicomValue(incoming, DCM_SOPInstanceUID);
    DcmFileFormat file(incoming, /*deepCopy=*/OFFalse);  // owns it now
    absl::StatusOr<std::string> bytes =
        SerializeDicom(file, syntax == EXS_Unknown ? EXS_LittleEndianExplicit : syntax);
    if (!bytes.ok()) {
      receive_error = std::string(bytes.status().message());
      status = STATUS_STORE_Error_CannotUnderstand;
      return EC_Normal;
    }
    received = *std::move(bytes);
    status = STATUS_Success;
    return EC_Normal;
  }
};

OFList<OFString> Syntaxes(const std::vector<std::string>& uids) {
  OFList<OFString> out;
  for (const std::string& uid : uids) out.push_back(uid.c_str());
  return out;
}

// Configures and associates: the query/retrieve model as SCU, and for C-GET each storage
// SOP class as SCP (role selection), so that the peer may send them back on it.
absl::Status Associate(RetrieveScu& scu, const DicomPeer& peer, const std::string& calling_ae,
                       const char* model, const std::set<std::string>& storage_classes,
                       std::chrono::seconds timeout) {
  const Uint32 seconds = static_cast<Uint32>(std::max<int64_t>(1, timeout.count()));
  scu.setAETitle(calling_ae.c_str());
  scu.setPeerAETitle(peer.ae_title.c_str());
  scu.setPeerHostName(peer.host.c_str());
  scu.setPeerPort(static_cast<Uint16>(peer.port));
  scu.setACSETimeout(seconds);
  scu.setDIMSETimeout(seconds);
  scu.setDIMSEBlockingMode(DIMSE_NONBLOCKING);
  scu.setConnectionTimeout(static_cast<Sint32>(seconds));
  scu.setMaxReceivePDULength(ASC_MAXIMUMPDUSIZE);
  const OFList<OFString> plain = Syntaxes(
      {UID_LittleEndianExplicitTransferSyntax, UID_LittleEndianImplicitTransferSyntax});
  if (scu.addPresentationContext(model, plain).bad()) {
    return absl::InternalError("cannot add the query/retrieve presentation context");
  }
  const OFList<OFString> storage = Syntaxes(StorageTransferSyntaxes());
  for (const std::string& sop_class : storage_classes) {
    if (scu.addPresentationContext(sop_class.c_str(), storage, ASC_SC_ROLE_SCP).bad()) {
      return absl::InvalidArgumentError(absl::StrCat("too many SOP classes to retrieve"));
    }
  }
  OFCondition cond = scu.initNetwork();
  if (cond.bad()) {
    return absl::InternalError(absl::StrCat("DICOM network setup: ", cond.text()));
  }
  cond = scu.negotiateAssociation();
  if (cond == DUL_ASSOCIATIONREJECTED) {
    return absl::FailedPreconditionError(
        absl::StrCat(Who(peer), " rejected the association (is ", calling_ae,
                     " a known modality there?)"));
  }
  if (cond.bad()) {
    return absl::UnavailableError(absl::StrCat("cannot associate with ", Who(peer), ": ",
                                               cond.text()));
  }
  if (scu.findPresentationContextID(model, "") == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(Who(peer), " does not accept ", dcmFindNameOfUID(model, model)));
  }
  return absl::OkStatus();
}

// Runs one C-FIND; `read` sees each matching identifier.
absl::Status RunFind(RetrieveScu& scu, const DicomPeer& peer, DcmDataset& keys,
                     const std::function<void(DcmDataset*)>& read) {
  const T_ASC_PresentationContextID id =
      scu.findPresentationContextID(UID_FINDStudyRootQueryRetrieveInformationModel, "");
  OFList<QRResponse*> responses;
  const OFCondition cond = scu.sendFINDRequest(id, &keys, &responses);
  absl::Status status;
  if (cond.bad()) {
    status = absl::UnavailableError(absl::StrCat("C-FIND at ", Who(peer), ": ", cond.text()));
  }
  for (QRResponse* r : responses) {
    if (status.ok() && !IsPending(r->m_status) && !IsSuccessOrWarning(r->m_status)) {
      status = absl::InternalError(absl::StrFormat("C-FIND at %s: status 0x%04X", Who(peer),
                                                   r->m_status));
    }
    if (status.ok() && IsPending(r->m_status) && r->m_dataset != nullptr) read(r->m_dataset);
    delete r;
  }
  return status;
}

}  // namespace

absl::StatusOr<std::vector<RemoteInstance>> FindStudyInstances(const DicomPeer& peer,
                                                               const std::string& calling_ae,
                                                               const std::string& study_uid,
                                                               std::chrono::seconds timeout) {
  RetrieveScu scu;
  RETURN_IF_ERROR(Associate(scu, peer, calling_ae, UID_FINDStudyRootQueryRetrieveInformationModel,
                            {}, timeout));
  std::vector<std::pair<std::string, std::string>> series;  // uid, modality
  DcmDataset keys;
  keys.putAndInsertString(DCM_QueryRetrieveLevel, "SERIES");
  keys.putAndInsertString(DCM_StudyInstanceUID, study_uid.c_str());
  keys.putAndInsertString(DCM_SeriesInstanceUID, "");
  keys.putAndInsertString(DCM_Modality, "");
  RETURN_IF_ERROR(RunFind(scu, peer, keys, [&](DcmDataset* d) {
    series.emplace_back(TrimmedFirstDicomValue(d, DCM_SeriesInstanceUID), TrimmedFirstDicomValue(d, DCM_Modality));
  }));
  std::vector<RemoteInstance> out;
  for (const auto& [series_uid, modality] : series) {
    DcmDataset image;
    image.putAndInsertString(DCM_QueryRetrieveLevel, "IMAGE");
    image.putAndInsertString(DCM_StudyInstanceUID, study_uid.c_str());
    image.putAndInsertString(DCM_SeriesInstanceUID, series_uid.c_str());
    image.putAndInsertString(DCM_SOPInstanceUID, "");
    image.putAndInsertString(DCM_SOPClassUID, "");
    RETURN_IF_ERROR(RunFind(scu, peer, image, [&](DcmDataset* d) {
      out.push_back({study_uid, series_uid, TrimmedFirstDicomValue(d, DCM_SOPInstanceUID), TrimmedFirstDicomValue(d, DCM_SOPClassUID),
                     modality});
    }));
  }
  scu.releaseAssociation();
  return out;
}

absl::StatusOr<std::vector<std::string>> FindStudies(
    const DicomPeer& peer, const std::string& calling_ae,
    const std::vector<std::pair<std::string, std::string>>& keys, std::chrono::seconds timeout) {
  DcmDataset query;
  query.putAndInsertString(DCM_QueryRetrieveLevel, "STUDY");
  query.putAndInsertString(DCM_StudyInstanceUID, "");
  for (const auto& [keyword, value] : keys) {
    const DcmDataDictionary& dictionary = dcmDataDict.rdlock();
    const DcmDictEntry* entry = dictionary.findEntry(keyword.c_str());
    dcmDataDict.rdunlock();
    if (entry == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown DICOM keyword '", keyword, "'"));
    }
    query.putAndInsertString(entry->getKey(), value.c_str());
  }
  RetrieveScu scu;
  RETURN_IF_ERROR(Associate(scu, peer, calling_ae, UID_FINDStudyRootQueryRetrieveInformationModel,
                            {}, timeout));
  std::vector<std::string> studies;
  RETURN_IF_ERROR(RunFind(scu, peer, query, [&](DcmDataset* d) {
    studies.push_back(TrimmedFirstDicomValue(d, DCM_StudyInstanceUID));
  }));
  scu.releaseAssociation();
  return studies;
}

absl::Status GetInstances(const DicomPeer& peer, const std::string& calling_ae,
                          const std::vector<RemoteInstance>& instances,
                          std::chrono::seconds timeout,
                          const std::function<absl::Status(const RemoteInstance&, std::string)>&
                              on_instance,
                          const std::function<bool()>& cancelled) {
  if (instances.empty()) return absl::OkStatus();
  RegisterDicomCodecs();
  std::set<std::string> classes;
  for (const RemoteInstance& i : instances) classes.insert(i.sop_class_uid);
  RetrieveScu scu;
  RETURN_IF_ERROR(Associate(scu, peer, calling_ae, UID_GETStudyRootQueryRetrieveInformationModel,
                            classes, timeout));
  const T_ASC_PresentationContextID id =
      scu.findPresentationContextID(UID_GETStudyRootQueryRetrieveInformationModel, "");
  for (const RemoteInstance& instance : instances) {
    if (cancelled && cancelled()) return absl::CancelledError("the import was cancelled");
    DcmDataset keys;
    keys.putAndInsertString(DCM_QueryRetrieveLevel, "IMAGE");
    keys.putAndInsertString(DCM_StudyInstanceUID, instance.study_instance_uid.c_str());
    keys.putAndInsertString(DCM_SeriesInstanceUID, instance.series_instance_uid.c_str());
    keys.putAndInsertString(DCM_SOPInstanceUID, instance.sop_instance_uid.c_str());
    scu.received.clear();
    scu.receive_error.clear();
    OFList<RetrieveResponse*> responses;
    const OFCondition cond = scu.sendCGETRequest(id, &keys, &responses);
    Uint16 last = 0;
    for (RetrieveResponse* r : responses) {
      last = r->m_status;
      delete r;
    }
    if (cond.bad()) {
      return absl::UnavailableError(absl::StrCat("C-GET of instance ", instance.sop_instance_uid,
                                                 " from ", Who(peer), ": ", cond.text()));
    }
    if (scu.received.empty() || scu.received_sop != instance.sop_instance_uid) {
      return absl::NotFoundError(absl::StrFormat(
          "C-GET of instance %s from %s brought nothing (status 0x%04X%s%s)",
          instance.sop_instance_uid, Who(peer), last, scu.receive_error.empty() ? "" : ": ",
          scu.receive_error));
    }
    RETURN_IF_ERROR(on_instance(instance, std::move(scu.received)));
  }
  scu.releaseAssociation();
  return absl::OkStatus();
}

}  // namespace miseg

// A raw dcmnet association for the tests, for what DcmSCU and the tools will not do: hold
// an association open, or send a data set that does not match its C-STORE request.
#ifndef MISEG_TESTS_SERVER_RAW_ASSOCIATION_H_
#define MISEG_TESTS_SERVER_RAW_ASSOCIATION_H_

#include <cstring>
#include <string>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dctk.h>
#include <dcmtk/dcmnet/assoc.h>
#include <dcmtk/dcmnet/dimse.h>

#include "absl/strings/str_cat.h"

namespace miseg::testing {

class RawAssociation {
 public:
  // Proposes Verification and the given SOP class with explicit VR little endian.
  RawAssociation(int port, const std::string& calling, const std::string& called,
                 const std::string& sop_class = UID_MRImageStorage) {
    condition_ = ASC_initializeNetwork(NET_REQUESTOR, 0, 10, &network_);
    if (condition_.bad()) return;
    condition_ = ASC_createAssociationParameters(&params_, ASC_DEFAULTMAXPDU);
    if (condition_.bad()) return;
    ASC_setAPTitles(params_, calling.c_str(), called.c_str(), nullptr);
    const std::string address = absl::StrCat("127.0.0.1:", port);
    ASC_setPresentationAddresses(params_, "localhost", address.c_str());
    const char* syntaxes[] = {UID_LittleEndianExplicitTransferSyntax};
    ASC_addPresentationContext(params_, 1, UID_VerificationSOPClass, syntaxes, 1);
    ASC_addPresentationContext(params_, 3, sop_class.c_str(), syntaxes, 1);
    condition_ = ASC_requestAssociation(network_, params_, &assoc_);
    established_ = condition_.good();
  }

  ~RawAssociation() {
    if (established_) ASC_abortAssociation(assoc_);
    if (params_ != nullptr) {
      ASC_destroyAssociationParameters(&params_);
      if (assoc_ != nullptr) assoc_->params = nullptr;
    }
    if (assoc_ != nullptr) ASC_destroyAssociation(&assoc_);
    if (network_ != nullptr) ASC_dropNetwork(&network_);
  }

  bool established() const { return established_; }
  const OFCondition& condition() const { return condition_; }

  // A C-STORE of dataset under the given SOP UIDs; the response status, or -1 on a
  // network error.
  int Store(DcmDataset* dataset, const std::string& sop_class, const std::string& sop_instance) {
    T_DIMSE_C_StoreRQ request;
    std::memset(&request, 0, sizeof(request));
    request.MessageID = assoc_->nextMsgID++;
    OFStandard::strlcpy(request.AffectedSOPClassUID, sop_class.c_str(),
                        sizeof(request.AffectedSOPClassUID));
    OFStandard::strlcpy(request.AffectedSOPInstanceUID, sop_instance.c_str(),
                        sizeof(request.AffectedSOPInstanceUID));
    request.DataSetType = DIMSE_DATASET_PRESENT;
    request.Priority = DIMSE_PRIORITY_MEDIUM;
    T_DIMSE_C_StoreRSP response;
    std::memset(&response, 0, sizeof(response));
    DcmDataset* detail = nullptr;
    OFCondition cond = DIMSE_storeUser(assoc_, 3, &request, nullptr, dataset, nullptr, nullptr,
                                       DIMSE_NONBLOCKING, 30, &response, &detail);
    delete detail;
    return cond.good() ? response.DimseStatus : -1;
  }

  bool Release() {
    if (!established_) return false;
    established_ = false;
    return ASC_releaseAssociation(assoc_).good();
  }

 private:
  T_ASC_Network* network_ = nullptr;
  T_ASC_Parameters* params_ = nullptr;
  T_ASC_Association* assoc_ = nullptr;
  OFCondition condition_;
  bool established_ = false;
};

}  // namespace miseg::testing

#endif  // MISEG_TESTS_SERVER_RAW_ASSOCIATION_H_

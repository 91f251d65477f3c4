// Pulling studies from a DICOM peer (a PACS): C-FIND in the Study Root information model to
// list what a study holds, then C-GET to fetch instances over the same kind of association,
// the peer sending each one back as a C-STORE sub-operation on it (so no storage SCP of
// ours needs to be reachable, unlike C-MOVE). DCMTK (DcmSCU) and Abseil only; no DCMTK type
// in this header.
#ifndef MISEG_CORE_DICOM_NET_DICOM_RETRIEVE_H_
#define MISEG_CORE_DICOM_NET_DICOM_RETRIEVE_H_

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dicom/net/dicom_peer.h"

namespace miseg {

// One instance of a study as the peer (or a DICOMweb server) lists it.
struct RemoteInstance {
  std::string study_instance_uid;
  std::string series_instance_uid;
  std::string sop_instance_uid;
  std::string sop_class_uid;
  std::string modality;  // the series'
};

// C-FIND at SERIES level (SeriesInstanceUID, Modality), then at IMAGE level for each series
// (SOPInstanceUID, SOPClassUID), over one association. Errors name the peer:
// Unavailable when it cannot be reached or drops the association, FailedPrecondition when it
// rejects the association or the query model, Internal for a failed C-FIND status.
absl::StatusOr<std::vector<RemoteInstance>> FindStudyInstances(const DicomPeer& peer,
                                                               const std::string& calling_ae,
                                                               const std::string& study_uid,
                                                               std::chrono::seconds timeout);

// C-FIND at STUDY level with the given keys (DICOM keyword -> value, e.g. "StudyDate" ->
// "20260101-", "ModalitiesInStudy" -> "MR"): the matching StudyInstanceUIDs. InvalidArgument
// for a keyword DCMTK does not know.
absl::StatusOr<std::vector<std::string>> FindStudies(
    const DicomPeer& peer, const std::string& calling_ae,
    const std::vector<std::pair<std::string, std::string>>& keys, std::chrono::seconds timeout);

// Fetches the instances by C-GET (IMAGE level, one request per instance, in order) over one
// association; on_instance gets each as a Part-10 file, in the transfer syntax it arrived in,
// before the next is asked for: an error from it stops the retrieval and is returned.
// cancelled is asked between instances (Cancelled when true). An instance the peer does not
// send is NotFound naming it.
absl::Status GetInstances(const DicomPeer& peer, const std::string& calling_ae,
                          const std::vector<RemoteInstance>& instances,
                          std::chrono::seconds timeout,
                          const std::function<absl::Status(const RemoteInstance&, std::string)>&
                              on_instance,
                          const std::function<bool()>& cancelled);

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_NET_DICOM_RETRIEVE_H_

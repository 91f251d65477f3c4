// A remote DICOM application entity, as the C-STORE sender and the C-FIND / C-GET client
// reach it.
#ifndef MISEG_CORE_DICOM_NET_DICOM_PEER_H_
#define MISEG_CORE_DICOM_NET_DICOM_PEER_H_

#include <string>

namespace miseg {

// A remote application entity: where SendByCStore connects to.
struct DicomPeer {
  std::string ae_title;
  std::string host;  // name or IP literal
  int port = 104;
};

}  // namespace miseg

#endif  // MISEG_CORE_DICOM_NET_DICOM_PEER_H_

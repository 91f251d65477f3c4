// Library logs through server/log.h: with --log_format=logfmt or json, the lines gRPC's core
// (gpr_log) and DCMTK (oflog) print would otherwise reach stderr in their own forms, and an
// aggregator parsing one record per line would choke on them. InstallLogBridges routes
// both through Log() (component "grpc" or "dcmtk" in the message, their severity as the
// level). With --log_format=text nothing changes: each library keeps its own lines.
// Call once, after SetLogFormat and after DCMTK's OFLog::configure.
#ifndef MISEG_SERVER_LOG_BRIDGES_H_
#define MISEG_SERVER_LOG_BRIDGES_H_

namespace miseg {

void InstallLogBridges();

}  // namespace miseg

#endif  // MISEG_SERVER_LOG_BRIDGES_H_

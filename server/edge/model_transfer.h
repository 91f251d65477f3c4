// Models out and in (ModelService.ExportModel and ImportModel). Export writes model.pt (a
// TorchScript module, core/train/export.h), model.json (v1.ExportedModel as JSON) and
// README.md to a temporary directory under incoming/ on the ingest pool, then streams them
// one 1 MiB chunk per write; the directory goes with the call. Import stages the two files
// as they arrive, then on the ingest pool checks model.json against the dataset, checks
// the module on a test batch, moves it into models/ and registers the new version.
#ifndef MISEG_SERVER_EDGE_MODEL_TRANSFER_H_
#define MISEG_SERVER_EDGE_MODEL_TRANSFER_H_

#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "server/edge/services.h"

namespace miseg {

grpc::ServerWriteReactor<v1::FileChunk>* StartExportModel(const ServiceDeps& deps,
                                                          grpc::CallbackServerContext* context,
                                                          const v1::ExportModelRequest* request);
grpc::ServerReadReactor<v1::ImportModelRequest>* StartImportModel(
    const ServiceDeps& deps, grpc::CallbackServerContext* context, v1::Model* response);

// model.json's text for a model of a dataset (exported here for tests of its form).
std::string ExportedModelJson(const v1::ExportedModel& model);

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_MODEL_TRANSFER_H_

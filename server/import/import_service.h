// The ImportService of miseg.v1 (StartImport, GetImport, ListImports, CancelImport,
// ListImportSources) over the Importer, on the callback API like every other service.
#ifndef MISEG_SERVER_IMPORT_IMPORT_SERVICE_H_
#define MISEG_SERVER_IMPORT_IMPORT_SERVICE_H_

#include <memory>

#include <grpcpp/grpcpp.h>

#include "server/import/importer.h"
#include "server/edge/services.h"

namespace miseg {

// importer may be null (no --import_sources): StartImport is then FAILED_PRECONDITION, and
// listing still works (imports of an earlier run stay visible).
std::unique_ptr<grpc::Service> MakeImportService(const ServiceDeps& deps, Importer* importer);

}  // namespace miseg

#endif  // MISEG_SERVER_IMPORT_IMPORT_SERVICE_H_

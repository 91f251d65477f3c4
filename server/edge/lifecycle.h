// Deleting datasets and model versions, and the files that frees. Metadata goes first, in
// one SQLite transaction; the files it no longer references go after the commit. A crash
// in between leaves unreferenced files, never a reference to a missing one: the startup
// sweeps (CollectGarbage in server_main.cc for objects, SweepModelFiles for models,
// JobHost::ApplyCheckpointRetention for checkpoints) remove them. File-store objects are
// content addressed and may back instances of several datasets: one is removed only when
// nothing references it, checked again under ObjectReferenceMutex just before the unlink.
#ifndef MISEG_SERVER_EDGE_LIFECYCLE_H_
#define MISEG_SERVER_EDGE_LIFECYCLE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "miseg/v1/miseg.pb.h"
#include "server/edge/services.h"
#include "server/store/file_store.h"
#include "server/store/store.h"

namespace miseg {

// Deletes the dataset, its studies, jobs (events, checkpoints) and models, and frees what
// only it referenced. FailedPrecondition while one of its jobs is queued or running unless
// force: those are then cancelled and waited for (they stop within a step; DeadlineExceeded
// after wait). Blocks: call it on a thread of the server's own (the ingest pool).
absl::StatusOr<v1::DeleteDatasetResponse> DeleteDatasetAndFiles(const ServiceDeps& deps,
                                                                const std::string& name,
                                                                bool force,
                                                                absl::Duration wait);

// Deletes a model version (not its dataset's active one: FailedPrecondition) and its file;
// returns the bytes freed.
absl::StatusOr<int64_t> DeleteModelAndFile(const ServiceDeps& deps, int64_t model_id);

// Of hashes, removes the objects nothing references any more; returns {objects, bytes}.
// node_store (may be null): the DICOM node's inbox and outbox, whose objects are kept too.
std::pair<int64_t, int64_t> RemoveUnreferencedObjects(Store& store, FileStore& files,
                                                      const std::vector<std::string>& hashes,
                                                      NodeStore* node_store);

// Startup, before training starts: removes the files of models_dir no model references.
void SweepModelFiles(Store& store, const std::string& models_dir);

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_LIFECYCLE_H_

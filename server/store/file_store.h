// Content-addressed file store for DICOM instances and other blobs: a file's path is
// derived from the SHA-256 of its bytes (objects/ab/abcdef...), never from a string a client
// sent. Writes go to a temporary name in the same directory, are fsynced, then renamed, so
// a reader never sees a partial file and a crash leaves at most an unreferenced temporary.
#ifndef MISEG_SERVER_STORE_FILE_STORE_H_
#define MISEG_SERVER_STORE_FILE_STORE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace miseg {

// Lowercase hex SHA-256 of bytes.
std::string Sha256Hex(const std::string& bytes);

// Writes bytes to path through path + ".<random>.tmp", fsync, rename, fsync of the
// directory. Creates missing parent directories.
absl::Status WriteFileAtomically(const std::string& path, const std::string& bytes);
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

class FileStore {
 public:
  // root is created if missing; leftover temporaries of a crashed write are removed.
  static absl::StatusOr<FileStore> Open(const std::string& root);

  // Stores bytes under their hash and returns the hash; storing the same bytes twice is a
  // no-op. The object is durable when this returns.
  absl::StatusOr<std::string> Put(const std::string& bytes);
  // NotFound for an unknown hash; InvalidArgument for a string that is not a hash;
  // DataLoss when the bytes no longer match their hash.
  absl::StatusOr<std::string> Get(const std::string& hash) const;
  bool Contains(const std::string& hash) const;
  absl::Status Remove(const std::string& hash);
  // Every stored hash (for garbage collection against the metadata store).
  absl::StatusOr<std::vector<std::string>> List() const;

  const std::string& root() const { return root_; }

 private:
  explicit FileStore(std::string root) : root_(std::move(root)) {}
  std::string PathOf(const std::string& hash) const;
  std::string root_;
};

}  // namespace miseg

#endif  // MISEG_SERVER_STORE_FILE_STORE_H_

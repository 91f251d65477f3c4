// Content-addressed file store for DICOM instances and other blobs: a file's path is
// derived from the SHA-256 of its bytes (objects/ab/abcdef...), never from a string a client
// sent. Writes go to a temporary name in the same directory, are fsynced, then renamed, so
// a reader never sees a partial file and a crash leaves at most an unreferenced temporary.
// Files received in pieces (uploads) are staged under staging/ while they arrive, hashed as
// they are written, and renamed into objects/ when committed. Open removes what a crash
// left in staging/.
#ifndef MISEG_SERVER_STORE_FILE_STORE_H_
#define MISEG_SERVER_STORE_FILE_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace miseg {

// Held shared by whoever stores objects and then commits rows referencing them (an upload
// from its first Put or Commit to its InsertStudy), and exclusively by whoever removes
// objects it found unreferenced, while it checks them again and unlinks them: an object is
// never removed between a writer storing it and committing its reference. Process wide.
absl::Mutex& ObjectReferenceMutex();

// Lowercase hex SHA-256 of bytes.
std::string Sha256Hex(const std::string& bytes);
// Lowercase hex SHA-256 of a file's bytes, read 1 MiB at a time (the disk's errors:
// NotFound for a missing file).
absl::StatusOr<std::string> Sha256OfFile(const std::string& path);
// True for 64 lowercase hex characters (the form of every object name).
bool IsObjectHash(std::string_view text);

// Writes bytes to path through path + ".<random>.tmp", fsync, rename, fsync of the
// directory. Creates missing parent directories.
absl::Status WriteFileAtomically(const std::string& path, const std::string& bytes);
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// A file being received: appended bytes go to a temporary file under the store's staging
// directory while their SHA-256 is computed. Destroying it without FileStore::Commit removes
// the file. Memory: a hash context and a descriptor, whatever the file's size. Not thread
// safe; one thread at a time may use it (any thread).
class StagedFile {
 public:
  ~StagedFile();
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;

  // Writes bytes at the end of the file. FailedPrecondition after Finish; the disk's errors
  // otherwise (ResourceExhausted when it is full).
  absl::Status Append(std::string_view bytes);
  // Close; hash() is valid afterwards. FailedPrecondition when called twice. Not fsynced:
  // Commit does that, so temporaries (a Segment call's files) never wait on the disk.
  absl::Status Finish();
  // Where the bytes are (readable after Finish); after Commit, the object's path.
  const std::string& path() const { return path_; }
  // Lowercase hex SHA-256 of the bytes; empty before Finish.
  const std::string& hash() const { return hash_; }
  int64_t size() const { return size_; }
  bool finished() const { return fd_ < 0 && !hash_.empty(); }

 private:
  friend class FileStore;
  struct HashContext;  // OpenSSL's, kept out of this header
  StagedFile(std::string path, int fd);

  std::string path_;
  int fd_ = -1;
  std::unique_ptr<HashContext> context_;
  std::string hash_;
  int64_t size_ = 0;
  bool committed_ = false;  // path_ is the object's now: never remove it
};

class FileStore {
 public:
  // root is created if missing; leftover temporaries of a crashed write, and everything in
  // staging/, are removed. Open each root once per process: a second Open would remove the
  // files the first is staging.
  static absl::StatusOr<FileStore> Open(const std::string& root);

  // A new empty file under staging/. Thread safe.
  absl::StatusOr<std::unique_ptr<StagedFile>> Stage();
  // Moves a finished staged file to objects/<hash> (fsync, rename, fsync of the directory; if
  // the object is present already and intact, the temporary is dropped instead; a damaged
  // one is replaced). Returns the hash.
  // FailedPrecondition for a file not finished or already committed. Thread safe for
  // distinct files.
  absl::StatusOr<std::string> Commit(StagedFile& file);

  // Stores bytes under their hash and returns the hash; storing the same bytes twice is a
  // no-op (a damaged copy is rewritten). The object is durable when this returns.
  absl::StatusOr<std::string> Put(const std::string& bytes);
  // NotFound for an unknown hash; InvalidArgument for a string that is not a hash;
  // DataLoss when the bytes no longer match their hash (the message names the object).
  absl::StatusOr<std::string> Get(const std::string& hash) const;
  bool Contains(const std::string& hash) const;
  // Where an object's file is, for streaming it out (the reader verifies the hash).
  // InvalidArgument for a string that is not a hash; NotFound for an unknown one.
  absl::StatusOr<std::string> ObjectPath(const std::string& hash) const;
  // Reads the object and checks its bytes against its name: OK, NotFound, DataLoss.
  absl::Status Verify(const std::string& hash) const;
  absl::Status Remove(const std::string& hash);
  // Moves an object's file (a damaged one) to quarantine/<hash> (<hash>.1, .2, ... when
  // taken), out of the store but kept for inspection; returns its new path.
  absl::StatusOr<std::string> Quarantine(const std::string& hash);
  // Every stored hash (for garbage collection against the metadata store).
  absl::StatusOr<std::vector<std::string>> List() const;

  const std::string& root() const { return root_; }
  std::string QuarantineDir() const;

 private:
  explicit FileStore(std::string root) : root_(std::move(root)) {}
  std::string PathOf(const std::string& hash) const;
  std::string StagingDir() const;
  std::string root_;
};

}  // namespace miseg

#endif  // MISEG_SERVER_STORE_FILE_STORE_H_

#include "server/store/file_store.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string_view>
#include <system_error>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/common/status_macros.h"

namespace miseg {

absl::Mutex& ObjectReferenceMutex() {
  static absl::Mutex* const mutex = new absl::Mutex();
  return *mutex;
}
namespace {

namespace fs = std::filesystem;

absl::Status ErrnoError(int error_number, absl::string_view what, absl::string_view path) {
  // ErrnoToStatus maps ENOENT to NotFound, ENOSPC to ResourceExhausted, and so on, and
  // appends the errno text itself.
  return absl::ErrnoToStatus(error_number, absl::StrCat(what, " ", path));
}

absl::Status FsError(const std::error_code& ec, absl::string_view what,
                     absl::string_view path) {
  return ErrnoError(ec.value(), what, path);
}

// Closes a descriptor on every path out of a function, unless released.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now and reports close's own error (which can carry a delayed write error).
  int Close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

std::string RandomHex() {
  // Only has to make concurrent writers of one path pick distinct temporaries.
  thread_local std::mt19937_64 engine{std::random_device{}()};
  uint64_t value = engine();
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(&value), sizeof(value)));
}

absl::Status FsyncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open directory", dir);
  Fd closer(fd);
  if (::fsync(fd) != 0) return ErrnoError(errno, "cannot fsync directory", dir);
  return absl::OkStatus();
}

absl::Status FsyncFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open", path);
  Fd closer(fd);
  if (::fsync(fd) != 0) return ErrnoError(errno, "cannot fsync", path);
  return absl::OkStatus();
}

bool IsHash(absl::string_view hash) {
  return IsObjectHash(std::string_view(hash.data(), hash.size()));
}

// A stored copy of an object that can stand for these bytes: present, of their size and
// hashing to their name. Costs a read of the copy, only when the same bytes arrive again.
bool IsIntactObject(const std::string& path, const std::string& hash, int64_t size) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size != size) return false;
  absl::StatusOr<std::string> actual = Sha256OfFile(path);
  return actual.ok() && *actual == hash;
}

absl::Status CheckHash(absl::string_view hash) {
  if (IsHash(hash)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "not an object hash (64 lowercase hex characters): \"", hash.substr(0, 80), "\""));
}

// Incremental SHA-256 (OpenSSL's EVP API).
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    // These fail only on allocation failure; there is no sane result to return then.
    if (ctx_ == nullptr || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) std::abort();
  }
  void Update(std::string_view bytes) {
    if (EVP_DigestUpdate(ctx_.get(), bytes.data(), bytes.size()) != 1) std::abort();
  }
  // Lowercase hex of the digest; the object is spent afterwards.
  std::string Final() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), digest, &length) != 1) std::abort();
    return absl::BytesToHexString(
        absl::string_view(reinterpret_cast<const char*>(digest), length));
  }

 private:
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx_;
};

// Writes all of data to fd; false with errno set on failure.
bool WriteAll(int fd, std::string_view data) {
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  return true;
}

// Removes everything in dir (created if missing): what a crashed upload left staged.
absl::Status EmptyDirectory(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return FsError(ec, "cannot create directory", dir.string());
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code remove_ec;
    fs::remove_all(it->path(), remove_ec);
    if (remove_ec) return FsError(remove_ec, "cannot remove staged file", it->path().string());
  }
  if (ec) return FsError(ec, "cannot list", dir.string());
  return absl::OkStatus();
}

}  // namespace

std::string Sha256Hex(const std::string& bytes) {
  Sha256 sha;
  sha.Update(bytes);
  return sha.Final();
}

bool IsObjectHash(std::string_view text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

absl::StatusOr<std::string> Sha256OfFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open", path);
  Fd file(fd);
  Sha256 sha;
  std::string buffer(size_t{1} << 20, '\0');
  while (true) {
    ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "cannot read", path);
    }
    if (n == 0) break;
    sha.Update(std::string_view(buffer.data(), static_cast<size_t>(n)));
  }
  return sha.Final();
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& bytes) {
  const fs::path target(path);
  fs::path parent = target.parent_path();
  if (parent.empty()) parent = ".";
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) return FsError(ec, "cannot create directory", parent.string());

  const std::string temp = absl::StrCat(path, ".", RandomHex(), ".tmp");
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, "cannot create", temp);
  Fd file(fd);
  auto fail = [&](absl::string_view what) {
    absl::Status status = ErrnoError(errno, what, path);
    ::unlink(temp.c_str());
    return status;
  };

  if (!WriteAll(fd, bytes)) return fail("cannot write");
  if (::fsync(fd) != 0) return fail("cannot fsync");
  if (file.Close() != 0) return fail("cannot close");
  if (::rename(temp.c_str(), path.c_str()) != 0) return fail("cannot rename into");
  // The rename itself is durable only once the directory entry is on disk.
  return FsyncDirectory(parent.string());
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open", path);
  Fd file(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoError(errno, "cannot stat", path);
  if (S_ISDIR(st.st_mode)) return ErrnoError(EISDIR, "cannot read", path);
  std::string out;
  if (st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size));
  char buffer[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "cannot read", path);
    }
    if (n == 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

absl::StatusOr<FileStore> FileStore::Open(const std::string& root) {
  const fs::path objects = fs::path(root) / "objects";
  std::error_code ec;
  fs::create_directories(objects, ec);
  if (ec) return FsError(ec, "cannot create directory", objects.string());
  // A crash between open and rename leaves a temporary that nothing refers to.
  for (fs::recursive_directory_iterator it(objects, ec), end; !ec && it != end;
       it.increment(ec)) {
    if (it->is_regular_file(ec) && absl::EndsWith(it->path().filename().string(), ".tmp")) {
      std::error_code remove_ec;
      fs::remove(it->path(), remove_ec);
      if (remove_ec) return FsError(remove_ec, "cannot remove temporary", it->path().string());
    }
  }
  if (ec) return FsError(ec, "cannot list", objects.string());
  FileStore store(root);
  RETURN_IF_ERROR(EmptyDirectory(store.StagingDir()));
  return store;
}

std::string FileStore::StagingDir() const { return (fs::path(root_) / "staging").string(); }

struct StagedFile::HashContext {
  Sha256 sha;
};

StagedFile::StagedFile(std::string path, int fd)
    : path_(std::move(path)), fd_(fd), context_(std::make_unique<HashContext>()) {}

StagedFile::~StagedFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(path_.c_str());
}

absl::Status StagedFile::Append(std::string_view bytes) {
  if (fd_ < 0) {
    return absl::FailedPreconditionError(absl::StrCat("staged file ", path_, " is finished"));
  }
  if (!WriteAll(fd_, bytes)) return ErrnoError(errno, "cannot write", path_);
  context_->sha.Update(bytes);
  size_ += static_cast<int64_t>(bytes.size());
  return absl::OkStatus();
}

absl::Status StagedFile::Finish() {
  if (fd_ < 0) {
    return absl::FailedPreconditionError(absl::StrCat("staged file ", path_, " is finished"));
  }
  const int fd = fd_;
  fd_ = -1;
  // No fsync here: most staged files are temporaries (a Segment call's series and its SEG,
  // about 4 ms of fsync each on our disks, bench/RESULTS.md); Commit makes a file durable
  // before it becomes an object.
  if (::close(fd) != 0) return ErrnoError(errno, "cannot close", path_);
  hash_ = context_->sha.Final();
  context_.reset();  // an upload keeps many finished files: only their names and hashes
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StagedFile>> FileStore::Stage() {
  const std::string path = (fs::path(StagingDir()) / absl::StrCat(RandomHex(), ".part")).string();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, "cannot create", path);
  return std::unique_ptr<StagedFile>(new StagedFile(path, fd));
}

absl::StatusOr<std::string> FileStore::Commit(StagedFile& file) {
  if (!file.finished() || file.committed_) {
    return absl::FailedPreconditionError(
        absl::StrCat("staged file ", file.path_, " is not finished or already committed"));
  }
  const std::string target = PathOf(file.hash_);
  const fs::path shard = fs::path(target).parent_path();
  std::error_code ec;
  fs::create_directories(shard, ec);
  if (ec) return FsError(ec, "cannot create directory", shard.string());
  // Same name means same bytes (as in Put) when the present copy is intact; a damaged
  // one (truncated, flipped bits) is replaced by the new copy.
  if (IsIntactObject(target, file.hash_, file.size_)) {
    if (::unlink(file.path_.c_str()) != 0 && errno != ENOENT) {
      return ErrnoError(errno, "cannot remove", file.path_);
    }
  } else {
    RETURN_IF_ERROR(FsyncFile(file.path_));  // the bytes on disk before the name points at them
    if (::rename(file.path_.c_str(), target.c_str()) != 0) {
      return ErrnoError(errno, "cannot rename into", target);
    }
  }
  file.path_ = target;
  file.committed_ = true;
  // The rename itself is durable only once the directory entry is on disk.
  RETURN_IF_ERROR(FsyncDirectory(shard.string()));
  return file.hash_;
}

std::string FileStore::PathOf(const std::string& hash) const {
  return (fs::path(root_) / "objects" / hash.substr(0, 2) / hash).string();
}

absl::StatusOr<std::string> FileStore::Put(const std::string& bytes) {
  std::string hash = Sha256Hex(bytes);
  const std::string path = PathOf(hash);
  // Same name means same bytes; a damaged copy is rewritten instead.
  if (IsIntactObject(path, hash, static_cast<int64_t>(bytes.size()))) return hash;
  RETURN_IF_ERROR(WriteFileAtomically(path, bytes));
  return hash;
}

absl::Status FileStore::Verify(const std::string& hash) const {
  RETURN_IF_ERROR(CheckHash(hash));
  absl::StatusOr<std::string> actual = Sha256OfFile(PathOf(hash));
  if (absl::IsNotFound(actual.status())) {
    return absl::NotFoundError(absl::StrCat("object ", hash, " not found"));
  }
  if (!actual.ok()) return actual.status();
  if (*actual != hash) {
    return absl::DataLossError(
        absl::StrCat("object ", hash, " is corrupt: its bytes no longer match its hash"));
  }
  return absl::OkStatus();
}

std::string FileStore::QuarantineDir() const { return (fs::path(root_) / "quarantine").string(); }

absl::StatusOr<std::string> FileStore::Quarantine(const std::string& hash) {
  RETURN_IF_ERROR(CheckHash(hash));
  std::error_code ec;
  fs::create_directories(QuarantineDir(), ec);
  if (ec) return FsError(ec, "cannot create directory", QuarantineDir());
  std::string target = (fs::path(QuarantineDir()) / hash).string();
  for (int n = 1; fs::exists(target, ec); ++n) {
    target = absl::StrCat((fs::path(QuarantineDir()) / hash).string(), ".", n);
  }
  const std::string source = PathOf(hash);
  if (::rename(source.c_str(), target.c_str()) != 0) {
    return ErrnoError(errno, "cannot move to quarantine", source);
  }
  RETURN_IF_ERROR(FsyncDirectory(QuarantineDir()));
  RETURN_IF_ERROR(FsyncDirectory(fs::path(source).parent_path().string()));
  return target;
}

absl::StatusOr<std::string> FileStore::Get(const std::string& hash) const {
  RETURN_IF_ERROR(CheckHash(hash));
  absl::StatusOr<std::string> bytes = ReadFileToString(PathOf(hash));
  if (absl::IsNotFound(bytes.status())) {
    return absl::NotFoundError(absl::StrCat("object ", hash, " not found"));
  }
  if (!bytes.ok()) return bytes.status();
  if (Sha256Hex(*bytes) != hash) {
    return absl::DataLossError(absl::StrCat("object ", hash, " is corrupt: its bytes (",
                                            bytes->size(), ") no longer match its hash"));
  }
  return bytes;
}

absl::StatusOr<std::string> FileStore::ObjectPath(const std::string& hash) const {
  RETURN_IF_ERROR(CheckHash(hash));
  if (!Contains(hash)) return absl::NotFoundError(absl::StrCat("object ", hash, " not found"));
  return PathOf(hash);
}

bool FileStore::Contains(const std::string& hash) const {
  if (!IsHash(hash)) return false;
  struct stat st;
  return ::stat(PathOf(hash).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::Status FileStore::Remove(const std::string& hash) {
  RETURN_IF_ERROR(CheckHash(hash));
  const std::string path = PathOf(hash);
  // Removing an absent object is not an error: garbage collection may repeat after a crash.
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoError(errno, "cannot remove", path);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> FileStore::List() const {
  const fs::path objects = fs::path(root_) / "objects";
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator shard(objects, ec), end; !ec && shard != end;
       shard.increment(ec)) {
    const std::string prefix = shard->path().filename().string();
    if (!shard->is_directory(ec) || prefix.size() != 2) continue;
    std::error_code inner;
    for (fs::directory_iterator it(shard->path(), inner); !inner && it != end;
         it.increment(inner)) {
      const std::string name = it->path().filename().string();
      // Skips temporaries and anything else that is not an object of this shard.
      if (IsHash(name) && name.compare(0, 2, prefix) == 0 && it->is_regular_file(inner)) {
        out.push_back(name);
      }
    }
    if (inner) return FsError(inner, "cannot list", shard->path().string());
  }
  if (ec) return FsError(ec, "cannot list", objects.string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace miseg

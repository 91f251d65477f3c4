// Bearer-token authentication and role-based authorisation. Tokens are never stored: the
// token file holds their SHA-256, one line per token: "<hex sha256> <role> <name>" (blank
// lines and "#" comments ignored; the name is UTF-8 without control characters). Roles, from least to most: reader (list, describe,
// watch), segmenter (+ segment), uploader (+ upload), trainer (+ upload, segment, train,
// promote), admin (+ create datasets, delete studies). Apart from these, worker: a
// miseg-worker's token, which may register devices, train ranks of jobs and read the
// studies and checkpoints of the jobs it trains (and nothing a user does).
#ifndef MISEG_SERVER_EDGE_AUTH_H_
#define MISEG_SERVER_EDGE_AUTH_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace miseg {

enum class Role { kReader, kSegmenter, kUploader, kTrainer, kAdmin, kWorker };
enum class Permission { kRead, kSegment, kUpload, kTrain, kPromote, kCreateDataset, kDeleteStudy,
                        kWork };

absl::StatusOr<Role> ParseRole(const std::string& name);
const char* RoleName(Role role);
bool RoleAllows(Role role, Permission permission);

struct Principal {
  std::string name;  // from the token file; safe to log
  Role role = Role::kReader;
};

class Authenticator {
 public:
  // No token file: every caller is an anonymous admin (the loopback-only default).
  static Authenticator AllowAll();
  // InvalidArgument naming the line for a malformed file; NotFound for a missing one.
  static absl::StatusOr<Authenticator> LoadTokenFile(const std::string& path);
  // The same from the file's text; `source` names it in messages (the path).
  static absl::StatusOr<Authenticator> ParseTokenFile(const std::string& text,
                                                      const std::string& source);

  bool enabled() const { return enabled_; }
  // authorization: the value of the "authorization" metadata ("Bearer <token>"), or empty.
  // Unauthenticated when missing, malformed or unknown.
  absl::StatusOr<Principal> Authenticate(const std::string& authorization) const;
  // Authenticate, then PermissionDenied when the role does not allow the permission.
  absl::StatusOr<Principal> Authorize(const std::string& authorization,
                                      Permission permission) const;

 private:
  struct Entry {
    std::string sha256_hex;
    Principal principal;
  };
  bool enabled_ = false;
  std::vector<Entry> entries_;
};

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_AUTH_H_

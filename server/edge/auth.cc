#include "server/edge/auth.h"

#include <openssl/crypto.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/dicom/dicom_text.h"
#include "server/store/file_store.h"

namespace miseg {

absl::StatusOr<Role> ParseRole(const std::string& name) {
  if (name == "reader") return Role::kReader;
  if (name == "segmenter") return Role::kSegmenter;
  if (name == "uploader") return Role::kUploader;
  if (name == "trainer") return Role::kTrainer;
  if (name == "admin") return Role::kAdmin;
  if (name == "worker") return Role::kWorker;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown role '", name, "' (one of reader, segmenter, uploader, trainer, admin, worker)"));
}

const char* RoleName(Role role) {
  switch (role) {
    case Role::kReader: return "reader";
    case Role::kSegmenter: return "segmenter";
    case Role::kUploader: return "uploader";
    case Role::kTrainer: return "trainer";
    case Role::kAdmin: return "admin";
    case Role::kWorker: return "worker";
  }
  return "unknown";
}

bool RoleAllows(Role role, Permission permission) {
  switch (role) {
    case Role::kAdmin:
      return true;
    case Role::kTrainer:
      return permission == Permission::kRead || permission == Permission::kSegment ||
             permission == Permission::kUpload || permission == Permission::kTrain ||
             permission == Permission::kPromote;
    case Role::kUploader:
      return permission == Permission::kRead || permission == Permission::kUpload;
    case Role::kSegmenter:
      return permission == Permission::kRead || permission == Permission::kSegment;
    case Role::kReader:
      return permission == Permission::kRead;
    case Role::kWorker:
      return permission == Permission::kWork;
  }
  return false;
}

Authenticator Authenticator::AllowAll() { return Authenticator(); }

absl::StatusOr<Authenticator> Authenticator::LoadTokenFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  return ParseTokenFile(*text, path);
}

absl::StatusOr<Authenticator> Authenticator::ParseTokenFile(const std::string& text,
                                                            const std::string& path) {
  Authenticator auth;
  auth.enabled_ = true;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    std::vector<std::string> fields = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 3) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", line_number, ": expected '<sha256 hex> <role> <name>'"));
    }
    absl::string_view hash_field = fields[0];
    absl::ConsumePrefix(&hash_field, "sha256:");
    const std::string hash = absl::AsciiStrToLower(hash_field);
    bool hex = hash.size() == 64;
    for (char c : hash) hex = hex && absl::ascii_isxdigit(static_cast<unsigned char>(c));
    if (!hex) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", line_number, ": the first field must be a token's SHA-256 in hex"));
    }
    // The name goes into logs and into messages sent to clients: no control characters
    // (forged or hidden log lines) and valid UTF-8 (proto3 clients refuse anything else).
    const std::string& name = fields[2];
    const bool printable = std::none_of(name.begin(), name.end(), [](char c) {
      return static_cast<unsigned char>(c) < 0x20 || c == 0x7F;
    });
    if (!printable || !IsValidUtf8(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", line_number, ": the name must be UTF-8 without control characters"));
    }
    absl::StatusOr<Role> role = ParseRole(fields[1]);
    if (!role.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line_number, ": ", role.status().message()));
    }
    auth.entries_.push_back({hash, Principal{fields[2], *role}});
  }
  if (auth.entries_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no tokens"));
  }
  return auth;
}

absl::StatusOr<Principal> Authenticator::Authenticate(const std::string& authorization) const {
  if (!enabled_) return Principal{"anonymous", Role::kAdmin};
  absl::string_view value = absl::StripAsciiWhitespace(authorization);
  if (value.empty()) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  if (!absl::ConsumePrefix(&value, "Bearer ") && !absl::ConsumePrefix(&value, "bearer ")) {
    return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  }
  const std::string hash = Sha256Hex(std::string(absl::StripAsciiWhitespace(value)));
  for (const Entry& entry : entries_) {
    // Constant time, so the comparison leaks nothing about stored hashes.
    if (CRYPTO_memcmp(entry.sha256_hex.data(), hash.data(), hash.size()) == 0) {
      return entry.principal;
    }
  }
  return absl::UnauthenticatedError("unknown bearer token");
}

absl::StatusOr<Principal> Authenticator::Authorize(const std::string& authorization,
                                                   Permission permission) const {
  absl::StatusOr<Principal> principal = Authenticate(authorization);
  if (!principal.ok()) return principal.status();
  if (!RoleAllows(principal->role, permission)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "role '", RoleName(principal->role), "' of '", principal->name,
        "' does not allow this call"));
  }
  return principal;
}

}  // namespace miseg

// libFuzzer target for the token file (server/edge/auth.h, Authenticator::ParseTokenFile, which
// LoadTokenFile runs on the file's text) and for the authorization metadata checked against
// it. An input is the file's text, optionally followed by kSeparator and an "authorization"
// value to check. Any bytes must give an Authenticator or InvalidArgument naming the file;
// a loaded one must keep its promises: names safe to log, Authenticate only OK or
// Unauthenticated, Authorize consistent with the role. Built with clang's
// -fsanitize=fuzzer,address,undefined by tests/server/CMakeLists.txt (miseg-fuzz-token-file).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "core/dicom/dicom_text.h"
#include "server/edge/auth.h"

namespace {

constexpr absl::string_view kSeparator = "\n--authorization--\n";
constexpr char kSource[] = "fuzz-tokens";

// Tokens whose SHA-256 the seeds hold (tests/server/token_file_fuzzer_seeds), so that
// mutated files are probed with tokens they may still know.
const std::vector<std::string>& ProbeTokens() {
  static const std::vector<std::string> tokens = {"reader-token", "segmenter-token",
                                                  "uploader-token", "trainer-token",
                                                  "admin-token", "worker-token", ""};
  return tokens;
}

constexpr miseg::Permission kPermissions[] = {
    miseg::Permission::kRead,    miseg::Permission::kSegment,       miseg::Permission::kUpload,
    miseg::Permission::kTrain,   miseg::Permission::kPromote,       miseg::Permission::kCreateDataset,
    miseg::Permission::kDeleteStudy, miseg::Permission::kWork};

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

// What the header promises of a principal's name ("safe to log"): present, UTF-8, and free
// of control characters that would forge or hide log lines.
bool SafeToLog(const std::string& name) {
  if (name.empty() || !miseg::IsValidUtf8(name)) return false;
  for (char c : name) {
    const unsigned char b = static_cast<unsigned char>(c);
    if (b < 0x20 || b == 0x7F) return false;
  }
  return true;
}

void Probe(const miseg::Authenticator& auth, const std::string& authorization) {
  absl::StatusOr<miseg::Principal> who = auth.Authenticate(authorization);
  Check(who.ok() || absl::IsUnauthenticated(who.status()));
  if (who.ok()) Check(SafeToLog(who->name));
  for (miseg::Permission permission : kPermissions) {
    absl::StatusOr<miseg::Principal> allowed = auth.Authorize(authorization, permission);
    if (!who.ok()) {
      Check(allowed.status() == who.status());
    } else if (miseg::RoleAllows(who->role, permission)) {
      Check(allowed.ok() && allowed->name == who->name && allowed->role == who->role);
    } else {
      Check(absl::IsPermissionDenied(allowed.status()));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find(kSeparator);
  const std::string text(input.substr(0, split));
  const std::string authorization =
      split == absl::string_view::npos ? "" : std::string(input.substr(split + kSeparator.size()));

  absl::StatusOr<miseg::Authenticator> auth = miseg::Authenticator::ParseTokenFile(text, kSource);
  if (!auth.ok()) {
    // Bad input is InvalidArgument naming the file, nothing else.
    Check(absl::IsInvalidArgument(auth.status()));
    Check(absl::StartsWith(auth.status().message(), kSource));
    return 0;
  }
  Check(auth->enabled());
  Probe(*auth, authorization);
  for (const std::string& token : ProbeTokens()) {
    Probe(*auth, "Bearer " + token);
    Probe(*auth, "bearer " + token + " ");
  }
  return 0;
}

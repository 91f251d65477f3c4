#include "server/edge/tls.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <grpcpp/security/server_credentials.h>

#include "absl/strings/str_cat.h"
#include "server/store/file_store.h"

namespace miseg {
namespace {

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

std::unique_ptr<BIO, BioDeleter> MemoryBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioDeleter>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The first certificate of a PEM bundle, or null.
std::unique_ptr<X509, X509Deleter> FirstCertificate(const std::string& pem) {
  auto bio = MemoryBio(pem);
  return std::unique_ptr<X509, X509Deleter>(
      bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read the ", what, " ", path, ": ", text.status().message()));
  }
  return text;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> LoadServerCredentials(
    const std::string& cert_file, const std::string& key_file, const std::string& client_ca_file) {
  if (cert_file.empty() && key_file.empty()) {
    if (!client_ca_file.empty()) {
      return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
    }
    return grpc::InsecureServerCredentials();
  }
  if (cert_file.empty() || key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  absl::StatusOr<std::string> cert = ReadPem(cert_file, "TLS certificate");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPem(key_file, "TLS key");
  if (!key.ok()) return key.status();
  auto certificate = FirstCertificate(*cert);
  if (!certificate) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_file, " holds no PEM certificate"));
  }
  auto key_bio = MemoryBio(*key);
  std::unique_ptr<EVP_PKEY, KeyDeleter> private_key(
      key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!private_key) {
    return absl::InvalidArgumentError(
        absl::StrCat(key_file, " holds no unencrypted PEM private key"));
  }
  if (X509_check_private_key(certificate.get(), private_key.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the key in ", key_file, " does not match the certificate in ", cert_file));
  }
  grpc::SslServerCredentialsOptions options(
      client_ca_file.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                             : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_key_cert_pairs.push_back({*key, *cert});
  if (!client_ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadPem(client_ca_file, "client CA bundle");
    if (!ca.ok()) return ca.status();
    if (!FirstCertificate(*ca)) {
      return absl::InvalidArgumentError(
          absl::StrCat(client_ca_file, " holds no PEM certificate: no client could connect"));
    }
    options.pem_root_certs = *ca;
  }
  return grpc::SslServerCredentials(options);
}

bool IsLoopbackAddress(const std::string& address) {
  std::string host;
  if (!address.empty() && address[0] == '[') {
    const size_t close = address.find(']');
    if (close == std::string::npos) return false;
    host = address.substr(1, close - 1);
    in6_addr v6;
    return inet_pton(AF_INET6, host.c_str(), &v6) == 1 &&
           IN6_IS_ADDR_LOOPBACK(&v6);
  }
  const size_t colon = address.rfind(':');
  host = colon == std::string::npos ? address : address.substr(0, colon);
  if (host == "localhost") return true;
  in_addr v4;
  // A literal address only: a host name that merely starts with "127." is not loopback.
  return inet_pton(AF_INET, host.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127;
}

}  // namespace miseg

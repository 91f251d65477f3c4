// Security of a real miseg-server process: every role against every permission, bearer-token
// authentication, token-file validation, TLS and mutual TLS, and the listening policy
// (loopback by default; beyond it only with TLS and tokens, or --allow_insecure_remote).
#include <openssl/evp.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "tests/server/api_client.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAre;

// ------------------------------------------------------------------------------------------
// Helpers

std::string Sha256Hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha256(), nullptr) != 1) {
    return "";
  }
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) absl::StrAppendFormat(&hex, "%02x", digest[i]);
  return hex;
}

bool WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return static_cast<bool>(out);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The five roles, least to most, and the token each holds in the tests' token files.
constexpr std::array<const char*, 5> kRoles = {"reader", "segmenter", "uploader", "trainer",
                                               "admin"};
std::string TokenOf(const std::string& role) { return "miseg-test-" + role + "-9f1c2e7d4b"; }
std::string ClientNameOf(const std::string& role) { return role + "-client"; }

// A token file with one token per role, with a comment and a blank line among them.
std::string TokenFileText() {
  std::string text = "# miseg test tokens\n\n";
  for (const char* role : kRoles) {
    absl::StrAppend(&text, Sha256Hex(TokenOf(role)), " ", role, " ", ClientNameOf(role), "\n");
  }
  return text;
}

// A context whose "authorization" metadata is exactly `authorization` (none when nullopt).
std::unique_ptr<grpc::ClientContext> ContextWith(const std::optional<std::string>& authorization,
                                                 int deadline_seconds = 60) {
  auto context = std::make_unique<grpc::ClientContext>();
  if (authorization) context->AddMetadata("authorization", *authorization);
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(deadline_seconds));
  return context;
}

grpc::Status ListDatasets(const ApiClient& client, v1::ListDatasetsResponse* out = nullptr,
                          int deadline_seconds = 60) {
  v1::ListDatasetsResponse ignored;
  auto context = client.Context(deadline_seconds);
  return client.datasets->ListDatasets(context.get(), {}, out ? out : &ignored);
}

std::vector<std::string> DatasetNames(const ApiClient& client) {
  v1::ListDatasetsResponse list;
  grpc::Status status = ListDatasets(client, &list);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<std::string> names;
  for (const v1::Dataset& d : list.datasets()) names.push_back(d.name());
  return names;
}

std::string CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK",           "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",     "ALREADY_EXISTS",    "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",    "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",          "UNAVAILABLE",       "DATA_LOSS",
      "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i <= 16 ? kNames[i] : absl::StrCat("code ", i);
}

// The hex local addresses (as /proc/net/tcp{,6} write them) of the sockets of this network
// namespace that listen on `port`.
std::set<std::string> ListeningAddresses(int port) {
  std::set<std::string> addresses;
  const std::string port_hex = absl::StrFormat("%04X", port);
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      std::vector<std::string> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (fields.size() < 4 || fields[3] != "0A") continue;  // 0A: LISTEN
      std::vector<std::string> local = absl::StrSplit(fields[1], ':');
      if (local.size() == 2 && local[1] == port_hex) addresses.insert(local[0]);
    }
  }
  return addresses;
}

// 127.0.0.1, on an IPv4 socket or IPv4-mapped on an IPv6 one (::ffff:127.0.0.1).
bool IsIpv4Loopback(const std::string& hex_address) {
  return hex_address == "0100007F" || hex_address == "0000000000000000FFFF00000100007F";
}

bool IsWildcard(const std::string& hex_address) {
  return !hex_address.empty() && hex_address.find_first_not_of('0') == std::string::npos;
}

// Flags for RunToExit: a data directory in `dir` and free loopback ports, then `extra`.
std::vector<std::string> ExitFlags(const TempDir& dir, std::vector<std::string> extra) {
  std::vector<std::string> flags = {"--data_dir=" + dir.path() + "/data", "--listen=127.0.0.1:0",
                                    "--metrics_listen=127.0.0.1:0"};
  flags.insert(flags.end(), extra.begin(), extra.end());
  return flags;
}

// ------------------------------------------------------------------------------------------
// Certificates, made once per test program with the openssl command line.

struct Certificates {
  std::string error;  // why they could not be made; empty when they were
  std::string dir;
  // Paths.
  std::string ca_cert, server_cert, server_key, client_cert, client_key;
  std::string other_ca_cert, other_client_cert, other_client_key;
  // Contents.
  std::string ca_pem, client_cert_pem, client_key_pem;
  std::string other_ca_pem, other_client_cert_pem, other_client_key_pem;
};

const Certificates& Certs() {
  static const TempDir dir;  // removed at exit
  static const Certificates certs = [] {
    Certificates c;
    c.dir = dir.path();
    const std::string d = c.dir + "/";
    auto run = [&](const std::string& command) {
      if (!c.error.empty()) return;
      auto [rc, output] = RunCommand("cd '" + c.dir + "' && " + command);
      if (rc != 0) c.error = absl::StrCat("`", command, "` exited ", rc, ":\n", output);
    };
    auto make_ca = [&](const std::string& name, const std::string& cn) {
      run(absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout ", name,
                       ".key -out ", name, ".pem -subj '/CN=", cn,
                       "' -addext 'basicConstraints=critical,CA:TRUE'"
                       " -addext 'keyUsage=critical,keyCertSign,cRLSign'"));
    };
    // A leaf certificate `name` signed by CA `ca`, with the extensions of `ext`.
    auto make_leaf = [&](const std::string& name, const std::string& cn, const std::string& ca,
                         const std::string& ext, int serial) {
      if (c.error.empty() && !WriteFile(d + name + ".ext", ext)) c.error = "cannot write " + name;
      run(absl::StrCat("openssl req -new -newkey rsa:2048 -nodes -keyout ", name, ".key -out ",
                       name, ".csr -subj '/CN=", cn, "'"));
      run(absl::StrCat("openssl x509 -req -in ", name, ".csr -CA ", ca, ".pem -CAkey ", ca,
                       ".key -set_serial ", serial, " -days 2 -out ", name, ".pem -extfile ",
                       name, ".ext"));
    };
    make_ca("ca", "miseg test CA");
    make_ca("other_ca", "another CA");
    make_leaf("server", "localhost", "ca",
              "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
              "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
              2);
    const std::string client_ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";
    make_leaf("client", "miseg test client", "ca", client_ext, 3);
    make_leaf("other_client", "someone else", "other_ca", client_ext, 4);
    c.ca_cert = d + "ca.pem";
    c.server_cert = d + "server.pem";
    c.server_key = d + "server.key";
    c.client_cert = d + "client.pem";
    c.client_key = d + "client.key";
    c.other_ca_cert = d + "other_ca.pem";
    c.other_client_cert = d + "other_client.pem";
    c.other_client_key = d + "other_client.key";
    c.ca_pem = ReadFile(c.ca_cert);
    c.client_cert_pem = ReadFile(c.client_cert);
    c.client_key_pem = ReadFile(c.client_key);
    c.other_ca_pem = ReadFile(c.other_ca_cert);
    c.other_client_cert_pem = ReadFile(c.other_client_cert);
    c.other_client_key_pem = ReadFile(c.other_client_key);
    if (c.error.empty() && (c.ca_pem.empty() || c.client_key_pem.empty() ||
                            c.other_client_cert_pem.empty())) {
      c.error = "openssl left empty files in " + c.dir;
    }
    return c;
  }();
  return certs;
}

// A TLS channel trusting `roots`, presenting the client certificate `cert_chain` (with its
// `key`) when not empty; `target_name` overrides the name the server certificate must carry.
std::shared_ptr<grpc::Channel> TlsChannel(const std::string& address, const std::string& roots,
                                          const std::string& cert_chain = "",
                                          const std::string& key = "",
                                          const std::string& target_name = "") {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = roots;
  options.pem_cert_chain = cert_chain;
  options.pem_private_key = key;
  grpc::ChannelArguments arguments;
  if (!target_name.empty()) arguments.SetSslTargetNameOverride(target_name);
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(options), arguments);
}

// ------------------------------------------------------------------------------------------
// Roles and permissions

class RoleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_file_ = dir_.path() + "/tokens";
    ASSERT_TRUE(WriteFile(token_file_, TokenFileText()));
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start(dir_.path() + "/data", {"--token_file=" + token_file_});
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
    ASSERT_THAT(server_->log(), HasSubstr("with bearer tokens"));
    for (size_t r = 0; r < kRoles.size(); ++r) {
      clients_[r] = std::make_unique<ApiClient>(server_->address());
      clients_[r]->token = TokenOf(kRoles[r]);
    }
  }

  const ApiClient& As(const std::string& role) const {
    for (size_t r = 0; r < kRoles.size(); ++r) {
      if (role == kRoles[r]) return *clients_[r];
    }
    ADD_FAILURE() << "no role " << role;
    return *clients_[0];
  }

  void ExpectDenied(const grpc::Status& status, const std::string& role) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED)
        << CodeName(status.error_code()) << ": " << status.error_message();
    EXPECT_THAT(status.error_message(),
                AllOf(HasSubstr("role '" + role + "'"), HasSubstr(ClientNameOf(role)),
                      Not(HasSubstr(TokenOf(role)))));
  }

  TempDir dir_;
  std::string token_file_;
  std::unique_ptr<ServerProcess> server_;
  std::array<std::unique_ptr<ApiClient>, kRoles.size()> clients_;
};

constexpr bool kAllow = true;
constexpr bool kDeny = false;

// One RPC that needs one permission, and what each role gets from it.
struct Probe {
  const char* permission;
  const char* rpc;
  std::array<bool, kRoles.size()> allowed;  // reader, segmenter, uploader, trainer, admin
  grpc::StatusCode when_allowed;            // the call's own answer once authorised
  std::function<grpc::Status(const ApiClient& client, const std::string& role)> call;
};

TEST_F(RoleTest, EveryRoleAgainstEveryPermission) {
  // A dataset without studies or models, made by the admin, for the calls to work on.
  ASSERT_TRUE(As("admin").CreateDataset("existing").ok());

  const std::vector<Probe> probes = {
      // permission      rpc               reader  segmenter uploader trainer admin
      {"read", "ListDatasets", {kAllow, kAllow, kAllow, kAllow, kAllow}, grpc::StatusCode::OK,
       [](const ApiClient& c, const std::string&) { return ListDatasets(c); }},
      {"read", "GetDataset", {kAllow, kAllow, kAllow, kAllow, kAllow}, grpc::StatusCode::OK,
       [](const ApiClient& c, const std::string&) {
         v1::GetDatasetRequest request;
         request.set_name("existing");
         v1::Dataset out;
         auto context = c.Context();
         return c.datasets->GetDataset(context.get(), request, &out);
       }},
      {"read", "ListStudies", {kAllow, kAllow, kAllow, kAllow, kAllow}, grpc::StatusCode::OK,
       [](const ApiClient& c, const std::string&) {
         v1::ListStudiesRequest request;
         request.set_dataset("existing");
         v1::ListStudiesResponse out;
         auto context = c.Context();
         return c.datasets->ListStudies(context.get(), request, &out);
       }},
      {"read", "ListJobs", {kAllow, kAllow, kAllow, kAllow, kAllow}, grpc::StatusCode::OK,
       [](const ApiClient& c, const std::string&) {
         v1::ListJobsResponse out;
         auto context = c.Context();
         return c.training->ListJobs(context.get(), {}, &out);
       }},
      {"read", "GetJob", {kAllow, kAllow, kAllow, kAllow, kAllow}, grpc::StatusCode::NOT_FOUND,
       [](const ApiClient& c, const std::string&) {
         v1::GetJobRequest request;
         request.set_id(999);
         v1::Job out;
         auto context = c.Context();
         return c.training->GetJob(context.get(), request, &out);
       }},
      {"read", "WatchJob", {kAllow, kAllow, kAllow, kAllow, kAllow}, grpc::StatusCode::NOT_FOUND,
       [](const ApiClient& c, const std::string&) {
         std::vector<v1::JobEvent> events;
         return c.Watch(999, &events, 0, 60);
       }},
      {"read", "ListModels", {kAllow, kAllow, kAllow, kAllow, kAllow}, grpc::StatusCode::OK,
       [](const ApiClient& c, const std::string&) {
         v1::ListModelsResponse out;
         auto context = c.Context();
         return c.models->ListModels(context.get(), {}, &out);
       }},
      {"read", "GetModel", {kAllow, kAllow, kAllow, kAllow, kAllow}, grpc::StatusCode::NOT_FOUND,
       [](const ApiClient& c, const std::string&) {
         v1::GetModelRequest request;
         request.set_id(999);
         v1::Model out;
         auto context = c.Context();
         return c.models->GetModel(context.get(), request, &out);
       }},
      {"segment", "Segment", {kDeny, kAllow, kDeny, kAllow, kAllow},
       grpc::StatusCode::FAILED_PRECONDITION,  // the dataset has no model
       [](const ApiClient& c, const std::string&) {
         v1::SegmentHeader header;
         header.set_dataset("existing");
         std::string seg;
         v1::SegmentSummary summary;
         return c.Segment(header, {{"x.dcm", "not DICOM"}}, &seg, &summary, 60000);
       }},
      {"upload", "Upload", {kDeny, kDeny, kAllow, kAllow, kAllow}, grpc::StatusCode::OK,
       [](const ApiClient& c, const std::string&) {
         v1::UploadResponse response;
         grpc::Status status = c.Upload("existing", v1::STUDY_ROLE_UNLABELED,
                                        {{"notes.txt", "not DICOM"}}, &response);
         if (status.ok()) {
           EXPECT_EQ(response.refused_instances(), 1) << response.DebugString();
           EXPECT_EQ(response.stored_instances(), 0);
         }
         return status;
       }},
      {"train", "StartJob", {kDeny, kDeny, kDeny, kAllow, kAllow},
       grpc::StatusCode::FAILED_PRECONDITION,  // no labeled studies
       [](const ApiClient& c, const std::string&) {
         v1::StartJobRequest request;
         request.set_dataset("existing");
         v1::Job out;
         auto context = c.Context();
         return c.training->StartJob(context.get(), request, &out);
       }},
      {"train", "CancelJob", {kDeny, kDeny, kDeny, kAllow, kAllow}, grpc::StatusCode::NOT_FOUND,
       [](const ApiClient& c, const std::string&) {
         v1::CancelJobRequest request;
         request.set_id(999);
         v1::Job out;
         auto context = c.Context();
         return c.training->CancelJob(context.get(), request, &out);
       }},
      {"promote", "PromoteModel", {kDeny, kDeny, kDeny, kAllow, kAllow},
       grpc::StatusCode::NOT_FOUND,
       [](const ApiClient& c, const std::string&) {
         v1::PromoteModelRequest request;
         request.set_id(999);
         v1::Model out;
         auto context = c.Context();
         return c.models->PromoteModel(context.get(), request, &out);
       }},
      {"create_dataset", "CreateDataset", {kDeny, kDeny, kDeny, kDeny, kAllow},
       grpc::StatusCode::OK,
       [](const ApiClient& c, const std::string& role) {
         return c.CreateDataset("made-by-" + role);
       }},
      {"delete_study", "DeleteStudy", {kDeny, kDeny, kDeny, kDeny, kAllow},
       grpc::StatusCode::NOT_FOUND,  // no such series
       [](const ApiClient& c, const std::string&) {
         v1::DeleteStudyRequest request;
         request.set_dataset("existing");
         request.set_series_instance_uid("1.2.3.4.5");
         v1::DeleteStudyResponse out;
         auto context = c.Context();
         return c.datasets->DeleteStudy(context.get(), request, &out);
       }},
  };

  // Every permission the server knows is probed.
  std::set<std::string> permissions;
  for (const Probe& p : probes) permissions.insert(p.permission);
  EXPECT_THAT(permissions, UnorderedElementsAre("read", "segment", "upload", "train", "promote",
                                                "create_dataset", "delete_study"));

  for (const Probe& probe : probes) {
    for (size_t r = 0; r < kRoles.size(); ++r) {
      const std::string role = kRoles[r];
      SCOPED_TRACE(absl::StrCat(role, " calls ", probe.rpc, " (", probe.permission, ")"));
      const grpc::Status status = probe.call(*clients_[r], role);
      if (probe.allowed[r]) {
        EXPECT_EQ(status.error_code(), probe.when_allowed)
            << CodeName(status.error_code()) << ": " << status.error_message();
      } else {
        ExpectDenied(status, role);
      }
    }
  }

  // A refused call changes nothing: only the admin's dataset was made.
  EXPECT_THAT(DatasetNames(As("reader")), UnorderedElementsAre("existing", "made-by-admin"));
  // Nothing in the log gives a token away.
  for (const char* role : kRoles) EXPECT_THAT(server_->log(), Not(HasSubstr(TokenOf(role))));
}

// The roles on real data: an uploader's studies, a trainer's jobs and model, read by the
// reader; a running job that only the trainer may cancel; promotion and deletion.
TEST_F(RoleTest, RolesActOnRealStudiesJobsAndModels) {
  ASSERT_TRUE(As("admin").CreateDataset("cardiac").ok());
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(11, i, /*with_segmentation=*/true);
    ASSERT_TRUE(study.ok()) << study.status();
    v1::UploadResponse response;
    grpc::Status status =
        As("uploader").Upload("cardiac", v1::STUDY_ROLE_LABELED, LabeledFiles(*study), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(response.refused_instances(), 0) << response.DebugString();
  }

  // A long job: the uploader may not cancel it, the trainer may.
  v1::StartJobRequest start;
  start.set_dataset("cardiac");
  *start.mutable_hyperparameters() = TinyHyperparameters(100000, 1000);
  v1::Job long_job;
  auto context = As("trainer").Context();
  grpc::Status status = As("trainer").training->StartJob(context.get(), start, &long_job);
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::CancelJobRequest cancel;
  cancel.set_id(long_job.id());
  v1::Job cancelled;
  for (const char* role : {"reader", "segmenter", "uploader"}) {
    context = As(role).Context();
    ExpectDenied(As(role).training->CancelJob(context.get(), cancel, &cancelled), role);
  }
  v1::GetJobRequest get_job;
  get_job.set_id(long_job.id());
  v1::Job job;
  context = As("reader").Context();
  ASSERT_TRUE(As("reader").training->GetJob(context.get(), get_job, &job).ok());
  EXPECT_NE(job.state(), v1::JOB_STATE_CANCELLED);
  context = As("trainer").Context();
  status = As("trainer").training->CancelJob(context.get(), cancel, &cancelled);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(As("reader").Watch(long_job.id(), &events).ok());
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().state().state(), v1::JOB_STATE_CANCELLED);

  // A short job that succeeds, followed by the reader.
  *start.mutable_hyperparameters() = TinyHyperparameters(2, 2);
  v1::Job short_job;
  context = As("trainer").Context();
  ASSERT_TRUE(As("trainer").training->StartJob(context.get(), start, &short_job).ok());
  events.clear();
  status = As("reader").Watch(short_job.id(), &events);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(events.empty());
  ASSERT_EQ(events.back().state().state(), v1::JOB_STATE_SUCCEEDED) << server_->log();

  // The reader sees all of it.
  const ApiClient& reader = As("reader");
  get_job.set_id(short_job.id());
  context = reader.Context();
  ASSERT_TRUE(reader.training->GetJob(context.get(), get_job, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_NE(job.model_id(), 0);
  v1::ListJobsRequest list_jobs;
  list_jobs.set_dataset("cardiac");
  v1::ListJobsResponse jobs;
  context = reader.Context();
  ASSERT_TRUE(reader.training->ListJobs(context.get(), list_jobs, &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), 2);
  v1::ListModelsResponse models;
  context = reader.Context();
  ASSERT_TRUE(reader.models->ListModels(context.get(), {}, &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).id(), job.model_id());
  v1::GetModelRequest get_model;
  get_model.set_id(job.model_id());
  v1::Model model;
  context = reader.Context();
  ASSERT_TRUE(reader.models->GetModel(context.get(), get_model, &model).ok());
  EXPECT_TRUE(model.active());
  v1::ListStudiesRequest list_studies;
  list_studies.set_dataset("cardiac");
  v1::ListStudiesResponse studies;
  context = reader.Context();
  ASSERT_TRUE(reader.datasets->ListStudies(context.get(), list_studies, &studies).ok());
  ASSERT_EQ(studies.studies_size(), 2);
  v1::GetDatasetRequest get_dataset;
  get_dataset.set_name("cardiac");
  v1::Dataset dataset;
  context = reader.Context();
  ASSERT_TRUE(reader.datasets->GetDataset(context.get(), get_dataset, &dataset).ok());
  EXPECT_EQ(dataset.labeled_studies(), 2);
  EXPECT_EQ(dataset.active_model_id(), job.model_id());

  // A finished job: cancelling it is the trainer's to try, and it refuses.
  cancel.set_id(short_job.id());
  context = As("uploader").Context();
  ExpectDenied(As("uploader").training->CancelJob(context.get(), cancel, &cancelled), "uploader");
  context = As("trainer").Context();
  EXPECT_EQ(As("trainer").training->CancelJob(context.get(), cancel, &cancelled).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  // Segmenting a stored study with the trained model: segmenter yes, uploader and reader no.
  v1::SegmentHeader header;
  header.set_dataset("cardiac");
  header.set_stored_series_instance_uid(studies.studies(0).series_instance_uid());
  std::string seg;
  v1::SegmentSummary summary;
  status = As("segmenter").Segment(header, {}, &seg, &summary);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(summary.model_id(), job.model_id());
  EXPECT_FALSE(seg.empty());
  for (const char* role : {"reader", "uploader"}) {
    seg.clear();
    ExpectDenied(As(role).Segment(header, {}, &seg, &summary), role);
    EXPECT_TRUE(seg.empty());
  }

  // Promotion of the real model: the trainer yes, the uploader no.
  v1::PromoteModelRequest promote;
  promote.set_id(job.model_id());
  context = As("uploader").Context();
  ExpectDenied(As("uploader").models->PromoteModel(context.get(), promote, &model), "uploader");
  context = As("trainer").Context();
  status = As("trainer").models->PromoteModel(context.get(), promote, &model);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(model.active());

  // Deleting a real study: only the admin; a refused delete leaves it in place.
  v1::DeleteStudyRequest remove;
  remove.set_dataset("cardiac");
  remove.set_series_instance_uid(studies.studies(1).series_instance_uid());
  v1::DeleteStudyResponse removed;
  context = As("trainer").Context();
  ExpectDenied(As("trainer").datasets->DeleteStudy(context.get(), remove, &removed), "trainer");
  context = reader.Context();
  ASSERT_TRUE(reader.datasets->ListStudies(context.get(), list_studies, &studies).ok());
  EXPECT_EQ(studies.studies_size(), 2);
  context = As("admin").Context();
  status = As("admin").datasets->DeleteStudy(context.get(), remove, &removed);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_GT(removed.deleted_instances(), 0);
  context = reader.Context();
  ASSERT_TRUE(reader.datasets->ListStudies(context.get(), list_studies, &studies).ok());
  EXPECT_EQ(studies.studies_size(), 1);
}

// ------------------------------------------------------------------------------------------
// Authentication

TEST_F(RoleTest, CallsWithoutAKnownBearerTokenAreUnauthenticated) {
  ApiClient raw(server_->address());  // sends no token of its own
  const std::string stored_hash = Sha256Hex(TokenOf("admin"));
  struct Case {
    const char* what;
    std::optional<std::string> authorization;
    std::string secret;  // must not come back in the message
  };
  const std::vector<Case> cases = {
      {"no metadata", std::nullopt, ""},
      {"an unknown token", "Bearer unknown-token-5a1e8c", "unknown-token-5a1e8c"},
      {"basic authentication", "Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="},
      {"a bare token", TokenOf("admin"), TokenOf("admin")},
      {"an empty bearer token", "Bearer ", ""},
      {"blanks as a bearer token", "Bearer    ", ""},
      {"the stored hash as the token", "Bearer " + stored_hash, stored_hash},
      {"a known token with a suffix", "Bearer " + TokenOf("admin") + "x", TokenOf("admin")},
      {"a known token cut short", "Bearer " + TokenOf("admin").substr(0, 12),
       TokenOf("admin").substr(0, 12)},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    // A read call and an admin-only call: authentication comes before the permission.
    v1::ListDatasetsResponse list;
    auto context = ContextWith(c.authorization);
    grpc::Status status = raw.datasets->ListDatasets(context.get(), {}, &list);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << CodeName(status.error_code()) << ": " << status.error_message();
    EXPECT_FALSE(status.error_message().empty());
    if (!c.secret.empty()) {
      EXPECT_THAT(status.error_message(), Not(HasSubstr(c.secret)));
    }
    EXPECT_EQ(list.datasets_size(), 0);

    v1::CreateDatasetRequest create;
    create.set_name("intruder");
    create.add_class_names("background");
    create.add_class_names("x");
    v1::Dataset created;
    context = ContextWith(c.authorization);
    status = raw.datasets->CreateDataset(context.get(), create, &created);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << CodeName(status.error_code()) << ": " << status.error_message();
    if (!c.secret.empty()) {
      EXPECT_THAT(status.error_message(), Not(HasSubstr(c.secret)));
    }
  }

  // The streaming calls too, without a token.
  v1::UploadResponse upload;
  EXPECT_EQ(raw.Upload("intruder", v1::STUDY_ROLE_UNLABELED, {{"a", "b"}}, &upload).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  v1::SegmentHeader header;
  header.set_dataset("intruder");
  std::string seg;
  v1::SegmentSummary summary;
  EXPECT_EQ(raw.Segment(header, {{"a", "b"}}, &seg, &summary).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  std::vector<v1::JobEvent> events;
  EXPECT_EQ(raw.Watch(1, &events, 0, 60).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  // The scheme is case-insensitive and surrounding blanks do not matter; nothing was made.
  for (const std::string& authorization :
       {"Bearer " + TokenOf("reader"), "bearer " + TokenOf("reader"),
        "Bearer   " + TokenOf("reader") + "  "}) {
    SCOPED_TRACE(authorization);
    v1::ListDatasetsResponse list;
    auto context = ContextWith(authorization);
    grpc::Status status = raw.datasets->ListDatasets(context.get(), {}, &list);
    EXPECT_TRUE(status.ok()) << CodeName(status.error_code()) << ": " << status.error_message();
    EXPECT_EQ(list.datasets_size(), 0);
  }
  EXPECT_THAT(server_->log(), AllOf(Not(HasSubstr(TokenOf("admin"))),
                                    Not(HasSubstr(TokenOf("reader")))));
}

// ------------------------------------------------------------------------------------------
// The token file

class TokenFileTest : public ::testing::Test {
 protected:
  TempDir dir_;
};

TEST_F(TokenFileTest, AMalformedTokenFileStopsTheServerNamingFileAndLine) {
  const std::string good = Sha256Hex("some token");
  struct Case {
    const char* what;
    std::string text;
    std::string message;  // after "<path>"
  };
  const std::vector<Case> cases = {
      {"a hash that is not hex", "# tokens\n" + std::string(64, 'z') + " reader alice\n",
       ":2: the first field must be a token's SHA-256 in hex"},
      {"a hash one digit short", good.substr(1) + " reader alice\n",
       ":1: the first field must be a token's SHA-256 in hex"},
      {"a hash one digit long", good + "0 reader alice\n",
       ":1: the first field must be a token's SHA-256 in hex"},
      {"an unknown role", good + " reader alice\n\n" + good + " root bob\n",
       ":3: unknown role 'root'"},
      {"a capitalised role", good + " Admin alice\n", ":1: unknown role 'Admin'"},
      {"two fields", good + " reader\n", ":1: expected '<sha256 hex> <role> <name>'"},
      {"four fields", "# a\n# b\n" + good + " reader alice smith\n",
       ":3: expected '<sha256 hex> <role> <name>'"},
      {"a bare token", "my-secret-token\n", ":1: expected '<sha256 hex> <role> <name>'"},
      {"an empty file", "", ": no tokens"},
      {"only comments and blanks", "# nobody yet\n\n   \n", ": no tokens"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE(c.what);
    const std::string path = absl::StrCat(dir_.path(), "/tokens-", i);
    ASSERT_TRUE(WriteFile(path, c.text));
    auto [status, log] = ServerProcess::RunToExit(ExitFlags(dir_, {"--token_file=" + path}));
    EXPECT_EQ(status, 2) << log;
    EXPECT_THAT(log, HasSubstr(path + c.message));
    EXPECT_THAT(log, Not(HasSubstr("serving")));
  }

  // A missing file and a directory.
  const std::string directory = dir_.path() + "/tokens.d";
  ASSERT_TRUE(std::filesystem::create_directory(directory));
  for (const std::string& path : {dir_.path() + "/no-such-tokens", directory}) {
    SCOPED_TRACE(path);
    auto [status, log] = ServerProcess::RunToExit(ExitFlags(dir_, {"--token_file=" + path}));
    EXPECT_EQ(status, 2) << log;
    EXPECT_THAT(log, HasSubstr(path));
  }
}

TEST_F(TokenFileTest, TokenFileSyntaxVariantsAreAccepted) {
  // Tabs, CRLF line ends, a "sha256:" prefix, upper-case hex, indented comments.
  std::string upper = Sha256Hex("token-two");
  for (char& ch : upper) ch = static_cast<char>(toupper(static_cast<unsigned char>(ch)));
  const std::string text = "  # comment\r\n" + Sha256Hex("token-one") + "\treader\tone\r\n\r\n" +
                           "sha256:" + upper + "  admin   two\r\n";
  const std::string path = dir_.path() + "/tokens";
  ASSERT_TRUE(WriteFile(path, text));
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(dir_.path() + "/data", {"--token_file=" + path});
  ASSERT_TRUE(server.ok()) << server.status();
  ApiClient client((*server)->address());
  client.token = "token-one";
  EXPECT_TRUE(ListDatasets(client).ok());
  EXPECT_EQ(client.CreateDataset("x").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  client.token = "token-two";
  EXPECT_TRUE(client.CreateDataset("x").ok());
  client.token = "token-three";
  EXPECT_EQ(ListDatasets(client).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

// ------------------------------------------------------------------------------------------
// TLS

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(Certs().error, "") << Certs().error; }

  void StartServer(const std::vector<std::string>& flags) {
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start(dir_.path() + "/data", flags);
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
  }

  // The status of ListDatasets over `channel`.
  static grpc::Status TryList(std::shared_ptr<grpc::Channel> channel, const std::string& token = "") {
    ApiClient client(std::move(channel));
    client.token = token;
    return ListDatasets(client, nullptr, 30);
  }

  static void ExpectRefused(const grpc::Status& status) {
    EXPECT_FALSE(status.ok());
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << CodeName(status.error_code()) << ": " << status.error_message();
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(TlsTest, TlsServesClientsThatTrustItsCaOnly) {
  const Certificates& c = Certs();
  StartServer({"--tls_cert=" + c.server_cert, "--tls_key=" + c.server_key});
  EXPECT_THAT(server_->log(), HasSubstr("(TLS)"));
  const std::string address = server_->address();
  const std::string by_name = "localhost:" + std::to_string(server_->grpc_port());

  // The certificate names 127.0.0.1 and localhost.
  grpc::Status status = TryList(TlsChannel(address, c.ca_pem));
  EXPECT_TRUE(status.ok()) << CodeName(status.error_code()) << ": " << status.error_message();
  status = TryList(TlsChannel(address, c.ca_pem, "", "", "localhost"));
  EXPECT_TRUE(status.ok()) << CodeName(status.error_code()) << ": " << status.error_message();
  status = TryList(TlsChannel(by_name, c.ca_pem));
  EXPECT_TRUE(status.ok()) << CodeName(status.error_code()) << ": " << status.error_message();

  {
    SCOPED_TRACE("plaintext");
    ExpectRefused(TryList(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())));
  }
  {
    SCOPED_TRACE("trusting another CA");
    ExpectRefused(TryList(TlsChannel(address, c.other_ca_pem)));
  }
  {
    SCOPED_TRACE("expecting another name");
    ExpectRefused(TryList(TlsChannel(address, c.ca_pem, "", "", "miseg.example.org")));
  }
  // Still serving after the refused handshakes.
  status = TryList(TlsChannel(address, c.ca_pem));
  EXPECT_TRUE(status.ok()) << CodeName(status.error_code()) << ": " << status.error_message();
}

TEST_F(TlsTest, MutualTlsServesClientsWithACertificateFromItsClientCaOnly) {
  const Certificates& c = Certs();
  StartServer({"--tls_cert=" + c.server_cert, "--tls_key=" + c.server_key,
               "--tls_client_ca=" + c.ca_cert});
  const std::string address = server_->address();

  grpc::Status status = TryList(TlsChannel(address, c.ca_pem, c.client_cert_pem, c.client_key_pem));
  EXPECT_TRUE(status.ok()) << CodeName(status.error_code()) << ": " << status.error_message();

  {
    SCOPED_TRACE("no client certificate");
    ExpectRefused(TryList(TlsChannel(address, c.ca_pem)));
  }
  {
    SCOPED_TRACE("a client certificate from another CA");
    ExpectRefused(
        TryList(TlsChannel(address, c.ca_pem, c.other_client_cert_pem, c.other_client_key_pem)));
  }
  {
    SCOPED_TRACE("plaintext");
    ExpectRefused(TryList(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())));
  }
  status = TryList(TlsChannel(address, c.ca_pem, c.client_cert_pem, c.client_key_pem));
  EXPECT_TRUE(status.ok()) << CodeName(status.error_code()) << ": " << status.error_message();
}

TEST_F(TlsTest, TokensAreCheckedOverTls) {
  const Certificates& c = Certs();
  const std::string tokens = dir_.path() + "/tokens";
  ASSERT_TRUE(WriteFile(tokens, TokenFileText()));
  StartServer({"--tls_cert=" + c.server_cert, "--tls_key=" + c.server_key,
               "--token_file=" + tokens});
  auto channel = TlsChannel(server_->address(), c.ca_pem);
  EXPECT_EQ(TryList(channel).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(TryList(channel, "wrong").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::Status status = TryList(channel, TokenOf("reader"));
  EXPECT_TRUE(status.ok()) << CodeName(status.error_code()) << ": " << status.error_message();
}

// An empty client CA bundle must not turn client verification off: the server either
// refuses to start or admits no client.
TEST_F(TlsTest, AnEmptyClientCaBundleAdmitsNoClient) {
  const Certificates& c = Certs();
  const std::string empty = dir_.path() + "/empty-ca.pem";
  ASSERT_TRUE(WriteFile(empty, ""));
  absl::StatusOr<std::unique_ptr<ServerProcess>> started =
      ServerProcess::Start(dir_.path() + "/data", {"--tls_cert=" + c.server_cert,
                                                   "--tls_key=" + c.server_key,
                                                   "--tls_client_ca=" + empty});
  if (!started.ok()) {
    EXPECT_THAT(started.status().message(), HasSubstr(empty));
    return;
  }
  server_ = *std::move(started);
  const std::string address = server_->address();
  {
    SCOPED_TRACE("a client certificate from the server's own CA");
    ExpectRefused(TryList(TlsChannel(address, c.ca_pem, c.client_cert_pem, c.client_key_pem)));
  }
  {
    SCOPED_TRACE("no client certificate");
    ExpectRefused(TryList(TlsChannel(address, c.ca_pem)));
  }
}

// ------------------------------------------------------------------------------------------
// Where the server listens

class ListeningTest : public TlsTest {};

TEST_F(ListeningTest, LoopbackIsTheDefault) {
  StartServer({});
  const std::set<std::string> addresses = ListeningAddresses(server_->grpc_port());
  ASSERT_FALSE(addresses.empty());
  for (const std::string& a : addresses) EXPECT_TRUE(IsIpv4Loopback(a)) << a;
  EXPECT_THAT(server_->log(), HasSubstr("without authentication"));
}

TEST_F(ListeningTest, BeyondLoopbackWithoutTlsAndTokensIsRefused) {
  const Certificates& c = Certs();
  const std::string tokens = dir_.path() + "/tokens";
  ASSERT_TRUE(WriteFile(tokens, TokenFileText()));
  struct Case {
    const char* what;
    std::string listen;
    std::vector<std::string> flags;
  };
  const std::vector<Case> cases = {
      {"plaintext, no tokens", "0.0.0.0:0", {}},
      {"plaintext, no tokens, IPv6", "[::]:0", {}},
      {"plaintext, no tokens, no host", ":0", {}},
      {"TLS without tokens", "0.0.0.0:0",
       {"--tls_cert=" + c.server_cert, "--tls_key=" + c.server_key}},
      {"mutual TLS without tokens", "0.0.0.0:0",
       {"--tls_cert=" + c.server_cert, "--tls_key=" + c.server_key,
        "--tls_client_ca=" + c.ca_cert}},
      {"tokens without TLS", "0.0.0.0:0", {"--token_file=" + tokens}},
      {"--noallow_insecure_remote", "0.0.0.0:0", {"--noallow_insecure_remote"}},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    std::vector<std::string> flags = k.flags;
    flags.push_back("--listen=" + k.listen);
    auto [status, log] = ServerProcess::RunToExit(ExitFlags(dir_, flags));
    EXPECT_EQ(status, 2) << log;
    EXPECT_THAT(log, HasSubstr("refusing to listen on " + k.listen));
    EXPECT_THAT(log, HasSubstr("--allow_insecure_remote"));
    EXPECT_THAT(log, Not(HasSubstr("serving")));
  }
}

TEST_F(ListeningTest, AllowInsecureRemoteServesOnEveryInterface) {
  // The harness passes --listen=127.0.0.1:0 first; the later flag wins.
  StartServer({"--listen=0.0.0.0:0", "--allow_insecure_remote"});
  const std::set<std::string> addresses = ListeningAddresses(server_->grpc_port());
  ASSERT_FALSE(addresses.empty());
  for (const std::string& a : addresses) EXPECT_TRUE(IsWildcard(a)) << a;
  ApiClient client(server_->address());
  grpc::Status status = ListDatasets(client);
  EXPECT_TRUE(status.ok()) << CodeName(status.error_code()) << ": " << status.error_message();
}

TEST_F(ListeningTest, TlsAndTokensServeOnEveryInterface) {
  const Certificates& c = Certs();
  const std::string tokens = dir_.path() + "/tokens";
  ASSERT_TRUE(WriteFile(tokens, TokenFileText()));
  StartServer({"--listen=0.0.0.0:0", "--tls_cert=" + c.server_cert, "--tls_key=" + c.server_key,
               "--token_file=" + tokens});
  const std::set<std::string> addresses = ListeningAddresses(server_->grpc_port());
  ASSERT_FALSE(addresses.empty());
  for (const std::string& a : addresses) EXPECT_TRUE(IsWildcard(a)) << a;
  auto channel = TlsChannel(server_->address(), c.ca_pem);
  grpc::Status status = TryList(channel, TokenOf("reader"));
  EXPECT_TRUE(status.ok()) << CodeName(status.error_code()) << ": " << status.error_message();
  EXPECT_EQ(TryList(channel).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  ExpectRefused(TryList(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()),
                      TokenOf("reader")));
}

TEST_F(ListeningTest, IncompleteOrMissingTlsFilesStopTheServer) {
  const Certificates& c = Certs();
  const std::string missing = dir_.path() + "/no-such.pem";
  struct Case {
    const char* what;
    std::vector<std::string> flags;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"a certificate without its key", {"--tls_cert=" + c.server_cert},
       "--tls_cert and --tls_key go together"},
      {"a key without its certificate", {"--tls_key=" + c.server_key},
       "--tls_cert and --tls_key go together"},
      {"a client CA without TLS", {"--tls_client_ca=" + c.ca_cert},
       "--tls_client_ca needs --tls_cert and --tls_key"},
      {"a missing certificate file", {"--tls_cert=" + missing, "--tls_key=" + c.server_key},
       missing},
      {"a missing key file", {"--tls_cert=" + c.server_cert, "--tls_key=" + missing}, missing},
      {"a missing client CA file",
       {"--tls_cert=" + c.server_cert, "--tls_key=" + c.server_key, "--tls_client_ca=" + missing},
       missing},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    auto [status, log] = ServerProcess::RunToExit(ExitFlags(dir_, k.flags));
    EXPECT_EQ(status, 2) << log;
    EXPECT_THAT(log, HasSubstr(k.message));
    EXPECT_THAT(log, Not(HasSubstr("serving")));
  }

  // Files that are there but unusable: the server must not serve (today it exits 1 with
  // "cannot listen on ..." once gRPC rejects the credentials).
  const std::string garbage = dir_.path() + "/garbage.pem";
  ASSERT_TRUE(WriteFile(garbage, "not a PEM file\n"));
  const std::vector<std::pair<const char*, std::vector<std::string>>> unusable = {
      {"a certificate that is not PEM", {"--tls_cert=" + garbage, "--tls_key=" + c.server_key}},
      {"a key that is not PEM", {"--tls_cert=" + c.server_cert, "--tls_key=" + garbage}},
      {"a key that does not match the certificate",
       {"--tls_cert=" + c.server_cert, "--tls_key=" + c.client_key}},
      {"a client CA that is not PEM",
       {"--tls_cert=" + c.server_cert, "--tls_key=" + c.server_key, "--tls_client_ca=" + garbage}},
  };
  for (const auto& [what, flags] : unusable) {
    SCOPED_TRACE(what);
    auto [status, log] = ServerProcess::RunToExit(ExitFlags(dir_, flags));
    EXPECT_THAT(status, AnyOf(1, 2)) << log;
    EXPECT_THAT(log, Not(HasSubstr("serving")));
  }
}

}  // namespace
}  // namespace miseg::testing

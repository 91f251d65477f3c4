// Models out, models in and the lifecycle (issue 16), against real miseg-server processes:
// a trained model exported as TorchScript gives, in /usr/bin/python3 with Debian's
// python3-torch, the labels miseg gives on the same preprocessed slices; imported into a
// second server it segments as the original; imports of wrong things are refused. Deletes
// of models and datasets, their refusals, shared objects, and checkpoint retention.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "core/phantom/phantom.h"
#include "core/train/frozen_unet.h"
#include "core/train/memory_layout.h"
#include "core/train/model_io.h"
#include "core/train/preprocess.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "tests/server/api_client.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// A server, its API stubs and the client library, on a data directory of its own.
struct Server {
  std::string data_dir;
  std::unique_ptr<ServerProcess> process;
  std::unique_ptr<ApiClient> api;
  std::unique_ptr<client::Client> client;
};

class ModelLifecycleTest : public ::testing::Test {
 protected:
  // Starts a server on data directory `name` (the same name: the same directory again).
  void Start(const std::string& name, const std::vector<std::string>& flags, Server* s) {
    s->data_dir = dir_.path() + "/" + name;
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start(s->data_dir, flags);
    ASSERT_TRUE(started.ok()) << started.status();
    s->process = *std::move(started);
    s->api = std::make_unique<ApiClient>(s->process->address());
    client::ConnectionOptions options;
    options.address = s->process->address();
    absl::StatusOr<std::unique_ptr<client::Client>> connected = client::Client::Connect(options);
    ASSERT_TRUE(connected.ok()) << connected.status();
    s->client = *std::move(connected);
  }

  void Fill(const Server& s, const std::string& dataset, const std::vector<int>& labeled,
            uint64_t seed = 11) {
    absl::StatusOr<v1::Dataset> created = s.client->CreateDataset(dataset, CardiacClasses(), "MR");
    ASSERT_TRUE(created.ok() || absl::IsAlreadyExists(created.status())) << created.status();
    for (int index : labeled) {
      absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(seed, index, true);
      ASSERT_TRUE(study.ok()) << study.status();
      v1::UploadResponse response;
      ASSERT_TRUE(
          s.api->Upload(dataset, v1::STUDY_ROLE_LABELED, LabeledFiles(*study), &response).ok());
      ASSERT_EQ(response.refused_instances(), 0) << response.DebugString();
    }
  }

  // Starts a job and follows it to its end; the job as it ended.
  v1::Job Train(const Server& s, const std::string& dataset, const v1::Hyperparameters& h) {
    absl::StatusOr<v1::Job> job = s.client->StartJob(dataset, h);
    EXPECT_TRUE(job.ok()) << job.status();
    if (!job.ok()) return {};
    std::vector<v1::JobEvent> events;
    EXPECT_TRUE(s.api->Watch(job->id(), &events).ok());
    absl::StatusOr<v1::Job> ended = s.client->GetJob(job->id());
    EXPECT_TRUE(ended.ok());
    return ended.ok() ? *ended : v1::Job();
  }

  // A job that runs until cancelled, after its step `step` has been reported.
  int64_t StartLongJob(const Server& s, const std::string& dataset, int64_t step,
                       int64_t checkpoint_every = 1000) {
    absl::StatusOr<v1::Job> job =
        s.client->StartJob(dataset, TinyHyperparameters(100000, checkpoint_every));
    EXPECT_TRUE(job.ok()) << job.status();
    EXPECT_TRUE(WaitForStep(*s.api, job->id(), step));
    return job->id();
  }

  static std::vector<std::string> FilesIn(const std::string& dir, const std::string& prefix = "") {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& entry : fs::recursive_directory_iterator(dir, ec)) {
      const std::string name = entry.path().filename().string();
      if (entry.is_regular_file() && name.rfind(prefix, 0) == 0) names.push_back(name);
    }
    return names;
  }

  TempDir dir_;
};

// The slices of a phantom study as the model sees them, and miseg's labels for them.
void WriteMisegReference(const std::string& model_path, const std::string& slices_path,
                         const std::string& labels_path, int64_t* slices, int64_t* grid) {
  absl::StatusOr<LoadedModel> loaded = LoadModel(model_path, torch::Device(torch::kCPU));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const PhantomSubject subject = GeneratePhantomSubject(11, 7, SmallPhantomOptions());
  absl::StatusOr<PreparedVolume> prepared = PrepareVolume(subject.image, nullptr, loaded->spec);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  torch::NoGradGuard no_grad;
  const torch::Tensor images = prepared->images.contiguous();
  // The network as miseg serves it (core/train/inference.cc).
  const FrozenUNet frozen = FrozenUNet::Fold(loaded->model, PrefersChannelsLast(torch::kCPU));
  const torch::Tensor labels = ArgmaxOverClasses(frozen.forward(images).clone()).contiguous();
  *slices = images.size(0);
  *grid = images.size(2);
  std::ofstream(slices_path, std::ios::binary)
      .write(static_cast<const char*>(images.data_ptr()), images.numel() * 4);
  std::ofstream(labels_path, std::ios::binary)
      .write(static_cast<const char*>(labels.data_ptr()), labels.numel());
}

std::vector<int64_t> VoxelsPerClass(const v1::SegmentSummary& summary) {
  std::vector<int64_t> voxels;
  for (const v1::ClassVolume& c : summary.classes()) voxels.push_back(c.voxels());
  return voxels;
}

TEST_F(ModelLifecycleTest, ExportedModelGivesMisegsLabelsInPythonAndServesOnASecondServer) {
  Server a;
  ASSERT_NO_FATAL_FAILURE(Start("a", {}, &a));
  ASSERT_NO_FATAL_FAILURE(Fill(a, "d", {0, 1}));
  const v1::Job job = Train(a, "d", TinyHyperparameters(6, 3));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << a.process->log();

  const std::string out = dir_.path() + "/exported";
  absl::StatusOr<std::vector<std::string>> files = a.client->ExportModel(job.model_id(), out);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_THAT(*files, ::testing::ElementsAre("model.pt", "model.json", "README.md"));
  EXPECT_FALSE(fs::exists(out + ".partial-" + std::to_string(::getpid())));
  // A second export into the same, now full, directory is refused before anything is sent.
  EXPECT_EQ(a.client->ExportModel(job.model_id(), out).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a.client->ExportModel(999, dir_.path() + "/none").status().code(),
            absl::StatusCode::kNotFound);

  // Python: the same preprocessed slices, the same labels.
  const std::vector<std::string> model_files = FilesIn(a.data_dir + "/models", "job-");
  ASSERT_EQ(model_files.size(), 1u);
  int64_t slices = 0, grid = 0;
  ASSERT_NO_FATAL_FAILURE(WriteMisegReference(a.data_dir + "/models/" + model_files[0],
                                              dir_.path() + "/slices.f32",
                                              dir_.path() + "/labels.u8", &slices, &grid));
  const auto [rc, output] = RunCommand(absl::StrCat(
      MISEG_TEST_PYTHON, " ", MISEG_SOURCE_DIR, "/tests/server/exported_model_check.py check ", out,
      " ", dir_.path(), "/slices.f32 ", dir_.path(), "/labels.u8 ", slices, " ", grid, " d ",
      job.id(), " 2>&1"));
  EXPECT_EQ(rc, 0) << output;
  EXPECT_THAT(output, HasSubstr(absl::StrCat("python labels: 0 of ", slices * grid * grid)));

  // A second server: imported into another dataset, promoted, it segments as the original.
  Server b;
  ASSERT_NO_FATAL_FAILURE(Start("b", {}, &b));
  ASSERT_TRUE(b.client->CreateDataset("other", CardiacClasses(), "MR").ok());
  absl::StatusOr<v1::Model> imported = b.client->ImportModel("other", out);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->version(), 1);
  EXPECT_FALSE(imported->active());
  EXPECT_EQ(imported->job_id(), 0);
  EXPECT_EQ(imported->format(), v1::MODEL_FORMAT_TORCHSCRIPT);
  absl::StatusOr<PhantomStudy> target = SmallPhantomStudy(11, 7, false);
  ASSERT_TRUE(target.ok());
  v1::SegmentHeader header;
  header.set_dataset("other");
  std::string seg;
  v1::SegmentSummary on_b, on_a;
  EXPECT_EQ(b.api->Segment(header, target->image_files, &seg, &on_b).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);  // not active yet
  ASSERT_TRUE(b.client->PromoteModel(imported->id()).ok());
  grpc::Status segmented = b.api->Segment(header, target->image_files, &seg, &on_b);
  ASSERT_TRUE(segmented.ok()) << segmented.error_message() << b.process->log();
  EXPECT_EQ(on_b.model_id(), imported->id());
  header.set_dataset("d");
  ASSERT_TRUE(a.api->Segment(header, target->image_files, &seg, &on_a).ok());
  EXPECT_EQ(VoxelsPerClass(on_b), VoxelsPerClass(on_a));

  // ... and exports again from there.
  absl::StatusOr<std::vector<std::string>> again =
      b.client->ExportModel(imported->id(), dir_.path() + "/again");
  ASSERT_TRUE(again.ok()) << again.status();
}

TEST_F(ModelLifecycleTest, ImportsOfWrongThingsAreRefusedWithClearErrors) {
  Server a;
  ASSERT_NO_FATAL_FAILURE(Start("a", {}, &a));
  ASSERT_NO_FATAL_FAILURE(Fill(a, "d", {0}));
  const v1::Job job = Train(a, "d", TinyHyperparameters(2, 2));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << a.process->log();
  const std::string out = dir_.path() + "/exported";
  ASSERT_TRUE(a.client->ExportModel(job.model_id(), out).ok());

  ASSERT_TRUE(a.client->CreateDataset("three", {"background", "liver", "spleen"}, "MR").ok());
  absl::Status status = a.client->ImportModel("three", out).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("classes"));
  EXPECT_EQ(a.client->ImportModel("missing", out).status().code(), absl::StatusCode::kNotFound);

  const std::string corrupt = dir_.path() + "/corrupt";
  fs::create_directories(corrupt);
  fs::copy_file(out + "/model.json", corrupt + "/model.json");
  std::ofstream(corrupt + "/model.pt") << "PK\x03\x04 this is no TorchScript archive";
  status = a.client->ImportModel("d", corrupt).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("not a TorchScript module"));

  const std::string bad_json = dir_.path() + "/bad-json";
  fs::create_directories(bad_json);
  fs::copy_file(out + "/model.pt", bad_json + "/model.pt");
  std::ofstream(bad_json + "/model.json") << "{\"classes\": 3";
  status = a.client->ImportModel("d", bad_json).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("model.json"));

  const std::string bad_shape = dir_.path() + "/bad-shape";
  const auto [rc, output] = RunCommand(absl::StrCat(
      MISEG_TEST_PYTHON, " ", MISEG_SOURCE_DIR, "/tests/server/exported_model_check.py bad-shape ",
      out, " ", bad_shape, " 2>&1"));
  ASSERT_EQ(rc, 0) << output;
  status = a.client->ImportModel("d", bad_shape).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("not [2, 4,"));

  // Nothing of the refused imports stays: one model, one model file.
  absl::StatusOr<std::vector<v1::Model>> models = a.client->ListModels("");
  ASSERT_TRUE(models.ok());
  EXPECT_EQ(models->size(), 1u);
  EXPECT_EQ(FilesIn(a.data_dir + "/models").size(), 1u);
  EXPECT_TRUE(FilesIn(a.data_dir + "/incoming").empty());
}

TEST_F(ModelLifecycleTest, ModelVersionsAreDeletedExceptTheActiveOne) {
  Server a;
  ASSERT_NO_FATAL_FAILURE(Start("a", {}, &a));
  ASSERT_NO_FATAL_FAILURE(Fill(a, "d", {0}));
  const v1::Job first = Train(a, "d", TinyHyperparameters(2, 2));
  const v1::Job second = Train(a, "d", TinyHyperparameters(2, 2));
  ASSERT_EQ(second.state(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_EQ(FilesIn(a.data_dir + "/models").size(), 2u);

  absl::Status refused = a.client->DeleteModel(first.model_id()).status();  // the active one
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("active"));
  absl::StatusOr<int64_t> freed = a.client->DeleteModel(second.model_id());
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_GT(*freed, 0);
  EXPECT_EQ(FilesIn(a.data_dir + "/models").size(), 1u);
  EXPECT_EQ(a.client->DeleteModel(second.model_id()).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<std::vector<v1::Model>> models = a.client->ListModels("d");
  ASSERT_TRUE(models.ok());
  ASSERT_EQ(models->size(), 1u);
  EXPECT_EQ(models->front().id(), first.model_id());
  // The next version follows the highest one left (model ids are never reused).
  const v1::Job third = Train(a, "d", TinyHyperparameters(2, 2));
  absl::StatusOr<v1::Model> latest = a.client->GetModel(third.model_id());
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->version(), 2);
  EXPECT_GT(latest->id(), second.model_id());
}

TEST_F(ModelLifecycleTest, DeletingADatasetIsRefusedWhileItsJobRunsUnlessForced) {
  Server a;
  ASSERT_NO_FATAL_FAILURE(Start("a", {}, &a));
  ASSERT_NO_FATAL_FAILURE(Fill(a, "d", {0}));
  const int64_t job = StartLongJob(a, "d", 1);

  absl::Status refused = a.client->DeleteDataset("d", /*force=*/false).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("running"));
  EXPECT_TRUE(a.client->GetDataset("d").ok());

  absl::StatusOr<v1::DeleteDatasetResponse> deleted = a.client->DeleteDataset("d", /*force=*/true);
  ASSERT_TRUE(deleted.ok()) << deleted.status() << a.process->log();
  EXPECT_EQ(deleted->cancelled_jobs(), 1);
  EXPECT_EQ(deleted->deleted_jobs(), 1);
  EXPECT_EQ(deleted->deleted_studies(), 1);
  EXPECT_GT(deleted->freed_objects(), 0);
  EXPECT_EQ(a.client->GetDataset("d").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(a.client->GetJob(job).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(FilesIn(a.data_dir + "/objects").empty());
  EXPECT_TRUE(FilesIn(a.data_dir + "/checkpoints").empty());
  EXPECT_EQ(a.client->DeleteDataset("d", false).status().code(), absl::StatusCode::kNotFound);
  // The name is free again.
  EXPECT_TRUE(a.client->CreateDataset("d", CardiacClasses(), "MR").ok());
}

TEST_F(ModelLifecycleTest, DeletingADatasetKeepsObjectsAnotherDatasetStillReferences) {
  Server a;
  ASSERT_NO_FATAL_FAILURE(Start("a", {}, &a));
  ASSERT_NO_FATAL_FAILURE(Fill(a, "first", {0, 1}));  // study 0 also goes to "second"
  ASSERT_NO_FATAL_FAILURE(Fill(a, "second", {0}));
  const v1::Job job = Train(a, "first", TinyHyperparameters(2, 2));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  absl::StatusOr<std::vector<v1::Study>> shared =
      a.client->ListStudies("second", v1::STUDY_ROLE_UNSPECIFIED);
  ASSERT_TRUE(shared.ok());
  ASSERT_EQ(shared->size(), 1u);
  const int64_t shared_objects = shared->front().instances() + 1;  // images and the SEG
  const size_t before = FilesIn(a.data_dir + "/objects").size();

  absl::StatusOr<v1::DeleteDatasetResponse> deleted = a.client->DeleteDataset("first", false);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->deleted_studies(), 2);
  EXPECT_EQ(deleted->deleted_models(), 1);
  // Only study 1's objects went; study 0's still back "second".
  EXPECT_EQ(FilesIn(a.data_dir + "/objects").size(), static_cast<size_t>(shared_objects));
  EXPECT_EQ(static_cast<size_t>(deleted->freed_objects()), before - shared_objects);
  EXPECT_TRUE(FilesIn(a.data_dir + "/models").empty());
  // "second" still trains on its study: every file it needs is there and intact.
  const v1::Job on_second = Train(a, "second", TinyHyperparameters(2, 2));
  EXPECT_EQ(on_second.state(), v1::JOB_STATE_SUCCEEDED) << on_second.error();

  deleted = a.client->DeleteDataset("second", false);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->freed_objects(), shared_objects);
  EXPECT_TRUE(FilesIn(a.data_dir + "/objects").empty());
  EXPECT_TRUE(FilesIn(a.data_dir + "/models").empty());
}

TEST_F(ModelLifecycleTest, CheckpointRetentionAppliesWhenAJobEndsAndAtStartup) {
  // The default keeps what a cancelled job left: its last two checkpoints.
  Server a;
  ASSERT_NO_FATAL_FAILURE(Start("a", {}, &a));
  ASSERT_NO_FATAL_FAILURE(Fill(a, "d", {0}));
  const int64_t kept = StartLongJob(a, "d", 3, /*checkpoint_every=*/1);
  ASSERT_TRUE(a.client->CancelJob(kept).ok());
  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(a.api->Watch(kept, &events).ok());  // to its terminal event
  const std::string prefix = absl::StrCat("job-", kept, "-");
  // The job keeps its last checkpoint and the one before, unless its stop wrote the step
  // it had just written: an older one of the same bytes makes the count certain.
  std::vector<std::string> left = FilesIn(a.data_dir + "/checkpoints", prefix);
  ASSERT_FALSE(left.empty());
  const std::string newest =
      *std::max_element(left.begin(), left.end(), [](const auto& x, const auto& y) {
        return x.size() != y.size() ? x.size() < y.size() : x < y;  // by step, as the names sort
      });
  const std::string older = absl::StrCat(prefix, "step-0-", newest.substr(newest.rfind('-') + 1));
  fs::copy_file(a.data_dir + "/checkpoints/" + newest, a.data_dir + "/checkpoints/" + older);
  left = FilesIn(a.data_dir + "/checkpoints", prefix);
  ASSERT_GE(left.size(), 2u);

  // Restarted with --checkpoint_retention=last: one is left. What a crash between a
  // delete's commit and its unlinks would leave (files no row names) goes at the start.
  ASSERT_EQ(a.process->Terminate(), 0);
  const std::string hash(64, 'a');
  std::ofstream(a.data_dir + "/models/job-99-" + hash + ".model") << "orphan";
  std::ofstream(a.data_dir + "/checkpoints/job-99-step-1-" + hash + ".ckpt") << "orphan";
  ASSERT_NO_FATAL_FAILURE(Start("a", {"--checkpoint_retention=last"}, &a));
  EXPECT_EQ(FilesIn(a.data_dir + "/checkpoints", prefix), std::vector<std::string>{newest});
  EXPECT_TRUE(FilesIn(a.data_dir + "/models").empty());
  EXPECT_TRUE(FilesIn(a.data_dir + "/checkpoints", "job-99-").empty());

  // With none: a job's checkpoints go as it is cancelled, before its end is published.
  ASSERT_EQ(a.process->Terminate(), 0);
  ASSERT_NO_FATAL_FAILURE(Start("a", {"--checkpoint_retention=none"}, &a));
  EXPECT_TRUE(FilesIn(a.data_dir + "/checkpoints", prefix).empty());
  const int64_t cancelled = StartLongJob(a, "d", 3, /*checkpoint_every=*/1);
  ASSERT_FALSE(FilesIn(a.data_dir + "/checkpoints", absl::StrCat("job-", cancelled, "-")).empty());
  ASSERT_TRUE(a.client->CancelJob(cancelled).ok());
  events.clear();
  ASSERT_TRUE(a.api->Watch(cancelled, &events).ok());
  ASSERT_EQ(events.back().state().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(FilesIn(a.data_dir + "/checkpoints").empty());

  ASSERT_EQ(a.process->Terminate(), 0);
  const auto [status, log] =
      ServerProcess::RunToExit({"--data_dir=" + dir_.path() + "/x", "--checkpoint_retention=some"});
  EXPECT_EQ(status, 2) << log;
  EXPECT_THAT(log, HasSubstr("expected all, last or none"));
}

}  // namespace
}  // namespace miseg::testing

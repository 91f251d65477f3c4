// Drives every RPC of a real miseg-server process: datasets, uploads, studies, training,
// models, segmentation, health and reflection, with each error code the API documents.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include <grpcpp/generic/generic_stub.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "core/phantom/phantom.h"
#include "miseg/v1/miseg.grpc.pb.h"
#include "tests/server/api_client.h"
#include "tests/server/server_process.h"
#include "tests/server/test_studies.h"

namespace miseg::testing {
namespace {

using ::testing::HasSubstr;

class ApiTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer({}); }

  void StartServer(const std::vector<std::string>& flags) {
    server_.reset();
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start(dir_.path() + "/data", flags);
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
    client_ = std::make_unique<ApiClient>(server_->address());
  }

  PhantomStudy Study(int index, bool labeled, uint64_t seed = 11) {
    absl::StatusOr<PhantomStudy> study = SmallPhantomStudy(seed, index, labeled);
    EXPECT_TRUE(study.ok()) << study.status();
    return *std::move(study);
  }

  // A dataset with `labeled` labeled and `unlabeled` unlabeled studies.
  void FillDataset(const std::string& name, int labeled, int unlabeled) {
    ASSERT_TRUE(client_->CreateDataset(name).ok());
    for (int i = 0; i < labeled + unlabeled; ++i) {
      const bool is_labeled = i < labeled;
      PhantomStudy study = Study(i, is_labeled);
      v1::UploadResponse response;
      grpc::Status status = client_->Upload(
          name, is_labeled ? v1::STUDY_ROLE_LABELED : v1::STUDY_ROLE_UNLABELED,
          is_labeled ? LabeledFiles(study) : study.image_files, &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      ASSERT_EQ(response.refused_instances(), 0) << response.DebugString();
    }
  }

  int64_t TrainToEnd(const std::string& dataset, const v1::Hyperparameters& h) {
    v1::StartJobRequest request;
    request.set_dataset(dataset);
    *request.mutable_hyperparameters() = h;
    v1::Job job;
    auto context = client_->Context();
    grpc::Status status = client_->training->StartJob(context.get(), request, &job);
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::vector<v1::JobEvent> events;
    EXPECT_TRUE(client_->Watch(job.id(), &events).ok());
    EXPECT_FALSE(events.empty());
    if (!events.empty()) {
      EXPECT_EQ(events.back().state().state(), v1::JOB_STATE_SUCCEEDED) << server_->log();
    }
    return job.id();
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<ApiClient> client_;
};

TEST_F(ApiTest, DatasetsAreCreatedListedAndDescribed) {
  v1::Dataset created;
  ASSERT_TRUE(client_->CreateDataset("cardiac", &created).ok());
  EXPECT_EQ(created.name(), "cardiac");
  EXPECT_EQ(created.class_names_size(), 4);
  EXPECT_EQ(created.modality(), "MR");

  v1::ListDatasetsResponse list;
  auto context = client_->Context();
  ASSERT_TRUE(client_->datasets->ListDatasets(context.get(), {}, &list).ok());
  ASSERT_EQ(list.datasets_size(), 1);
  EXPECT_EQ(list.datasets(0).name(), "cardiac");

  v1::GetDatasetRequest get;
  get.set_name("cardiac");
  v1::Dataset described;
  context = client_->Context();
  ASSERT_TRUE(client_->datasets->GetDataset(context.get(), get, &described).ok());
  EXPECT_EQ(described.labeled_studies(), 0);
  EXPECT_EQ(described.active_model_id(), 0);
}

TEST_F(ApiTest, DatasetErrorsHaveTheirCodes) {
  ASSERT_TRUE(client_->CreateDataset("taken").ok());
  EXPECT_EQ(client_->CreateDataset("taken").error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(client_->CreateDataset("Bad Name").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->CreateDataset("").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->CreateDataset("../etc").error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  auto create = [&](std::vector<std::string> classes, std::string modality) {
    v1::CreateDatasetRequest request;
    request.set_name("other");
    for (const std::string& c : classes) request.add_class_names(c);
    request.set_modality(modality);
    v1::Dataset out;
    auto context = client_->Context();
    return client_->datasets->CreateDataset(context.get(), request, &out).error_code();
  };
  EXPECT_EQ(create({"background"}, "MR"), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(create({"background", "a", "a"}, "MR"), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(create({"background", "a\nb"}, "MR"), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(create({"background", "a"}, "XX"), grpc::StatusCode::INVALID_ARGUMENT);

  v1::GetDatasetRequest get;
  get.set_name("missing");
  v1::Dataset out;
  auto context = client_->Context();
  grpc::Status status = client_->datasets->GetDataset(context.get(), get, &out);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("missing"));
  get.set_name("");
  context = client_->Context();
  EXPECT_EQ(client_->datasets->GetDataset(context.get(), get, &out).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ApiTest, UploadStoresDeduplicatesAndRefusesWithReasons) {
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  PhantomStudy labeled = Study(0, true);
  const std::vector<DicomBuffer> files = LabeledFiles(labeled);

  v1::UploadResponse first;
  ASSERT_TRUE(client_->Upload("d", v1::STUDY_ROLE_LABELED, files, &first).ok());
  EXPECT_EQ(first.stored_instances(), static_cast<int64_t>(files.size()));
  EXPECT_EQ(first.refused_instances(), 0);
  ASSERT_EQ(first.stored_size(), 1);
  EXPECT_EQ(first.stored(0).series_instance_uid(), labeled.series.series_instance_uid);
  EXPECT_EQ(first.stored(0).instances(), static_cast<int32_t>(labeled.image_files.size()));
  EXPECT_EQ(first.stored(0).segmentation_sop_instance_uid().empty(), false);
  int64_t bytes = 0;
  for (const DicomBuffer& f : files) bytes += static_cast<int64_t>(f.bytes.size());
  EXPECT_EQ(first.bytes_received(), bytes);

  v1::UploadResponse again;
  ASSERT_TRUE(client_->Upload("d", v1::STUDY_ROLE_LABELED, files, &again).ok());
  EXPECT_EQ(again.duplicate_instances(), static_cast<int64_t>(files.size()));
  EXPECT_EQ(again.stored_instances(), 0);
  for (const v1::InstanceResult& r : again.results()) {
    EXPECT_EQ(r.outcome(), v1::INSTANCE_OUTCOME_DUPLICATE);
  }

  // A labeled study without its SEG, garbage, an unlabeled study carrying a SEG.
  PhantomStudy second = Study(1, true);
  std::vector<DicomBuffer> mixed = second.image_files;
  mixed.push_back({"notes.txt", "this is not DICOM"});
  v1::UploadResponse refused;
  ASSERT_TRUE(client_->Upload("d", v1::STUDY_ROLE_LABELED, mixed, &refused).ok());
  EXPECT_EQ(refused.stored_instances(), 0);
  EXPECT_EQ(refused.refused_instances(), static_cast<int64_t>(mixed.size()));
  EXPECT_THAT(refused.results(0).reason(), HasSubstr("needs its DICOM SEG"));
  EXPECT_EQ(refused.results().rbegin()->file_name(), "notes.txt");
  EXPECT_FALSE(refused.results().rbegin()->reason().empty());

  v1::UploadResponse unlabeled_with_seg;
  ASSERT_TRUE(client_->Upload("d", v1::STUDY_ROLE_UNLABELED, LabeledFiles(second),
                              &unlabeled_with_seg).ok());
  EXPECT_EQ(unlabeled_with_seg.stored_instances(), 0);
  EXPECT_THAT(unlabeled_with_seg.results(0).reason(), HasSubstr("takes no DICOM SEG"));

  // A SEG alone references no series of the upload.
  v1::UploadResponse seg_alone;
  ASSERT_TRUE(client_->Upload("d", v1::STUDY_ROLE_LABELED, {*second.segmentation}, &seg_alone).ok());
  EXPECT_EQ(seg_alone.refused_instances(), 1);
  EXPECT_THAT(seg_alone.results(0).reason(), HasSubstr("references no image series"));

  // The same series with one instance less is a different series state: refused.
  std::vector<DicomBuffer> partial(files.begin() + 1, files.end());
  v1::UploadResponse conflicting;
  std::vector<DicomBuffer> changed = LabeledFiles(labeled);
  changed.erase(changed.begin());
  PhantomStudy fresh = Study(0, true, /*seed=*/99);  // another subject, new UIDs
  changed.push_back(fresh.image_files[0]);
  ASSERT_TRUE(client_->Upload("d", v1::STUDY_ROLE_LABELED, changed, &conflicting).ok());
  EXPECT_GT(conflicting.refused_instances(), 0);

  v1::GetDatasetRequest get;
  get.set_name("d");
  v1::Dataset dataset;
  auto context = client_->Context();
  ASSERT_TRUE(client_->datasets->GetDataset(context.get(), get, &dataset).ok());
  EXPECT_EQ(dataset.labeled_studies(), 1);
  EXPECT_EQ(dataset.instances(), static_cast<int64_t>(files.size()));
  EXPECT_EQ(dataset.stored_bytes(), bytes);
}

TEST_F(ApiTest, UploadProtocolErrorsStoreNothing) {
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  PhantomStudy study = Study(0, false);
  v1::UploadResponse response;
  EXPECT_EQ(client_->Upload("nope", v1::STUDY_ROLE_UNLABELED, study.image_files, &response)
                .error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(client_->Upload("d", v1::STUDY_ROLE_UNSPECIFIED, study.image_files, &response)
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->Upload("d", v1::STUDY_ROLE_UNLABELED, {}, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::Status truncated = client_->Upload("d", v1::STUDY_ROLE_UNLABELED, study.image_files,
                                           &response, 4096, /*truncate_last=*/true);
  EXPECT_EQ(truncated.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(truncated.error_message(), HasSubstr("ended inside"));

  // A stream without a header first.
  {
    auto context = client_->Context();
    v1::UploadResponse out;
    auto writer = client_->datasets->Upload(context.get(), &out);
    v1::UploadRequest chunk;
    chunk.mutable_chunk()->set_data("x");
    chunk.mutable_chunk()->set_last_chunk(true);
    writer->Write(chunk);
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  // A client that cancels mid-stream.
  {
    auto context = client_->Context();
    v1::UploadResponse out;
    auto writer = client_->datasets->Upload(context.get(), &out);
    v1::UploadRequest header;
    header.mutable_header()->set_dataset("d");
    header.mutable_header()->set_role(v1::STUDY_ROLE_UNLABELED);
    writer->Write(header);
    v1::UploadRequest chunk;
    chunk.mutable_chunk()->set_data(study.image_files[0].bytes);
    chunk.mutable_chunk()->set_last_chunk(true);
    writer->Write(chunk);
    context->TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }

  v1::ListStudiesRequest list;
  list.set_dataset("d");
  v1::ListStudiesResponse studies;
  auto context = client_->Context();
  ASSERT_TRUE(client_->datasets->ListStudies(context.get(), list, &studies).ok());
  EXPECT_EQ(studies.studies_size(), 0);
  // Nothing was written to the file store either.
  const std::filesystem::path objects = dir_.path() + "/data/objects";
  size_t stored_files = 0;
  if (std::filesystem::exists(objects)) {
    for (const auto& entry : std::filesystem::recursive_directory_iterator(objects)) {
      stored_files += entry.is_regular_file();
    }
  }
  EXPECT_EQ(stored_files, 0u);
}

TEST_F(ApiTest, UploadBeyondTheRequestLimitIsResourceExhausted) {
  StartServer({"--max_request_mib=1"});
  ASSERT_TRUE(client_->CreateDataset("d").ok());
  std::vector<DicomBuffer> big = {{"big.dcm", std::string(3 << 20, 'x')}};
  v1::UploadResponse response;
  grpc::Status status = client_->Upload("d", v1::STUDY_ROLE_UNLABELED, big, &response, 256 << 10);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(ApiTest, StudiesAreListedByRoleAndDeleted) {
  FillDataset("d", 2, 1);
  auto list = [&](v1::StudyRole role) {
    v1::ListStudiesRequest request;
    request.set_dataset("d");
    request.set_role(role);
    v1::ListStudiesResponse response;
    auto context = client_->Context();
    EXPECT_TRUE(client_->datasets->ListStudies(context.get(), request, &response).ok());
    return response;
  };
  EXPECT_EQ(list(v1::STUDY_ROLE_UNSPECIFIED).studies_size(), 3);
  EXPECT_EQ(list(v1::STUDY_ROLE_LABELED).studies_size(), 2);
  const v1::ListStudiesResponse unlabeled = list(v1::STUDY_ROLE_UNLABELED);
  ASSERT_EQ(unlabeled.studies_size(), 1);
  EXPECT_EQ(list(v1::STUDY_ROLE_VALIDATION).studies_size(), 0);

  v1::DeleteStudyRequest request;
  request.set_dataset("d");
  request.set_series_instance_uid(unlabeled.studies(0).series_instance_uid());
  v1::DeleteStudyResponse deleted;
  auto context = client_->Context();
  ASSERT_TRUE(client_->datasets->DeleteStudy(context.get(), request, &deleted).ok());
  EXPECT_EQ(deleted.deleted_instances(), unlabeled.studies(0).instances());
  EXPECT_EQ(list(v1::STUDY_ROLE_UNSPECIFIED).studies_size(), 2);
  context = client_->Context();
  EXPECT_EQ(client_->datasets->DeleteStudy(context.get(), request, &deleted).error_code(),
            grpc::StatusCode::NOT_FOUND);
  request.set_series_instance_uid("");
  context = client_->Context();
  EXPECT_EQ(client_->datasets->DeleteStudy(context.get(), request, &deleted).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  v1::ListStudiesRequest bad;
  bad.set_dataset("d");
  bad.set_role(static_cast<v1::StudyRole>(42));
  v1::ListStudiesResponse out;
  context = client_->Context();
  EXPECT_EQ(client_->datasets->ListStudies(context.get(), bad, &out).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ApiTest, TrainingJobStreamsMetricsAndYieldsAnActiveModel) {
  FillDataset("d", 3, 2);
  v1::StartJobRequest request;
  request.set_dataset("d");
  *request.mutable_hyperparameters() = TinyHyperparameters(8, 4);
  v1::Job job;
  auto context = client_->Context();
  ASSERT_TRUE(client_->training->StartJob(context.get(), request, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  // Unset fields take the method's defaults.
  EXPECT_DOUBLE_EQ(job.hyperparameters().w_mi(), 0.1);
  EXPECT_DOUBLE_EQ(job.hyperparameters().w_cons(), 5.0);
  EXPECT_EQ(job.hyperparameters().mi_window(), 1);
  EXPECT_EQ(job.hyperparameters().consistency(), v1::CONSISTENCY_LOSS_MSE);
  EXPECT_EQ(job.total_steps(), 8);

  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(client_->Watch(job.id(), &events).ok());
  std::vector<int64_t> steps;
  int validations = 0;
  for (const v1::JobEvent& e : events) {
    if (e.has_step()) {
      steps.push_back(e.step().step());
      EXPECT_GT(e.step().supervised(), 0);
      EXPECT_TRUE(std::isfinite(e.step().loss()));
      EXPECT_LE(e.step().mutual_information(), 0);
    }
    if (e.has_validation()) {
      ++validations;
      EXPECT_EQ(e.validation().dice_per_class_size(), 3);
    }
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_GE(validations, 2);
  ASSERT_TRUE(events.back().has_state());
  EXPECT_EQ(events.back().state().state(), v1::JOB_STATE_SUCCEEDED) << server_->log();
  for (size_t i = 1; i < events.size(); ++i) {
    EXPECT_GT(events[i].sequence(), events[i - 1].sequence());
  }

  // A late watcher replays the history; from_step skips what it has seen.
  std::vector<v1::JobEvent> replay;
  ASSERT_TRUE(client_->Watch(job.id(), &replay).ok());
  EXPECT_EQ(replay.size(), events.size());
  std::vector<v1::JobEvent> tail;
  ASSERT_TRUE(client_->Watch(job.id(), &tail, /*from_step=*/6).ok());
  for (const v1::JobEvent& e : tail) {
    if (e.has_step()) {
      EXPECT_GE(e.step().step(), 6);
    }
  }
  EXPECT_LT(tail.size(), events.size());
  // A reconnecting watcher skips what it saw by sequence.
  std::vector<v1::JobEvent> after;
  ASSERT_TRUE(client_->Watch(job.id(), &after, 0, 60, events[3].sequence()).ok());
  ASSERT_EQ(after.size(), events.size() - 4);
  EXPECT_EQ(after.front().sequence(), events[4].sequence());
  EXPECT_EQ(client_->Watch(job.id(), &after, -1).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::GetJobRequest get;
  get.set_id(job.id());
  context = client_->Context();
  ASSERT_TRUE(client_->training->GetJob(context.get(), get, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.step(), 8);
  EXPECT_GT(job.model_id(), 0);
  EXPECT_EQ(job.labeled_studies() + job.validation_studies(), 3);
  EXPECT_GE(job.validation_studies(), 1);
  EXPECT_EQ(job.unlabeled_studies(), 2);

  v1::ListJobsRequest list_jobs;
  list_jobs.set_dataset("d");
  v1::ListJobsResponse jobs;
  context = client_->Context();
  ASSERT_TRUE(client_->training->ListJobs(context.get(), list_jobs, &jobs).ok());
  ASSERT_EQ(jobs.jobs_size(), 1);

  v1::ListModelsRequest list_models;
  list_models.set_dataset("d");
  v1::ListModelsResponse models;
  context = client_->Context();
  ASSERT_TRUE(client_->models->ListModels(context.get(), list_models, &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  const v1::Model& model = models.models(0);
  EXPECT_EQ(model.id(), job.model_id());
  EXPECT_EQ(model.version(), 1);
  EXPECT_TRUE(model.active());  // the first model of a dataset becomes active
  EXPECT_EQ(model.validation_dice_per_class_size(), 3);
  EXPECT_EQ(model.class_names_size(), 4);
  EXPECT_GT(model.size_bytes(), 0);

  // A second model, promoted.
  const int64_t second_job = TrainToEnd("d", TinyHyperparameters(2, 2));
  get.set_id(second_job);
  context = client_->Context();
  ASSERT_TRUE(client_->training->GetJob(context.get(), get, &job).ok());
  v1::GetModelRequest get_model;
  get_model.set_id(job.model_id());
  v1::Model second;
  context = client_->Context();
  ASSERT_TRUE(client_->models->GetModel(context.get(), get_model, &second).ok());
  EXPECT_EQ(second.version(), 2);
  EXPECT_FALSE(second.active());
  v1::PromoteModelRequest promote;
  promote.set_id(second.id());
  context = client_->Context();
  ASSERT_TRUE(client_->models->PromoteModel(context.get(), promote, &second).ok());
  EXPECT_TRUE(second.active());
  v1::GetDatasetRequest get_dataset;
  get_dataset.set_name("d");
  v1::Dataset dataset;
  context = client_->Context();
  ASSERT_TRUE(client_->datasets->GetDataset(context.get(), get_dataset, &dataset).ok());
  EXPECT_EQ(dataset.active_model_id(), second.id());
}

TEST_F(ApiTest, TrainingErrorsHaveTheirCodes) {
  ASSERT_TRUE(client_->CreateDataset("empty").ok());
  v1::StartJobRequest request;
  request.set_dataset("empty");
  v1::Job job;
  auto context = client_->Context();
  EXPECT_EQ(client_->training->StartJob(context.get(), request, &job).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  request.set_dataset("missing");
  context = client_->Context();
  EXPECT_EQ(client_->training->StartJob(context.get(), request, &job).error_code(),
            grpc::StatusCode::NOT_FOUND);
  request.set_dataset("empty");
  request.mutable_hyperparameters()->set_learning_rate(-1);
  context = client_->Context();
  grpc::Status bad = client_->training->StartJob(context.get(), request, &job);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad.error_message(), HasSubstr("learning_rate"));
  request.mutable_hyperparameters()->clear_learning_rate();
  request.mutable_hyperparameters()->set_validation_fraction(1.5);
  context = client_->Context();
  EXPECT_EQ(client_->training->StartJob(context.get(), request, &job).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  v1::GetJobRequest get;
  get.set_id(12345);
  context = client_->Context();
  EXPECT_EQ(client_->training->GetJob(context.get(), get, &job).error_code(),
            grpc::StatusCode::NOT_FOUND);
  v1::CancelJobRequest cancel;
  cancel.set_id(12345);
  context = client_->Context();
  EXPECT_EQ(client_->training->CancelJob(context.get(), cancel, &job).error_code(),
            grpc::StatusCode::NOT_FOUND);
  std::vector<v1::JobEvent> events;
  EXPECT_EQ(client_->Watch(12345, &events).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::ListJobsRequest list;
  list.set_dataset("missing");
  v1::ListJobsResponse jobs;
  context = client_->Context();
  EXPECT_EQ(client_->training->ListJobs(context.get(), list, &jobs).error_code(),
            grpc::StatusCode::NOT_FOUND);

  v1::GetModelRequest get_model;
  get_model.set_id(777);
  v1::Model model;
  context = client_->Context();
  EXPECT_EQ(client_->models->GetModel(context.get(), get_model, &model).error_code(),
            grpc::StatusCode::NOT_FOUND);
  v1::PromoteModelRequest promote;
  promote.set_id(777);
  context = client_->Context();
  EXPECT_EQ(client_->models->PromoteModel(context.get(), promote, &model).error_code(),
            grpc::StatusCode::NOT_FOUND);
  v1::ListModelsRequest list_models;
  list_models.set_dataset("missing");
  v1::ListModelsResponse models;
  context = client_->Context();
  EXPECT_EQ(client_->models->ListModels(context.get(), list_models, &models).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ApiTest, CancelStopsARunningJobWithinAStepAndAFinishedJobRefuses) {
  FillDataset("d", 2, 0);
  v1::StartJobRequest request;
  request.set_dataset("d");
  *request.mutable_hyperparameters() = TinyHyperparameters(100000, 1000);
  v1::Job job;
  auto context = client_->Context();
  ASSERT_TRUE(client_->training->StartJob(context.get(), request, &job).ok());

  // Follow the job until its first step, then cancel from another client.
  auto watch_context = client_->Context();
  v1::WatchJobRequest watch;
  watch.set_id(job.id());
  auto reader = client_->training->WatchJob(watch_context.get(), watch);
  v1::JobEvent event;
  bool stepped = false;
  while (!stepped && reader->Read(&event)) stepped = event.has_step();
  ASSERT_TRUE(stepped);
  // A snapshot of a running job ends after the stored events, without a terminal state.
  std::vector<v1::JobEvent> snapshot;
  ASSERT_TRUE(client_->Watch(job.id(), &snapshot, 0, 60, 0, /*no_follow=*/true).ok());
  ASSERT_FALSE(snapshot.empty());
  EXPECT_FALSE(snapshot.back().has_state() &&
               snapshot.back().state().state() == v1::JOB_STATE_CANCELLED);
  v1::CancelJobRequest cancel;
  cancel.set_id(job.id());
  context = client_->Context();
  ASSERT_TRUE(client_->training->CancelJob(context.get(), cancel, &job).ok());
  v1::JobEvent last;
  while (reader->Read(&event)) last = event;
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(last.state().state(), v1::JOB_STATE_CANCELLED);

  v1::GetJobRequest get;
  get.set_id(job.id());
  context = client_->Context();
  ASSERT_TRUE(client_->training->GetJob(context.get(), get, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_LT(job.step(), 100);
  context = client_->Context();
  EXPECT_EQ(client_->training->CancelJob(context.get(), cancel, &job).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ApiTest, SegmentationReturnsADicomSegAndASummary) {
  FillDataset("d", 2, 0);
  PhantomStudy target = Study(5, false);
  v1::SegmentHeader header;
  header.set_dataset("d");
  std::string seg;
  v1::SegmentSummary summary;
  // No model yet.
  EXPECT_EQ(client_->Segment(header, target.image_files, &seg, &summary).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  TrainToEnd("d", TinyHyperparameters(2, 2));
  grpc::Status status = client_->Segment(header, target.image_files, &seg, &summary);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(static_cast<int64_t>(seg.size()), summary.segmentation_bytes());
  EXPECT_EQ(seg.substr(128, 4), "DICM");
  EXPECT_EQ(summary.source_series_instance_uid(), target.series.series_instance_uid);
  EXPECT_EQ(summary.model_version(), 1);
  ASSERT_EQ(summary.classes_size(), 3);
  int64_t voxels = 0;
  for (const v1::ClassVolume& c : summary.classes()) {
    EXPECT_GE(c.volume_ml(), 0);
    voxels += c.voxels();
  }
  const VolumeGeometry& g = target.series.image.geometry;
  EXPECT_LE(voxels, g.voxel_count());
  EXPECT_FALSE(summary.segmentation_sop_instance_uid().empty());

  // The SEG passes dciodvfy.
  const std::string path = dir_.path() + "/result.dcm";
  {
    FILE* f = fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    fwrite(seg.data(), 1, seg.size(), f);
    fclose(f);
  }
  auto [rc, output] = RunCommand("dciodvfy -new " + path);
  EXPECT_EQ(output.find("Error"), std::string::npos) << output;

  // A stored study, by its series UID.
  v1::ListStudiesRequest list;
  list.set_dataset("d");
  v1::ListStudiesResponse studies;
  auto context = client_->Context();
  ASSERT_TRUE(client_->datasets->ListStudies(context.get(), list, &studies).ok());
  header.set_stored_series_instance_uid(studies.studies(0).series_instance_uid());
  status = client_->Segment(header, {}, &seg, &summary);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(summary.source_series_instance_uid(), studies.studies(0).series_instance_uid());

  // Errors.
  EXPECT_EQ(client_->Segment(header, target.image_files, &seg, &summary).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);  // both files and a stored series
  header.set_stored_series_instance_uid("1.2.3.4");
  EXPECT_EQ(client_->Segment(header, {}, &seg, &summary).error_code(),
            grpc::StatusCode::NOT_FOUND);
  header.clear_stored_series_instance_uid();
  EXPECT_EQ(client_->Segment(header, {}, &seg, &summary).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);  // nothing to segment
  EXPECT_EQ(client_->Segment(header, {{"x", "not dicom"}}, &seg, &summary).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  header.set_model_id(999);
  EXPECT_EQ(client_->Segment(header, target.image_files, &seg, &summary).error_code(),
            grpc::StatusCode::NOT_FOUND);
  header.set_model_id(0);
  header.set_dataset("missing");
  EXPECT_EQ(client_->Segment(header, target.image_files, &seg, &summary).error_code(),
            grpc::StatusCode::NOT_FOUND);
  header.set_dataset("");
  EXPECT_EQ(client_->Segment(header, target.image_files, &seg, &summary).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

// The engine's admission control (RESOURCE_EXHAUSTED beyond its running and queued slots)
// and its deadlines are tested in-process with a held worker, in
// segmentation_engine_test.cc; the limit on concurrent streams in stream_limits_test.cc.

TEST_F(ApiTest, HealthAndReflectionAreServed) {
  // grpc.health.v1.Health/Check with an empty service name: SERVING is field 1 = 1.
  grpc::GenericStub generic(client_->channel);
  grpc::ClientContext context;
  grpc::Slice empty_message("");  // an empty HealthCheckRequest
  grpc::ByteBuffer request(&empty_message, 1), response;
  grpc::Status status;
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) {
                      std::lock_guard<std::mutex> lock(mutex);
                      status = s;
                      done = true;
                      done_cv.notify_all();
                    });
  {
    std::unique_lock<std::mutex> lock(mutex);
    done_cv.wait(lock, [&] { return done; });
  }
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));

  // grpc.reflection.v1alpha: list_services (field 7) names our services.
  grpc::ClientContext reflection_context;
  grpc::CompletionQueue cq;
  auto call = generic.PrepareCall(&reflection_context,
                                  "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                  &cq);
  void* tag;
  bool ok;
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  const std::string list_services("\x3a\x00", 2);
  grpc::Slice slice(list_services);
  grpc::ByteBuffer list_request(&slice, 1);
  call->Write(list_request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  grpc::ByteBuffer reply;
  call->Read(&reply, reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  call->WritesDone(reinterpret_cast<void*>(4));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  grpc::Status finish;
  call->Finish(&finish, reinterpret_cast<void*>(5));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  slices.clear();
  ASSERT_TRUE(reply.Dump(&slices).ok());
  bytes.clear();
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  for (const char* service : {"miseg.v1.DatasetService", "miseg.v1.TrainingService",
                              "miseg.v1.ModelService", "miseg.v1.SegmentationService",
                              "grpc.health.v1.Health"}) {
    EXPECT_THAT(bytes, HasSubstr(service));
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

TEST_F(ApiTest, MetricsPassPromtoolAndCountWhatHappened) {
  FillDataset("d", 2, 1);
  TrainToEnd("d", TinyHyperparameters(4, 2));
  v1::SegmentHeader header;
  header.set_dataset("d");
  std::string seg;
  v1::SegmentSummary summary;
  ASSERT_TRUE(client_->Segment(header, Study(7, false).image_files, &seg, &summary).ok());
  v1::GetDatasetRequest get;
  get.set_name("missing");
  v1::Dataset out;
  auto context = client_->Context();
  (void)client_->datasets->GetDataset(context.get(), get, &out);

  const std::string metrics = ScrapeMetrics(server_->metrics_port());
  ASSERT_FALSE(metrics.empty());
  const std::string path = dir_.path() + "/metrics.txt";
  {
    FILE* f = fopen(path.c_str(), "wb");
    fwrite(metrics.data(), 1, metrics.size(), f);
    fclose(f);
  }
  auto [rc, output] = RunCommand("promtool check metrics < " + path);
  EXPECT_EQ(rc, 0) << output;
  EXPECT_EQ(output, "") << output;

  EXPECT_EQ(MetricValue(metrics, "miseg_grpc_requests_total{code=\"OK\",method=\"CreateDataset\"}"), 1);
  EXPECT_EQ(MetricValue(metrics, "miseg_grpc_requests_total{code=\"NOT_FOUND\",method=\"GetDataset\"}"), 1);
  EXPECT_EQ(MetricValue(metrics, "miseg_grpc_request_duration_seconds_count{method=\"Upload\"}"), 3);
  EXPECT_GT(MetricValue(metrics, "miseg_upload_received_bytes_total"), 0);
  EXPECT_GT(MetricValue(metrics, "miseg_upload_instances_total{outcome=\"stored\"}"), 0);
  EXPECT_EQ(MetricValue(metrics, "miseg_jobs{state=\"succeeded\"}"), 1);
  EXPECT_EQ(MetricValue(metrics, "miseg_jobs{state=\"running\"}"), 0);
  EXPECT_EQ(MetricValue(metrics, "miseg_training_step_duration_seconds_count"), 4);
  EXPECT_EQ(MetricValue(metrics, "miseg_training_step"), 4);
  EXPECT_GT(MetricValue(metrics, "miseg_training_loss{term=\"supervised\"}"), 0);
  EXPECT_GE(MetricValue(metrics, "miseg_training_validation_dice_ratio{class_index=\"3\"}"), 0);
  EXPECT_EQ(MetricValue(metrics, "miseg_inference_duration_seconds_count"), 1);
  EXPECT_EQ(MetricValue(metrics, "miseg_model_load_duration_seconds_count"), 1);
  EXPECT_EQ(MetricValue(metrics, "miseg_inference_queue_depth"), 0);
  EXPECT_EQ(MetricValue(metrics, "miseg_build_info{version=\"0.1.0\"}"), 1);
}

// The standard process metrics describe the server process as it is at the scrape.
TEST_F(ApiTest, ProcessMetricsDescribeTheRunningServer) {
  auto unix_seconds = [] {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  const double before_start = unix_seconds();
  StartServer({});  // a server started within this test
  const double after_start = unix_seconds();
  FillDataset("d", 0, 1);  // some work: CPU time, a few connections

  const std::string metrics = ScrapeMetrics(server_->metrics_port());
  ASSERT_FALSE(metrics.empty());
  const double rss = MetricValue(metrics, "process_resident_memory_bytes");
  const double vsize = MetricValue(metrics, "process_virtual_memory_bytes");
  EXPECT_GT(rss, 1 << 20) << metrics;
  EXPECT_GE(vsize, rss);
  // gRPC, the job worker, the metrics endpoint and the signal thread each have threads.
  EXPECT_GT(MetricValue(metrics, "process_threads"), 1);
  EXPECT_LT(MetricValue(metrics, "process_threads"), 1000);
  const double open_fds = MetricValue(metrics, "process_open_fds");
  EXPECT_GE(open_fds, 3);  // at least stdio; the listening sockets and the database too
  EXPECT_GE(MetricValue(metrics, "process_max_fds"), open_fds);
  EXPECT_GT(MetricValue(metrics, "process_cpu_seconds_total"), 0);
  // /proc gives the start time in clock ticks after a boot time in whole seconds.
  const double start_time = MetricValue(metrics, "process_start_time_seconds");
  EXPECT_GE(start_time, before_start - 1.0) << std::fixed << start_time;
  EXPECT_LE(start_time, after_start + 0.1) << std::fixed << start_time;
  // Present (-1 when missing); the count itself is followed in stream_limits_test.cc (a
  // stream leaves the gauge in OnDone, just after its client has the status).
  EXPECT_GE(MetricValue(metrics, "miseg_grpc_active_streams{method=\"Upload\"}"), 0);

  // Read again at the next scrape: CPU time never goes back, the start time stays.
  FillDataset("more", 0, 1);
  const std::string later = ScrapeMetrics(server_->metrics_port());
  EXPECT_GE(MetricValue(later, "process_cpu_seconds_total"),
            MetricValue(metrics, "process_cpu_seconds_total"));
  EXPECT_EQ(MetricValue(later, "process_start_time_seconds"), start_time);
}

}  // namespace
}  // namespace miseg::testing

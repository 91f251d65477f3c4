// The job runner in process, against a real SQLite store and a real file store in a
// temporary directory holding a tiny phantom dataset: a job runs to SUCCEEDED with one event
// per step and a model; a cancel stops a running job at the step it was cancelled at;
// RequestStop checkpoints and requeues, and a new runner on the same store (the next server
// start) resumes to exactly the uninterrupted result; two jobs on two device workers at once
// give, loss for loss, what they give one after the other (where the BLAS is thread safe).
// Jobs are held at known steps by the runner's step hook and followed through the event hub:
// no sleeps, and nothing depends on the machine's speed (the timeouts only bound a failure).
#include "server/jobs/job_runner.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "core/phantom/phantom.h"
#include "core/train/blas.h"
#include "core/train/inference.h"
#include "server/edge/convert.h"
#include "server/jobs/event_hub.h"
#include "server/domain/ingest.h"
#include "server/metrics/metrics.h"
#include "server/store/file_store.h"
#include "server/store/store.h"
#include "tests/server/api_client.h"
#include "tests/server/child_process.h"
#include "tests/server/store_test_util.h"
#include "tests/server/test_studies.h"

namespace miseg {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Bounds a failure (a job that never gets there), never a wait for something to happen.
constexpr absl::Duration kPatience = absl::Minutes(5);

v1::Hyperparameters Tiny(int64_t total_steps, int64_t checkpoint_every, uint64_t seed) {
  v1::Hyperparameters h = testing::TinyHyperparameters(total_steps, checkpoint_every);
  h.set_seed(seed);
  h.set_validate_every(total_steps);  // once, at the end
  return h;
}

// Follows one job's events through the hub and records the states it reached.
class JobFollower : public EventSubscriber {
 public:
  JobFollower(EventHub* hub, int64_t job_id) : hub_(hub), job_id_(job_id) {
    EXPECT_TRUE(hub_->Subscribe(job_id_, this));
  }
  ~JobFollower() override { hub_->Unsubscribe(job_id_, this); }

  void OnJobEvent(int64_t /*step*/, const v1::JobEvent& event) override {
    if (!event.has_state()) return;
    absl::MutexLock lock(&mutex_);
    states_.push_back(event.state().state());
  }
  void OnHubClosed() override {}

  // Whether the job published `state` (false after kPatience).
  bool WaitFor(v1::JobState state) {
    absl::MutexLock lock(&mutex_);
    const auto reached = [this, state]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return std::find(states_.begin(), states_.end(), state) != states_.end();
    };
    return mutex_.AwaitWithTimeout(absl::Condition(&reached), kPatience);
  }

 private:
  EventHub* const hub_;
  const int64_t job_id_;
  absl::Mutex mutex_;
  std::vector<v1::JobState> states_ ABSL_GUARDED_BY(mutex_);
};

// Holds one job at one step, in the runner's step hook, until the test releases it. The
// step's event is stored by then, and the next step has not started. Release it before the
// runner is destroyed (an absl::Cleanup declared after the runner), or Shutdown would wait
// for a worker that waits for the gate.
class StepGate {
 public:
  StepGate(int64_t job_id, int64_t step) : job_id_(job_id), step_(step) {}

  std::function<void(int64_t, int64_t)> Hook() {
    return [this](int64_t job_id, int64_t step) {
      if (job_id != job_id_ || step != step_) return;
      reached_.Notify();
      release_.WaitForNotification();
    };
  }
  bool WaitUntilReached() { return reached_.WaitForNotificationWithTimeout(kPatience); }
  void Release() {
    if (!release_.HasBeenNotified()) release_.Notify();
  }

 private:
  const int64_t job_id_;
  const int64_t step_;
  absl::Notification reached_, release_;
};

struct History {
  std::vector<v1::JobEvent> events;  // in order, sequence filled in
  std::vector<v1::StepEvent> steps;
  std::vector<v1::ValidationEvent> validations;
  std::vector<v1::StateEvent> states;

  std::vector<int64_t> StepNumbers() const {
    std::vector<int64_t> numbers;
    for (const v1::StepEvent& s : steps) numbers.push_back(s.step());
    return numbers;
  }
  std::vector<v1::JobState> StateSequence() const {
    std::vector<v1::JobState> sequence;
    for (const v1::StateEvent& s : states) sequence.push_back(s.state());
    return sequence;
  }
};

class JobRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(dir_.path() + "/miseg.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto files = FileStore::Open(dir_.path() + "/files");
    ASSERT_TRUE(files.ok()) << files.status();
    files_.emplace(*std::move(files));
    DatasetRecord dataset;
    dataset.name = "phantoms";
    dataset.class_names = PhantomClassNames();
    dataset.modality = "MR";
    auto created = store_->CreateDataset(dataset);
    ASSERT_TRUE(created.ok()) << created.status();
    dataset_ = *created;
    // Two labeled studies (one is held out for validation) and one unlabeled.
    Ingest(StoredRole::kLabeled, 0);
    Ingest(StoredRole::kLabeled, 1);
    Ingest(StoredRole::kUnlabeled, 2);
  }

  void Ingest(StoredRole role, int index) {
    const bool labeled = role != StoredRole::kUnlabeled;
    auto study = testing::SmallPhantomStudy(/*population_seed=*/23, index, labeled);
    ASSERT_TRUE(study.ok()) << study.status();
    std::vector<DicomBuffer> input = study->image_files;
    if (labeled) input.push_back(*study->segmentation);
    auto result = IngestFiles(*store_, *files_, dataset_, role, input);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->stored.size(), 1u);
  }

  // What StartJob does below the gRPC edge (its "queued" event aside).
  int64_t Queue(const v1::Hyperparameters& h) {
    auto resolved =
        ResolveHyperparameters(h, static_cast<int64_t>(dataset_.class_names.size()));
    EXPECT_TRUE(resolved.ok()) << resolved.status();
    if (!resolved.ok()) return 0;
    JobRecord job;
    job.dataset_id = dataset_.id;
    job.state = StoredJobState::kQueued;
    job.hyperparameters = resolved->SerializeAsString();
    job.total_steps = resolved->total_steps();
    auto created = store_->CreateJob(job);
    EXPECT_TRUE(created.ok()) << created.status();
    return created.ok() ? created->id : 0;
  }

  // One intra-op thread: the same arithmetic whether a job runs alone or beside another.
  std::unique_ptr<JobRunner> MakeRunner(std::vector<std::string> devices,
                                        std::function<void(int64_t, int64_t)> hook = {},
                                        bool verify_replicas = false) {
    JobRunnerOptions options;
    options.devices = std::move(devices);
    options.verify_replicas = verify_replicas;
    options.work_dir = work_dir();
    options.training_threads = 1;
    options.after_step_event = std::move(hook);
    return std::make_unique<JobRunner>(store_.get(), &*files_, &metrics_, &hub_, options);
  }

  History ReadHistory(int64_t job_id) {
    History history;
    auto records = store_->ListJobEvents(job_id, /*after_sequence=*/0, /*from_step=*/0,
                                         /*limit=*/100000);
    EXPECT_TRUE(records.ok()) << records.status();
    if (!records.ok()) return history;
    for (const JobEventRecord& record : *records) {
      v1::JobEvent event;
      EXPECT_TRUE(event.ParseFromString(record.payload));
      event.set_sequence(record.sequence);
      if (event.has_step()) history.steps.push_back(event.step());
      if (event.has_validation()) history.validations.push_back(event.validation());
      if (event.has_state()) history.states.push_back(event.state());
      history.events.push_back(std::move(event));
    }
    return history;
  }

  JobRecord GetJob(int64_t id) {
    auto job = store_->GetJob(id);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : JobRecord{};
  }

  std::string work_dir() const { return dir_.path() + "/work"; }
  // Where the job's checkpoint of `step` is: job-<id>-step-<step>-<sha256>.ckpt.
  std::string checkpoint_prefix(int64_t job_id, int64_t step) const {
    return absl::StrCat(work_dir(), "/checkpoints/job-", job_id, "-step-", step, "-");
  }
  // The job's checkpoint files.
  std::vector<std::string> checkpoint_files(int64_t job_id) const {
    std::vector<std::string> found;
    std::error_code ec;
    for (std::filesystem::directory_iterator it(work_dir() + "/checkpoints", ec), end;
         !ec && it != end; it.increment(ec)) {
      if (absl::StartsWith(it->path().filename().string(), absl::StrCat("job-", job_id, "-"))) {
        found.push_back(it->path().string());
      }
    }
    return found;
  }

  testing::TempDir dir_;
  std::unique_ptr<Store> store_;
  std::optional<FileStore> files_;
  ServerMetrics metrics_{"test"};
  EventHub hub_;
  DatasetRecord dataset_;
};

void ExpectSameTraining(const History& a, const History& b) {
  ASSERT_EQ(a.steps.size(), b.steps.size());
  for (size_t i = 0; i < a.steps.size(); ++i) {
    EXPECT_EQ(a.steps[i].step(), b.steps[i].step());
    EXPECT_EQ(a.steps[i].loss(), b.steps[i].loss()) << "step " << i + 1;
    EXPECT_EQ(a.steps[i].supervised(), b.steps[i].supervised()) << "step " << i + 1;
    EXPECT_EQ(a.steps[i].consistency(), b.steps[i].consistency()) << "step " << i + 1;
    EXPECT_EQ(a.steps[i].mutual_information(), b.steps[i].mutual_information())
        << "step " << i + 1;
  }
  ASSERT_EQ(a.validations.size(), b.validations.size());
  for (size_t i = 0; i < a.validations.size(); ++i) {
    EXPECT_THAT(a.validations[i].dice_per_class(),
                ::testing::ElementsAreArray(b.validations[i].dice_per_class()));
  }
}

TEST_F(JobRunnerTest, RunsAJobToSucceededWithOneEventPerStepAndAModel) {
  const int64_t id = Queue(Tiny(/*total_steps=*/4, /*checkpoint_every=*/2, /*seed=*/1));
  JobFollower follower(&hub_, id);
  auto runner = MakeRunner({"cpu"});
  ASSERT_TRUE(runner->Start().ok());
  ASSERT_TRUE(follower.WaitFor(v1::JOB_STATE_SUCCEEDED));
  runner->Shutdown();

  const JobRecord job = GetJob(id);
  EXPECT_EQ(job.state, StoredJobState::kSucceeded);
  EXPECT_EQ(job.step, 4);
  EXPECT_EQ(job.device, "local/cpu");  // worker/device of each rank
  EXPECT_EQ(job.labeled_studies, 1);
  EXPECT_EQ(job.validation_studies, 1);  // held out of the two labeled ones
  EXPECT_EQ(job.unlabeled_studies, 1);

  const History history = ReadHistory(id);
  EXPECT_THAT(history.StepNumbers(), ElementsAre(1, 2, 3, 4));
  for (size_t i = 0; i < history.events.size(); ++i) {
    EXPECT_EQ(history.events[i].sequence(), static_cast<int64_t>(i) + 1);
    EXPECT_EQ(history.events[i].job_id(), id);
  }
  EXPECT_THAT(history.StateSequence(),
              ElementsAre(v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED));
  EXPECT_THAT(history.states.front().message(), HasSubstr("started on local/cpu"));
  ASSERT_EQ(history.validations.size(), 1u);
  EXPECT_EQ(history.validations[0].step(), 4);
  EXPECT_TRUE(history.events.back().has_state());  // nothing after the final state

  ASSERT_NE(job.model_id, 0);
  auto model = store_->GetModel(job.model_id);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->job_id, id);
  EXPECT_EQ(model->steps, 4);
  EXPECT_EQ(model->dice_per_class.size(), 3u);
  EXPECT_TRUE(model->active);  // the dataset's first model
  EXPECT_TRUE(std::filesystem::exists(model->path));
  EXPECT_GT(model->size_bytes, 0);
  EXPECT_THAT(checkpoint_files(id), ::testing::IsEmpty());  // the model supersedes them
}

TEST_F(JobRunnerTest, CancelStopsARunningJobAtTheStepItWasCancelledAt) {
  const int64_t id = Queue(Tiny(/*total_steps=*/50, /*checkpoint_every=*/100, /*seed=*/1));
  StepGate gate(id, /*step=*/2);
  JobFollower follower(&hub_, id);
  auto runner = MakeRunner({"cpu"}, gate.Hook());
  const absl::Cleanup release = [&gate] { gate.Release(); };  // before the runner joins
  ASSERT_TRUE(runner->Start().ok());
  ASSERT_TRUE(gate.WaitUntilReached());
  // What CancelJob does for a running job.
  auto requested = store_->RequestCancel(id);
  ASSERT_TRUE(requested.ok()) << requested.status();
  EXPECT_EQ(requested->state, StoredJobState::kRunning);
  runner->CancelRunning(id);
  gate.Release();
  ASSERT_TRUE(follower.WaitFor(v1::JOB_STATE_CANCELLED));
  runner->Shutdown();

  const JobRecord job = GetJob(id);
  EXPECT_EQ(job.state, StoredJobState::kCancelled);
  EXPECT_EQ(job.model_id, 0);
  const History history = ReadHistory(id);
  EXPECT_THAT(history.StepNumbers(), ElementsAre(1, 2));
  EXPECT_THAT(history.StateSequence(),
              ElementsAre(v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLED));
  auto models = store_->ListModels(dataset_.id);
  ASSERT_TRUE(models.ok());
  EXPECT_TRUE(models->empty());
}

// RequestStop (SIGTERM) at step 3: the job checkpoints at step 3 and goes back to the queue.
// The next server start then finds it running (a server that claimed it again and was
// killed before its first checkpoint), requeues it and resumes it from step 3: the history
// holds each step once, and every loss equals that of the same job never interrupted.
TEST_F(JobRunnerTest, StopCheckpointsAndRequeuesAndTheNextStartResumesExactly) {
  const v1::Hyperparameters h = Tiny(/*total_steps=*/6, /*checkpoint_every=*/4, /*seed=*/3);
  const int64_t interrupted = Queue(h);
  {
    StepGate gate(interrupted, /*step=*/3);
    JobFollower follower(&hub_, interrupted);
    auto runner = MakeRunner({"cpu"}, gate.Hook());
    const absl::Cleanup release = [&gate] { gate.Release(); };  // before the runner joins
    ASSERT_TRUE(runner->Start().ok());
    ASSERT_TRUE(gate.WaitUntilReached());
    runner->RequestStop();
    gate.Release();
    runner->Shutdown();
    EXPECT_TRUE(follower.WaitFor(v1::JOB_STATE_QUEUED));  // published before the worker exited
  }
  JobRecord job = GetJob(interrupted);
  EXPECT_EQ(job.state, StoredJobState::kQueued);
  EXPECT_EQ(job.step, 3);  // checkpointed where it stopped, not at checkpoint_every
  EXPECT_THAT(job.checkpoint_path, ::testing::StartsWith(checkpoint_prefix(interrupted, 3)));
  EXPECT_TRUE(std::filesystem::exists(job.checkpoint_path));
  History history = ReadHistory(interrupted);
  EXPECT_THAT(history.StepNumbers(), ElementsAre(1, 2, 3));
  ASSERT_FALSE(history.states.empty());
  EXPECT_EQ(history.states.back().state(), v1::JOB_STATE_QUEUED);
  EXPECT_THAT(history.states.back().message(), HasSubstr("resumes from step 3"));

  // The crash: claimed (running) with its checkpoint at step 3, then nothing.
  auto claimed = ClaimNext(*store_, "cpu");
  ASSERT_TRUE(claimed.ok() && claimed->has_value());
  ASSERT_EQ((*claimed)->id, interrupted);

  const int64_t uninterrupted = Queue(h);
  {
    JobFollower follow_interrupted(&hub_, interrupted);
    JobFollower follow_uninterrupted(&hub_, uninterrupted);
    auto runner = MakeRunner({"cpu"});
    ASSERT_TRUE(runner->Start().ok());
    ASSERT_TRUE(follow_interrupted.WaitFor(v1::JOB_STATE_SUCCEEDED));
    ASSERT_TRUE(follow_uninterrupted.WaitFor(v1::JOB_STATE_SUCCEEDED));
    runner->Shutdown();
  }
  job = GetJob(interrupted);
  EXPECT_EQ(job.state, StoredJobState::kSucceeded);
  EXPECT_EQ(job.resumes, 2);  // requeued by RequestStop, then by the restart
  history = ReadHistory(interrupted);
  EXPECT_THAT(history.StepNumbers(), ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_THAT(history.StateSequence(),
              ElementsAre(v1::JOB_STATE_RUNNING, v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING,
                          v1::JOB_STATE_SUCCEEDED));
  EXPECT_THAT(history.states[2].message(), HasSubstr("resumed from step 3 on local/cpu"));
  for (size_t i = 1; i < history.events.size(); ++i) {
    EXPECT_GT(history.events[i].sequence(), history.events[i - 1].sequence());
  }
  ExpectSameTraining(history, ReadHistory(uninterrupted));
}

// Two jobs on two device workers at once give, loss for loss, what the same two jobs give
// one after the other on one worker: each job's random draws come from generators it owns.
// Each job of the parallel pair waits at step 1 for the other, so both are in flight at once.
// Skipped where the BLAS is not thread safe: there two jobs at once corrupt each other's
// arithmetic (5 runs in 30 differed with Debian's serial OpenBLAS; core/train/blas.h).
TEST_F(JobRunnerTest, TwoJobsOnTwoWorkersAtOnceEqualTheSameJobsOneAfterTheOther) {
  if (const BlasInfo blas = DescribeBlas(); !BlasSafeForThreads(blas)) {
    GTEST_SKIP() << "the BLAS is not thread safe (" << blas.config
                 << "): jobs running at once corrupt each other's results whatever their "
                    "random generators; see core/train/blas.h";
  }
  const v1::Hyperparameters first = Tiny(/*total_steps=*/6, /*checkpoint_every=*/100, /*seed=*/1);
  v1::Hyperparameters second = Tiny(/*total_steps=*/6, /*checkpoint_every=*/100, /*seed=*/2);
  second.set_w_mi(0.5);

  const int64_t first_alone = Queue(first);
  const int64_t second_alone = Queue(second);
  {
    JobFollower a(&hub_, first_alone), b(&hub_, second_alone);
    auto runner = MakeRunner({"cpu"});
    ASSERT_TRUE(runner->Start().ok());
    ASSERT_TRUE(a.WaitFor(v1::JOB_STATE_SUCCEEDED));
    ASSERT_TRUE(b.WaitFor(v1::JOB_STATE_SUCCEEDED));
    runner->Shutdown();
  }

  const int64_t first_together = Queue(first);
  const int64_t second_together = Queue(second);
  absl::Mutex mutex;
  std::set<int64_t> at_step_one;  // guarded by mutex
  bool met = true;                // guarded by mutex
  const auto rendezvous = [&](int64_t job_id, int64_t step) {
    if (step != 1) return;
    absl::MutexLock lock(&mutex);
    at_step_one.insert(job_id);
    const auto both = [&] { return at_step_one.size() == 2; };
    if (!mutex.AwaitWithTimeout(absl::Condition(&both), kPatience)) met = false;
  };
  {
    JobFollower a(&hub_, first_together), b(&hub_, second_together);
    auto runner = MakeRunner({"cpu", "cpu"}, rendezvous);
    ASSERT_TRUE(runner->Start().ok());
    ASSERT_TRUE(a.WaitFor(v1::JOB_STATE_SUCCEEDED));
    ASSERT_TRUE(b.WaitFor(v1::JOB_STATE_SUCCEEDED));
    runner->Shutdown();
  }
  {
    absl::MutexLock lock(&mutex);
    EXPECT_TRUE(met) << "the two jobs never ran at the same time";
  }

  const History first_history = ReadHistory(first_alone);
  const History second_history = ReadHistory(second_alone);
  EXPECT_THAT(first_history.StepNumbers(), ElementsAre(1, 2, 3, 4, 5, 6));
  ExpectSameTraining(first_history, ReadHistory(first_together));
  ExpectSameTraining(second_history, ReadHistory(second_together));
  ASSERT_FALSE(first_history.steps.empty());
  ASSERT_FALSE(second_history.steps.empty());
  EXPECT_NE(first_history.steps[0].loss(), second_history.steps[0].loss());  // two runs

  // The same final weights: the same segmentation of an unseen subject.
  const PhantomSubject unseen =
      GeneratePhantomSubject(/*population_seed=*/23, /*index=*/9, SmallPhantomOptions());
  for (const auto& [alone, together] :
       {std::pair{first_alone, first_together}, std::pair{second_alone, second_together}}) {
    auto a = store_->GetModel(GetJob(alone).model_id);
    auto b = store_->GetModel(GetJob(together).model_id);
    ASSERT_TRUE(a.ok() && b.ok());
    auto segmenter_a = Segmenter::Load(a->path);
    auto segmenter_b = Segmenter::Load(b->path);
    ASSERT_TRUE(segmenter_a.ok() && segmenter_b.ok());
    auto labels_a = (*segmenter_a)->Segment(unseen.image);
    auto labels_b = (*segmenter_b)->Segment(unseen.image);
    ASSERT_TRUE(labels_a.ok() && labels_b.ok());
    EXPECT_TRUE(labels_a->voxels == labels_b->voxels)
        << "models of jobs " << alone << " and " << together;
  }
}


// The rival objectives run as jobs like the method: mean teacher reports its consistency,
// entropy minimisation its entropy, and both yield a model.
TEST_F(JobRunnerTest, RivalObjectivesRunAsJobs) {
  v1::Hyperparameters teacher = Tiny(/*total_steps=*/3, /*checkpoint_every=*/2, /*seed=*/4);
  teacher.set_objective(v1::OBJECTIVE_MEAN_TEACHER);
  teacher.set_rampup_steps(0);
  v1::Hyperparameters entropy = teacher;
  entropy.set_objective(v1::OBJECTIVE_ENTROPY);
  const int64_t a = Queue(teacher), b = Queue(entropy);
  {
    JobFollower follow_a(&hub_, a), follow_b(&hub_, b);
    auto runner = MakeRunner({"cpu"});
    ASSERT_TRUE(runner->Start().ok());
    ASSERT_TRUE(follow_a.WaitFor(v1::JOB_STATE_SUCCEEDED)) << GetJob(a).error;
    ASSERT_TRUE(follow_b.WaitFor(v1::JOB_STATE_SUCCEEDED)) << GetJob(b).error;
    runner->Shutdown();
  }
  for (const v1::StepEvent& s : ReadHistory(a).steps) {
    EXPECT_GT(s.consistency(), 0);
    EXPECT_EQ(s.mutual_information(), 0);
  }
  for (const v1::StepEvent& s : ReadHistory(b).steps) {
    EXPECT_GT(s.entropy(), 0);
    EXPECT_EQ(s.consistency(), 0);
  }
}

// A data-parallel job on the server's two devices: the ranks compare a hash of their
// parameters after every step (verify_replicas: a mismatch fails the job), every step is
// stored once, by rank 0, and rank 0 commits the model.
TEST_F(JobRunnerTest, TwoRankJobKeepsReplicasIdenticalAndStoresEveryStepOnce) {
  v1::Hyperparameters h = Tiny(/*total_steps=*/6, /*checkpoint_every=*/3, /*seed=*/5);
  h.set_ranks(2);
  const int64_t id = Queue(h);
  JobFollower follower(&hub_, id);
  auto runner = MakeRunner({"cpu", "cpu"}, {}, /*verify_replicas=*/true);
  ASSERT_TRUE(runner->Start().ok());
  ASSERT_TRUE(follower.WaitFor(v1::JOB_STATE_SUCCEEDED)) << GetJob(id).error;
  runner->Shutdown();

  const JobRecord job = GetJob(id);
  EXPECT_EQ(job.state, StoredJobState::kSucceeded);
  EXPECT_EQ(job.device, "local/cpu,local/cpu");
  EXPECT_NE(job.model_id, 0);
  const History history = ReadHistory(id);
  EXPECT_THAT(history.StepNumbers(), ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_THAT(history.StateSequence(),
              ElementsAre(v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED));
  for (const v1::StepEvent& step : history.steps) {
    EXPECT_EQ(step.ranks(), 2);
    EXPECT_GT(step.allreduce_bytes(), 0);
    ASSERT_EQ(step.rank_compute_seconds_size(), 2);
    EXPECT_GT(step.rank_compute_seconds(0), 0);
    EXPECT_GT(step.rank_compute_seconds(1), 0);
  }
  ASSERT_EQ(history.validations.size(), 1u);
}

// Stopped mid-run (both ranks stop at the same step, rank 0 checkpoints), a two-rank job
// resumes to exactly the losses of the same job run without a break.
TEST_F(JobRunnerTest, TwoRankJobStoppedMidRunResumesExactly) {
  v1::Hyperparameters h = Tiny(/*total_steps=*/6, /*checkpoint_every=*/4, /*seed=*/3);
  h.set_ranks(2);
  const int64_t interrupted = Queue(h);
  {
    StepGate gate(interrupted, /*step=*/3);
    JobFollower follower(&hub_, interrupted);
    auto runner = MakeRunner({"cpu", "cpu"}, gate.Hook());
    const absl::Cleanup release = [&gate] { gate.Release(); };
    ASSERT_TRUE(runner->Start().ok());
    ASSERT_TRUE(gate.WaitUntilReached());
    runner->RequestStop();
    gate.Release();
    runner->Shutdown();
    EXPECT_TRUE(follower.WaitFor(v1::JOB_STATE_QUEUED));
  }
  EXPECT_EQ(GetJob(interrupted).step, 3);
  EXPECT_THAT(ReadHistory(interrupted).StepNumbers(), ElementsAre(1, 2, 3));

  const int64_t uninterrupted = Queue(h);
  {
    JobFollower a(&hub_, interrupted), b(&hub_, uninterrupted);
    auto runner = MakeRunner({"cpu", "cpu"});
    ASSERT_TRUE(runner->Start().ok());
    ASSERT_TRUE(a.WaitFor(v1::JOB_STATE_SUCCEEDED));
    ASSERT_TRUE(b.WaitFor(v1::JOB_STATE_SUCCEEDED));
    runner->Shutdown();
  }
  const History history = ReadHistory(interrupted);
  EXPECT_THAT(history.StepNumbers(), ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_THAT(history.states[2].message(), HasSubstr("resumed from step 3"));
  ExpectSameTraining(history, ReadHistory(uninterrupted));
}

// Gang placement: a two-rank job never holds one device while it waits for a second, so
// on one device it waits and a one-rank job queued after it runs (no deadlock); given a
// second device, it runs.
TEST_F(JobRunnerTest, TwoRankJobWaitsForTwoFreeDevicesWhileSmallerJobsRun) {
  v1::Hyperparameters wide = Tiny(/*total_steps=*/2, /*checkpoint_every=*/100, /*seed=*/1);
  wide.set_ranks(2);
  const int64_t waiting = Queue(wide);
  const int64_t small = Queue(Tiny(/*total_steps=*/2, /*checkpoint_every=*/100, /*seed=*/2));
  {
    JobFollower follower(&hub_, small);
    auto runner = MakeRunner({"cpu"});
    ASSERT_TRUE(runner->Start().ok());
    ASSERT_TRUE(follower.WaitFor(v1::JOB_STATE_SUCCEEDED));
    std::vector<v1::Worker> workers = runner->scheduler().ListWorkers();
    ASSERT_EQ(workers.size(), 1u);
    ASSERT_EQ(workers[0].devices_size(), 1);
    // Free, or still held by the small job as its rank winds down: never by the wide one.
    EXPECT_NE(workers[0].devices(0).job_id(), waiting);
    runner->Shutdown();
  }
  EXPECT_EQ(GetJob(waiting).state, StoredJobState::kQueued);
  {
    JobFollower follower(&hub_, waiting);
    auto runner = MakeRunner({"cpu", "cpu"});
    ASSERT_TRUE(runner->Start().ok());
    ASSERT_TRUE(follower.WaitFor(v1::JOB_STATE_SUCCEEDED));
    runner->Shutdown();
  }
}

}  // namespace
}  // namespace miseg

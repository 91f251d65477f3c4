// Data-parallel training over real Gloo process groups, the ranks as threads of this process
// (one intra-op thread each) on loopback, each group on a free port: the collectives keep
// their contract, groups of several jobs share one host, replicas stay identical step after
// step, a resumed run continues exactly, a checkpoint one rank cannot load fails every rank,
// a rank that goes away makes the others fail with Unavailable (not hang), cancellation on
// one rank stops all at the same step, two ranks learn as one rank with their global batch
// does, and bad groupings are refused. (Ranks as threads share the process-wide BLAS lock of
// core/train/blas.h, so they do not run faster than one rank here; bench/ measures speed
// with ranks as processes.)
#include <atomic>
#include <cmath>
#include <filesystem>
#include <functional>
#include <thread>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/types.h>

#include "absl/strings/str_cat.h"
#include "core/dist/process_group.h"
#include "core/phantom/phantom.h"
#include "tests/core/train/trainer_fixtures.h"
#include "core/train/collectives.h"
#include "core/train/inference.h"
#include "core/train/model_io.h"
#include "core/train/trainer.h"

namespace miseg {
namespace {

using testing::PhantomVolume;

// Three validation volumes: split unevenly over two ranks.
TrainingData SmallData() {
  TrainingData data;
  data.labeled = {PhantomVolume(0, true), PhantomVolume(1, true), PhantomVolume(2, true)};
  data.unlabeled = {PhantomVolume(3, false), PhantomVolume(4, false)};
  data.validation = {PhantomVolume(5, true), PhantomVolume(6, true), PhantomVolume(7, true)};
  return data;
}

TrainerConfig SmallConfig() {
  TrainerConfig config = testing::SmallModelConfig();
  config.labeled_batch = 2;
  config.unlabeled_batch = 2;
  config.total_steps = 6;
  config.threads = 1;
  config.log_every = 1;
  return config;
}

// A scratch directory per test.
class TempDir : public testing::TempDir {
 public:
  TempDir() : testing::TempDir("miseg_data_parallel_test") {}
};

// fn(rank) on one thread per rank, each at one intra-op thread.
void OnRanks(int world, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&fn, r] {
      at::set_num_threads(1);
      fn(r);
    });
  }
  for (std::thread& t : threads) t.join();
}

struct Group {
  std::unique_ptr<RendezvousHost> host;
  std::vector<std::shared_ptr<Collectives>> ranks;
};

// A fresh group on a free port. Every rank joins on its own thread: joining returns only
// once all have.
absl::StatusOr<Group> JoinGroup(int world, absl::Duration timeout = absl::Seconds(60)) {
  static std::atomic<int> groups{0};
  Group group;
  auto host = RendezvousHost::Listen("127.0.0.1", 0);
  if (!host.ok()) return host.status();
  group.host = std::move(*host);
  const std::string prefix = absl::StrCat("test-", groups++, "/attempt-1/");
  std::vector<absl::StatusOr<std::shared_ptr<Collectives>>> joined(
      world, absl::UnknownError("not joined"));
  OnRanks(world, [&](int r) {
    ProcessGroupOptions options;
    options.rank = r;
    options.world_size = world;
    options.store_host = "127.0.0.1";
    options.store_port = group.host->port();
    options.prefix = prefix;
    options.timeout = timeout;
    joined[r] = JoinProcessGroup(options, r == 0 ? group.host.get() : nullptr);
  });
  for (auto& rank : joined) {
    if (!rank.ok()) return rank.status();
    group.ranks.push_back(std::move(*rank));
  }
  return group;
}

struct RankResult {
  absl::Status status;
  RunOutcome outcome = RunOutcome::kFinished;
  int64_t final_step = -1;
  std::vector<StepMetrics> steps;
  std::vector<ValidationMetrics> validations;
};

struct RankPlan {
  bool verify_replicas = true;
  std::string load;            // a checkpoint every rank loads before running
  int64_t max_steps = -1;
  std::string save;            // rank 0 writes a checkpoint after running
  std::string export_prefix;   // every rank exports its model to <prefix>.<rank>
};

// Trains one trainer per rank of `group`, all with the same config, data and plan.
std::vector<RankResult> TrainOnRanks(const TrainerConfig& config, const TrainingData& data,
                                     const Group& group, const RankPlan& plan) {
  const int world = static_cast<int>(group.ranks.size());
  std::vector<RankResult> results(world);
  OnRanks(world, [&](int r) {
    RankResult& result = results[r];
    auto trainer = Trainer::Create(config, data, {r, world, group.ranks[r], plan.verify_replicas});
    if (!trainer.ok()) {
      result.status = trainer.status();
      return;
    }
    if (!plan.load.empty()) result.status = (*trainer)->LoadCheckpoint(plan.load);
    if (!result.status.ok()) return;
    TrainerCallbacks callbacks;
    callbacks.on_step = [&](const StepMetrics& m) { result.steps.push_back(m); };
    callbacks.on_validation = [&](const ValidationMetrics& v) { result.validations.push_back(v); };
    auto outcome = (*trainer)->Run(callbacks, nullptr, plan.max_steps);
    result.final_step = (*trainer)->step();
    if (!outcome.ok()) {
      result.status = outcome.status();
      return;
    }
    result.outcome = *outcome;
    if (r == 0 && !plan.save.empty()) result.status = (*trainer)->SaveCheckpoint(plan.save);
    if (result.status.ok() && !plan.export_prefix.empty()) {
      result.status = (*trainer)->ExportModel(absl::StrCat(plan.export_prefix, ".", r));
    }
  });
  return results;
}

int64_t ParameterBytes(const TrainerConfig& config) {
  UNet model(UNetOptionsFor(config.model));
  int64_t bytes = 0;
  for (const torch::Tensor& p : model->parameters()) bytes += p.numel() * p.element_size();
  return bytes;
}

// (a) Every rank's parameters and buffers are the same after every step (verify_replicas
// would fail the run otherwise, and the hashes are compared here too), the logged losses and
// the validation are the same on every rank, and both ranks' exported models segment alike.
TEST(DataParallel, ReplicasStayIdentical) {
  TempDir dir;
  auto group = JoinGroup(2);
  ASSERT_TRUE(group.ok()) << group.status();
  const TrainerConfig config = SmallConfig();
  RankPlan plan;
  plan.export_prefix = dir.file("model");
  const std::vector<RankResult> ranks = TrainOnRanks(config, SmallData(), *group, plan);
  for (const RankResult& rank : ranks) {
    ASSERT_TRUE(rank.status.ok()) << rank.status;
    EXPECT_EQ(rank.outcome, RunOutcome::kFinished);
    ASSERT_EQ(rank.steps.size(), 6u);
    ASSERT_EQ(rank.validations.size(), 1u);
  }
  const int64_t gradient_bytes = ParameterBytes(config);
  for (size_t i = 0; i < 6; ++i) {
    const StepMetrics& a = ranks[0].steps[i];
    const StepMetrics& b = ranks[1].steps[i];
    EXPECT_NE(a.parameter_hash, 0u);
    EXPECT_EQ(a.parameter_hash, b.parameter_hash) << "step " << i + 1;
    if (i > 0) {
      EXPECT_NE(a.parameter_hash, ranks[0].steps[i - 1].parameter_hash);
    }
    EXPECT_EQ(a.loss, b.loss);
    EXPECT_EQ(a.supervised, b.supervised);
    EXPECT_EQ(a.mutual_information, b.mutual_information);
    EXPECT_TRUE(std::isfinite(a.loss));
    EXPECT_EQ(a.allreduce_bytes, gradient_bytes);
    EXPECT_GT(a.allreduce_seconds, 0);
  }
  EXPECT_EQ(ranks[0].validations[0].dice_per_volume, ranks[1].validations[0].dice_per_volume);
  EXPECT_EQ(ranks[0].validations[0].mean_dice, ranks[1].validations[0].mean_dice);
  ASSERT_EQ(ranks[0].validations[0].dice_per_volume.size(), 3u);
  auto first = Segmenter::Load(dir.file("model.0"));
  auto second = Segmenter::Load(dir.file("model.1"));
  ASSERT_TRUE(first.ok() && second.ok());
  const TrainingVolume unseen = PhantomVolume(9, false);
  EXPECT_EQ((*first)->Segment(unseen.image)->voxels, (*second)->Segment(unseen.image)->voxels);
}

// A global batch larger than the data: each rank still gets its share (whole permutations
// one after another), and the replicas stay identical.
TEST(DataParallel, GlobalBatchLargerThanTheData) {
  auto group = JoinGroup(2);
  ASSERT_TRUE(group.ok()) << group.status();
  TrainerConfig config = SmallConfig();
  config.labeled_batch = 9;  // 18 > the 9 to 12 labeled slices
  config.total_steps = 2;
  for (const RankResult& rank : TrainOnRanks(config, SmallData(), *group, {})) {
    ASSERT_TRUE(rank.status.ok()) << rank.status;
    EXPECT_EQ(rank.final_step, 2);
  }
}

// (b) Two ranks to step 3, a checkpoint from rank 0, then two fresh trainers in a fresh
// group (as after a restart) loading it and running to step 6: the same losses and weights
// as an unbroken two-rank run. The resumed config's seed differs: the checkpoint's wins.
TEST(DataParallel, ResumedRunContinuesExactly) {
  TempDir dir;
  const TrainerConfig config = SmallConfig();
  const TrainingData data = SmallData();
  auto unbroken_group = JoinGroup(2);
  ASSERT_TRUE(unbroken_group.ok()) << unbroken_group.status();
  const std::vector<RankResult> unbroken = TrainOnRanks(config, data, *unbroken_group, {});
  ASSERT_TRUE(unbroken[0].status.ok()) << unbroken[0].status;

  auto first_group = JoinGroup(2);
  ASSERT_TRUE(first_group.ok()) << first_group.status();
  RankPlan first_plan;
  first_plan.max_steps = 3;
  first_plan.save = dir.file("step3.ckpt");
  const std::vector<RankResult> first = TrainOnRanks(config, data, *first_group, first_plan);
  ASSERT_TRUE(first[0].status.ok() && first[1].status.ok()) << first[0].status << first[1].status;
  EXPECT_EQ(first[0].outcome, RunOutcome::kStepLimit);

  TrainerConfig other_seed = config;
  other_seed.seed = 99;
  auto second_group = JoinGroup(2);
  ASSERT_TRUE(second_group.ok()) << second_group.status();
  RankPlan second_plan;
  second_plan.load = dir.file("step3.ckpt");
  const std::vector<RankResult> second = TrainOnRanks(other_seed, data, *second_group, second_plan);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(second[r].status.ok()) << second[r].status;
    std::vector<StepMetrics> resumed = first[r].steps;
    resumed.insert(resumed.end(), second[r].steps.begin(), second[r].steps.end());
    ASSERT_EQ(resumed.size(), unbroken[r].steps.size());
    for (size_t i = 0; i < resumed.size(); ++i) {
      EXPECT_EQ(resumed[i].loss, unbroken[r].steps[i].loss) << "rank " << r << " step " << i + 1;
      EXPECT_EQ(resumed[i].parameter_hash, unbroken[r].steps[i].parameter_hash)
          << "rank " << r << " step " << i + 1;
    }
    ASSERT_EQ(second[r].validations.size(), 1u);
    EXPECT_EQ(second[r].validations[0].dice_per_volume, unbroken[r].validations[0].dice_per_volume);
  }
}

// A rank that cannot load the checkpoint fails its own way, and the others fail at once
// with FailedPrecondition instead of waiting in a broadcast it will never join.
TEST(DataParallel, CheckpointMissingOnOneRankFailsAll) {
  TempDir dir;
  const TrainerConfig config = SmallConfig();
  const TrainingData data = SmallData();
  {
    auto trainer = Trainer::Create(config, data);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    ASSERT_TRUE((*trainer)->SaveCheckpoint(dir.file("start.ckpt")).ok());
  }
  auto group = JoinGroup(2);
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<absl::Status> loaded(2);
  OnRanks(2, [&](int r) {
    auto trainer = Trainer::Create(config, data, {r, 2, group->ranks[r], false});
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    loaded[r] = (*trainer)->LoadCheckpoint(dir.file(r == 0 ? "start.ckpt" : "absent.ckpt"));
  });
  EXPECT_EQ(loaded[0].code(), absl::StatusCode::kFailedPrecondition) << loaded[0];
  EXPECT_NE(loaded[0].message().find("rank 1"), std::string::npos) << loaded[0];
  EXPECT_EQ(loaded[1].code(), absl::StatusCode::kNotFound) << loaded[1];
}

// (c) One rank goes away between two steps (its Run stops at a step limit, then its trainer
// and its end of the group are destroyed, as when its process dies): the other's Run fails
// with Unavailable at its next collective instead of waiting, and has not taken the step.
class PeerFailure : public ::testing::TestWithParam<int> {};

TEST_P(PeerFailure, MakesTheOtherRankUnavailable) {
  const int leaving = GetParam();
  auto group = JoinGroup(2, /*timeout=*/absl::Seconds(60));
  ASSERT_TRUE(group.ok()) << group.status();
  TrainerConfig config = SmallConfig();
  config.total_steps = 20;
  std::vector<RankResult> results(2);
  OnRanks(2, [&](int r) {
    std::shared_ptr<Collectives> collectives = std::move(group->ranks[r]);
    auto trainer = Trainer::Create(config, SmallData(), {r, 2, collectives, false});
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    auto outcome = (*trainer)->Run({[&](const StepMetrics& m) { results[r].steps.push_back(m); }},
                                   nullptr, r == leaving ? 2 : -1);
    results[r].status = outcome.status();
    results[r].final_step = (*trainer)->step();
    // The last references to this rank's process group: its connections close.
    trainer->reset();
    collectives.reset();
  });
  EXPECT_TRUE(results[leaving].status.ok()) << results[leaving].status;
  EXPECT_EQ(results[leaving].final_step, 2);
  const RankResult& survivor = results[1 - leaving];
  EXPECT_EQ(survivor.status.code(), absl::StatusCode::kUnavailable) << survivor.status;
  EXPECT_NE(survivor.status.message().find("collective"), std::string::npos) << survivor.status;
  EXPECT_EQ(survivor.final_step, 2);
  EXPECT_EQ(survivor.steps.size(), 2u);
}

INSTANTIATE_TEST_SUITE_P(EitherRank, PeerFailure, ::testing::Values(0, 1));

// (d) Two ranks at batch b learn as one rank at batch 2b does: the same number of steps on
// a global batch of the same size reaches about the same validation Dice. Not the same
// numbers: the draws differ, and batch norm and the MI term's joint distributions are
// computed over each rank's b slices. Measured here with seeds 5 to 9 (300 steps): one rank
// 0.68-0.80, two ranks 0.61-0.78, differences 0.001-0.067, as large as from one seed to the
// next; hence the thresholds. About 10-30 s on 2 cores (the ranks, as threads, take turns in
// the BLAS).
TEST(DataParallel, TwoRanksLearnAsOneRankWithTheGlobalBatch) {
  TrainerConfig config = SmallConfig();
  config.total_steps = 300;
  config.warmup_steps = 5;
  config.rampup_steps = 20;
  config.log_every = 50;
  const TrainingData data = SmallData();

  TrainerConfig single = config;
  single.labeled_batch *= 2;
  single.unlabeled_batch *= 2;
  std::vector<ValidationMetrics> alone;
  at::set_num_threads(1);
  auto trainer = Trainer::Create(single, data);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  TrainerCallbacks callbacks;
  callbacks.on_validation = [&](const ValidationMetrics& v) { alone.push_back(v); };
  ASSERT_TRUE((*trainer)->Run(callbacks).ok());

  auto group = JoinGroup(2);
  ASSERT_TRUE(group.ok()) << group.status();
  RankPlan plan;
  plan.verify_replicas = false;
  const std::vector<RankResult> ranks = TrainOnRanks(config, data, *group, plan);
  ASSERT_TRUE(ranks[0].status.ok()) << ranks[0].status;
  ASSERT_TRUE(ranks[1].status.ok()) << ranks[1].status;
  ASSERT_EQ(alone.size(), 1u);
  ASSERT_EQ(ranks[0].validations.size(), 1u);
  const double one = alone[0].mean_dice;
  const double two = ranks[0].validations[0].mean_dice;
  EXPECT_GT(one, 0.55);
  EXPECT_GT(two, 0.55);
  EXPECT_NEAR(one, two, 0.12);
  RecordProperty("one_rank_mean_dice", std::to_string(one));
  RecordProperty("two_ranks_mean_dice", std::to_string(two));
}

// Cancelling one rank stops every rank at the same step boundary.
TEST(DataParallel, CancellingOneRankStopsAll) {
  auto group = JoinGroup(2);
  ASSERT_TRUE(group.ok()) << group.status();
  TrainerConfig config = SmallConfig();
  config.total_steps = 20;
  std::vector<absl::StatusOr<RunOutcome>> outcomes(2, absl::UnknownError("not run"));
  std::vector<int64_t> steps(2, -1);
  OnRanks(2, [&](int r) {
    auto trainer = Trainer::Create(config, SmallData(), {r, 2, group->ranks[r], false});
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    std::atomic<bool> cancel{false};
    outcomes[r] = (*trainer)->Run({[&](const StepMetrics& m) {
                                    if (r == 1 && m.step == 3) cancel = true;
                                  }},
                                  &cancel);
    steps[r] = (*trainer)->step();
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(outcomes[r].ok()) << outcomes[r].status();
    EXPECT_EQ(*outcomes[r], RunOutcome::kCancelled) << "rank " << r;
    EXPECT_EQ(steps[r], 3) << "rank " << r;
  }
}

// (e) A world larger than one needs collectives of that rank and size.
TEST(DataParallel, RefusesBadGroupings) {
  const TrainerConfig config = SmallConfig();
  const TrainingData data = SmallData();
  EXPECT_EQ(Trainer::Create(config, data, {0, 2, nullptr, false}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Trainer::Create(config, data, {2, 2, nullptr, false}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Trainer::Create(config, data, {0, 0, nullptr, false}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto single = JoinGroup(1);
  ASSERT_TRUE(single.ok()) << single.status();
  auto mismatched = Trainer::Create(config, data, {1, 2, single->ranks[0], false});
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mismatched.status().message().find("collectives of rank 0 of 1"), std::string::npos)
      << mismatched.status();
  // A group of one is allowed, and trains as without one.
  EXPECT_TRUE(Trainer::Create(config, data, {0, 1, single->ranks[0], false}).ok());
}

TEST(Collectives, KeepTheirContractOverGloo) {
  auto group = JoinGroup(2);
  ASSERT_TRUE(group.ok()) << group.status();
  OnRanks(2, [&](int r) {
    Collectives& c = *group->ranks[r];
    EXPECT_EQ(c.rank(), r);
    EXPECT_EQ(c.world_size(), 2);
    // Two tensors of different shapes and dtypes, one of them not contiguous.
    std::vector<torch::Tensor> sums = {torch::full({3}, r + 1.0, torch::kFloat64),
                                       torch::arange(6, torch::kInt64).view({2, 3}).t() * (r + 1)};
    ASSERT_TRUE(c.AllReduceSum(sums).ok());
    EXPECT_TRUE(sums[0].equal(torch::full({3}, 3.0, torch::kFloat64)));
    EXPECT_TRUE(sums[1].equal(torch::arange(6, torch::kInt64).view({2, 3}).t() * 3));
    std::vector<torch::Tensor> from_one = {torch::full({2, 2}, r * 1.5f),
                                           torch::full({5}, int64_t{r + 10}, torch::kInt64),
                                           torch::full({1}, r * 2.5f)};
    ASSERT_TRUE(c.Broadcast(from_one, 1).ok());
    EXPECT_TRUE(from_one[0].equal(torch::full({2, 2}, 1.5f)));
    EXPECT_TRUE(from_one[1].equal(torch::full({5}, int64_t{11}, torch::kInt64)));
    EXPECT_TRUE(from_one[2].equal(torch::full({1}, 2.5f)));
    std::vector<torch::Tensor> gathered;
    ASSERT_TRUE(c.AllGather(torch::full({2}, int64_t{r * 7}, torch::kInt64), &gathered).ok());
    ASSERT_EQ(gathered.size(), 2u);
    EXPECT_TRUE(gathered[0].equal(torch::full({2}, int64_t{0}, torch::kInt64)));
    EXPECT_TRUE(gathered[1].equal(torch::full({2}, int64_t{7}, torch::kInt64)));
    EXPECT_TRUE(c.Barrier().ok());
  });
}

// Two groups (say two jobs) joining at once through one host, under their own prefixes:
// neither waits for the other's rendezvous, and their collectives stay apart.
TEST(ProcessGroup, OneHostServesGroupsJoiningAtOnce) {
  auto host = RendezvousHost::Listen("127.0.0.1", 0);
  ASSERT_TRUE(host.ok()) << host.status();
  std::vector<absl::StatusOr<std::shared_ptr<Collectives>>> joined(
      4, absl::UnknownError("not joined"));
  OnRanks(4, [&](int thread) {
    const int job = thread / 2, rank = thread % 2;
    ProcessGroupOptions options;
    options.rank = rank;
    options.world_size = 2;
    options.store_host = "127.0.0.1";
    options.store_port = (*host)->port();
    options.prefix = absl::StrCat("job-", job, "/attempt-1/");
    options.timeout = absl::Seconds(30);
    joined[thread] = JoinProcessGroup(options, rank == 0 ? host->get() : nullptr);
    if (!joined[thread].ok()) return;
    std::vector<torch::Tensor> sum = {torch::full({1}, 10.0 * job + rank)};
    ASSERT_TRUE((*joined[thread])->AllReduceSum(sum).ok());
    EXPECT_EQ(sum[0].item<float>(), 20.0f * job + 1) << "job " << job;
  });
  for (const auto& rank : joined) EXPECT_TRUE(rank.ok()) << rank.status();
}

TEST(ProcessGroup, JoinFailuresAreUnavailableOrInvalid) {
  // Nothing listens on the port of a host that is gone.
  int port = 0;
  {
    auto host = RendezvousHost::Listen("127.0.0.1", 0);
    ASSERT_TRUE(host.ok()) << host.status();
    port = (*host)->port();
    EXPECT_GT(port, 0);
  }
  ProcessGroupOptions options;
  options.rank = 1;
  options.world_size = 2;
  options.store_host = "127.0.0.1";
  options.store_port = port;
  options.prefix = "nobody/";
  options.timeout = absl::Seconds(1);
  EXPECT_EQ(JoinProcessGroup(options, nullptr).status().code(), absl::StatusCode::kUnavailable);

  // Rank 0 of two, alone: the rendezvous times out.
  auto host = RendezvousHost::Listen("127.0.0.1", 0);
  ASSERT_TRUE(host.ok()) << host.status();
  options.rank = 0;
  options.prefix = "alone/";
  auto alone = JoinProcessGroup(options, host->get());
  EXPECT_EQ(alone.status().code(), absl::StatusCode::kUnavailable) << alone.status();

  options.rank = 2;
  EXPECT_EQ(JoinProcessGroup(options, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  options.rank = 1;
  EXPECT_EQ(JoinProcessGroup(options, host->get()).status().code(),
            absl::StatusCode::kInvalidArgument);  // only rank 0 hosts
  options.rank = 0;
  EXPECT_EQ(JoinProcessGroup(options, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  options.device = "not-a-device";
  EXPECT_EQ(JoinProcessGroup(options, host->get()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace miseg

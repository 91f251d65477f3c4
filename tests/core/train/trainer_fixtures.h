// What the trainer's tests share: small phantom volumes, a small model's config, and a
// scratch directory per test.
#ifndef MISEG_TESTS_CORE_TRAIN_TRAINER_FIXTURES_H_
#define MISEG_TESTS_CORE_TRAIN_TRAINER_FIXTURES_H_

#include <unistd.h>

#include <filesystem>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "core/phantom/phantom.h"
#include "core/train/trainer.h"

namespace miseg::testing {

// Subject `index` of one phantom population, 3-4 slices of 72-96 pixels.
inline TrainingVolume PhantomVolume(int index, bool labeled) {
  PhantomOptions options;
  options.min_slices = 3;
  options.max_slices = 4;
  options.min_matrix = 72;
  options.max_matrix = 96;
  PhantomSubject subject = GeneratePhantomSubject(/*population_seed=*/11, index, options);
  TrainingVolume v;
  v.id = "phantom-" + std::to_string(index);
  v.image = std::move(subject.image);
  if (labeled) v.labels = std::move(subject.labels);
  return v;
}

// A three-level U-Net on a 48 grid: seconds per run on two cores. Tests set the batches,
// steps and threads they need.
inline TrainerConfig SmallModelConfig() {
  TrainerConfig config;
  config.model.widths = {8, 16, 32};
  config.model.grid_size = 48;
  config.warmup_steps = 2;
  config.rampup_steps = 3;
  config.learning_rate = 1e-2;
  config.validate_every = 0;
  config.seed = 5;
  return config;
}

// A directory named after the running test, removed afterwards.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix) {
    path_ = std::filesystem::temp_directory_path() /
            (prefix + "_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace miseg::testing

#endif  // MISEG_TESTS_CORE_TRAIN_TRAINER_FIXTURES_H_

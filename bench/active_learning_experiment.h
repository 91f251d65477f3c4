// miseg-experiment --active_learning: does choosing which subjects to label by the model's
// own consistency (core/train/labeling_priority.h) beat choosing at random, or by the
// highest predictive entropy? Protocol, per seed: a random start of --al_start labeled
// subjects from the training pool (the rest unlabeled), trained with the method's
// objective; that model scores every unlabeled pool subject; --al_add subjects are added by
// each strategy (suggestion: the combined score; entropy: the highest mean predictive
// entropy; random: uniformly at random), and each enlarged labeled set is trained again
// from the same start (same seed, so the same initial weights and the same batches' random
// stream). Every run is scored on the held-out subjects, which nothing else ever sees. The
// table pairs the strategies over seeds x held-out subjects (paired t and Wilcoxon
// signed-rank), and over seeds alone.
//
// Runs, choices and scores are appended to --results as they finish; a later invocation
// with the same file resumes where it stopped.
#ifndef MISEG_BENCH_ACTIVE_LEARNING_EXPERIMENT_H_
#define MISEG_BENCH_ACTIVE_LEARNING_EXPERIMENT_H_

#include <cstdint>
#include <string>

#include "absl/flags/declare.h"
#include "core/train/config.h"

ABSL_DECLARE_FLAG(bool, active_learning);

namespace miseg {

// The trainer configuration of `objective` from miseg-experiment's flags (its model, schedule,
// batches and weights); defined in phantom_experiment.cc, so both experiments train alike.
TrainerConfig ExperimentConfigFromFlags(const std::string& objective, uint64_t seed);

// Runs the experiment with the flags of both files; returns the process exit code.
int RunActiveLearningExperiment();

}  // namespace miseg

#endif  // MISEG_BENCH_ACTIVE_LEARNING_EXPERIMENT_H_

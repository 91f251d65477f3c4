// The course of a chaos run: set up, kill and restart, stop the load, check the end state,
// compare every interrupted job with an uninterrupted run, report.
#include <iostream>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/chaos/chaos_harness.h"
#include "tests/server/api_client.h"

namespace miseg::chaos {
using miseg::testing::ApiClient;

int Harness::Run() {
  std::cout << "chaos: seed " << clients_.seed << ", " << options_.kills
            << " kills (reproduce with --seed " << clients_.seed << " --kills " << options_.kills
            << ")" << std::endl;
  start_ms_ = absl::ToUnixMillis(absl::Now());
  if (absl::Status set_up = SetUp(); !set_up.ok()) {
    std::cerr << "chaos: setup failed: " << set_up << "\n";
    // Orthanc missing: the run cannot happen here (ctest shows it skipped).
    return absl::IsFailedPrecondition(set_up) ? kSkipped : 1;
  }
  StartClients();
  link_.Up(server_->address());
  for (int kill = 1; kill <= options_.kills; ++kill) {
    KillAndRestart(kill);
    if (kill % 10 == 0) std::cout << "chaos: " << kill << " kills" << std::endl;
  }
  StopClients();
  CheckStoredStudies("at the end");
  CheckJobs();
  CheckWatchers();
  CheckDeliveries();
  CompareWithUninterruptedRuns();
  CheckFinalDisk();
  link_.Finish();
  return Report();
}

// No more kills: the load stops, the last job and the last deliveries finish.
void Harness::StopClients() {
  stop_load_ = true;
  for (std::thread& t : load_threads_) t.join();
  load_threads_.clear();
  for (std::thread& t : watcher_threads_) t.join();
  watcher_threads_.clear();
}

// Every delivery delivered, one per series sent, and each SEG in Orthanc exactly once.
void Harness::CheckDeliveries() {
  ApiClient client(server_->address());
  auto stub = v1::DicomNodeService::NewStub(client.channel);
  auto context = client.Context(30);
  v1::ListDeliveriesResponse response;
  if (!stub->ListDeliveries(context.get(), {}, &response).ok()) {
    verdict_.Violation("ListDeliveries failed at the end");
    return;
  }
  std::map<std::string, int> per_series;
  for (const v1::Delivery& d : response.deliveries()) {
    ++per_series[d.source_series_instance_uid()];
    verdict_.Check(d.state() == v1::DELIVERY_STATE_DELIVERED,
                   absl::StrCat("delivery ", d.id(), " ended ", d.state(), ": ", d.last_error()));
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> found =
        orthanc_->Lookup(d.segmentation_sop_instance_uid());
    int instances = 0;
    if (found.ok()) {
      for (const auto& [id, type] : *found) instances += type == "Instance" ? 1 : 0;
    }
    verdict_.Check(instances == 1, absl::StrCat("delivery ", d.id(), ": its SEG is in Orthanc ",
                                                instances, " times"));
  }
  for (const auto& [series, size] : ledger_.cstore_series()) {
    verdict_.Check(per_series[series] == 1,
                   absl::StrCat("series ", series, " has ", per_series[series], " deliveries"));
  }
  absl::StatusOr<int> in_orthanc = orthanc_->CountInstances();
  verdict_.Check(in_orthanc.ok() && *in_orthanc == response.deliveries_size(),
                 absl::StrCat("Orthanc holds ", in_orthanc.ok() ? *in_orthanc : -1,
                              " instances for ", response.deliveries_size(), " deliveries"));
}

// A job that resumed must end with the model of the same job never interrupted: the same
// hyperparameters and seed on the same data, run now without kills. Model files are named
// by their SHA-256, so equal names mean equal bytes.
void Harness::CompareWithUninterruptedRuns() {
  ApiClient client(server_->address());
  std::map<int64_t, int64_t> reference_of;
  for (int64_t id : jobs_.jobs()) {
    v1::GetJobRequest get;
    get.set_id(id);
    v1::Job job;
    auto context = client.Context(30);
    if (!client.training->GetJob(context.get(), get, &job).ok() || job.resumes() == 0) continue;
    v1::StartJobRequest start;
    start.set_dataset(kTrainDataset);
    *start.mutable_hyperparameters() = job.hyperparameters();
    v1::Job reference;
    auto start_context = client.Context(30);
    if (!client.training->StartJob(start_context.get(), start, &reference).ok()) {
      verdict_.Violation(absl::StrCat("cannot start the reference run of job ", id));
      continue;
    }
    std::vector<v1::JobEvent> events;
    client.Watch(reference.id(), &events, 0, 900);
    reference_of[id] = reference.id();
  }
  const std::map<int64_t, std::string> models = ModelHashes(data_);
  for (const auto& [id, reference] : reference_of) {
    auto mine = models.find(id), theirs = models.find(reference);
    verdict_.Check(mine != models.end() && theirs != models.end() && mine->second == theirs->second,
                   absl::StrCat("job ", id, " (resumed) and its uninterrupted run ", reference,
                                " ended with different models"));
    ++references_compared_;
  }
}

// Stopped normally at the end: the file store holds exactly the referenced objects.
void Harness::CheckFinalDisk() {
  link_.Down();
  const int exit_status = server_->Terminate();
  verdict_.Check(exit_status == 0, absl::StrCat("SIGTERM at the end: exit status ", exit_status));
  absl::StatusOr<DiskState> state = ReadDiskState(data_);
  if (!state.ok()) {
    verdict_.Violation(absl::StrCat("at the end: ", state.status().message()));
    return;
  }
  CheckDisk(*state, "at the end");
  verdict_.Check(state->objects == state->referenced,
                 absl::StrCat("at the end: ", state->objects.size(), " objects on disk, ",
                              state->referenced.size(), " referenced"));
  verdict_.Check(state->staged_files == 0 && state->temporaries.empty(),
                 "at the end: staged files or temporaries left");
}

int Harness::Report() {
  const Ledger::Counts counts = ledger_.counts();
  const std::vector<std::string> violations = verdict_.violations();
  const double seconds = static_cast<double>(absl::ToUnixMillis(absl::Now()) - start_ms_) / 1000;
  std::cout << "chaos: seed " << clients_.seed << "\n"
            << "  kills " << kills_ << ", restarts " << restarts_ << ", " << seconds << " s\n"
            << "  uploads acknowledged " << counts.uploads_acknowledged << " (of "
            << counts.upload_attempts << " attempts)\n"
            << "  C-STOREs acknowledged " << counts.cstores_acknowledged << " ("
            << ledger_.cstore_series().size() << " series, " << counts.series_sent
            << " whole sends)\n"
            << "  segmentations " << counts.segmentations << "\n"
            << "  jobs " << jobs_.jobs().size() << ", compared with uninterrupted runs "
            << references_compared_ << "\n"
            << "  watch reconnects " << counts.watch_reconnects << "\n"
            << "  invariant checks " << verdict_.checks() << ", violations " << violations.size()
            << "\n";
  for (size_t i = 0; i < violations.size() && i < 50; ++i) {
    std::cout << "VIOLATION: " << violations[i] << "\n";
  }
  if (!violations.empty() && server_) std::cout << "--- last server log ---\n" << server_->log();
  std::cout << std::flush;
  return violations.empty() ? 0 : 1;
}

}  // namespace miseg::chaos

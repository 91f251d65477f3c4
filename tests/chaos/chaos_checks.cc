// The invariants of a chaos run, checked after every kill (the stopped server's files),
// after every restart, and at the end.
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "tests/chaos/chaos_harness.h"
#include "tests/server/api_client.h"

namespace miseg::chaos {
namespace {

using miseg::testing::ApiClient;

bool IsOneTo(const std::vector<int64_t>& steps) {
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i] != static_cast<int64_t>(i) + 1) return false;
  }
  return true;
}

std::string Steps(const std::vector<int64_t>& steps) {
  return steps.size() > 40 ? absl::StrCat(steps.size(), " steps")
                           : absl::StrCat("[", absl::StrJoin(steps, ","), "]");
}

int64_t StepOf(const v1::JobEvent& e) {
  if (e.has_step()) return e.step().step();
  if (e.has_validation()) return e.validation().step();
  return e.has_state() ? e.state().step() : 0;
}

// The job's stored history, as a watcher replaying it sees it.
std::vector<v1::JobEvent> History(const ApiClient& client, int64_t job_id) {
  std::vector<v1::JobEvent> events;
  client.Watch(job_id, &events, 0, 120, 0, /*no_follow=*/true);
  return events;
}

}  // namespace

// What every look at the files must find: objects whole, every referenced object there,
// acknowledged uploads and C-STOREs stored, stored studies whole, step events contiguous.
void Harness::CheckDisk(const DiskState& state, const std::string& when) {
  for (const std::string& bad : DamagedObjects(data_, state.objects, &verified_objects_)) {
    verdict_.Violation(absl::StrCat(when, ": object ", bad, " does not hash to its name"));
  }
  for (const std::string& hash : state.referenced) {
    verdict_.Check(state.objects.count(hash) > 0,
                   absl::StrCat(when, ": referenced object ", hash, " is missing"));
  }
  const auto find = [](const auto& map, const std::string& key) {
    auto it = map.find(key);
    return it == map.end() ? std::decay_t<decltype(it->second)>{} : it->second;
  };
  const auto uploads = find(state.studies, kUploadsDataset);
  const std::map<std::string, int> tried = ledger_.tried();
  for (const auto& [series, n] : ledger_.uploads()) {
    verdict_.Check(find(uploads, series) == n,
                   absl::StrCat(when, ": acknowledged upload ", series, " has ",
                                find(uploads, series), " of its ", n, " instances stored"));
  }
  for (const auto& [series, count] : uploads) {
    verdict_.Check(find(tried, series) == count,
                   absl::StrCat(when, ": stored study ", series, " is partial (", count, ")"));
  }
  const auto pacs = find(state.instances, kPacsDataset);
  for (const auto& [sop, series] : ledger_.cstores()) {
    verdict_.Check(state.inbox.count(sop) || pacs.count(sop),
                   absl::StrCat(when, ": C-STORE of ", sop, " (series ", series,
                                ") was answered with success but is neither in the inbox nor "
                                "stored"));
  }
  const std::map<std::string, int> sizes = ledger_.cstore_series();
  for (const auto& [series, count] : find(state.studies, kPacsDataset)) {
    verdict_.Check(find(sizes, series) == count,
                   absl::StrCat(when, ": series ", series, " from the DICOM node is stored with ",
                                count, " of ", find(sizes, series), " instances"));
  }
  for (const auto& [job, steps] : state.step_events) {
    verdict_.Check(IsOneTo(steps),
                   absl::StrCat(when, ": job ", job, " has step events ", Steps(steps)));
  }
}

void Harness::CheckStopped(int kill) {
  absl::StatusOr<DiskState> state = ReadDiskState(data_);
  if (!state.ok()) {
    verdict_.Violation(absl::StrCat("after kill ", kill, ": ", state.status().message()));
    return;
  }
  CheckDisk(*state, absl::StrCat("after kill ", kill));
  leftovers_.clear();
  for (const std::string& object : state->objects) {
    if (!state->referenced.count(object)) leftovers_.insert(object);
  }
  temporaries_ = state->temporaries;
}

// The restarted server (before any client is let back in): what the crash left
// unreferenced is gone, nothing is staged, and the API shows what the files hold.
void Harness::CheckRestarted(int kill) {
  const std::string when = absl::StrCat("after restart ", kill);
  for (const std::string& object : leftovers_) {
    const std::string path = absl::StrCat(data_, "/objects/", object.substr(0, 2), "/", object);
    verdict_.Check(!std::filesystem::exists(path),
                   absl::StrCat(when, ": unreferenced object ", object, " was not collected"));
  }
  for (const std::string& path : temporaries_) {
    verdict_.Check(!std::filesystem::exists(path),
                   absl::StrCat(when, ": the temporary ", path, " was not removed"));
  }
  std::error_code ec;
  int staged = 0;
  for (std::filesystem::directory_iterator it(data_ + "/staging", ec), end; !ec && it != end;
       it.increment(ec)) {
    ++staged;
  }
  verdict_.Check(staged == 0, absl::StrCat(when, ": ", staged, " staged files left"));
  CheckStoredStudies(when);
}

// Through the API: every acknowledged upload listed whole, every listed study whole.
void Harness::CheckStoredStudies(const std::string& when) {
  ApiClient client(server_->address());
  v1::ListStudiesRequest request;
  request.set_dataset(kUploadsDataset);
  v1::ListStudiesResponse response;
  auto context = client.Context(60);
  const grpc::Status status = client.datasets->ListStudies(context.get(), request, &response);
  if (!status.ok()) {
    verdict_.Violation(absl::StrCat(when, ": ListStudies: ", status.error_message()));
    return;
  }
  std::map<std::string, int> listed;
  for (const v1::Study& s : response.studies()) listed[s.series_instance_uid()] = s.instances();
  const std::map<std::string, int> tried = ledger_.tried();
  for (const auto& [series, n] : ledger_.uploads()) {
    verdict_.Check(listed.count(series) && listed[series] == n,
                   absl::StrCat(when, ": acknowledged upload ", series, " is not listed whole"));
  }
  for (const auto& [series, count] : listed) {
    auto it = tried.find(series);
    verdict_.Check(it != tried.end() && it->second == count,
                   absl::StrCat(when, ": listed study ", series, " is partial"));
  }
}

// Every job succeeded, its stored step events are 1..total_steps once each.
void Harness::CheckJobs() {
  ApiClient client(server_->address());
  for (int64_t id : jobs_.jobs()) {
    v1::GetJobRequest request;
    request.set_id(id);
    v1::Job job;
    auto context = client.Context(30);
    const grpc::Status status = client.training->GetJob(context.get(), request, &job);
    verdict_.Check(status.ok() && job.state() == v1::JOB_STATE_SUCCEEDED,
                   absl::StrCat("job ", id, " ended in state ", job.state(), ": ", job.error()));
    std::vector<int64_t> steps = testing::StepsOf(History(client, id));
    verdict_.Check(steps == testing::OneTo(job.total_steps()),
                   absl::StrCat("job ", id, ": stored step events ", Steps(steps)));
  }
}

// Each watcher saw every event of each job's final history exactly once (by sequence, in
// order); the events it saw beyond them are those a resume replaced (steps past the
// checkpoint the next attempt resumed from).
void Harness::CheckWatchers() {
  ApiClient client(server_->address());
  std::map<int64_t, std::vector<v1::JobEvent>> histories;
  for (const auto& [key, seen] : jobs_.seen()) {
    const auto& [watcher, job] = key;
    if (!histories.count(job)) histories[job] = History(client, job);
    const std::vector<v1::JobEvent>& history = histories[job];
    std::map<int64_t, const v1::JobEvent*> by_sequence;
    int64_t previous = 0;
    std::string disorder;
    for (size_t i = 0; i < seen.size(); ++i) {
      const v1::JobEvent& e = seen[i];
      if (e.sequence() <= previous && disorder.empty()) {
        disorder = absl::StrCat(" (event ", i, " of ", seen.size(), ": sequence ", e.sequence(),
                                " step ", StepOf(e), " ", e.ShortDebugString().substr(0, 120),
                                " after sequence ", previous, ")");
      }
      previous = e.sequence();
      by_sequence[e.sequence()] = &e;
    }
    const std::string who = absl::StrCat("watcher ", watcher, " of job ", job);
    verdict_.Check(disorder.empty(),
                   absl::StrCat(who, ": an event arrived twice or out of order", disorder));
    std::set<int64_t> final_sequences;
    for (const v1::JobEvent& e : history) {
      final_sequences.insert(e.sequence());
      auto it = by_sequence.find(e.sequence());
      verdict_.Check(
          it != by_sequence.end() && it->second->SerializeAsString() == e.SerializeAsString(),
          absl::StrCat(who, ": missed event ", e.sequence(), " (step ", StepOf(e), ")"));
    }
    for (const v1::JobEvent& e : seen) {
      if (final_sequences.count(e.sequence())) continue;
      // Replaced: a later "resumed" event of the history names a step before it.
      bool replaced = false;
      for (const v1::JobEvent& r : history) {
        if (r.sequence() > e.sequence() && r.has_state() &&
            r.state().state() == v1::JOB_STATE_RUNNING) {
          replaced = StepOf(e) > r.state().step();
          break;
        }
      }
      verdict_.Check(replaced, absl::StrCat(who, ": saw event ", e.sequence(), " (step ", StepOf(e),
                                            ") that no resume replaced"));
    }
  }
}

}  // namespace miseg::chaos

#include "tests/chaos/chaos_clients.h"

#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "core/dicom/dicom_util.h"
#include "core/dicom/instance_info.h"
#include "tests/server/api_client.h"
#include "tests/server/raw_association.h"
#include "tests/server/test_studies.h"

namespace miseg::chaos {
namespace {

using client::IsTerminal;

using miseg::testing::ApiClient;
using Current = ServerLink::Current;

// One channel per server generation.
class ClientFor {
 public:
  ApiClient& operator()(const Current& current) {
    if (!client_ || generation_ != current.generation) {
      client_ = std::make_unique<ApiClient>(current.address);
      generation_ = current.generation;
    }
    return *client_;
  }

 private:
  std::unique_ptr<ApiClient> client_;
  int generation_ = -1;
};

// After a failed call: when a kill explains it (the server it talked to is no longer up),
// the next server; otherwise a violation unless any client must expect the code (a full
// queue, a deadline), and the same server after a pause. nullopt: the run is over.
std::optional<Current> AfterFailure(const Clients& c, const Current& current,
                                    const grpc::Status& status, const std::string& what) {
  if (!c.link->StillUp(current.generation)) return c.link->Await(current.generation);
  const bool expected = status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
                        status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  if (!expected) {
    c.verdict->Violation(absl::StrCat(what, " failed while the server was up: code ",
                                      status.error_code(), ": ", status.error_message()));
  }
  c.link->SleepUnlessFinished(absl::Milliseconds(200));
  if (!c.link->StillUp(current.generation)) return c.link->Await(current.generation);
  return current;
}

int Between(std::mt19937_64& rng, int low, int high) {
  return std::uniform_int_distribution<int>(low, high)(rng);
}

void CheckUpload(const Clients& c, const std::string& series, int n, const v1::UploadResponse& r) {
  const bool whole =
      r.refused_instances() == 0 && (r.stored_instances() == n || r.duplicate_instances() == n);
  c.verdict->Check(whole, absl::StrCat("upload of ", series, " (", n, " files) was answered: ",
                                       r.stored_instances(), " stored, ", r.duplicate_instances(),
                                       " duplicate, ", r.refused_instances(), " refused"));
}

}  // namespace

void RunUploader(const Clients& c, int index, int max_new) {
  std::mt19937_64 rng(c.seed * 7919 + static_cast<uint64_t>(index));
  const uint64_t population = 1000 + static_cast<uint64_t>(index);
  int made = 0;
  std::optional<int> pending;  // the study being uploaded, until acknowledged
  ClientFor client;
  std::optional<Current> current = c.link->Await(0);
  while (current && !c.stop_load->load()) {
    if (!pending) pending = made < max_new ? made++ : Between(rng, 0, made - 1);
    absl::StatusOr<PhantomStudy> study = testing::SmallPhantomStudy(population, *pending, false);
    if (!study.ok()) {
      c.verdict->Violation(absl::StrCat("phantom: ", study.status().message()));
      return;
    }
    const std::string series = study->series.series_instance_uid;
    const int n = static_cast<int>(study->image_files.size());
    c.ledger->Tried(series, n);
    c.ledger->Count(&Ledger::Counts::upload_attempts);
    v1::UploadResponse response;
    // Small chunks: each upload is a stream of many messages for a kill to cut.
    const grpc::Status status = client(*current).Upload(kUploadsDataset, v1::STUDY_ROLE_UNLABELED,
                                                        study->image_files, &response, 4096);
    if (!status.ok()) {
      current = AfterFailure(c, *current, status, absl::StrCat("upload of ", series));
      continue;
    }
    CheckUpload(c, series, n, response);
    c.ledger->AckUpload(series, n);
    c.ledger->Count(&Ledger::Counts::uploads_acknowledged);
    pending.reset();
    c.link->SleepUnlessFinished(absl::Milliseconds(Between(rng, 50, 400)));
  }
}

void RunSegmenter(const Clients& c, int index) {
  std::mt19937_64 rng(c.seed * 104729 + static_cast<uint64_t>(index));
  ClientFor client;
  std::optional<Current> current = c.link->Await(0);
  for (int i = 0; current && !c.stop_load->load();) {
    absl::StatusOr<PhantomStudy> study = testing::SmallPhantomStudy(2000 + index, i % 6, false);
    if (!study.ok()) return;
    v1::SegmentHeader header;
    header.set_dataset(kSegDataset);
    std::string seg;
    v1::SegmentSummary summary;
    const grpc::Status status =
        client(*current).Segment(header, study->image_files, &seg, &summary, 60000);
    if (!status.ok()) {
      current = AfterFailure(c, *current, status, "a segmentation");
      continue;
    }
    c.verdict->Check(!seg.empty() &&
                         static_cast<int64_t>(seg.size()) == summary.segmentation_bytes() &&
                         summary.source_series_instance_uid() == study->series.series_instance_uid,
                     "a segmentation answered OK without its whole SEG");
    c.ledger->Count(&Ledger::Counts::segmentations);
    ++i;
    c.link->SleepUnlessFinished(absl::Milliseconds(Between(rng, 100, 600)));
  }
}

namespace {

// One job followed to its terminal event across kills; false when the run ended first.
bool WatchJob(const Clients& c, int64_t job_id, std::vector<v1::JobEvent>* seen) {
  int64_t last_sequence = 0;
  std::optional<Current> current = c.link->Await(0);
  while (current) {
    ApiClient client(current->address);
    auto context = client.Context(/*deadline_seconds=*/3600);
    v1::WatchJobRequest request;
    request.set_id(job_id);
    request.set_after_sequence(last_sequence);
    auto reader = client.training->WatchJob(context.get(), request);
    v1::JobEvent event;
    bool terminal = false;
    while (reader->Read(&event)) {
      seen->push_back(event);
      last_sequence = std::max(last_sequence, event.sequence());
      terminal = event.has_state() && IsTerminal(event.state().state());
    }
    const grpc::Status status = reader->Finish();
    if (terminal && status.ok()) return true;
    c.ledger->Count(&Ledger::Counts::watch_reconnects);
    const grpc::Status why = status.ok() ? grpc::Status(grpc::StatusCode::INTERNAL,
                                                        "the stream ended before the job did")
                                         : status;
    current = AfterFailure(c, *current, why, absl::StrCat("watching job ", job_id));
  }
  return false;
}

}  // namespace

void RunWatcher(const Clients& c, int index) {
  int64_t job_id = 0;
  while (std::optional<int64_t> next = c.jobs->NextAfter(job_id)) {
    job_id = *next;
    std::vector<v1::JobEvent> seen;
    if (!WatchJob(c, job_id, &seen)) return;
    c.jobs->Saw(index, job_id, std::move(seen));
  }
}

namespace {

struct SentSeries {
  PhantomStudy study;
  int sent_in = 0;         // the generation whose server took the whole series; 0: none yet
  bool segmented = false;  // a delivery exists for it
};

// 0 when every instance was answered with success and the association released; -1 when
// the network failed (the server is gone); else the DIMSE status of a refused instance.
int SendSeries(const Clients& c, const PhantomStudy& study) {
  testing::RawAssociation association(c.node_port, "SENDER", "MISEG");
  if (!association.established()) return -1;
  const int n = static_cast<int>(study.image_files.size());
  for (const DicomBuffer& file : study.image_files) {
    absl::StatusOr<std::unique_ptr<DcmFileFormat>> parsed = ParseDicom(file.bytes, file.name);
    absl::StatusOr<InstanceInfo> info = IdentifyInstance(file);
    if (!parsed.ok() || !info.ok()) return 0xC000;
    const int status =
        association.Store((*parsed)->getDataset(), info->sop_class_uid, info->sop_instance_uid);
    if (status != 0) return status;
    c.ledger->AckCStore(info->sop_instance_uid, study.series.series_instance_uid, n);
    c.ledger->Count(&Ledger::Counts::cstores_acknowledged);
  }
  return association.Release() ? 0 : -1;
}

// Sends one series in the current generation; false when the server went away.
bool Send(const Clients& c, const Current& current, SentSeries& series) {
  const int status = SendSeries(c, series.study);
  if (status == 0) {
    series.sent_in = current.generation;
    c.ledger->Count(&Ledger::Counts::series_sent);
    return true;
  }
  if (c.link->StillUp(current.generation)) {
    c.verdict->Check(status == -1,
                     absl::StrCat("C-STORE of series ", series.study.series.series_instance_uid,
                                  " refused with status ", status, " while the server was up"));
  }
  return false;
}

// The source series of deliveries, by state; nullopt when the call failed.
std::optional<std::map<std::string, v1::DeliveryState>> DeliveriesOf(const Current& current) {
  ApiClient client(current.address);
  auto stub = v1::DicomNodeService::NewStub(client.channel);
  auto context = client.Context(30);
  v1::ListDeliveriesResponse response;
  if (!stub->ListDeliveries(context.get(), {}, &response).ok()) return std::nullopt;
  std::map<std::string, v1::DeliveryState> states;
  for (const v1::Delivery& d : response.deliveries()) {
    states[d.source_series_instance_uid()] = d.state();
  }
  return states;
}

// After a restart: series the node segmented are done; the others, sent to an earlier
// server (whose association ends this one never saw) or cut short, are sent again.
bool Reconcile(const Clients& c, const Current& current, std::vector<SentSeries>& all) {
  std::optional<std::map<std::string, v1::DeliveryState>> deliveries = DeliveriesOf(current);
  if (!deliveries) return false;
  for (SentSeries& s : all) {
    if (s.segmented) continue;
    if (deliveries->count(s.study.series.series_instance_uid)) {
      s.segmented = true;
    } else if (s.sent_in < current.generation && !Send(c, current, s)) {
      return false;
    }
  }
  return true;
}

// At the end: true once every series' SEG is delivered.
bool AllDelivered(const Clients& c, const Current& current, const std::vector<SentSeries>& all) {
  std::optional<std::map<std::string, v1::DeliveryState>> deliveries = DeliveriesOf(current);
  if (!deliveries) return false;
  for (const SentSeries& s : all) {
    auto it = deliveries->find(s.study.series.series_instance_uid);
    if (it == deliveries->end() || it->second != v1::DELIVERY_STATE_DELIVERED) return false;
  }
  return true;
}

}  // namespace

void RunSender(const Clients& c) {
  std::mt19937_64 rng(c.seed * 15485863);
  std::vector<SentSeries> all;
  int reconciled = 0;
  const absl::Time give_up_after_stop = absl::InfiniteFuture();
  absl::Time deadline = give_up_after_stop;
  std::optional<Current> current = c.link->Await(0);
  while (current) {
    if (current->generation > reconciled) {
      if (!Reconcile(c, *current, all)) {
        if (c.link->StillUp(current->generation)) {
          c.link->SleepUnlessFinished(absl::Milliseconds(200));
        } else {
          current = c.link->Await(current->generation);
        }
        continue;
      }
      reconciled = current->generation;
    }
    if (!c.stop_load->load()) {
      absl::StatusOr<PhantomStudy> study =
          testing::SmallPhantomStudy(3000, static_cast<int>(all.size()), false);
      if (!study.ok()) return;
      all.push_back({*std::move(study)});
      if (!Send(c, *current, all.back())) current = c.link->Await(current->generation);
      c.link->SleepUnlessFinished(absl::Milliseconds(Between(rng, 200, 900)));
      continue;
    }
    if (deadline == give_up_after_stop) deadline = absl::Now() + absl::Minutes(3);
    if (AllDelivered(c, *current, all)) return;
    if (absl::Now() > deadline) {
      c.verdict->Violation("SEGs of sent series were not all delivered within 3 minutes");
      return;
    }
    if (c.link->SleepUnlessFinished(absl::Milliseconds(500))) return;
    if (!c.link->StillUp(current->generation)) current = c.link->Await(current->generation);
  }
}

namespace {

// The run's jobs on "train", each added to the book; whether one is still running.
std::optional<bool> SyncJobs(const Clients& c, ApiClient& client) {
  v1::ListJobsRequest request;
  request.set_dataset(kTrainDataset);
  v1::ListJobsResponse response;
  auto context = client.Context(30);
  if (!client.training->ListJobs(context.get(), request, &response).ok()) return std::nullopt;
  bool running = false;
  for (const v1::Job& job : response.jobs()) {
    c.jobs->Add(job.id());
    running |= !IsTerminal(job.state());
  }
  return running;
}

}  // namespace

void RunJobDriver(const Clients& c) {
  int started = 0;
  ClientFor client;
  std::optional<Current> current = c.link->Await(0);
  while (current) {
    std::optional<bool> running = SyncJobs(c, client(*current));
    if (!running) {
      current = AfterFailure(c, *current, grpc::Status(grpc::StatusCode::UNAVAILABLE, "ListJobs"),
                             "listing jobs");
      continue;
    }
    if (!*running && c.stop_load->load()) break;  // the last job is over
    if (!*running) {
      v1::StartJobRequest request;
      request.set_dataset(kTrainDataset);
      *request.mutable_hyperparameters() = c.job_hyperparameters;
      request.mutable_hyperparameters()->set_seed(++started);
      v1::Job job;
      auto context = client(*current).Context(30);
      const grpc::Status status = client(*current).training->StartJob(context.get(), request, &job);
      if (!status.ok()) {  // created or not: the next listing tells
        current = AfterFailure(c, *current, status, "starting a job");
        continue;
      }
      c.jobs->Add(job.id());
    }
    c.link->SleepUnlessFinished(absl::Milliseconds(200));
    if (!c.link->StillUp(current->generation)) current = c.link->Await(current->generation);
  }
  c.jobs->NoMoreJobs();
}

}  // namespace miseg::chaos

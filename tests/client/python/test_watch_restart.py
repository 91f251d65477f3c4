"""Job.watch across a server restart: the server is stopped (SIGKILL, or SIGTERM, which
checkpoints and requeues the job) while a watch is between two events, and started again
on the same data folder and port. The watch must reconnect by itself, ask for the events
after the last one it yielded (after_sequence), and so yield every event exactly once and in
order: all that the server stored for the job, including the re-run of the steps after the
checkpoint it resumed from. The job is long (a million tiny steps) and cancelled once the
watch has seen it run again, so nothing depends on how fast this machine trains."""

from __future__ import annotations

import os
import signal
from typing import Dict, Iterator, List

import pytest

import miseg
from conftest import CLASSES, TINY, start_server


class Restartable:
    def __init__(self, work_dir: str, name: str) -> None:
        self.work_dir = work_dir
        self.data_dir = os.path.join(work_dir, name + "-data")
        self.name = name
        self.server = start_server(work_dir, self.data_dir, name + "-1")
        self.address = "127.0.0.1:%d" % self.server.grpc_port
        self.starts = 1

    def restart(self, sig: int) -> None:
        status = self.server.stop(sig)
        assert status == (0 if sig == signal.SIGTERM else -sig), self.server.log()
        self.server.kill()
        self.starts += 1
        self.server = start_server(self.work_dir, self.data_dir,
                                   "%s-%d" % (self.name, self.starts), listen=self.address)
        assert "127.0.0.1:%d" % self.server.grpc_port == self.address


@pytest.fixture(params=[signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def restartable(request: pytest.FixtureRequest, work_dir: str) -> Iterator[Restartable]:
    name = "restart-" + signal.Signals(request.param).name.lower()
    server = Restartable(work_dir, name)
    yield server
    server.server.stop()
    server.server.kill()


def test_watch_survives_a_server_restart(request: pytest.FixtureRequest,
                                         restartable: Restartable,
                                         phantoms: Dict[int, str]) -> None:
    sig = signal.SIGKILL if "sigkill" in request.node.name else signal.SIGTERM
    client = miseg.Client(restartable.address)
    client.create_dataset("restart", CLASSES)
    client.upload("restart", [phantoms[0], phantoms[1]], "labeled", progress=False)
    client.upload("restart", phantoms[4], "unlabeled", progress=False)
    job = client.train("restart", steps=1_000_000, checkpoint_every=5, validate_every=1_000_000,
                       **TINY)

    seen: List[miseg.JobEvent] = []
    restarted_at = None
    resumed = None
    cancelled = False
    for event in job.watch():
        seen.append(event)
        if restarted_at is None and isinstance(event, miseg.StepEvent) and event.step >= 7:
            # Past the first checkpoint (step 5): the job resumes from a checkpoint.
            restarted_at = len(seen)
            restartable.restart(sig)
        elif restarted_at is not None and resumed is None and isinstance(
                event, miseg.StateEvent) and "resumed from step" in event.message:
            resumed = event
        elif resumed is not None and not cancelled and isinstance(event, miseg.StepEvent):
            job.cancel()  # it ran on the new server: enough
            cancelled = True
    assert restarted_at is not None and resumed is not None, seen

    sequences = [e.sequence for e in seen]
    assert sequences == sorted(set(sequences)), "an event came twice or out of order"
    last = seen[-1]
    assert isinstance(last, miseg.StateEvent) and last.state == miseg.JobState.CANCELLED
    # Every event the server holds for the job came through the watch, once.
    stored = job.events()
    by_sequence = {e.sequence: e for e in seen}
    assert [by_sequence.get(e.sequence) for e in stored] == stored
    # The steps after the checkpoint it resumed from ran again after the restart.
    after = [e for e in seen[seen.index(resumed):] if isinstance(e, miseg.StepEvent)]
    assert after and after[0].step == resumed.step + 1
    assert resumed.step >= 5
    if sig == signal.SIGTERM:  # a clean stop checkpoints where it stops: nothing re-runs
        before = [e for e in seen[:seen.index(resumed)] if isinstance(e, miseg.StepEvent)]
        assert resumed.step == before[-1].step
    assert job.refresh().resumes >= 1
    assert job.state == miseg.JobState.CANCELLED
    client.close()

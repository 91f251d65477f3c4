"""Training jobs and model versions as notebook objects: a Job follows its events across
server restarts (watch), waits, cancels, and turns its stored history into a pandas
DataFrame and a matplotlib figure; a Model is promoted. Both hold the server's latest
snapshot of themselves (refresh() asks again) and the Connection they came from."""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from miseg._connection import Connection, backoff_sleep
from miseg._errors import DeadlineExceeded, Error, JobFailed, Unavailable
from miseg._proto import pb
from miseg._types import (HyperparameterValue, JobEvent, JobState, RankPlacement, StateEvent,
                          StepEvent, ValidationEvent, _time, event_from_proto,
                          hyperparameters_from_proto)

if TYPE_CHECKING:  # optional dependencies, imported when used
    import matplotlib.figure
    import pandas

# A watch may last as long as its job: its deadline is this generous bound (as the C++
# client's), and a lost connection is what reconnect_for limits.
_WATCH_DEADLINE_S = 30 * 24 * 3600.0

LOSS_COLUMNS = ("loss", "supervised", "consistency", "mutual_information",
                "unsupervised_weight")


class Model:
    """A model version of a dataset, with its validation Dice per foreground class."""

    def __init__(self, connection: Connection, message: pb.Model) -> None:
        self._connection = connection
        self._message = message

    @property
    def id(self) -> int:
        return self._message.id

    @property
    def dataset(self) -> str:
        return self._message.dataset

    @property
    def version(self) -> int:
        return self._message.version

    @property
    def job_id(self) -> int:
        return self._message.job_id

    @property
    def classes(self) -> Tuple[str, ...]:
        return tuple(self._message.class_names)

    @property
    def validation_dice(self) -> Dict[str, float]:
        """Validation Dice by foreground class name."""
        return dict(zip(self.classes[1:], self._message.validation_dice_per_class))

    @property
    def validation_mean_dice(self) -> float:
        return self._message.validation_mean_dice

    @property
    def active(self) -> bool:
        """Whether segmentations of its dataset use it (the dataset's active model)."""
        return self._message.active

    @property
    def steps(self) -> int:
        return self._message.steps

    @property
    def size_bytes(self) -> int:
        return self._message.size_bytes

    @property
    def created(self) -> Optional[datetime.datetime]:
        return _time(self._message.created_unix_ms)

    def refresh(self) -> "Model":
        self._message = self._connection.unary(
            self._connection.models.GetModel, pb.GetModelRequest(id=self.id), pb.Model)
        return self

    def promote(self) -> "Model":
        """Makes this the active model of its dataset; returns self, refreshed."""
        self._message = self._connection.unary(
            self._connection.models.PromoteModel, pb.PromoteModelRequest(id=self.id), pb.Model)
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and other._message == self._message

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return ("Model(id=%d, dataset=%r, version=%d, job_id=%d, mean_dice=%.3f%s)"
                % (self.id, self.dataset, self.version, self.job_id, self.validation_mean_dice,
                   ", active" if self.active else ""))


class Job:
    """A training job. Its attributes are the server's snapshot when the Job was made or
    last refreshed (refresh(), wait() and cancel() refresh it)."""

    def __init__(self, connection: Connection, message: pb.Job) -> None:
        self._connection = connection
        self._message = message

    # ---- the snapshot --------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self._message.id

    @property
    def dataset(self) -> str:
        return self._message.dataset

    @property
    def state(self) -> JobState:
        return JobState.from_proto(self._message.state)

    @property
    def step(self) -> int:
        """The last checkpointed or completed step."""
        return self._message.step

    @property
    def total_steps(self) -> int:
        return self._message.total_steps

    @property
    def placement(self) -> List[RankPlacement]:
        """Where each rank runs while the job runs (empty otherwise)."""
        return [RankPlacement.from_proto(p) for p in self._message.placement]

    @property
    def hyperparameters(self) -> Dict[str, HyperparameterValue]:
        """Every hyperparameter, resolved by the server (defaults filled in)."""
        return hyperparameters_from_proto(self._message.hyperparameters)

    @property
    def model_id(self) -> Optional[int]:
        """The model it produced; None until it succeeds."""
        return self._message.model_id or None

    @property
    def error(self) -> str:
        return self._message.error

    @property
    def device(self) -> str:
        return self._message.device

    @property
    def resumes(self) -> int:
        """Times it resumed from a checkpoint (after a server restart)."""
        return self._message.resumes

    @property
    def studies(self) -> Dict[str, int]:
        """Studies it trains on, by role."""
        m = self._message
        return {"labeled": m.labeled_studies, "unlabeled": m.unlabeled_studies,
                "validation": m.validation_studies}

    @property
    def created(self) -> Optional[datetime.datetime]:
        return _time(self._message.created_unix_ms)

    @property
    def started(self) -> Optional[datetime.datetime]:
        return _time(self._message.started_unix_ms)

    @property
    def finished(self) -> Optional[datetime.datetime]:
        return _time(self._message.finished_unix_ms)

    def __repr__(self) -> str:
        return "Job(id=%d, dataset=%r, state=%s, step=%d/%d%s)" % (
            self.id, self.dataset, self.state.value, self.step, self.total_steps,
            ", model_id=%d" % self.model_id if self.model_id else "")

    # ---- calls -------------------------------------------------------------------------

    def refresh(self) -> "Job":
        self._message = self._connection.unary(
            self._connection.training.GetJob, pb.GetJobRequest(id=self.id), pb.Job)
        return self

    def cancel(self) -> "Job":
        """Asks the server to cancel the job (between two steps); returns self, refreshed.
        Cancelling a finished job is FailedPrecondition."""
        self._message = self._connection.unary(
            self._connection.training.CancelJob, pb.CancelJobRequest(id=self.id), pb.Job)
        return self

    def model(self) -> Optional[Model]:
        """The model the job produced (None unless it succeeded), from a fresh snapshot."""
        if self.model_id is None:
            self.refresh()
        if self.model_id is None:
            return None
        return Model(self._connection, self._connection.unary(
            self._connection.models.GetModel, pb.GetModelRequest(id=self.model_id), pb.Model))

    def watch(self, *, from_step: int = 0, follow: bool = True, reconnect_for: float = 600.0,
              timeout: Optional[float] = None) -> Iterator[JobEvent]:
        """The job's events, stored ones first (from from_step), then live ones as they
        happen, until the job's terminal state event; with follow=False, only the stored
        ones. When the connection is lost (a server restart), it reconnects for up to
        reconnect_for seconds and asks for the events after the last one it yielded
        (after_sequence), so each event comes once, in sequence order. A job resumed from a
        checkpoint re-runs the steps after it: their events come again, with new sequence
        numbers, after the StateEvent that says so. Raises Unavailable when the server stays
        away longer, DeadlineExceeded when timeout seconds pass first, and miseg.Error for
        other failures."""
        deadline = time.monotonic() + (_WATCH_DEADLINE_S if timeout is None else timeout)
        last_sequence = 0
        reconnect_deadline: Optional[float] = None
        backoff = 0.25
        failures = 0
        while True:
            request = pb.WatchJobRequest(id=self.id, from_step=from_step,
                                         after_sequence=last_sequence, no_follow=not follow)
            call = self._connection.training.WatchJob(
                request, metadata=self._connection.metadata,
                timeout=max(0.0, deadline - time.monotonic()))
            ended = False
            stream = self._connection.server_stream(call, pb.JobEvent)
            try:
                for message in stream:
                    failures, backoff, reconnect_deadline = 0, 0.25, None
                    if message.sequence and message.sequence <= last_sequence:
                        continue  # never twice, whatever a server replays
                    last_sequence = max(last_sequence, message.sequence)
                    event = event_from_proto(message)
                    if event is None:
                        continue
                    if isinstance(event, StateEvent) and event.state.terminal:
                        ended = True
                    yield event
                if ended:
                    self._refresh_quietly()  # the snapshot says what the events said
                if ended or not follow:
                    return
                # The stream ended without the terminal event: ask the job itself.
                if self.refresh().state.terminal:
                    return
                lost: Error = Unavailable("the watch ended before the job did")
            except Unavailable as error:
                if ended:
                    return
                if not follow or reconnect_for <= 0:
                    raise
                lost = error
            finally:
                stream.close()  # cancels the call when the caller stops early
            now = time.monotonic()
            if reconnect_deadline is None:
                reconnect_deadline = now + reconnect_for
            give_up = min(reconnect_deadline, deadline)
            if failures > 0 and now < give_up:  # the server answers but refuses: wait a little
                backoff_sleep(min(backoff, give_up - now))
                backoff = min(backoff * 2, 5.0)
            failures += 1
            if not self._connection.wait_until_connected(give_up - time.monotonic()):
                if time.monotonic() >= deadline:
                    raise DeadlineExceeded("job %d did not end within %s s" % (self.id, timeout))
                raise lost

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Error:
            pass  # the events were delivered; a stale snapshot is no reason to fail

    def wait(self, timeout: Optional[float] = None, *, reconnect_for: float = 600.0) -> "Job":
        """Follows the job until it ends (across server restarts, like watch) and returns
        self, refreshed. Raises JobFailed when it failed (a cancelled job returns), and
        DeadlineExceeded when it has not ended within timeout seconds."""
        for _ in self.watch(reconnect_for=reconnect_for, timeout=timeout):
            pass
        self.refresh()
        if self.state == JobState.FAILED:
            raise JobFailed("job %d failed: %s" % (self.id, self.error or "no message"), self.id)
        return self

    def events(self) -> List[JobEvent]:
        """The job's stored events (a snapshot: watch(follow=False))."""
        return list(self.watch(follow=False))

    def history(self) -> "pandas.DataFrame":
        """One row per step: step, each loss term (loss, supervised, consistency,
        mutual_information, unsupervised_weight), learning_rate, steps_per_second,
        slices_per_second, then validation Dice per foreground class (dice_<class>) and
        mean_dice on the steps it was validated (NaN elsewhere). Needs pandas."""
        import pandas

        classes = self._foreground_classes()
        rows: Dict[int, Dict[str, Any]] = {}
        dice_columns = ["dice_" + c for c in classes] + ["mean_dice"]
        for event in self.events():
            if isinstance(event, StepEvent):
                row = rows.setdefault(event.step, {})
                row.update(loss=event.loss, supervised=event.supervised,
                           consistency=event.consistency,
                           mutual_information=event.mutual_information,
                           unsupervised_weight=event.unsupervised_weight,
                           learning_rate=event.learning_rate,
                           steps_per_second=event.steps_per_second,
                           slices_per_second=event.slices_per_second)
            elif isinstance(event, ValidationEvent):
                row = rows.setdefault(event.step, {})
                for name, dice in zip(dice_columns, event.dice_per_class):
                    row[name] = dice
                row["mean_dice"] = event.mean_dice
        columns = (["step", *LOSS_COLUMNS, "learning_rate", "steps_per_second",
                    "slices_per_second"] + dice_columns)
        records = [{"step": step, **values} for step, values in sorted(rows.items())]
        frame = pandas.DataFrame.from_records(records, columns=columns)
        return frame.astype({"step": "int64"}).astype(
            {c: "float64" for c in columns if c != "step"})

    def plot(self, title: Optional[str] = None) -> "matplotlib.figure.Figure":
        """A figure of the history: the loss terms, the learning rate and the validation
        Dice per class against the step. Needs matplotlib (and pandas)."""
        from matplotlib.figure import Figure

        frame = self.history()
        figure = Figure(figsize=(13, 3.8), layout="constrained")
        losses, rate, dice = figure.subplots(1, 3)
        steps = frame["step"]
        for column in ("loss", "supervised", "consistency", "mutual_information"):
            losses.plot(steps, frame[column], label=column.replace("_", " "))
        losses.set_xlabel("step")
        losses.set_title("losses")
        losses.legend(fontsize="small")
        rate.plot(steps, frame["learning_rate"], color="tab:gray")
        rate.set_xlabel("step")
        rate.set_title("learning rate")
        rate.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        validated = frame.dropna(subset=["mean_dice"])
        for column in [c for c in frame.columns if c.startswith("dice_")]:
            dice.plot(validated["step"], validated[column], marker="o",
                      label=column[len("dice_"):].replace("_", " "))
        dice.plot(validated["step"], validated["mean_dice"], marker="s", color="black",
                  linestyle="--", label="mean")
        dice.set_ylim(0, 1)
        dice.set_xlabel("step")
        dice.set_title("validation Dice")
        dice.legend(fontsize="small")
        figure.suptitle(title or "job %d (%s)" % (self.id, self.dataset))
        return figure

    def _foreground_classes(self) -> List[str]:
        dataset = self._connection.unary(self._connection.datasets.GetDataset,
                                         pb.GetDatasetRequest(name=self.dataset), pb.Dataset)
        return list(dataset.class_names[1:])

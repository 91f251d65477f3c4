"""The plain values the client returns (datasets, studies, upload results, job events) as
frozen dataclasses built from the API's messages, and the conversions between the API's
Hyperparameters message and keyword arguments. Nothing here talks to the server."""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from google.protobuf.descriptor import FieldDescriptor

from miseg._proto import pb

Role = Literal["labeled", "unlabeled", "validation"]
"""The role a study plays in training: labeled (image series plus its DICOM SEG), unlabeled
(image series alone, for the unsupervised terms) or validation (series plus SEG, never
trained on)."""

_ROLES: Dict[str, "pb.StudyRole.ValueType"] = {
    "labeled": pb.STUDY_ROLE_LABELED,
    "unlabeled": pb.STUDY_ROLE_UNLABELED,
    "validation": pb.STUDY_ROLE_VALIDATION,
}


def role_to_proto(role: str) -> "pb.StudyRole.ValueType":
    try:
        return _ROLES[role.lower()]
    except (KeyError, AttributeError):
        raise ValueError("role must be one of %s, not %r" % (", ".join(_ROLES), role)) from None


def role_name(role: "pb.StudyRole.ValueType") -> str:
    for name, value in _ROLES.items():
        if value == role:
            return name
    return "unspecified"


def _time(unix_ms: int) -> Optional[datetime.datetime]:
    if unix_ms <= 0:
        return None
    return datetime.datetime.fromtimestamp(unix_ms / 1000.0, tz=datetime.timezone.utc)


class JobState(str, enum.Enum):
    """A training job's state; `terminal` once it can no longer change."""

    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @staticmethod
    def from_proto(value: int) -> "JobState":
        name = pb.JobState.Name(value) if value in pb.JobState.values() else ""
        try:
            return JobState(name[len("JOB_STATE_"):].lower())
        except ValueError:
            return JobState.UNSPECIFIED


@dataclass(frozen=True)
class Dataset:
    """A dataset: its classes (classes[0] is the background), the DICOM modality it takes,
    what it holds, and its active model (None until a job has succeeded)."""

    name: str
    classes: Tuple[str, ...]
    modality: str
    labeled_studies: int
    unlabeled_studies: int
    validation_studies: int
    instances: int
    stored_bytes: int
    active_model_id: Optional[int]
    created: Optional[datetime.datetime]

    @staticmethod
    def from_proto(d: pb.Dataset) -> "Dataset":
        return Dataset(name=d.name, classes=tuple(d.class_names), modality=d.modality,
                       labeled_studies=d.labeled_studies, unlabeled_studies=d.unlabeled_studies,
                       validation_studies=d.validation_studies, instances=d.instances,
                       stored_bytes=d.stored_bytes, active_model_id=d.active_model_id or None,
                       created=_time(d.created_unix_ms))


@dataclass(frozen=True)
class Study:
    """One stored study: an image series (identified by its Series Instance UID within the
    dataset) and, for the labeled and validation roles, its segmentation."""

    dataset: str
    role: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    slices: int
    rows: int
    columns: int
    instances: int
    segmentation_sop_instance_uid: Optional[str]
    created: Optional[datetime.datetime]
    #: SeriesDescription decoded to text (undecodable bytes escaped as \\xNN); "" if none.
    series_description: str = ""
    #: The images were lossy-compressed (JPEG 2000 lossy, JPEG baseline, or the source's
    #: LossyImageCompression "01"): a model may behave differently on them.
    lossy_compressed: bool = False
    #: LossyImageCompressionMethod values, backslash-separated (e.g. "ISO_15444_1").
    lossy_compression_method: str = ""

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(slices, rows, columns): the shape of its labels."""
        return (self.slices, self.rows, self.columns)

    @staticmethod
    def from_proto(s: pb.Study) -> "Study":
        return Study(dataset=s.dataset, role=role_name(s.role),
                     study_instance_uid=s.study_instance_uid,
                     series_instance_uid=s.series_instance_uid, modality=s.modality,
                     slices=s.slices, rows=s.rows, columns=s.columns, instances=s.instances,
                     segmentation_sop_instance_uid=s.segmentation_sop_instance_uid or None,
                     created=_time(s.created_unix_ms),
                     series_description=s.series_description,
                     lossy_compressed=s.lossy_compressed,
                     lossy_compression_method=s.lossy_compression_method)


@dataclass(frozen=True)
class RankPlacement:
    """Where one rank of a running data-parallel job trains."""

    rank: int
    worker: str       # the worker's id
    worker_name: str
    device: str

    @staticmethod
    def from_proto(p: pb.RankPlacement) -> "RankPlacement":
        return RankPlacement(rank=p.rank, worker=p.worker, worker_name=p.worker_name,
                             device=p.device)


@dataclass(frozen=True)
class WorkerDevice:
    """A device of a worker, and the job rank on it (job_id None: free)."""

    device: str
    job_id: Optional[int]
    rank: Optional[int]


_WORKER_STATES = {1: "idle", 2: "busy", 3: "lost"}


@dataclass(frozen=True)
class Worker:
    """A process that trains ranks of jobs: the server's own devices (local) or a
    miseg-worker on another machine."""

    id: str
    name: str
    state: str  # idle, busy or lost
    local: bool
    devices: Tuple[WorkerDevice, ...]
    address: str
    registered: Optional[datetime.datetime]
    last_heartbeat: Optional[datetime.datetime]

    @staticmethod
    def from_proto(w: pb.Worker) -> "Worker":
        devices = tuple(WorkerDevice(device=d.device, job_id=d.job_id or None,
                                     rank=d.rank if d.job_id else None) for d in w.devices)
        return Worker(id=w.id, name=w.name, state=_WORKER_STATES.get(w.state, "unknown"),
                      local=w.local, devices=devices, address=w.address,
                      registered=_time(w.registered_unix_ms),
                      last_heartbeat=_time(w.last_heartbeat_unix_ms))


Outcome = Literal["stored", "duplicate", "refused"]


@dataclass(frozen=True)
class FileResult:
    """What the server did with one uploaded file: stored it, found its SOP Instance UID
    already in the dataset (duplicate), or refused it, saying why (reason)."""

    path: str
    outcome: Outcome
    sop_instance_uid: str
    series_instance_uid: str
    reason: str


@dataclass
class UploadResult:
    """The files of an upload by outcome, the studies it created, and the bytes sent."""

    stored: List[FileResult] = field(default_factory=list)
    duplicate: List[FileResult] = field(default_factory=list)
    refused: List[FileResult] = field(default_factory=list)
    studies: List[Study] = field(default_factory=list)
    bytes_sent: int = 0

    @property
    def reasons(self) -> Dict[str, str]:
        """Why each refused file was refused, by path."""
        return {r.path: r.reason for r in self.refused}

    def __repr__(self) -> str:
        return ("UploadResult(stored=%d, duplicate=%d, refused=%d, studies=%d, bytes_sent=%d)"
                % (len(self.stored), len(self.duplicate), len(self.refused), len(self.studies),
                   self.bytes_sent))


_OUTCOMES: Dict[int, Outcome] = {
    pb.INSTANCE_OUTCOME_STORED: "stored",
    pb.INSTANCE_OUTCOME_DUPLICATE: "duplicate",
    pb.INSTANCE_OUTCOME_REFUSED: "refused",
}


def file_result(path: str, r: pb.InstanceResult) -> FileResult:
    return FileResult(path=path, outcome=_OUTCOMES.get(r.outcome, "refused"),
                      sop_instance_uid=r.sop_instance_uid,
                      series_instance_uid=r.series_instance_uid, reason=r.reason)


# ---- job events ------------------------------------------------------------------------


@dataclass(frozen=True)
class StepEvent:
    """One training step: every term of the objective, the learning rate and throughput."""

    job_id: int
    sequence: int
    unix_ms: int
    step: int
    total_steps: int
    loss: float
    supervised: float
    consistency: float
    mutual_information: float
    unsupervised_weight: float
    learning_rate: float
    steps_per_second: float
    slices_per_second: float


@dataclass(frozen=True)
class ValidationEvent:
    """Validation Dice per foreground class (classes 1..K-1 of the dataset) at a step."""

    job_id: int
    sequence: int
    unix_ms: int
    step: int
    dice_per_class: Tuple[float, ...]
    mean_dice: float


@dataclass(frozen=True)
class StateEvent:
    """The job changed state (queued, running, succeeded, ...); message says why, e.g.
    "resumed from step 400" or a failed job's error."""

    job_id: int
    sequence: int
    unix_ms: int
    state: JobState
    step: int
    message: str


JobEvent = Union[StepEvent, ValidationEvent, StateEvent]


def event_from_proto(e: pb.JobEvent) -> Optional[JobEvent]:
    kind = e.WhichOneof("event")
    if kind == "step":
        s = e.step
        return StepEvent(job_id=e.job_id, sequence=e.sequence, unix_ms=e.unix_ms, step=s.step,
                         total_steps=s.total_steps, loss=s.loss, supervised=s.supervised,
                         consistency=s.consistency, mutual_information=s.mutual_information,
                         unsupervised_weight=s.unsupervised_weight,
                         learning_rate=s.learning_rate, steps_per_second=s.steps_per_second,
                         slices_per_second=s.slices_per_second)
    if kind == "validation":
        v = e.validation
        return ValidationEvent(job_id=e.job_id, sequence=e.sequence, unix_ms=e.unix_ms,
                               step=v.step, dice_per_class=tuple(v.dice_per_class),
                               mean_dice=v.mean_dice)
    if kind == "state":
        st = e.state
        return StateEvent(job_id=e.job_id, sequence=e.sequence, unix_ms=e.unix_ms,
                          state=JobState.from_proto(st.state), step=st.step, message=st.message)
    return None  # an event kind newer than this client


# ---- hyperparameters -------------------------------------------------------------------

HyperparameterValue = Union[int, float, str, Sequence[int]]
"""A value for Client.train's keyword arguments: numbers, "mse"/"kl" for consistency, a
list of ints for widths."""

_CONSISTENCY: Dict[str, int] = {"mse": pb.CONSISTENCY_LOSS_MSE, "kl": pb.CONSISTENCY_LOSS_KL}
_OBJECTIVES: Dict[str, int] = {"mi": pb.OBJECTIVE_MI, "labeled_only": pb.OBJECTIVE_LABELED_ONLY,
               "entropy": pb.OBJECTIVE_ENTROPY, "mean_teacher": pb.OBJECTIVE_MEAN_TEACHER,
               "consistency_only": pb.OBJECTIVE_CONSISTENCY_ONLY, "mi_only": pb.OBJECTIVE_MI_ONLY}
# The enum fields, by name: what their strings mean, and the default of an unset one.
_ENUMS: Dict[str, Tuple[Mapping[str, int], str]] = {
    "consistency": (_CONSISTENCY, "mse"), "objective": (_OBJECTIVES, "mi")}
_INTEGER_TYPES = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
                  FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32)


def hyperparameter_names() -> List[str]:
    """The keyword arguments Client.train accepts besides steps: the fields of the API's
    Hyperparameters message (a server with more fields is one regenerated stub away)."""
    return [f.name for f in pb.Hyperparameters.DESCRIPTOR.fields]


def hyperparameters_to_proto(values: Mapping[str, HyperparameterValue]) -> pb.Hyperparameters:
    """The message for keyword arguments named like its fields. TypeError for an unknown
    name or a value of the wrong type, ValueError for an unknown consistency loss."""
    message = pb.Hyperparameters()
    fields = pb.Hyperparameters.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        f = fields.get(name)
        if f is None:
            raise TypeError("unknown hyperparameter %r; known: %s"
                            % (name, ", ".join(hyperparameter_names())))
        if f.label == FieldDescriptor.LABEL_REPEATED:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise TypeError("%s takes a list of ints, not %r" % (name, value))
            getattr(message, name).extend(int(v) for v in value)
        elif f.type == FieldDescriptor.TYPE_ENUM:
            names = _ENUMS[name][0]
            if not isinstance(value, str) or value.lower() not in names:
                raise ValueError("%s takes one of %s, not %r" % (name, ", ".join(names), value))
            setattr(message, name, names[value.lower()])
        elif f.type in _INTEGER_TYPES:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError("%s takes an int, not %r" % (name, value))
            setattr(message, name, value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError("%s takes a number, not %r" % (name, value))
            setattr(message, name, float(value))
    return message


def hyperparameters_from_proto(h: pb.Hyperparameters) -> Dict[str, HyperparameterValue]:
    """A job's resolved hyperparameters by name (consistency as "mse" or "kl")."""
    out: Dict[str, HyperparameterValue] = {}
    for f in pb.Hyperparameters.DESCRIPTOR.fields:
        value = getattr(h, f.name)
        if f.label == FieldDescriptor.LABEL_REPEATED:
            out[f.name] = [int(v) for v in value]
        elif f.type == FieldDescriptor.TYPE_ENUM:
            names, default = _ENUMS[f.name]
            out[f.name] = {v: k for k, v in names.items()}.get(value, default)
        elif f.has_presence and not h.HasField(f.name):
            continue
        else:
            out[f.name] = value if isinstance(value, (int, float)) else str(value)
    return out

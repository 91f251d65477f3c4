"""miseg: the Python client of a miseg-server, for notebooks.

    import miseg
    client = miseg.Client()               # MISEG_ADDRESS, MISEG_TOKEN, ... as the CLI
    client.create_dataset("cardiac", ["background", "right_ventricle", "myocardium",
                                      "left_ventricle"])
    client.upload("cardiac", "studies/labeled", role="labeled")
    job = client.train("cardiac", steps=2000, w_mi=0.1)
    job.wait()
    job.history()                         # a pandas DataFrame; job.plot() a figure
    result = client.segment("cardiac", "study-folder")
    result.labels                         # numpy (slices, rows, columns)

Errors are miseg.Error subclasses named after their gRPC status (miseg.NotFound, ...).
"""

from miseg._client import Client
from miseg._dicom import SourceGrid, decode_segmentation, source_grid
from miseg._errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded,
                           Error, FailedPrecondition, Internal, InvalidArgument, JobFailed,
                           NotFound, OutOfRange, PermissionDenied, ResourceExhausted,
                           Unauthenticated, Unavailable, Unimplemented, Unknown)
from miseg._jobs import LOSS_COLUMNS, Job, Model
from miseg._segmentation import Segmentation
from miseg._types import (Dataset, FileResult, HyperparameterValue, JobEvent, JobState,
                          RankPlacement, Role, StateEvent, StepEvent, Study, UploadResult,
                          ValidationEvent, Worker, WorkerDevice, hyperparameter_names)

__version__ = "0.1.0"

__all__ = [
    "Client", "Dataset", "Study", "FileResult", "UploadResult", "Job", "Model", "JobState",
    "JobEvent", "StepEvent", "ValidationEvent", "StateEvent", "Segmentation", "Role",
    "HyperparameterValue", "hyperparameter_names", "LOSS_COLUMNS", "SourceGrid",
    "source_grid", "decode_segmentation", "Worker", "WorkerDevice", "RankPlacement",
    "Error", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    "JobFailed",
]

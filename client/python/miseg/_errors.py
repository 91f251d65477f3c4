"""miseg's exceptions: one class per gRPC status code, all under miseg.Error, so a notebook
catches what it can handle (`except miseg.NotFound`) and reads the server's own message
(`str(error)`, `error.message`). `error_from_rpc` converts a grpc.RpcError once, at the
edge of this package (the C++ side does the same with absl::Status); nothing else here
raises grpc's exceptions."""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc


class Error(Exception):
    """Base of every error the server or the connection reports. `code` is the gRPC status
    code's name (e.g. "NOT_FOUND"), `message` the server's explanation."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message or self.code


class Cancelled(Error):
    code = "CANCELLED"


class Unknown(Error):
    code = "UNKNOWN"


class InvalidArgument(Error):
    code = "INVALID_ARGUMENT"


class DeadlineExceeded(Error):
    code = "DEADLINE_EXCEEDED"


class NotFound(Error):
    code = "NOT_FOUND"


class AlreadyExists(Error):
    code = "ALREADY_EXISTS"


class PermissionDenied(Error):
    code = "PERMISSION_DENIED"


class ResourceExhausted(Error):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(Error):
    code = "FAILED_PRECONDITION"


class Aborted(Error):
    code = "ABORTED"


class OutOfRange(Error):
    code = "OUT_OF_RANGE"


class Unimplemented(Error):
    code = "UNIMPLEMENTED"


class Internal(Error):
    code = "INTERNAL"


class Unavailable(Error):
    code = "UNAVAILABLE"


class DataLoss(Error):
    code = "DATA_LOSS"


class Unauthenticated(Error):
    code = "UNAUTHENTICATED"


class JobFailed(Error):
    """Job.wait() on a job that ended FAILED; `job_id` names it, the message is the job's
    error. Not a gRPC status: the calls themselves succeeded."""

    code = "JOB_FAILED"

    def __init__(self, message: str, job_id: int) -> None:
        super().__init__(message)
        self.job_id = job_id


# Every gRPC status code but OK, by name (grpc.StatusCode members are named like this).
ERROR_CLASSES: Dict[str, Type[Error]] = {
    cls.code: cls
    for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
                Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)
}


def error_from_rpc(error: grpc.RpcError) -> Error:
    """The miseg.Error for a failed call: the class of its status code, the server's
    details as the message."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    name = str(getattr(code, "name", "UNKNOWN"))
    details = error.details() if callable(getattr(error, "details", None)) else None
    message = str(details) if details else name.lower().replace("_", " ")
    return ERROR_CLASSES.get(name, Unknown)(message, name)

"""The gRPC channel to a miseg-server and the one place calls are made: bearer token,
deadlines, TLS, and grpc.RpcError converted to miseg.Error. Client, Job and Model share one
Connection. Thread safety: a Connection (a grpc channel and immutable settings) may be used
from several threads at once."""

from __future__ import annotations

import os
import time
from typing import Any, Generator, Iterable, List, Optional, Tuple, Type, TypeVar

import grpc
from google.protobuf.message import Message

from miseg._errors import error_from_rpc
from miseg._proto import pb_grpc

ResponseT = TypeVar("ResponseT", bound=Message)

DEFAULT_ADDRESS = "127.0.0.1:50051"

# Reconnection after a server restart: gRPC's own backoff between connection attempts,
# kept short (it defaults to 1 s growing to 120 s) so a watch resumes within seconds of the
# server's return. The same bounds as the C++ client's watch.
_CHANNEL_OPTIONS: List[Tuple[str, int]] = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


def _setting(value: Optional[str], variable: str) -> Optional[str]:
    if value is not None:
        return value
    from_env = os.environ.get(variable)
    return from_env if from_env else None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Connection:
    """Settings come from the arguments, else from the environment variables the CLI reads
    (MISEG_ADDRESS, MISEG_TOKEN, MISEG_TLS_CA, MISEG_TLS_CERT, MISEG_TLS_KEY,
    MISEG_TLS_SERVER_NAME), else the defaults (127.0.0.1:50051, no token, no TLS)."""

    def __init__(self, address: Optional[str], token: Optional[str], tls_ca: Optional[str],
                 tls_cert: Optional[str], tls_key: Optional[str],
                 tls_server_name: Optional[str], timeout: float) -> None:
        self.address = _setting(address, "MISEG_ADDRESS") or DEFAULT_ADDRESS
        token = _setting(token, "MISEG_TOKEN")
        tls_ca = _setting(tls_ca, "MISEG_TLS_CA")
        tls_cert = _setting(tls_cert, "MISEG_TLS_CERT")
        tls_key = _setting(tls_key, "MISEG_TLS_KEY")
        tls_server_name = _setting(tls_server_name, "MISEG_TLS_SERVER_NAME")
        self.timeout = timeout
        self.metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", "Bearer " + token),) if token else ())
        self.tls = tls_ca is not None
        options: List[Tuple[str, Any]] = list(_CHANNEL_OPTIONS)
        if tls_ca is None:
            if tls_cert or tls_key:
                raise ValueError("a client certificate needs TLS: give tls_ca (MISEG_TLS_CA) too")
            self.channel: Any = grpc.insecure_channel(self.address, options=options)
        else:
            if bool(tls_cert) != bool(tls_key):
                raise ValueError("mutual TLS needs both tls_cert and tls_key")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca),
                private_key=_read(tls_key) if tls_key else None,
                certificate_chain=_read(tls_cert) if tls_cert else None)
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            self.channel = grpc.secure_channel(self.address, credentials, options=options)
        self.datasets = pb_grpc.DatasetServiceStub(self.channel)
        self.training = pb_grpc.TrainingServiceStub(self.channel)
        self.models = pb_grpc.ModelServiceStub(self.channel)
        self.segmentation = pb_grpc.SegmentationServiceStub(self.channel)
        self.workers = pb_grpc.WorkerServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def unary(self, method: Any, request: Message, response_type: Type[ResponseT],
              timeout: Optional[float] = None) -> ResponseT:
        """Calls a unary method (a stub's attribute) with the token and a deadline."""
        try:
            response = method(request, metadata=self.metadata,
                              timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        if not isinstance(response, response_type):
            raise TypeError("%s answered a %s" % (method, type(response).__name__))
        return response

    def stream_unary(self, method: Any, requests: Iterable[Message],
                     response_type: Type[ResponseT], timeout: float) -> ResponseT:
        try:
            response = method(iter(requests), metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        if not isinstance(response, response_type):
            raise TypeError("%s answered a %s" % (method, type(response).__name__))
        return response

    def server_stream(self, call: Any, response_type: Type[ResponseT]
                      ) -> Generator[ResponseT, None, None]:
        """The responses of a started server-streaming call; the call is cancelled when the
        iteration stops early (break, an exception, garbage collection)."""
        try:
            for response in call:
                if not isinstance(response, response_type):
                    raise TypeError("a stream answered a %s" % type(response).__name__)
                yield response
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        finally:
            call.cancel()

    def wait_until_connected(self, timeout: float) -> bool:
        """Blocks until the channel connects (the server is back) or timeout passes."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=max(timeout, 0.0))
            return True
        except grpc.FutureTimeoutError:
            return False


def backoff_sleep(seconds: float) -> None:
    """The pause between two failed reconnection attempts to a server that accepts
    connections but refuses the call (one that is shutting down)."""
    time.sleep(seconds)

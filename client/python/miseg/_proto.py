"""The generated miseg.v1 messages and stubs (protoc, CMake target `miseg_python`), imported
in one place so that a package installed without them says how to get them."""

try:
    from miseg.v1 import miseg_pb2 as pb
    from miseg.v1 import miseg_pb2_grpc as pb_grpc
except ImportError as error:  # pragma: no cover - only on a package built without CMake
    raise ImportError(
        "miseg's generated gRPC stubs (miseg/v1/miseg_pb2.py) are missing: build the CMake "
        "target miseg_python (cmake --build build --target miseg_python), then reinstall "
        "client/python") from error

__all__ = ["pb", "pb_grpc"]

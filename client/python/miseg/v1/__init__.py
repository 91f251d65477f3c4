"""The miseg.v1 API as protoc generates it: miseg_pb2 (messages, with .pyi types from
mypy-protobuf) and miseg_pb2_grpc (stubs). CMake writes them here (target miseg_python,
client/python/CMakeLists.txt); git ignores them."""

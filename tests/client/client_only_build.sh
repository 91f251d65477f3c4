#!/bin/sh
# The client-only build: configures with MISEG_CLIENT_ONLY (as `cmake --preset client-only`
# does), finds no LibTorch, and builds a `miseg` CLI that links no LibTorch, SQLite or
# Prometheus and runs. Usage: client_only_build.sh SOURCE_DIR SCRATCH_DIR
set -eu
source_dir=$1
build=$2
rm -rf "$build"
cmake -S "$source_dir" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMISEG_CLIENT_ONLY=ON \
  >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
if grep -q '^Torch_DIR:' "$build/CMakeCache.txt"; then
  echo "the client-only configure looked up LibTorch:"; grep '^Torch_DIR' "$build/CMakeCache.txt"
  exit 1
fi
cmake --build "$build" --target miseg >"$build.build.log" 2>&1 || { tail -50 "$build.build.log"; exit 1; }
if ldd "$build/client/miseg" | grep -E 'libtorch|libc10|libsqlite3|libprometheus'; then
  echo "the client-only miseg links the libraries above"
  exit 1
fi
"$build/client/miseg" --help >/dev/null
echo "client-only build: miseg built without LibTorch"

#!/usr/bin/env bash
# Installs every Debian 12 package miseg needs to build, run and test.
# The one install script: the README's commands and .ci/run all start here, so a
# fresh machine and CI get exactly the same set. Idempotent: a second run is quick.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config
  # training core
  libtorch-dev libabsl-dev libgloo-dev
  # libopenblas0-serial, not the pthread variant: with the pthread one, civetweb
  # (under prometheus-cpp's Exposer) cannot start its threads (measured here). The serial
  # build is not thread safe; core/train/blas.cc serialises LibTorch's calls into it.
  libopenblas0-serial
  # server, client, DICOM
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev libdcmtk-dev dcmtk
  prometheus-cpp-dev libsqlite3-dev libcurl4-openssl-dev libssl-dev openssl zlib1g-dev
  # tests
  libgtest-dev libgmock-dev clang libclang-rt-14-dev dicom3tools orthanc orthanc-dicomweb
  prometheus python3-pydicom python3-grpcio
  # the Python client (client/python), its notebook and their tests
  python3-protobuf python3-numpy python3-pandas python3-matplotlib python3-tqdm python3-venv
  python3-setuptools python3-wheel python3-pytest mypy mypy-protobuf jupyter-nbconvert
  python3-nbformat python3-ipykernel
  # the CLI on a real terminal (tests/client/cli_screen_e2e_test.py)
  tmux
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The pthread OpenBLAS must go: it shadows the serial one through alternatives.
if dpkg-query -W -f='${Status}' libopenblas0-pthread 2>/dev/null | grep -q "install ok installed"; then
  missing+=("libopenblas0-pthread-")
fi

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${missing[*]}"

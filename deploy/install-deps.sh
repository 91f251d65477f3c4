#!/usr/bin/env bash
# Installs every Debian 12 package miseg needs to build, run and test.
# The one install script: the README's commands and .ci/run all start here, so a
# fresh machine and CI get exactly the same set. Idempotent: a second run is quick.
#
#   deploy/install-deps.sh           everything (build, tests, containers, the k8s check)
#   deploy/install-deps.sh --build   only what compiling miseg-server, miseg-worker and miseg
#                                    needs (the container image's build stage uses this)
set -euo pipefail

mode=all
case "${1:-}" in
  "") ;;
  --build) mode=build ;;
  *) echo "usage: $0 [--build]" >&2; exit 2 ;;
esac

build_packages=(
  # build
  build-essential cmake ninja-build pkg-config ccache
  # training core
  libtorch-dev libabsl-dev libgloo-dev
  # libopenblas0-serial, not the pthread variant: with the pthread one, civetweb
  # (under prometheus-cpp's Exposer) cannot start its threads (measured here). The serial
  # build is not thread safe; core/train/blas.cc serialises LibTorch's calls into it.
  libopenblas0-serial
  # server, client, DICOM
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev libdcmtk-dev
  prometheus-cpp-dev libsqlite3-dev libcurl4-openssl-dev libssl-dev zlib1g-dev
  # JPEG 2000 decoding in core/dicom
  libopenjp2-7-dev
)
packages=("${build_packages[@]}")
if [[ $mode == all ]]; then
  packages+=(
    dcmtk openssl sqlite3
    # tests
    libgtest-dev libgmock-dev clang libclang-rt-14-dev dicom3tools orthanc orthanc-dicomweb
    prometheus python3-pydicom python3-grpcio
    # the Python client (client/python), its notebook and their tests
    python3-protobuf python3-numpy python3-pandas python3-matplotlib python3-tqdm python3-venv
    python3-setuptools python3-wheel python3-pytest mypy mypy-protobuf jupyter-nbconvert
    python3-nbformat python3-ipykernel
    # PyTorch eager reference (bench/reference) and exported-model tests; JPEG 2000 tools
    python3-torch libopenjp2-tools
    # the CLI on a real terminal (tests/client/cli_screen_e2e_test.py)
    tmux
    # containers (deploy/container, deploy/compose and their tests): podman with runc
    # (crun fails on setrlimit on hybrid cgroups), CNI networks with name resolution
    # between a stack's containers, a local Debian base image made by mmdebstrap
    podman podman-compose runc containernetworking-plugins
    golang-github-containernetworking-plugin-dnsname slirp4netns uidmap catatonit
    mmdebstrap prometheus-alertmanager curl
  )
  # The Kubernetes schema check (deploy/k8s/check-schema.mjs) runs on Node.js with npm;
  # a machine that already has both (e.g. from another repository) keeps its own.
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    packages+=(nodejs npm)
  fi
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The pthread OpenBLAS must go: it shadows the serial one through alternatives.
if dpkg-query -W -f='${Status}' libopenblas0-pthread 2>/dev/null | grep -q "install ok installed"; then
  missing+=("libopenblas0-pthread-")
fi

sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
else
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  echo "install-deps: installed ${missing[*]}"
fi
[[ $mode == all ]] || exit 0

# kubectl renders the Kubernetes manifests (kubectl kustomize); it is not a Debian 12
# package recent enough (kubernetes-client is 1.20, without kustomize v5), so it must come
# with the machine.
command -v kubectl >/dev/null ||
  echo "install-deps: warning: no kubectl (1.27 or later): the Kubernetes manifest test will fail" >&2

# The Kubernetes OpenAPI models the schema check uses: npm packages pinned, with their
# integrity hashes, by deploy/k8s/schema/package-lock.json, installed outside the
# repository (MISEG_K8S_SCHEMA_DIR, default /usr/local/lib/miseg-k8s-schema). Reinstalled
# only when the lock file changes.
schema_src="$(cd "$(dirname "$0")" && pwd)/k8s/schema"
schema_dir="${MISEG_K8S_SCHEMA_DIR:-/usr/local/lib/miseg-k8s-schema}"
if ! cmp -s "$schema_src/package-lock.json" "$schema_dir/package-lock.json" ||
   [[ ! -d $schema_dir/node_modules/@kubernetes/client-node ]]; then
  "${sudo_cmd[@]}" mkdir -p "$schema_dir"
  "${sudo_cmd[@]}" cp "$schema_src/package.json" "$schema_src/package-lock.json" "$schema_dir/"
  (cd "$schema_dir" && "${sudo_cmd[@]}" npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "install-deps: installed the Kubernetes schema packages in $schema_dir"
fi

#!/usr/bin/env bash
# Brings miseg's trial stack up on this machine (compose.yaml): builds the images it lacks
# (miseg, Orthanc, Prometheus; all from a locally made Debian 12 base, no registry needed),
# starts miseg-server, Orthanc, Prometheus and Alertmanager with podman-compose, and waits
# until miseg answers SERVING, Orthanc answers and Prometheus is ready.
#
#   deploy/compose/up.sh [--build] [--project=NAME]
#
#   --build           build the images again even if present
#   --project=NAME    the compose project (default $MISEG_COMPOSE_PROJECT or miseg): its
#                     containers, network and volumes are named after it
# Host ports (all on 127.0.0.1) from the environment: MISEG_GRPC_PORT (50051),
# MISEG_METRICS_PORT (9464), MISEG_DICOM_PORT (11112), ORTHANC_HTTP_PORT (8042),
# ORTHANC_DICOM_PORT (4242), PROMETHEUS_PORT (9090), ALERTMANAGER_PORT (9093).
# Down again: deploy/compose/down.sh [--volumes].
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../container/podman-env.sh
source "$repo/deploy/container/podman-env.sh"

build=0
project="${MISEG_COMPOSE_PROJECT:-miseg}"
for arg in "$@"; do
  case "$arg" in
    --build) build=1 ;;
    --project=*) project="${arg#--project=}" ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "up: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
for tool in podman podman-compose curl; do
  command -v "$tool" >/dev/null || { echo "up: $tool is not installed (deploy/install-deps.sh)" >&2; exit 1; }
done
version="$(sed -n 's/^project(miseg VERSION \([0-9.]*\).*/\1/p' "$repo/CMakeLists.txt")"
export MISEG_VERSION="$version"
log() { echo "up: $*" >&2; }

if ((build)) || ! podman image exists "localhost/miseg:$version"; then
  log "building localhost/miseg:$version (about 8 minutes on 2 cores the first time)"
  "$repo/deploy/container/build-image.sh" >/dev/null
fi
base=""
for part in orthanc prometheus; do
  image="localhost/miseg-$part:$version"
  if ((build)) || ! podman image exists "$image"; then
    [[ -n $base ]] || base="$("$repo/deploy/container/base-image.sh")"
    log "building $image"
    podman build --quiet --pull=never --network=host --format=oci --build-arg "BASE=$base" \
      -t "$image" -f "$here/$part/Containerfile" "$here/$part" >/dev/null
  fi
done

log "starting project $project"
(cd "$here" && podman-compose -p "$project" -f compose.yaml up -d) >/dev/null

# Ready means answering, not merely started: each waited on with a generous deadline.
wait_for() {  # description, deadline in seconds, command...
  local what="$1" deadline=$(( $(date +%s) + $2 )); shift 2
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) > deadline )); then
      log "$what did not come up; the logs: podman logs ${project}_<service>_1"
      return 1
    fi
    sleep 1
  done
  log "$what is up"
}
wait_for "miseg-server (gRPC health SERVING)" 180 \
  podman exec "${project}_miseg_1" /usr/local/bin/miseg health --quiet
wait_for "Orthanc" 120 curl -sf "http://127.0.0.1:${ORTHANC_HTTP_PORT:-8042}/system"
wait_for "Prometheus" 120 curl -sf "http://127.0.0.1:${PROMETHEUS_PORT:-9090}/-/ready"
wait_for "Alertmanager" 120 curl -sf "http://127.0.0.1:${ALERTMANAGER_PORT:-9093}/-/ready"
cat >&2 <<EOT
up: the stack $project runs:
  miseg gRPC     127.0.0.1:${MISEG_GRPC_PORT:-50051}   (miseg --address=127.0.0.1:${MISEG_GRPC_PORT:-50051} health)
  miseg metrics  http://127.0.0.1:${MISEG_METRICS_PORT:-9464}/metrics
  Orthanc        http://127.0.0.1:${ORTHANC_HTTP_PORT:-8042}/  (DICOM 127.0.0.1:${ORTHANC_DICOM_PORT:-4242}, AE ORTHANC)
  Prometheus     http://127.0.0.1:${PROMETHEUS_PORT:-9090}/
  Alertmanager   http://127.0.0.1:${ALERTMANAGER_PORT:-9093}/
EOT

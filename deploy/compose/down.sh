#!/usr/bin/env bash
# Stops and removes the trial stack's containers and network (deploy/compose/up.sh);
# --volumes also removes its data (miseg's data directory, Orthanc's storage, Prometheus's).
#   deploy/compose/down.sh [--volumes] [--project=NAME]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../container/podman-env.sh
source "$repo/deploy/container/podman-env.sh"
volumes=() project="${MISEG_COMPOSE_PROJECT:-miseg}"
for arg in "$@"; do
  case "$arg" in
    --volumes|-v) volumes=(--volumes) ;;
    --project=*) project="${arg#--project=}" ;;
    *) echo "down: unknown argument $arg" >&2; exit 2 ;;
  esac
done
export MISEG_VERSION="$(sed -n 's/^project(miseg VERSION \([0-9.]*\).*/\1/p' "$repo/CMakeLists.txt")"
# miseg-server checkpoints a running job on SIGTERM: stop_grace_period gives it time.
cd "$here" && podman-compose -p "$project" -f compose.yaml down "${volumes[@]}" >/dev/null
# podman-compose 1.0.3 leaves the project's network behind (and with it a CNI subnet).
if podman network exists "${project}_default"; then
  podman network rm -f "${project}_default" >/dev/null
fi
echo "down: project $project stopped${volumes:+, its volumes removed}" >&2

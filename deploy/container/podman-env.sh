# Sourced by miseg's container scripts (build-image.sh, deploy/compose/up.sh, the tests):
# podman with the settings of this folder, unless the caller set its own.
# MISEG_PODMAN_SYSTEM=1 keeps the machine's own /etc/containers configuration instead.
_miseg_container_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ "${MISEG_PODMAN_SYSTEM:-0}" != 1 ]]; then
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$_miseg_container_dir/containers.conf}"
  export CONTAINERS_STORAGE_CONF="${CONTAINERS_STORAGE_CONF:-$_miseg_container_dir/storage.conf}"
fi
unset _miseg_container_dir

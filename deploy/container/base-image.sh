#!/usr/bin/env bash
# Prints the name of a Debian 12 base image for miseg's images, making it first if needed.
#
#   deploy/container/base-image.sh [--base=local|registry|IMAGE] [--cache-dir=DIR]
#
#   local     (default) made here by mmdebstrap from the Debian archive, no container
#             registry needed: localhost/miseg-base:debian12-<ISO week>. Its tarball is
#             kept in DIR/base and made again once a week (about 15 s to 70 s), so a
#             week's builds share it; a fresh machine makes it on first use.
#   registry  debian:12 from the registry podman is configured for (pulled if missing)
#   IMAGE     any Debian 12 image, present or pullable
# DIR: $MISEG_CACHE_DIR, else /var/cache/miseg when writable, else ~/.cache/miseg.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=podman-env.sh
source "$here/podman-env.sh"

base=local
cache_dir="${MISEG_CACHE_DIR:-}"
for arg in "$@"; do
  case "$arg" in
    --base=*) base="${arg#--base=}" ;;
    --cache-dir=*) cache_dir="${arg#--cache-dir=}" ;;
    *) echo "base-image: unknown argument $arg" >&2; exit 2 ;;
  esac
done
if [[ -z $cache_dir ]]; then
  if mkdir -p /var/cache/miseg 2>/dev/null && [[ -w /var/cache/miseg ]]; then
    cache_dir=/var/cache/miseg
  else
    cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/miseg"
  fi
fi

case "$base" in
  local)
    week="$(date -u +%G-W%V)"
    image="localhost/miseg-base:debian12-$week"
    if ! podman image exists "$image"; then
      mkdir -p "$cache_dir/base"
      tarball="$cache_dir/base/debian12-$week.tar"
      if [[ ! -s $tarball ]]; then
        command -v mmdebstrap >/dev/null ||
          { echo "base-image: mmdebstrap is not installed (deploy/install-deps.sh)" >&2; exit 1; }
        echo "base-image: making a Debian 12 base with mmdebstrap ($tarball)" >&2
        # Under a temporary name, renamed when complete: an interrupted run never leaves a
        # truncated tarball that a later run would trust.
        mmdebstrap --quiet --variant=apt bookworm "$tarball.partial.tar" >&2
        mv "$tarball.partial.tar" "$tarball"
      fi
      find "$cache_dir/base" -name 'debian12-*.tar' ! -name "debian12-$week.tar" -delete
      echo "base-image: importing $tarball as $image" >&2
      podman import --quiet "$tarball" "$image" >/dev/null
    fi
    ;;
  registry)
    image="docker.io/library/debian:12"
    podman image exists "$image" || podman pull --quiet "$image" >/dev/null
    ;;
  *)
    image="$base"
    podman image exists "$image" || podman pull --quiet "$image" >/dev/null
    ;;
esac
echo "$image"

#!/usr/bin/env bash
# Builds the miseg image, localhost/miseg:<version> (OCI), from the working tree: a build
# stage that compiles miseg-server, miseg-worker and miseg, and a slim runtime stage with
# their shared libraries only (deploy/container/Containerfile). Works without any registry.
#
#   deploy/container/build-image.sh [--base=local|registry|IMAGE] [--tag=NAME:TAG]
#       [--save=FILE.tar] [--no-cache] [--prune] [--cache-dir=DIR]
#
#   --base=local      (default) a Debian 12 base made here by mmdebstrap from the Debian
#                     archive (no container registry needed), imported as
#                     localhost/miseg-base:debian12-<ISO week>; its tarball is kept in
#                     --cache-dir and remade once a week, so a week's builds share it
#   --base=registry   debian:12 pulled from the registry podman is configured for
#   --base=IMAGE      any Debian 12 image already present or pullable
#   --save=FILE.tar   also export the image as an OCI archive (podman save --format oci-archive)
#   --no-cache        build every layer anew (otherwise unchanged layers are reused)
#   --prune           remove dangling images afterwards (earlier builds' layers)
#   --cache-dir=DIR   where the base tarball and the compiler cache (ccache) are kept
#                     (default $MISEG_CACHE_DIR or /var/cache/miseg, else ~/.cache/miseg);
#                     an empty one makes a build from nothing
#
# Prints the image name on its last line. Podman runs with deploy/container's settings
# (podman-env.sh). About 7 minutes on 2 cores from nothing (bench/RESULTS.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=podman-env.sh
source "$here/podman-env.sh"

base=local tag="" save="" no_cache=0 prune=0
cache_dir="${MISEG_CACHE_DIR:-}"
for arg in "$@"; do
  case "$arg" in
    --base=*) base="${arg#--base=}" ;;
    --tag=*) tag="${arg#--tag=}" ;;
    --save=*) save="${arg#--save=}" ;;
    --no-cache) no_cache=1 ;;
    --prune) prune=1 ;;
    --cache-dir=*) cache_dir="${arg#--cache-dir=}" ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z $cache_dir ]]; then
  if mkdir -p /var/cache/miseg 2>/dev/null && [[ -w /var/cache/miseg ]]; then
    cache_dir=/var/cache/miseg
  else
    cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/miseg"
  fi
fi

command -v podman >/dev/null || { echo "build-image: podman is not installed (deploy/install-deps.sh)" >&2; exit 1; }
version="$(sed -n 's/^project(miseg VERSION \([0-9.]*\).*/\1/p' "$repo/CMakeLists.txt")"
[[ -n $version ]] || { echo "build-image: no version in CMakeLists.txt" >&2; exit 1; }
tag="${tag:-localhost/miseg:$version}"
log() { echo "build-image: $*" >&2; }

# ---- the base image -----------------------------------------------------------------------
base_image="$("$here/base-image.sh" --base="$base" --cache-dir="$cache_dir")"
log "base: $base_image"

# ---- the build context: the files git knows (tracked, and untracked but not ignored) ------
context="$(mktemp -d "${TMPDIR:-/tmp}/miseg-image-context.XXXXXX")"
trap 'rm -rf "$context"' EXIT
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
     while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done |
     tar --null -T - -cf - | tar -xf - -C "$context")
else
  (cd "$repo" && tar --exclude='./build' --exclude='./build-*' --exclude='./.git' -cf - . |
     tar -xf - -C "$context")
fi

# ---- build ----------------------------------------------------------------------------------
mkdir -p "$cache_dir/ccache"
build_args=(--pull=never --network=host --format=oci --layers -v "$cache_dir/ccache:/ccache"
            --build-arg "BASE=$base_image" --build-arg "VERSION=$version"
            -f "$context/deploy/container/Containerfile" -t "$tag")
((no_cache)) && build_args+=(--no-cache)
start=$(date +%s)
podman build "${build_args[@]}" "$context" >&2
log "built $tag in $(( $(date +%s) - start )) s; size $(podman image inspect --format '{{.Size}}' "$tag") bytes"
((prune)) && podman image prune -f >/dev/null
if [[ -n $save ]]; then
  rm -f "$save"
  podman save --quiet --format oci-archive -o "$save" "$tag"
  log "saved $save ($(stat -c %s "$save") bytes)"
fi
echo "$tag"

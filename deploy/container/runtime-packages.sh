#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries the given executables load
# (ldd, followed through symlinks and /etc/alternatives), one a line: what the image's
# runtime stage installs, so that it carries no compiler, header or static library.
set -euo pipefail
declare -A seen=()
for binary in "$@"; do
  while read -r lib; do
    [[ -n $lib ]] || continue
    for path in "$lib" "$(readlink -f "$lib")" "/usr${lib#/usr}" "${lib#/usr}"; do
      if owner=$(dpkg-query -S "$path" 2>/dev/null); then
        for pkg in $(echo "${owner%%: *}" | tr ',' ' '); do seen[${pkg%%:*}]=1; done
        break
      fi
    done
  done < <(ldd "$binary" | awk '/=> \// {print $3} /^\t\// {print $1}')
done
# Loaded at run time, not linked: the serial OpenBLAS behind libblas.so.3's alternative
# (see deploy/install-deps.sh) and the CA certificates for STOW-RS over HTTPS.
seen[libopenblas0-serial]=1
seen[ca-certificates]=1
printf '%s\n' "${!seen[@]}" | sort

#!/usr/bin/env bash
# Install gfortran (Debian package) and link it into DEST/bin (idempotent): the exoplasim-sweep data job and
# its tests compile ExoPlaSim's Fortran core with it.
set -euo pipefail
dest=${1:?usage: install-gfortran.sh DEST}
mkdir -p "$dest/bin"
# Look for gfortran outside DEST/bin (the Makefile puts it first on PATH): never link the link to itself.
system_path=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$dest/bin" | paste -sd: -)
if ! PATH=$system_path command -v gfortran >/dev/null 2>&1; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    gfortran
fi
ln -sf "$(PATH=$system_path command -v gfortran)" "$dest/bin/gfortran"
"$dest/bin/gfortran" --version | head -1

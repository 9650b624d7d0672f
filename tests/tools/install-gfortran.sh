#!/usr/bin/env bash
# Install gfortran (Debian package) and link it into DEST/bin (idempotent): the exoplasim-sweep data job and
# its tests compile ExoPlaSim's Fortran core with it.
set -euo pipefail
dest=${1:?usage: install-gfortran.sh DEST}
mkdir -p "$dest/bin"
if ! command -v gfortran >/dev/null 2>&1; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    gfortran
fi
ln -sf "$(command -v gfortran)" "$dest/bin/gfortran"
"$dest/bin/gfortran" --version | head -1

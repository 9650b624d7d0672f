#!/usr/bin/env bash
# Install PostgreSQL (Debian package `postgresql`) and link initdb, pg_ctl, postgres and pg_isready into DEST/bin
# (idempotent). The tests start their own server on 127.0.0.1 (tests/trainer/postgres.py); the Debian
# service is not needed.
set -euo pipefail
dest=${1:?usage: install-postgres.sh DEST}
mkdir -p "$dest/bin"
find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
bindir=$(find_bin)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    postgresql
  bindir=$(find_bin)
fi
for tool in initdb pg_ctl postgres pg_isready; do
  ln -sf "$bindir/$tool" "$dest/bin/$tool"
done
"$dest/bin/postgres" --version

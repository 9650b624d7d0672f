#!/usr/bin/env bash
# Install prometheus and promtool (Debian package) and link them into DEST/bin (idempotent).
set -euo pipefail
dest=${1:?usage: install-prometheus.sh DEST}
mkdir -p "$dest/bin"
if ! command -v /usr/bin/prometheus >/dev/null || ! command -v /usr/bin/promtool >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    prometheus
fi
for tool in prometheus promtool; do
  ln -sf "/usr/bin/$tool" "$dest/bin/$tool"
done
"$dest/bin/promtool" --version | head -1

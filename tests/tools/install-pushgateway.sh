#!/usr/bin/env bash
# Install prometheus-pushgateway (Debian package) and link it into DEST/bin (idempotent).
set -euo pipefail
dest=${1:?usage: install-pushgateway.sh DEST}
mkdir -p "$dest/bin"
if ! [ -x /usr/bin/prometheus-pushgateway ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    prometheus-pushgateway
fi
ln -sf /usr/bin/prometheus-pushgateway "$dest/bin/prometheus-pushgateway"
"$dest/bin/prometheus-pushgateway" --version 2>&1 | head -1

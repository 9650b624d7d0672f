#!/usr/bin/env bash
# Install a one-node Ceph with the S3 gateway (radosgw, ceph-mon, ceph-osd from Debian) and link the
# binaries the tests start into DEST/bin (idempotent). tests/datajobs/s3server.py starts the cluster.
set -euo pipefail
dest=${1:?usage: install-ceph.sh DEST}
mkdir -p "$dest/bin"
tools=(radosgw radosgw-admin ceph ceph-mon ceph-osd ceph-authtool monmaptool)
missing=0
for tool in "${tools[@]}"; do [ -x "/usr/bin/$tool" ] || missing=1; done
if [ "$missing" = 1 ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    radosgw ceph-mon ceph-osd
fi
for tool in "${tools[@]}"; do ln -sf "/usr/bin/$tool" "$dest/bin/$tool"; done
"$dest/bin/radosgw" --version | head -1

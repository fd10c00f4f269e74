#!/usr/bin/env bash
# The chaos harness over COUNT seeds (1..COUNT), then the tally (README "Chaos harness"):
# seeds passed and failed (naming the failing ones), the faults injected by kind and the
# SIGKILL/SIGTERM stops and crash-point aborts. Works from a fresh clone: sets up moto (.venv)
# and builds tkgops-crashpoint and tkgops-sandbox once, then runs the sandbox binary directly per seed. Each seed's full output
# is kept in target/chaos/seed-N.log. Exit 0 only when every seed passed the audit.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:?usage: scripts/chaos.sh COUNT}"
scripts/setup-venv.sh >&2
export TKGOPS_MOTO_SERVER="${TKGOPS_MOTO_SERVER:-$PWD/.venv/bin/moto_server}"
echo "==> building tkgops-crashpoint and tkgops-sandbox" >&2
cargo build --locked --quiet -p tkgops-sandbox --bin tkgops-sandbox --bin tkgops-crashpoint >&2
target_dir="$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
logs="${target_dir}/chaos"
mkdir -p "$logs"
pass=0 fail=0 failed=() kills=0 terms=0 aborts=0
declare -A faults=()
for seed in $(seq 1 "$count"); do
  log="${logs}/seed-${seed}.log"
  if "${target_dir}/debug/tkgops-sandbox" --chaos --seed "$seed" --exit >"$log" 2>&1; then
    pass=$((pass + 1)); verdict=passed
  else
    fail=$((fail + 1)); failed+=("$seed"); verdict=FAILED
  fi
  echo "seed ${seed}: ${verdict} (${log})"
  grep -E '^(violation|error)' "$log" | sed "s/^/  seed ${seed}: /" || true
  kills=$((kills + $(grep -c '^==> chaos: SIGKILL' "$log" || true)))
  terms=$((terms + $(grep -c '^==> chaos: SIGTERM' "$log" || true)))
  aborts=$((aborts + $(grep -c '^==> chaos: bot [0-9]* aborted at crash point' "$log" || true)))
  while IFS= read -r f; do
    faults["$f"]=$(( ${faults["$f"]:-0} + 1 ))
  done < <(sed -n 's/^==> chaos: injecting //p' "$log")
done
echo "chaos: ${count} seed(s), ${pass} passed, ${fail} failed${failed:+ (seeds: ${failed[*]})}"
echo "stops: ${kills} SIGKILL, ${terms} SIGTERM, ${aborts} crash-point aborts"
echo "faults injected by kind:"
for f in "${!faults[@]}"; do printf '  %4d  %s\n' "${faults[$f]}" "$f"; done | sort -rn
[ "$fail" -eq 0 ]

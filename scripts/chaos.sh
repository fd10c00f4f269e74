#!/usr/bin/env bash
# The chaos harness over COUNT seeds (1..COUNT, or FIRST..COUNT with CHAOS_FIRST), then the tally
# (README "Chaos harness"): seeds passed and failed (naming the failing ones), the faults
# injected by kind, the SIGKILL/SIGTERM stops and the crash-point aborts. Works from a fresh
# clone: sets up moto (.venv) and builds tkgops-crashpoint and tkgops-sandbox once, then runs the
# sandbox binary directly per seed, CHAOS_JOBS seeds at a time (default 1; each seed is its own
# sandbox on its own loopback ports). Each seed's full output is kept in
# target/chaos/seed-N.log; a failing seed's sandbox (bot logs bot-<n>.log, journal, config
# repository) is kept in target/chaos/seed-N.d. Exit 0 only when every seed passed the audit.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:?usage: [CHAOS_JOBS=N] [CHAOS_FIRST=N] scripts/chaos.sh COUNT}"
first="${CHAOS_FIRST:-1}"
jobs="${CHAOS_JOBS:-1}"
scripts/setup-venv.sh >&2
export TKGOPS_MOTO_SERVER="${TKGOPS_MOTO_SERVER:-$PWD/.venv/bin/moto_server}"
echo "==> building tkgops-crashpoint and tkgops-sandbox" >&2
cargo build --locked --quiet -p tkgops-sandbox --bin tkgops-sandbox --bin tkgops-crashpoint >&2
target_dir="$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
logs="${target_dir}/chaos"
mkdir -p "$logs"

# Runs one seed; its verdict goes to seed-N.verdict.
run_seed() {
  local seed="$1" log="${logs}/seed-$1.log" dir="${logs}/seed-$1.d"
  rm -rf "$dir"
  if "${target_dir}/debug/tkgops-sandbox" --chaos --seed "$seed" --exit --workdir "$dir" >"$log" 2>&1; then
    echo passed >"${logs}/seed-${seed}.verdict"
    rm -rf "$dir"
  else
    echo FAILED >"${logs}/seed-${seed}.verdict"
  fi
  echo "seed ${seed}: $(cat "${logs}/seed-${seed}.verdict") (${log})"
}

running=0
for seed in $(seq "$first" "$count"); do
  rm -f "${logs}/seed-${seed}.verdict"
  run_seed "$seed" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

pass=0 fail=0 failed=() kills=0 terms=0 aborts=0
declare -A faults=()
for seed in $(seq "$first" "$count"); do
  log="${logs}/seed-${seed}.log"
  if [ "$(cat "${logs}/seed-${seed}.verdict" 2>/dev/null)" = passed ]; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1)); failed+=("$seed")
    grep -E '^(violation|error)' "$log" | sed "s/^/  seed ${seed}: /" || true
  fi
  kills=$((kills + $(grep -c '^==> chaos: SIGKILL' "$log" || true)))
  terms=$((terms + $(grep -c '^==> chaos: SIGTERM' "$log" || true)))
  aborts=$((aborts + $(grep -c '^==> chaos: bot [0-9]* aborted at crash point' "$log" || true)))
  while IFS= read -r f; do
    faults["$f"]=$(( ${faults["$f"]:-0} + 1 ))
  done < <(sed -n 's/^==> chaos: injecting //p' "$log")
done
total=$((count - first + 1))
echo "chaos: ${total} seed(s), ${pass} passed, ${fail} failed${failed:+ (seeds: ${failed[*]})}"
echo "stops: ${kills} SIGKILL, ${terms} SIGTERM, ${aborts} crash-point aborts"
echo "faults injected by kind:"
for f in "${!faults[@]}"; do printf '  %4d  %s\n' "${faults[$f]}" "$f"; done | sort -rn
[ "$fail" -eq 0 ]

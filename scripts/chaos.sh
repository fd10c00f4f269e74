#!/usr/bin/env bash
# The chaos harness over COUNT seeds (1..COUNT): `scripts/sandbox.sh --chaos --seed N --exit`
# each, then the tally (README "Chaos harness"). Exit 0 only when every seed passed the audit.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:?usage: scripts/chaos.sh COUNT}"
pass=0 fail=0 failed=()
for seed in $(seq 1 "$count"); do
  if out=$(scripts/sandbox.sh --chaos --seed "$seed" --exit 2>/dev/null); then
    pass=$((pass + 1))
  else
    fail=$((fail + 1)); failed+=("$seed")
  fi
  grep -E '^(==> chaos seed|violation|exactly-once audit)' <<<"$out" | sed "s/^/seed $seed: /" || true
done
echo "chaos: $count seed(s), $pass passed, $fail failed${failed:+ (seeds: ${failed[*]})}"
[ "$fail" -eq 0 ]

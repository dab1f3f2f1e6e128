#!/usr/bin/env bash
# Before/after on the same machine in one go: scenario a of `-t all`, three runs per rate,
# alternating between two builds so both see the same machine.
#
#   deploy/local/bench-compare.sh <before-binary> <after-binary> [rates...]   # default 5000 8000 12000
#
# Build each binary first (e.g. a worktree at the old commit with `cargo build --release`, copied
# aside into its own folder: the load tool finds workers by an executable named `nexxus-worker`).
# Results: target/bench-compare/<before|after>-<rate>-<run>.json and a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $# -ge 2 ]] || { echo "usage: $0 <before-binary> <after-binary> [rates...]" >&2; exit 64; }
declare -A BIN=([before]=$(realpath "$1") [after]=$(realpath "$2"))
shift 2
RATES=${*:-5000 8000 12000}
OUT=target/bench-compare
mkdir -p "$OUT"
cargo build --release --bin nexxus-load >&2
for rate in $RATES; do
  for run in 1 2 3; do
    for which in before after; do
      echo "[bench-compare] $which rate=$rate run=$run load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
      NO_BUILD=1 NEXXUS_WORKER_BIN=${BIN[$which]} DURATION=${DURATION:-20} RATE_A=$rate \
        deploy/local/bench-e2e.sh all a >"$OUT/$which-$rate-$run.log" 2>&1
      cp target/bench-e2e/all-a.json "$OUT/$which-$rate-$run.json"
    done
  done
done
python3 - "$OUT" $RATES <<'PY'
import json, statistics, sys
out, rates = sys.argv[1], [int(r) for r in sys.argv[2:]]
print("| changes/s | run | binary | sent/s | received / expected | lost / dup | p50 | p99 | max | worker CPU |")
print("|---|---|---|---|---|---|---|---|---|---|")
med = {}
for rate in rates:
    for run in (1, 2, 3):
        for which in ("before", "after"):
            d = json.load(open(f"{out}/{which}-{rate}-{run}.json"))
            w = next(p for p in d["processes"] if p["name"] == "all-0")
            l = d["latency"]
            med.setdefault((rate, which), []).append((l["p50_ms"], l["p99_ms"], w["cpu_seconds"]))
            print(f"| {rate} | {run} | {which} | {d['changes_per_s']:.0f} | {d['deliveries_received']} / "
                  f"{d['deliveries_expected']} | {d['lost']} / {d['duplicates']} | {l['p50_ms']} ms | "
                  f"{l['p99_ms']} ms | {l['max_ms']} ms | {w['cpu_seconds']} s |")
print()
print("| changes/s | p50 before → after | p99 before → after | worker CPU before → after |")
print("|---|---|---|---|")
for rate in rates:
    b, a = med[(rate, "before")], med[(rate, "after")]
    m = lambda xs, i: statistics.median(x[i] for x in xs)
    print(f"| {rate} | {m(b,0)} → {m(a,0)} ms | {m(b,1)} → {m(a,1)} ms | {m(b,2)} → {m(a,2)} s |")
PY

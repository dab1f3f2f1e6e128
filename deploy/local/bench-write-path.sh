#!/usr/bin/env bash
# Benchmark of the write path on the local stack: release workers (aggregation-0, write-0) and
# the load generator examples/bench_write_path.rs, with coalescing on (linger 5 ms) and off.
# Prints a Markdown table row per run; see BENCHMARKS.md for the method.
#   deploy/local/bench-write-path.sh [COUNT] [RATE...]
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${1:-50000}
shift || true
RATES=("${@:-0}")
deploy/local/up.sh
cargo build --release --bin nexxus-worker --example bench_write_path
set -a; source deploy/local/stack.env; set +a
BIN=target/release/nexxus-worker
echo "| updates | rate | sent/s | delivered/s | p50 ms | p90 ms | p99 ms | max ms | patches seen | events | linger |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for linger in 5 0; do
  for rate in "${RATES[@]}"; do
    export TP_TOPIC_PREFIX="bench$(date +%s%N)." TP_SCYLLA_KEYSPACE="bench$(date +%s)" TP_HTTP_PORT=0 TP_LOG_LEVEL=warn
    export TP_AGGREGATION_LINGER_MS=$linger
    $BIN topics apply >/dev/null
    printf '{"id":"bench","schema":{"task":{}}}' >/tmp/bench-app.json
    $BIN app put /tmp/bench-app.json 2>/dev/null
    $BIN -t aggregation -i 0 2>/tmp/bench-agg.log & agg=$!
    $BIN -t write -i 0 2>/tmp/bench-write.log & wr=$!
    sleep 3
    row=$(target/release/examples/bench_write_path --count "$COUNT" --rate "$rate" 2>/tmp/bench-gen.log)
    echo "$row $linger |"
    kill -TERM $agg $wr; wait $agg $wr || true
  done
done

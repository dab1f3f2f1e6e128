#!/usr/bin/env bash
# What the dependencies alone do on this machine (BENCHMARKS.md, "Dependency limits"): a raw
# Kafka produce → consume round trip with the workers' clients (plain and transactional), and
# raw CQL writes and reads with the writer's driver session, three runs each.
#
#   deploy/local/bench-limits.sh
#   RUNS=3 SECONDS_PER=15 RATES="1000 5000 20000 0" MODES="plain txn" CQL_BATCHES="500 20" deploy/local/bench-limits.sh
#   KEEP=1 MODES= CQL_BATCHES=20 deploy/local/bench-limits.sh   # add rows to the last results
#
# Rate 0 is as fast as the producer accepts. CQL batches of 500 are the writer's full batches
# (TP_BATCH_SIZE) under load; batches of 20 are what it takes at about 1,000 changes/s. Results:
# target/bench-limits/*.json (one file per Kafka run, one JSON line per CQL round), uptime.log
# (load before each run) and limits.md.
set -euo pipefail
shopt -s nullglob # a kind of run not made this time has no files: no rows
cd "$(dirname "$0")/../.."
source deploy/local/lib.sh
source deploy/local/kafka.sh
source deploy/local/cassandra.sh
RUNS=${RUNS:-3}
SECONDS_PER=${SECONDS_PER:-15}
read -ra RATES <<<"${RATES:-1000 5000 20000 0}"
read -ra MODES <<<"${MODES-plain txn}"
read -ra CQL_BATCHES <<<"${CQL_BATCHES-500 20}"
OUT=target/bench-limits
BIN=${CARGO_TARGET_DIR:-target}/release/examples
mkdir -p "$OUT"
[[ -n ${KEEP:-} ]] || rm -f "$OUT"/*.json "$OUT"/uptime.log

# A stack another clone started on the same ports is used as it is (up.sh would refuse the ports).
if ! { port_open "$KAFKA_PORT" && port_open "$CASSANDRA_PORT" && [[ -f $ENV_FILE ]]; }; then
  deploy/local/up.sh
fi
cargo build --release --example bench_raw_kafka --example bench_raw_cql >&2
set -a
source "$ENV_FILE"
set +a
export TP_LOG_LEVEL=${TP_LOG_LEVEL:-warn}

# The server's pid: this clone's pid file, else the process listening on its port (a stack
# another clone started), else 0 (its CPU is then not reported). Not `pgrep -f`: short-lived
# commands naming the server's class would match too.
server_pid() {
  local pid
  pid=$(live_pid "$1" "$2" || ss -Hltnp "sport = :$3" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
  echo "${pid:-0}"
}
KAFKA_PID=$(server_pid "$KAFKA_PIDF" "$KAFKA_MATCH" "$KAFKA_PORT")
CASSANDRA_PID=$(server_pid "$CASSANDRA_PIDF" "$CASSANDRA_MATCH" "$CASSANDRA_PORT")
log "kafka pid $KAFKA_PID, cassandra pid $CASSANDRA_PID, $(nproc) cores"

note_load() {
  echo "$1: $(uptime)" | tee -a "$OUT/uptime.log" >&2
}

for run in $(seq 1 "$RUNS"); do
  for mode in "${MODES[@]}"; do
    for rate in "${RATES[@]}"; do
      note_load "kafka $mode rate $rate run $run"
      "$BIN/bench_raw_kafka" --mode "$mode" --rate "$rate" --seconds "$SECONDS_PER" --kafka-pid "$KAFKA_PID" \
        >"$OUT/kafka-$mode-$rate-run$run.json"
    done
  done
  for batch in "${CQL_BATCHES[@]}"; do
    note_load "cql batch $batch run $run"
    "$BIN/bench_raw_cql" --batch "$batch" --seconds "$SECONDS_PER" --cassandra-pid "$CASSANDRA_PID" |
      jq -c ". + {run: $run}" >"$OUT/cql-$batch-run$run.json"
  done
done

# Markdown: one row per run, then the median of the runs per configuration.
MD="$OUT/limits.md"
{
  echo "### Kafka round trip (offered rate 0 = as fast as the producer accepts)"
  echo
  echo "| mode | offered/s | run | sent/s | received/s | lost | p50 ms | p99 ms | max ms | mean batch | commit p50 ms | txn p50 / p99 ms | bench CPU | Kafka CPU | load (1 min) before |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for f in "$OUT"/kafka-*.json; do
    run=${f##*-run}
    jq -r --arg run "${run%.json}" '"| \(.mode) | \(if .offered_rate == 0 then "max" else .offered_rate end) | \($run) | \(.sent_per_s) | \(.received_per_s) | \(.lost) | \(.latency.p50_ms) | \(.latency.p99_ms) | \(.latency.max_ms) | \(.mean_batch) | \(.commit.p50_ms) | \(if .transaction then "\(.transaction.p50_ms) / \(.transaction.p99_ms)" else "—" end) | \(.cpu_cores.bench) | \(.cpu_cores.kafka) | \(.load_average_before[0]) |"' "$f"
  done
  echo
  echo "Median of the runs:"
  echo
  echo "| mode | offered/s | received/s | p50 ms | p99 ms | max ms | bench CPU | Kafka CPU |"
  echo "|---|---|---|---|---|---|---|---|"
  cat "$OUT"/kafka-*.json /dev/null | jq -s -r 'def med(f): map(f) | sort | .[(length - 1) / 2 | floor];
    group_by([.mode, .offered_rate]) | sort_by(.[0].mode, (.[0].offered_rate | if . == 0 then 1e12 else . end))[]
    | "| \(.[0].mode) | \(if .[0].offered_rate == 0 then "max" else .[0].offered_rate end) | \(med(.received_per_s)) | \(med(.latency.p50_ms)) | \(med(.latency.p99_ms)) | \(med(.latency.max_ms)) | \(med(.cpu_cores.bench)) | \(med(.cpu_cores.kafka)) |"'
  echo
  echo "### CQL, 64 statements in flight"
  echo
  echo "| round | batch | run | objects/s | statements/s | batch p50 ms | batch p99 ms | batch max ms | statement p50 / p99 ms | bench CPU | Cassandra CPU | load (1 min) before |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  cat "$OUT"/cql-*.json /dev/null | jq -r '"| \(.round) | \(.batch) | \(.run) | \(.objects_per_s) | \(.statements_per_s) | \(.batch_latency.p50_ms) | \(.batch_latency.p99_ms) | \(.batch_latency.max_ms) | \(if .statement_latency then "\(.statement_latency.p50_ms) / \(.statement_latency.p99_ms)" else "—" end) | \(.cpu_cores.bench) | \(.cpu_cores.cassandra) | \(.load_average_before[0]) |"'
  echo
  echo "Median of the runs:"
  echo
  echo "| round | batch | objects/s | batch p50 ms | batch p99 ms | Cassandra CPU |"
  echo "|---|---|---|---|---|---|"
  cat "$OUT"/cql-*.json /dev/null | jq -s -r 'def med(f): map(f) | sort | .[(length - 1) / 2 | floor];
    group_by([.batch, .round]) | sort_by(-.[0].batch)[] | "| \(.[0].round) | \(.[0].batch) | \(med(.objects_per_s)) | \(med(.batch_latency.p50_ms)) | \(med(.batch_latency.p99_ms)) | \(med(.cpu_cores.cassandra)) |"'
} >"$MD"
cat "$MD"

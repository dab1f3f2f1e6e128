#!/usr/bin/env bash
# End-to-end benchmark with the load tool (src/bin/load/, method in BENCHMARKS.md).
#
#   deploy/local/bench-e2e.sh stack [a b c d]   # every role its own process on the local Kafka, Cassandra, Redis
#   deploy/local/bench-e2e.sh all   [a b c d]   # one `-t all` process on its embedded defaults
#
# Scenarios (rates override with RATE_A, RATE_B, RATE_C; DURATION for all):
#   a  sustained updates, 1,000 clients × 3 channels (of 1,000: 3 subscribers per channel)
#   b  fan-out of one channel to 10,000 clients
#   c  filtered subscriptions (score >= 50) with enter/leave, 1,000 clients × 2 channels (of 100)
#   d  idle connections, memory per connection (50,000 over three sockets transports with the
#      stack; 19,000 on the one of `-t all`: the sandbox allows 20,000 open files per process)
# TOPICS_DIR=<dir> (stack): apply that topic layout instead of ./topics (BENCHMARKS: partitions).
# Results: target/bench-e2e/<mode>-<scenario>.json and a Markdown file per mode. Every process
# started here is stopped at the end; nothing runs longer than the scenarios.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-all}
shift || true
SCENARIOS=${*:-a b c d}
DURATION=${DURATION:-30}
OUT=target/bench-e2e
mkdir -p "$OUT"
MD="$OUT/$MODE.md"
: >"$MD"
# NO_BUILD=1: use the binaries as they are (bench-compare.sh runs two builds alternately).
[[ ${NO_BUILD:-0} == 1 ]] || cargo build --release --bin nexxus-worker --bin nexxus-load >&2
W=${NEXXUS_WORKER_BIN:-target/release/nexxus-worker}
L=target/release/nexxus-load
pids=()
cleanup() {
  [[ ${#pids[@]} -gt 0 ]] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
export TP_LOG_LEVEL=warn TP_HTTP_HOST=127.0.0.1 TP_SCKT_HOST=127.0.0.1

wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

case $MODE in
  stack)
    deploy/local/up.sh >&2
    set -a; source deploy/local/stack.env; set +a
    export TP_TOPIC_PREFIX="be$(date +%s)."
    # TOPICS_DIR: another topic layout (e.g. fewer partitions) than ./topics.
    $W topics apply ${TOPICS_DIR:+--dir "$TOPICS_DIR"} >&2
    TP_HTTP_PORT=19100 $W -t aggregation -i 0 & pids+=($!)
    TP_HTTP_PORT=19101 $W -t write -i 0 & pids+=($!)
    TP_HTTP_PORT=19102 $W -t track -i 0 & pids+=($!)
    TP_HTTP_PORT=19103 $W -t transport_manager -i 0 & pids+=($!)
    WS=()
    for i in 0 1 2; do
      TP_HTTP_PORT=$((19104 + i)) TP_SCKT_PORT=$((13100 + i)) $W -t sockets_transport -i $i & pids+=($!)
      WS+=("ws://127.0.0.1:$((13100 + i))")
      wait_port $((13100 + i))
    done
    # Measure only once every role owns its partitions and has caught up (/readyz).
    READY=$(printf 'http://127.0.0.1:%s/readyz,' 19100 19101 19102 19103 19104 19105 19106)
    TARGET=(--target kafka --ready "${READY%,}")
    ONE_WS=${WS[0]}
    ALL_WS=$(IFS=,; echo "${WS[*]}")
    IDLE_CLIENTS=50000
    ;;
  all)
    DATA=$(mktemp -d)
    TP_SQLITE_PATH=$DATA/nexxus.db TP_HTTP_PORT=18180 TP_SCKT_PORT=13180 $W -t all & pids+=($!)
    wait_port 18180
    wait_port 13180
    TARGET=(--target http --http http://127.0.0.1:18180 --ready http://127.0.0.1:18180/readyz)
    ONE_WS=ws://127.0.0.1:13180
    ALL_WS=$ONE_WS
    IDLE_CLIENTS=19000
    ;;
  *) echo "usage: $0 stack|all [a b c d]" >&2; exit 64 ;;
esac
sleep 3

for s in $SCENARIOS; do
  case $s in
    a) args=(--clients 1000 --subs 3 --channels 1000 --seed 12 --rate "${RATE_A:-5000}" --ws "$ALL_WS") ;;
    b) args=(--clients 10000 --subs 1 --channels 1 --seed 50 --mix 0,1,0 --rate "${RATE_B:-20}" --ws "$ONE_WS") ;;
    c) args=(--clients 1000 --subs 2 --channels 100 --filtered 1 --seed 40 --mix 5,90,5 --rate "${RATE_C:-2000}" --ws "$ALL_WS") ;;
    d) args=(--idle --clients "$IDLE_CLIENTS" --ws "$ALL_WS") ;;
    *) echo "unknown scenario $s" >&2; exit 64 ;;
  esac
  echo "[bench-e2e] $MODE scenario $s: ${args[*]}" >&2
  $L --scenario "$s" "${TARGET[@]}" --duration "$DURATION" "${args[@]}" --out "$OUT/$MODE-$s.json" --md "$MD"
done
echo "[bench-e2e] results: $OUT/$MODE-*.json, $MD" >&2

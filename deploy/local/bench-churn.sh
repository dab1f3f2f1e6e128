#!/usr/bin/env bash
# Snapshot and resume under churn, and snapshot time, with the load tool (src/bin/load/churn.rs,
# src/bin/load/snaptime.rs; method and results in BENCHMARKS.md, "Snapshot and resume").
#
#   deploy/local/bench-churn.sh stack   # every role its own process on the local Kafka, Cassandra, Redis
#   deploy/local/bench-churn.sh all     # one `-t all` process on its embedded defaults
#
# 1. churn: CLIENTS (200) clients × SUBS (2) subscriptions over CHANNELS (20) channels, FILTERED
#    (0.25) of them filtered by score >= 50, SEED (50) objects per channel, RATE (300) changes/s
#    for DURATION (60) s; each client drops its connection every CHURN_EVERY (10) s on average
#    (exponential), stays offline OFFLINE_MS (200,3000: uniform) and resumes from its cursor. The
#    tool exits non-zero when a client ends with an object lost or an entry applied twice.
# 2. snapshot time: for each size in SNAPSHOT_SIZES ("10000 100000"), one channel filled with that
#    many objects through the write path, then SNAPSHOT_RUNS (5) subscribes with a snapshot.
#    Each fill is bounded by FILL_TIMEOUT (900) s: what is stored by then is measured, and the
#    report says "NOT FILLED". The whole script therefore ends within about
#    DURATION + 2 min + 2 × (FILL_TIMEOUT + 2 min).
# OVERLAP_MS, SETTLE_MS, PING_MS, WINDOW_MS: the servers' TP_RESUME_OVERLAP_MS,
# TP_SNAPSHOT_SETTLE_MS, TP_SCKT_PING_MS, TP_RESUME_WINDOW_MS (defaults otherwise: 60 s, 2 s,
# 25 s, 24 h). A WINDOW_MS of a few seconds makes most resumes answer RESYNC_REQUIRED, so the
# clients take snapshots (and their settle catch-ups) while changes flow.
# RUN=<tag> names the results: target/bench-churn/<mode>-<tag>-churn.json, <mode>-<tag>-snap<N>.json
# and <mode>-<tag>.md. Every process started here is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-all}
RUN=${RUN:-1}
OUT=target/bench-churn
mkdir -p "$OUT"
MD="$OUT/$MODE-$RUN.md"
: >"$MD"
# NO_BUILD=1: use the binaries as they are.
[[ ${NO_BUILD:-0} == 1 ]] || cargo build --release --bin nexxus-worker --bin nexxus-load >&2
W=${NEXXUS_WORKER_BIN:-target/release/nexxus-worker}
L=target/release/nexxus-load
pids=()
DATA=
cleanup() {
  [[ ${#pids[@]} -gt 0 ]] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  if [[ -n $DATA ]]; then rm -rf "$DATA"; fi
}
trap cleanup EXIT INT TERM
export TP_LOG_LEVEL=warn TP_HTTP_HOST=127.0.0.1 TP_SCKT_HOST=127.0.0.1
[[ -n ${OVERLAP_MS:-} ]] && export TP_RESUME_OVERLAP_MS=$OVERLAP_MS
[[ -n ${SETTLE_MS:-} ]] && export TP_SNAPSHOT_SETTLE_MS=$SETTLE_MS
[[ -n ${PING_MS:-} ]] && export TP_SCKT_PING_MS=$PING_MS
[[ -n ${WINDOW_MS:-} ]] && export TP_RESUME_WINDOW_MS=$WINDOW_MS
# The machine as the run found it (others may share it).
machine() { echo "- $1: \`nproc\` $(nproc), $(free -g | awk '/^Mem:/ {print $2 " GiB, " $7 " GiB available"}'), load average $(cut -d' ' -f1-3 /proc/loadavg)"; }
{
  echo "## bench-churn $MODE, run $RUN ($(date -u +%FT%TZ), $(git rev-parse --short HEAD))"
  echo
  echo "Server settings: TP_RESUME_OVERLAP_MS=${TP_RESUME_OVERLAP_MS:-default} TP_SNAPSHOT_SETTLE_MS=${TP_SNAPSHOT_SETTLE_MS:-default} TP_SCKT_PING_MS=${TP_SCKT_PING_MS:-default} TP_RESUME_WINDOW_MS=${TP_RESUME_WINDOW_MS:-default}"
  echo
  machine start
} >>"$MD"

wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

case $MODE in
  stack)
    deploy/local/up.sh >&2
    set -a; source deploy/local/stack.env; set +a
    export TP_TOPIC_PREFIX="bc$(date +%s)."
    $W topics apply >&2
    TP_HTTP_PORT=19200 $W -t aggregation -i 0 & pids+=($!)
    TP_HTTP_PORT=19201 $W -t write -i 0 & pids+=($!)
    TP_HTTP_PORT=19202 $W -t track -i 0 & pids+=($!)
    TP_HTTP_PORT=19203 $W -t transport_manager -i 0 & pids+=($!)
    WS=()
    for i in 0 1 2; do
      TP_HTTP_PORT=$((19204 + i)) TP_SCKT_PORT=$((13200 + i)) $W -t sockets_transport -i $i & pids+=($!)
      WS+=("ws://127.0.0.1:$((13200 + i))")
      wait_port $((13200 + i))
    done
    READY=$(printf 'http://127.0.0.1:%s/readyz,' 19200 19201 19202 19203 19204 19205 19206)
    TARGET=(--target kafka --ready "${READY%,}")
    ALL_WS=$(IFS=,; echo "${WS[*]}")
    ;;
  all)
    DATA=$(mktemp -d)
    TP_SQLITE_PATH=$DATA/nexxus.db TP_HTTP_PORT=18280 TP_SCKT_PORT=13280 $W -t all & pids+=($!)
    wait_port 18280
    wait_port 13280
    TARGET=(--target http --http http://127.0.0.1:18280 --ready http://127.0.0.1:18280/readyz)
    ALL_WS=ws://127.0.0.1:13280
    ;;
  *) echo "usage: $0 stack|all" >&2; exit 64 ;;
esac
sleep 3

status=0
churn=(--churn --clients "${CLIENTS:-200}" --subs "${SUBS:-2}" --channels "${CHANNELS:-20}" --filtered "${FILTERED:-0.25}"
  --seed "${SEED:-50}" --rate "${RATE:-300}" --duration "${DURATION:-60}" --churn-every "${CHURN_EVERY:-10}"
  --offline-ms "${OFFLINE_MS:-200,3000}" --settle-ms "${SETTLE_MS:-2000}" --drain 120 --quiet 15)
echo "[bench-churn] $MODE run $RUN churn: ${churn[*]}" >&2
$L --scenario "churn ($MODE, run $RUN)" "${TARGET[@]}" --ws "$ALL_WS" "${churn[@]}" \
  --out "$OUT/$MODE-$RUN-churn.json" --md "$MD" || status=$?

for n in ${SNAPSHOT_SIZES:-10000 100000}; do
  echo "[bench-churn] $MODE run $RUN snapshot of $n objects (fill bounded by ${FILL_TIMEOUT:-900} s)" >&2
  $L --scenario "snapshot of $n objects ($MODE, run $RUN)" "${TARGET[@]}" --ws "${ALL_WS%%,*}" \
    --snapshot-objects "$n" --snapshot-runs "${SNAPSHOT_RUNS:-5}" --fill-timeout "${FILL_TIMEOUT:-900}" \
    --out "$OUT/$MODE-$RUN-snap$n.json" --md "$MD" || status=$?
done
{ echo; machine end; echo; } >>"$MD"
echo "[bench-churn] results: $OUT/$MODE-$RUN-*.json, $MD" >&2
exit $status

#!/usr/bin/env bash
# `make run`: the main job on this machine. Starts the local stack, creates the topics, registers
# the demo application and runs every role that exists so far (aggregation-0, write-0, track-0,
# transport_manager-0) until
# Ctrl-C. When the single-process mode lands (issue 8) this becomes `nexxus-worker -t all`.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/up.sh
set -a; source deploy/local/stack.env; set +a
export TP_HTTP_HOST=127.0.0.1
BIN=target/release/nexxus-worker
$BIN topics apply
$BIN app put deploy/local/demo-app.json
pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping workers..." >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT
TP_HTTP_PORT=9100 $BIN -t aggregation -i 0 & pids+=($!)
TP_HTTP_PORT=9101 $BIN -t write -i 0 & pids+=($!)
TP_HTTP_PORT=9102 $BIN -t track -i 0 & pids+=($!)
TP_HTTP_PORT=9103 $BIN -t transport_manager -i 0 & pids+=($!)
cat >&2 <<MSG

nexxus-worker is running against the local stack (Kafka $TP_KFK_BROKERS, Cassandra $TP_SCYLLA_NODES):
  aggregation-0  health/metrics on http://127.0.0.1:9100/readyz and /metrics
  write-0        health/metrics on http://127.0.0.1:9101/readyz and /metrics
  track-0, transport_manager-0   on ports 9102 and 9103

Try, in another terminal:
  set -a; . deploy/local/stack.env; set +a
  # a device subscribes to the tasks of context c1 ...
  printf '%s\n' '{"op":"device_register","application_id":"demo","device":{"id":"d1","persistent":{"type":"ios","token":"tok"}}}' \
    '{"op":"subscribe","application_id":"demo","device_id":"d1","channel":{"model":"task","context":"c1"}}' | $BIN publish --topic track
  # ... a task is created ...
  echo '{"op":"create","object":{"id":"t1","type":"task","context_id":"c1","application_id":"demo","title":"hello"},"application_id":"demo","timestamp":1700000000000000}' | $BIN publish
  # ... its change event, and the delivery for d1:
  kcat -b \$TP_KFK_BROKERS -C -t transport_manager -e
  kcat -b \$TP_KFK_BROKERS -C -t ios_transport -e

Ctrl-C stops the workers (the stack keeps running; make down stops it).
MSG
wait -n "${pids[@]}" || true

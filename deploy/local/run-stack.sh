#!/usr/bin/env bash
# `make run-stack`: the distributed layout on this machine. Starts the local stack (Kafka,
# Cassandra, Redis), creates the topics, registers the demo application and runs the roles as
# separate processes (aggregation-0, write-0, track-0, transport_manager-0, sockets_transport-0
# on ws://127.0.0.1:3000) until Ctrl-C. `make run` is the one-process, no-server variant.
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
TP_HTTP_PORT=9104 TP_SCKT_HOST=127.0.0.1 TP_SCKT_PORT=3000 $BIN -t sockets_transport -i 0 & pids+=($!)
cat >&2 <<MSG

nexxus-worker is running against the local stack (Kafka $TP_KFK_BROKERS, Cassandra $TP_SCYLLA_NODES):
  aggregation-0  health/metrics on http://127.0.0.1:9100/readyz and /metrics
  write-0        health/metrics on http://127.0.0.1:9101/readyz and /metrics
  track-0, transport_manager-0   on ports 9102 and 9103
  sockets_transport-0            ws://127.0.0.1:3000 (health/metrics on 9104)

Try, in another terminal:
  set -a; . deploy/local/stack.env; set +a
  # a WebSocket client of device d1 subscribes to the tasks of context c1 and prints what arrives ...
  TOKEN=\$($BIN token --app demo --device d1)
  cargo run --release --example ws_tail -- "ws://127.0.0.1:3000/?token=\$TOKEN" \\
    '{"event":"subscribe","data":{"channel":{"model":"task","context":"c1"}}}'
  # ... and, in a third terminal, a task is created: the client prints a "message" frame with it
  echo '{"op":"create","object":{"id":"t1","type":"task","context_id":"c1","application_id":"demo","title":"hello"},"application_id":"demo","timestamp":1700000000000000}' | $BIN publish

Ctrl-C stops the workers (the stack keeps running; make down stops it).
MSG
wait -n "${pids[@]}" || true

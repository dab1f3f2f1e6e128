#!/usr/bin/env bash
# `make run`: the main job on this machine, nothing else needed. One process (`-t all`) runs
# every role over the in-process queue, the embedded SQLite store (data/nexxus.db, kept across
# runs) and the in-memory registry, serves the demo page, and registers the demo application.
# Ctrl-C stops it gracefully. `make run-stack` runs the roles as separate processes against
# the real Kafka, Cassandra and Redis instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/nexxus-worker
HTTP_PORT=${TP_HTTP_PORT:-8080}
SCKT_PORT=${TP_SCKT_PORT:-3000}
mkdir -p data
export TP_SQLITE_PATH=${TP_SQLITE_PATH:-data/nexxus.db}
export TP_HTTP_HOST=${TP_HTTP_HOST:-127.0.0.1} TP_SCKT_HOST=${TP_SCKT_HOST:-127.0.0.1}
export TP_HTTP_PORT=$HTTP_PORT TP_SCKT_PORT=$SCKT_PORT TP_DEMO_APP=${TP_DEMO_APP:-demo}

$BIN -t all &
pid=$!
stop() {
  trap - INT TERM
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
# Ctrl-C reaches the worker too (same process group): a second signal from here would make it
# exit at once instead of draining, so on INT only wait for it. TERM is for this script alone.
trap 'trap - INT; wait "$pid" 2>/dev/null || true' INT
trap stop TERM

# Register the demo application once the ingress answers (it is stored: later runs have it).
for _ in $(seq 1 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
    --data-binary @deploy/local/demo-app.json \
    "http://127.0.0.1:$HTTP_PORT/apps/demo" || true)
  [[ $code == 200 ]] && break
  kill -0 "$pid" 2>/dev/null || { wait "$pid"; exit $?; }
  sleep 0.1
done
[[ ${code:-} == 200 ]] || { echo "the demo application could not be registered (HTTP ${code:-none})" >&2; stop; exit 1; }

cat >&2 <<MSG

nexxus-worker -t all is running (data in $TP_SQLITE_PATH):
  demo page      http://127.0.0.1:$HTTP_PORT/   (open it in two windows: changes show up live in both)
  browser client http://127.0.0.1:$HTTP_PORT/client.js   (docs/client.md)
  WebSocket      ws://127.0.0.1:$SCKT_PORT/?token=...     (a token: TP_MAIN_DB=sqlite $BIN token --app demo --device d1)
  ingress        curl -X POST http://127.0.0.1:$HTTP_PORT/events -H 'Content-Type: application/json' -d '{"op":"create","application_id":"demo",
                   "object":{"type":"task","application_id":"demo","context_id":"demo","list_id":"demo","title":"from curl"}}'
  health         http://127.0.0.1:$HTTP_PORT/readyz and /metrics

Ctrl-C stops it.
MSG
wait "$pid"

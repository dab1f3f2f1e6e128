#!/usr/bin/env bash
# `make bench-peers`: our WebSocket fan-out and idle connections side by side with Centrifugo,
# on this machine, with one client program for both (examples/bench_peers.rs).
#
# Servers: `nexxus-worker -t all` on its embedded defaults (in-process queue, SQLite in a fresh
# temporary file, in-memory registry) and Centrifugo v6.9.1 (memory engine, no history: the
# default), each on 127.0.0.1 only, each started fresh for every run and stopped after it.
#
# Method. ROUNDS rounds, alternating ours and Centrifugo within each round, two runs each:
# - FAN-OUT: CLIENTS WebSocket clients connect, authenticate (ours: HS256 device token from the
#   app's jwt_secret in the URL, then a `subscribe` frame; Centrifugo: `connect` command with an
#   HS256 connection JWT, then `subscribe` to `bench:fan`) and subscribe to one channel. After a
#   warm-up publication, MESSAGES publications of the same ~300-byte JSON object go out at RATE
#   per second, each on schedule whether or not the previous one was answered (Centrifugo answers
#   a publish after its fan-out; waiting would offer it less load), over each server's HTTP API (ours: `POST /events`, an update replacing one field of
#   one object whose channel the clients subscribed; Centrifugo: `POST /api/publish`). The object
#   carries a sequence number and the sender's wall clock in ns (`bench_sent_ns`, stamped before
#   the HTTP request): latency = receive time − send time per delivery, over every first delivery
#   of every client. Each client dedupes by sequence number: losses and duplicates are counted
#   per client (a client that failed to connect lost every message). Server CPU = utime+stime
#   from /proc/<pid>/stat over the publish window plus a DRAIN-second drain; RSS (VmRSS) is read
#   3 s after every client subscribed.
# - IDLE: IDLE authenticated, subscribed connections; memory per connection = (VmRSS 3 s after
#   the last subscribe − VmRSS before the first connect) / IDLE; then nothing is sent for
#   IDLE_SECS (default 30 s, so both servers' 25 s ping cycles fall inside: Centrifugo's `{}`
#   pings are answered `{}`, our WebSocket pings by the client library) and the server CPU over
#   that window / IDLE / window = µs of CPU per idle connection per second. CPU to accept =
#   the server's CPU from the first connect to the last subscribe, per connection.
# Clients are child processes of the example, at most 9,500 connections each, each from its own
# source address (127.x.y.z, a fresh /24 per run so sockets in TIME_WAIT never collide); they run
# on the same 2 vCPUs as the server, so the numbers are for this machine, with the load average
# before every run recorded. Results: target/bench-peers/peers.md and one JSON per run
# (run-<round>-<server>-<mode>.json: every raw measurement and a 1-ms latency histogram).
#
#   deploy/local/bench-peers.sh
#   ROUNDS=1 CLIENTS=1000 IDLE=2000 IDLE_SECS=10 deploy/local/bench-peers.sh
#   NO_BUILD=1 deploy/local/bench-peers.sh      # reuse the built binaries
#   NO_BUILD=1 NEXXUS_WORKER_BIN=/tmp/other/nexxus-worker deploy/local/bench-peers.sh   # another build
#   SERVERS=nexxus MODES=fanout ROUNDS=1 deploy/local/bench-peers.sh   # one side, one mode
set -euo pipefail
cd "$(dirname "$0")/../.."

CF_VERSION=v6.9.1
CF_DIR=${CF_DIR:-$HOME/.cache/nexxus-peers/centrifugo-$CF_VERSION}
CF_BIN=$CF_DIR/centrifugo
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-5000}
MESSAGES=${MESSAGES:-100}
RATE=${RATE:-20}
IDLE=${IDLE:-15000}
IDLE_SECS=${IDLE_SECS:-30}
DRAIN=${DRAIN:-5}
# Subsets, for profiling one side: SERVERS="nexxus" MODES="fanout". `nexxus-broadcast` is the
# same server publishing with POST /broadcast (never stored): fan-out only.
SERVERS=${SERVERS:-nexxus nexxus-broadcast centrifugo}
MODES=${MODES:-fanout idle}
# Ports on 127.0.0.1 only, away from the ones other things use on this machine.
NX_SCKT_PORT=${NX_SCKT_PORT:-24611}
NX_HTTP_PORT=${NX_HTTP_PORT:-24612}
CF_PORT=${CF_PORT:-24621}
OUT=target/bench-peers
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${NEXXUS_WORKER_BIN:-$TARGET/release/nexxus-worker}
CLIENT=$TARGET/release/examples/bench_peers
SECRET=peers-bench-hmac-secret-$RANDOM$RANDOM
API_KEY=peers-bench-api-key-$RANDOM$RANDOM

log() { echo "bench-peers: $*" >&2; }

# (a) Centrifugo from the Go module proxy, once.
if [[ ! -x $CF_BIN ]]; then
  log "building Centrifugo $CF_VERSION into $CF_DIR"
  mkdir -p "$CF_DIR"
  GOBIN=$CF_DIR go install "github.com/centrifugal/centrifugo/v6@$CF_VERSION"
fi
# (b) our binaries.
if [[ ${NO_BUILD:-} != 1 ]]; then
  cargo build --release --bin nexxus-worker --example bench_peers >&2
fi
[[ -x $BIN && -x $CLIENT ]] || { log "missing $BIN or $CLIENT (NO_BUILD=1 without a build?)"; exit 1; }

# Both servers and the client processes hold one descriptor per connection.
ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT"
rm -f "$OUT"/run-*.json "$OUT"/uptime.log "$OUT"/*.log
WORK=$(mktemp -d)
SERVER_PID=
stop_server() {
  if [[ -n $SERVER_PID ]]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
cleanup() {
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$WORK/centrifugo.json" <<JSON
{
  "http_server": {"address": "127.0.0.1", "port": $CF_PORT},
  "log": {"level": "warn"},
  "client": {"token": {"hmac_secret_key": "$SECRET"}, "allowed_origins": ["http://127.0.0.1"]},
  "http_api": {"key": "$API_KEY"},
  "engine": {"type": "memory"},
  "usage_stats": {"disabled": true},
  "channel": {"namespaces": [{"name": "bench", "allow_subscribe_for_client": true}]}
}
JSON

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_server() { # server name, log file
  local p
  for p in "$NX_SCKT_PORT" "$NX_HTTP_PORT" "$CF_PORT"; do
    port_free "$p" || { log "port $p is in use: set NX_SCKT_PORT/NX_HTTP_PORT/CF_PORT"; exit 1; }
  done
  case $1 in
    nexxus | nexxus-broadcast)
      rm -f "$WORK"/nexxus.db*
      env TP_SQLITE_PATH="$WORK/nexxus.db" TP_HTTP_HOST=127.0.0.1 TP_SCKT_HOST=127.0.0.1 \
        TP_HTTP_PORT="$NX_HTTP_PORT" TP_SCKT_PORT="$NX_SCKT_PORT" TP_LOG_LEVEL=warn \
        "$BIN" -t all >"$2" 2>&1 &
      ;;
    centrifugo)
      "$CF_BIN" --config "$WORK/centrifugo.json" >"$2" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
}

run() { # round, server, mode, clients, net
  local round=$1 server=$2 mode=$3 clients=$4 net=$5 ws http
  local name=run-$round-$server-$mode
  local client_server=$server via=store
  # nexxus-broadcast: the same server, publishing with POST /broadcast (never stored).
  if [[ $server == nexxus-broadcast ]]; then client_server=nexxus via=broadcast; fi
  if [[ $server == nexxus* ]]; then ws=$NX_SCKT_PORT http=$NX_HTTP_PORT; else ws=$CF_PORT http=$CF_PORT; fi
  start_server "$server" "$OUT/$name.server.log"
  echo "$name: $(uptime)" >>"$OUT/uptime.log"
  log "round $round, $server, $mode, $clients clients (load:$(cut -d' ' -f1-3 /proc/loadavg))"
  if ! "$CLIENT" --server "$client_server" --via "$via" --mode "$mode" --pid "$SERVER_PID" --ws-port "$ws" --http-port "$http" \
    --secret "$SECRET" --api-key "$API_KEY" --clients "$clients" --messages "$MESSAGES" --rate "$RATE" \
    --idle-secs "$IDLE_SECS" --drain-secs "$DRAIN" --net "$net" --round "$round" \
    --out "$OUT/$name.json" 2>>"$OUT/$name.client.log"; then
    log "$name failed: $(tail -3 "$OUT/$name.client.log")"
  fi
  tail -1 "$OUT/$name.client.log" >&2 || true
  stop_server
  sleep 2
}

net=0
for round in $(seq 1 "$ROUNDS"); do
  for server in $SERVERS; do
    for mode in $MODES; do
      [[ $server == nexxus-broadcast && $mode == idle ]] && continue # the same server as nexxus
      net=$((net + 1))
      if [[ $mode == fanout ]]; then run "$round" "$server" fanout "$CLIENTS" "$net"; else run "$round" "$server" idle "$IDLE" "$net"; fi
    done
  done
done

versions="nexxus-worker $(git rev-parse --short HEAD) ($("$BIN" --version 2>/dev/null | head -1));"
# A `go install` build carries no release version (it says v0.0.0): name the module version.
versions+="Centrifugo $CF_VERSION (go install from the module proxy, memory engine, no history);"
versions+="$(rustc --version);$(go version);kernel $(uname -r)"
"$CLIENT" --report "$OUT" --versions "$versions" >"$OUT/peers.md"
log "wrote $OUT/peers.md"
cat "$OUT/peers.md"

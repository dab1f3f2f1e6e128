#!/usr/bin/env bash
# Start the local test stack (Kafka, Cassandra, Redis + Redis Cluster) on 127.0.0.1, installing
# on first use, and write deploy/local/stack.env. Idempotent: running parts are left alone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$STACK"
# One up/down at a time. flock -o keeps the lock fd out of the servers we spawn.
if [[ -z ${NEXXUS_STACK_LOCKED:-} ]]; then
  export NEXXUS_STACK_LOCKED=1
  exec flock -o "$STACK/.lock" bash "${BASH_SOURCE[0]}" "$@"
fi
source "$HERE/kafka.sh"
source "$HERE/cassandra.sh"
source "$HERE/redis.sh"

command -v java >/dev/null || die "java not found (needs Java 17+)"
# Debian packages first, one apt run: redis-server is required, kcat only improves Kafka's readiness check.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v kcat >/dev/null || missing+=(kcat)
if ((${#missing[@]})); then
  apt_install "${missing[@]}" || log "apt-get install ${missing[*]} failed"
  command -v kcat >/dev/null || log "kcat unavailable: Kafka readiness = port + log line"
fi

# Each component in its own background job (Cassandra dominates); the EXIT trap reports timing.
rm -f "$ENV_FILE"
T0=$SECONDS
report() { if (($1 == 0)); then log "$2: ready after $3s"; else log "$2: FAILED after $3s"; fi; }
start() {
  (
    name=$1 t0=$SECONDS
    trap 'report $? "$name" $((SECONDS - t0))' EXIT
    "${name}_up"
  ) &
  PIDS+=($!)
}
PIDS=()
start kafka
start cassandra
start redis
failed=0
for p in "${PIDS[@]}"; do wait "$p" || failed=1; done
((failed == 0)) || die "stack not fully up (see above); deploy/local/down.sh stops what did start"

cluster_urls=$(printf 'redis://127.0.0.1:%s,' "${REDIS_CLUSTER_PORTS[@]}")
cat >"$ENV_FILE.tmp" <<EOF
# Written by deploy/local/up.sh — the local test stack (removed by down.sh).
NEXXUS_STACK=1
TP_KFK_BROKERS=127.0.0.1:$KAFKA_PORT
TP_SCYLLA_NODES=127.0.0.1:$CASSANDRA_PORT
TP_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
NEXXUS_REDIS_CLUSTER_URL=${cluster_urls%,}
NEXXUS_REDIS_TLS_URL=rediss://$REDIS_TLS_USER:$(cat "$REDIS_TLS_DIR/password")@127.0.0.1:$REDIS_TLS_PORT
NEXXUS_REDIS_TLS_CA=$REDIS_TLS_DIR/ca.crt
NEXXUS_REDIS_TLS_CLUSTER_URL=$(for p in "${REDIS_TLS_CLUSTER_PORTS[@]}"; do printf 'rediss://%s:%s@127.0.0.1:%s,' "$REDIS_TLS_USER" "$(cat "$REDIS_TLS_DIR/password")" "$p"; done | sed 's/,$//')
EOF
mv "$ENV_FILE.tmp" "$ENV_FILE"
log "stack up in $((SECONDS - T0))s; wrote ${ENV_FILE#"$ROOT"/}"

#!/usr/bin/env bash
# Print what of the local test stack runs (exit 0 even when parts are down).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$HERE/kafka.sh"
source "$HERE/cassandra.sh"
source "$HERE/redis.sh"

show() { # NAME PIDFILE MATCH PORT
  local pid state=down
  if pid=$(live_pid "$2" "$3"); then
    state="pid $pid, port $4 $(port_open "$4" && echo answering || echo 'NOT answering')"
  fi
  printf '%-16s %s\n' "$1" "$state"
}
show "kafka $KAFKA_VERSION" "$KAFKA_PIDF" "$KAFKA_MATCH" "$KAFKA_PORT"
show "cassandra $CASSANDRA_VERSION" "$CASSANDRA_PIDF" "$CASSANDRA_MATCH" "$CASSANDRA_PORT"
show "redis" "$REDIS_DIR/single/redis.pid" redis-server "$REDIS_PORT"
for p in "${REDIS_CLUSTER_PORTS[@]}"; do
  show "redis cluster" "$REDIS_DIR/cluster-$p/redis.pid" redis-server "$p"
done
if port_open "${REDIS_CLUSTER_PORTS[0]}"; then
  printf '%-16s %s\n' "redis cluster" "$(redis-cli -p "${REDIS_CLUSTER_PORTS[0]}" cluster info | tr -d '\r' | grep '^cluster_state')"
fi
[[ -f "$ENV_FILE" ]] && printf '%-16s %s\n' stack.env "${ENV_FILE#"$ROOT"/}" || printf '%-16s %s\n' stack.env absent

#!/usr/bin/env bash
# Stop the local test stack (SIGTERM, then SIGKILL after a grace period). Idempotent.
# Data under .stack/ is kept unless --purge is given.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
purge=0
case "${1:-}" in
  --purge) purge=1 ;;
  "") ;;
  *) die "usage: $0 [--purge]" ;;
esac
mkdir -p "$STACK"
if [[ -z ${NEXXUS_STACK_LOCKED:-} ]]; then
  export NEXXUS_STACK_LOCKED=1
  exec flock -o "$STACK/.lock" bash "${BASH_SOURCE[0]}" "$@"
fi
source "$HERE/kafka.sh"
source "$HERE/cassandra.sh"
source "$HERE/redis.sh"

rm -f "$ENV_FILE"
# In parallel: Cassandra and Kafka each take a few seconds to shut down cleanly.
kafka_down &
cassandra_down &
redis_down &
wait
if ((purge)); then
  rm -rf "$KAFKA_DIR" "$CASSANDRA_DIR" "$REDIS_DIR"
  log "stopped; data purged (installed jars stay in $CACHE)"
else
  log "stopped (data kept in ${STACK#"$ROOT"/}/; --purge deletes it)"
fi

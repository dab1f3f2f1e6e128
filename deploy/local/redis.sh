# Redis (Debian redis-server): one single node plus a 3-master Redis Cluster.
# Sourced by up.sh / down.sh / status.sh after lib.sh.
# shellcheck shell=bash

REDIS_DIR="$STACK/redis"

redis_install() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  apt_install redis-server || die "redis: apt-get install redis-server failed"
}

# redis_node NAME PORT [extra redis-server args]: start one node unless it already runs.
# Each node has its own dir (nodes.conf of cluster nodes lives there and survives restarts).
redis_node() {
  local name=$1 port=$2 d="$REDIS_DIR/$1"
  shift 2
  if live_pid "$d/redis.pid" "redis-server 127.0.0.1:$port" >/dev/null; then return 0; fi
  # A healthy Redis already on the port (another checkout's stack) is used as is.
  if port_open "$port" && [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]]; then
    log "redis: adopting the server already serving 127.0.0.1:$port"
    return 0
  fi
  ports_free "$port"
  mkdir -p "$d"
  # No persistence: test data is throw-away. Redis daemonizes itself (fork + setsid, own pid file).
  (cd "$d" && close_fds && exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$d/redis.pid" --logfile "$d/redis.log" --dir "$d" "$@" </dev/null)
  wait_until "redis $name" "$REDIS_TIMEOUT" "$d/redis.log" redis-cli -p "$port" ping
}

# Every node must see the cluster as ok (a just-restarted node needs a moment to rejoin).
cluster_ok() {
  local p
  for p in "${REDIS_CLUSTER_PORTS[@]}"; do
    [[ $(redis-cli -p "$p" cluster info 2>/dev/null) == *cluster_state:ok* ]] || return 1
  done
}

redis_cluster() {
  local p addrs=() known i
  for p in "${REDIS_CLUSTER_PORTS[@]}"; do
    redis_node "cluster-$p" "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 5000
    addrs+=("127.0.0.1:$p")
  done
  # Restarted nodes rejoin from their nodes.conf within a few seconds: give them that time.
  known=$(redis-cli -p "${REDIS_CLUSTER_PORTS[0]}" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')
  if [[ $known == "${#REDIS_CLUSTER_PORTS[@]}" ]]; then
    for ((i = 0; i < 15; i++)); do cluster_ok && return 0; sleep 1; done
  fi
  # Fresh (or half-configured) nodes: wipe their cluster state and create the cluster anew.
  log "redis: creating cluster on ${addrs[*]}"
  for p in "${REDIS_CLUSTER_PORTS[@]}"; do
    redis-cli -p "$p" flushall >/dev/null
    redis-cli -p "$p" cluster reset hard >/dev/null
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$REDIS_DIR/cluster-create.log" 2>&1 ||
    { cat "$REDIS_DIR/cluster-create.log" >&2; return 1; }
  wait_until "redis cluster" "$REDIS_TIMEOUT" "$REDIS_DIR/cluster-create.log" cluster_ok
}

# The TLS nodes' certificates (a throw-away CA and a server certificate for 127.0.0.1) and their
# ACL user's password, generated once in the cache every clone shares (like the installed jars),
# so a clone finding another clone's TLS nodes running can use them as they are.
REDIS_TLS_DIR="$CACHE/redis-tls"
REDIS_TLS_USER=nexxus

redis_tls_material() {
  [[ -s $REDIS_TLS_DIR/server.crt && -s $REDIS_TLS_DIR/password ]] && return 0
  mkdir -p "$CACHE"
  (
    flock 9 # one clone generates; the others wait and use the result
    [[ -s $REDIS_TLS_DIR/server.crt && -s $REDIS_TLS_DIR/password ]] && exit 0
    local t
    t=$(mktemp -d "$CACHE/redis-tls.XXXXXX")
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=nexxus local test CA" \
      -keyout "$t/ca.key" -out "$t/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$t/server.key" -out "$t/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$t/san.ext"
    openssl x509 -req -in "$t/server.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial -days 3650 \
      -extfile "$t/san.ext" -out "$t/server.crt" 2>/dev/null
    openssl rand -hex 16 >"$t/password"
    chmod 600 "$t"/*.key "$t/password"
    rm -rf "$REDIS_TLS_DIR"
    mv "$t" "$REDIS_TLS_DIR"
  ) 9>"$CACHE/.redis-tls.lock"
}

# redis_tls_cli PORT ARGS...: redis-cli over TLS as the ACL user.
redis_tls_cli() {
  local port=$1
  shift
  redis-cli --tls --cacert "$REDIS_TLS_DIR/ca.crt" -h 127.0.0.1 -p "$port" \
    --user "$REDIS_TLS_USER" --pass "$(cat "$REDIS_TLS_DIR/password")" --no-auth-warning "$@"
}

redis_tls_ping() { redis_tls_cli "${1:-$REDIS_TLS_PORT}" ping 2>/dev/null | grep -q PONG; }

# redis_tls_node NAME PORT [extra redis-server args]: a TLS-only node with the ACL user.
redis_tls_node() {
  local name=$1 port=$2 d="$REDIS_DIR/$1" pw
  shift 2
  redis_tls_material
  if live_pid "$d/redis.pid" "redis-server" >/dev/null && redis_tls_ping "$port"; then return 0; fi
  # Another clone's TLS node (same shared certificates and password) is used as is.
  if port_open "$port" && redis_tls_ping "$port"; then
    log "redis: adopting the TLS server already serving 127.0.0.1:$port"
    return 0
  fi
  ports_free "$port"
  mkdir -p "$d"
  pw=$(cat "$REDIS_TLS_DIR/password")
  (cd "$d" && close_fds && exec redis-server --port 0 --tls-port "$port" --bind 127.0.0.1 \
    --tls-cert-file "$REDIS_TLS_DIR/server.crt" --tls-key-file "$REDIS_TLS_DIR/server.key" \
    --tls-ca-cert-file "$REDIS_TLS_DIR/ca.crt" --tls-auth-clients no \
    --user default off --user "$REDIS_TLS_USER" on ">$pw" "~*" "&*" "+@all" \
    --save '' --appendonly no --daemonize yes --pidfile "$d/redis.pid" --logfile "$d/redis.log" --dir "$d" "$@" </dev/null)
  wait_until "redis $name" "$REDIS_TIMEOUT" "$d/redis.log" redis_tls_ping "$port"
}

tls_cluster_ok() {
  local p
  for p in "${REDIS_TLS_CLUSTER_PORTS[@]}"; do
    [[ $(redis_tls_cli "$p" cluster info 2>/dev/null) == *cluster_state:ok* ]] || return 1
  done
}

# The same cluster as redis_cluster, over TLS (client and cluster bus) with the ACL user.
redis_tls_cluster() {
  local p addrs=() known i
  for p in "${REDIS_TLS_CLUSTER_PORTS[@]}"; do
    redis_tls_node "tls-cluster-$p" "$p" --tls-cluster yes --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 5000 --masteruser "$REDIS_TLS_USER" \
      --masterauth "$(cat "$REDIS_TLS_DIR/password")"
    addrs+=("127.0.0.1:$p")
  done
  known=$(redis_tls_cli "${REDIS_TLS_CLUSTER_PORTS[0]}" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')
  if [[ $known == "${#REDIS_TLS_CLUSTER_PORTS[@]}" ]]; then
    for ((i = 0; i < 15; i++)); do tls_cluster_ok && return 0; sleep 1; done
  fi
  log "redis: creating the TLS cluster on ${addrs[*]}"
  for p in "${REDIS_TLS_CLUSTER_PORTS[@]}"; do
    redis_tls_cli "$p" flushall >/dev/null
    redis_tls_cli "$p" cluster reset hard >/dev/null
  done
  redis_tls_cli "${REDIS_TLS_CLUSTER_PORTS[0]}" --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
    >"$REDIS_DIR/tls-cluster-create.log" 2>&1 || { cat "$REDIS_DIR/tls-cluster-create.log" >&2; return 1; }
  wait_until "redis tls cluster" "$REDIS_TIMEOUT" "$REDIS_DIR/tls-cluster-create.log" tls_cluster_ok
}

redis_up() {
  redis_install
  redis_node single "$REDIS_PORT"
  redis_tls_node tls "$REDIS_TLS_PORT"
  redis_cluster
  redis_tls_cluster
}

redis_down() {
  local d
  for d in "$REDIS_DIR"/*/; do
    [[ -f "$d/redis.pid" ]] && stop_pid "$d/redis.pid" redis-server 10
  done
  return 0
}

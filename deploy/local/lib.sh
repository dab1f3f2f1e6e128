# Shared helpers for deploy/local/*.sh — sourced, never run directly.
# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/deploy/local"
STACK="$ROOT/.stack"                                   # runtime data, pids, logs (git-ignored)
CACHE="${NEXXUS_STACK_CACHE:-$HOME/.cache/nexxus-stack}" # installed jars, shared by all clones
ENV_FILE="$HERE/stack.env"

# Pinned versions: newest on Maven Central when this was written (see README.md).
KAFKA_VERSION="${NEXXUS_KAFKA_VERSION:-4.3.1}"
LOG4J_VERSION="${NEXXUS_LOG4J_VERSION:-2.25.5}"   # Kafka 4.x logs through slf4j 1.7 -> log4j2
CASSANDRA_VERSION="${NEXXUS_CASSANDRA_VERSION:-5.0.9}"
JAMM_VERSION=0.4.0                               # what Cassandra 5.0 needs on Java 17
DEP_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

# Ports: all off the defaults so a developer's own servers never clash with the stack.
KAFKA_PORT="${NEXXUS_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${NEXXUS_KAFKA_CONTROLLER_PORT:-19093}"
CASSANDRA_PORT="${NEXXUS_CASSANDRA_PORT:-19042}"
CASSANDRA_STORAGE_PORT="${NEXXUS_CASSANDRA_STORAGE_PORT:-17000}"
REDIS_PORT="${NEXXUS_REDIS_PORT:-16379}"
# A TLS-only node with an ACL user (issue 20): rediss:// with a CA file, username and password.
REDIS_TLS_PORT="${NEXXUS_REDIS_TLS_PORT:-16380}"
read -ra REDIS_TLS_CLUSTER_PORTS <<<"${NEXXUS_REDIS_TLS_CLUSTER_PORTS:-17111 17112 17113}"
read -ra REDIS_CLUSTER_PORTS <<<"${NEXXUS_REDIS_CLUSTER_PORTS:-17101 17102 17103}"

KAFKA_TIMEOUT="${NEXXUS_KAFKA_TIMEOUT:-90}"
CASSANDRA_TIMEOUT="${NEXXUS_CASSANDRA_TIMEOUT:-180}"
REDIS_TIMEOUT="${NEXXUS_REDIS_TIMEOUT:-30}"

log() { echo "[stack] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Pid from pid file $1 if that process is alive AND its command line contains $2
# (guards against a recycled pid after a reboot or a crash).
live_pid() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ -n "$pid" && -r /proc/$pid/cmdline ]] || return 1
  [[ $(tr '\0' ' ' </proc/"$pid"/cmdline) == *"$2"* ]] || return 1
  echo "$pid"
}

# Refuse to start when a foreign process already holds one of our ports.
ports_free() {
  local p
  for p in "$@"; do port_open "$p" && die "port $p is already used by a process not managed by this stack"; done
  return 0
}

# spawn LOGFILE PIDFILE CMD...: start CMD detached from this shell (own session, immune to
# SIGHUP) so it survives the script and the calling `make`; output to LOGFILE (truncated).
spawn() {
  local logf=$1 pidf=$2
  shift 2
  (close_fds && exec nohup setsid "$@" >"$logf" 2>&1 </dev/null) &
  echo $! >"$pidf"
}

# Close inherited descriptors above 2 (e.g. make's jobserver pipe, a CI runner's pipes) so the
# long-lived servers keep nothing of their caller open. Call in a subshell right before exec.
close_fds() {
  local fd
  for fd in /proc/self/fd/*; do
    fd=${fd##*/}
    ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
  done
  return 0
}

# wait_until NAME TIMEOUT LOGFILE CMD...: poll CMD every second; on timeout show the log and fail.
wait_until() {
  local name=$1 timeout=$2 logf=$3 t0=$SECONDS
  shift 3
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - t0 >= timeout)); then
      log "$name: not ready after ${timeout}s; last 50 lines of $logf:"
      tail -n 50 "$logf" | cut -c1-300 >&2 || true
      return 1
    fi
    sleep 1
  done
}

# stop_pid PIDFILE MATCH [GRACE]: SIGTERM, wait up to GRACE s, then SIGKILL. Quiet no-op if not running.
stop_pid() {
  local pidf=$1 match=$2 grace=${3:-30} pid i
  if pid=$(live_pid "$pidf" "$match"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    if [[ -d /proc/$pid ]]; then
      log "$(basename "$pidf" .pid): still alive after ${grace}s, SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidf"
}

# mvn_install NAME DIR POM: resolve POM's dependencies into DIR/lib once. The marker file is
# written last, so an interrupted download is simply redone. A lock serialises the Maven runs
# (parallel component starts share ~/.m2, which Maven 3.8 does not guard).
mvn_install() {
  local name=$1 dir=$2 pom=$3
  [[ -f "$dir/.complete" ]] && return 0
  mkdir -p "$CACHE"
  (
    flock 8
    [[ -f "$dir/.complete" ]] && exit 0
    command -v mvn >/dev/null || die "mvn not found (needs Maven 3.8+ and Java 17)"
    log "$name: installing into $dir (Maven Central)"
    rm -rf "$dir" && mkdir -p "$dir"
    printf '%s\n' "$pom" >"$dir/pom.xml"
    mvn -B -q -f "$dir/pom.xml" -DoutputDirectory="$dir/lib" -DincludeScope=runtime \
      "$DEP_PLUGIN:copy-dependencies" >"$dir/mvn.log" 2>&1 ||
      { tail -n 30 "$dir/mvn.log" >&2; die "$name: maven install failed (log: $dir/mvn.log)"; }
    touch "$dir/.complete"
  ) 8>"$CACHE/.install.lock"
}

# apt_install PKG...: apt-get update + install. Another apt/dpkg run (e.g. a background install)
# holds the locks: wait for it (DPkg::Lock::Timeout, plus a retry loop for the lists lock).
apt_install() {
  local sudo='' i
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  log "apt-get install $* (waits for the dpkg lock if another install runs)"
  for ((i = 0; i < 10; i++)); do
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >&2 &&
      return 0
    log "apt-get failed (lock held?), retrying in 10s"
    sleep 10
  done
  return 1
}

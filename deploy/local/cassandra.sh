# Apache Cassandra 5.0 (single node) from Maven Central `cassandra-all` jars.
# Sourced by up.sh / down.sh / status.sh after lib.sh.
# shellcheck shell=bash

CASSANDRA_HOME="$CACHE/cassandra-$CASSANDRA_VERSION"
CASSANDRA_DIR="$STACK/cassandra"
CASSANDRA_PIDF="$CASSANDRA_DIR/cassandra.pid"
CASSANDRA_LOG="$CASSANDRA_DIR/logs/cassandra.log"
CASSANDRA_MATCH=org.apache.cassandra.service.CassandraDaemon

cassandra_install() {
  # cassandra-all brings logback, jna and jamm itself; jamm is pinned anyway because it is
  # loaded as -javaagent (Cassandra 5.0 on Java 17 dies without it).
  mvn_install cassandra "$CASSANDRA_HOME" "<project><modelVersion>4.0.0</modelVersion>
  <groupId>nexxus.stack</groupId><artifactId>cassandra</artifactId><version>0</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId><version>$CASSANDRA_VERSION</version></dependency>
    <dependency><groupId>com.github.jbellis</groupId><artifactId>jamm</artifactId><version>$JAMM_VERSION</version></dependency>
  </dependencies></project>"
}

cassandra_config() {
  local d=$CASSANDRA_DIR
  mkdir -p "$d/conf" "$d/data" "$d/logs" "$d/triggers"
  # Minimal single-node config: num_tokens 1 skips vnode allocation; JMX stays off because
  # no cassandra.jmx.*.port is set.
  cat >"$d/conf/cassandra.yaml" <<EOF
cluster_name: nexxus-local
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
commitlog_sync: periodic
commitlog_sync_period: 10000ms
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $CASSANDRA_STORAGE_PORT
native_transport_port: $CASSANDRA_PORT
start_native_transport: true
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters: [{seeds: "127.0.0.1:$CASSANDRA_STORAGE_PORT"}]
data_file_directories: [$d/data/data]
commitlog_directory: $d/data/commitlog
saved_caches_directory: $d/data/saved_caches
hints_directory: $d/data/hints
cdc_raw_directory: $d/data/cdc_raw
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
auto_snapshot: false
EOF
  cat >"$d/conf/logback.xml" <<'EOF'
<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
EOF
}

# JVM_OPTS: flags from Cassandra's conf/jvm17-server.options + jvm-server.options (minus AlwaysPreTouch,
# which only slows the start), plus the extra opens zipkin/DataStax found necessary.
cassandra_jvm_opts() {
  local m
  JVM_OPTS=(-Xms1g -Xmx1g -Xss256k -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 \
    -XX:G1HeapRegionSize=16m -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 \
    -XX:InitiatingHeapOccupancyPercent=70 -XX:+UseThreadPriorities -XX:+UseTLAB -XX:+ResizeTLAB \
    -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$CASSANDRA_DIR/logs" \
    -ea -da:net.openhft... -Djava.net.preferIPv4Stack=true -Djdk.attach.allowAttachSelf=true \
    -javaagent:"$CASSANDRA_HOME/lib/jamm-$JAMM_VERSION.jar" \
    -Dio.netty.tryReflectionSetAccessible=true -Dio.netty.allocator.useCacheForAllThreads=true \
    -Dio.netty.allocator.maxOrder=11)
  for m in java.base/jdk.internal.misc java.management.rmi/com.sun.jmx.remote.internal.rmi \
    java.rmi/sun.rmi.registry java.rmi/sun.rmi.server java.sql/java.sql java.base/java.lang.ref \
    jdk.unsupported/sun.misc jdk.compiler/com.sun.tools.javac.file jdk.attach/sun.tools.attach; do
    JVM_OPTS+=(--add-exports "$m=ALL-UNNAMED")
  done
  for m in java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref \
    java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module \
    java.base/jdk.internal.util.jar jdk.management/com.sun.management.internal java.base/sun.nio.ch \
    java.base/java.io java.base/java.lang.reflect jdk.compiler/com.sun.tools.javac java.base/java.lang \
    java.base/java.util java.base/java.nio java.base/java.nio.charset java.base/java.util.concurrent \
    java.base/java.util.concurrent.atomic; do
    JVM_OPTS+=(--add-opens "$m=ALL-UNNAMED")
  done
}

# A real CQL v4 round trip over bash's /dev/tcp: STARTUP, then
# QUERY "SELECT release_version FROM system.local"; prints the server version.
cql_release_version() (
  read_frame() { # -> "<opcode> <body as printable text>"
    local hdr len
    hdr=$(timeout 5 dd bs=1 count=9 <&3 2>/dev/null | od -An -tx1 | tr -d ' \n')
    [[ ${#hdr} -eq 18 ]] || return 1
    len=$((16#${hdr:10:8}))
    echo "${hdr:8:2} $(timeout 5 dd bs=1 count="$len" <&3 2>/dev/null | tr -c '[:print:]' ' ')"
  }
  local q='SELECT release_version FROM system.local' r
  exec 3<>"/dev/tcp/127.0.0.1/$CASSANDRA_PORT" || return 1
  printf '\x04\x00\x00\x01\x01\x00\x00\x00\x16\x00\x01\x00\x0bCQL_VERSION\x00\x053.0.0' >&3
  r=$(read_frame) && [[ $r == 02* ]] || return 1                        # READY
  printf '\x04\x00\x00\x02\x07\x00\x00\x00\x2f\x00\x00\x00\x28%s\x00\x01\x00' "$q" >&3
  r=$(read_frame) && [[ $r == 08* ]] || return 1                        # RESULT
  grep -oE '[0-9]+\.[0-9]+\.[0-9]+' <<<"$r" | tail -n 1
)

cassandra_ready() {
  port_open "$CASSANDRA_PORT" && grep -q 'Starting listening for CQL clients' "$CASSANDRA_LOG" &&
    [[ -n $(cql_release_version) ]]
}

cassandra_up() {
  # As for Kafka: a healthy CQL node already on our port is used as is.
  if ! live_pid "$CASSANDRA_PIDF" "$CASSANDRA_MATCH" >/dev/null && port_open "$CASSANDRA_PORT" &&
    [[ -n $(cql_release_version) ]]; then
    log "cassandra: adopting the node already serving 127.0.0.1:$CASSANDRA_PORT"
    return 0
  fi
  if live_pid "$CASSANDRA_PIDF" "$CASSANDRA_MATCH" >/dev/null; then
    log "cassandra: already running (pid $(cat "$CASSANDRA_PIDF"))"
  else
    cassandra_install
    cassandra_config
    ports_free "$CASSANDRA_PORT" "$CASSANDRA_STORAGE_PORT"
    log "cassandra: starting $CASSANDRA_VERSION on 127.0.0.1:$CASSANDRA_PORT"
    local JVM_OPTS
    cassandra_jvm_opts
    spawn "$CASSANDRA_LOG" "$CASSANDRA_PIDF" java "${JVM_OPTS[@]}" \
      -Dcassandra-foreground=yes -Dcassandra.storagedir="$CASSANDRA_DIR/data" \
      -Dcassandra.logdir="$CASSANDRA_DIR/logs" -Dcassandra.triggers_dir="$CASSANDRA_DIR/triggers" \
      -Dcassandra.config="file://$CASSANDRA_DIR/conf/cassandra.yaml" \
      -Dlogback.configurationFile="$CASSANDRA_DIR/conf/logback.xml" \
      -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=0 \
      -Dcassandra.superuser_setup_delay_ms=0 \
      -cp "$CASSANDRA_HOME/lib/*" "$CASSANDRA_MATCH"
  fi
  wait_until cassandra "$CASSANDRA_TIMEOUT" "$CASSANDRA_LOG" cassandra_ready || { cassandra_down; return 1; }
}

cassandra_down() { stop_pid "$CASSANDRA_PIDF" "$CASSANDRA_MATCH" 60; }

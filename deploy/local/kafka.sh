# Apache Kafka (KRaft, single combined broker+controller) from Maven Central jars.
# Sourced by up.sh / down.sh / status.sh after lib.sh.
# shellcheck shell=bash

KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
KAFKA_DIR="$STACK/kafka"
KAFKA_PIDF="$KAFKA_DIR/kafka.pid"
KAFKA_LOG="$KAFKA_DIR/logs/kafka.log"
KAFKA_MATCH=kafka.Kafka

kafka_install() {
  # kafka_2.13 ("core") pulls every server module; log4j-slf4j-impl + log4j-core is the
  # slf4j-1.7 binding Kafka 4.x ships — without it the broker logs nothing at all.
  mvn_install kafka "$KAFKA_HOME" "<project><modelVersion>4.0.0</modelVersion>
  <groupId>nexxus.stack</groupId><artifactId>kafka</artifactId><version>0</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies></project>"
}

kafka_config() {
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  # Static voter quorum (no --standalone format needed). Replication factor / min.isr 1 for the
  # internal topics: with the defaults (3/2) a single broker never serves transactions and
  # init_transactions hangs. No auto-created topics: tests must create what they use.
  # Consumer groups (KIP-848, group.protocol=consumer): liveness is the broker's. A member that
  # dies without leaving (SIGKILL, lost node) keeps its partitions until its session expires, so
  # the session is what a crash costs: 3 s here (45 s by default, min 45 s), heartbeats every
  # 500 ms (5 s by default). The minimums are lowered so a group may be tuned lower still
  # (kafka-configs --entity-type groups: consumer.session.timeout.ms).
  cat >"$KAFKA_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.session.timeout.ms=3000
group.consumer.min.session.timeout.ms=1000
group.consumer.heartbeat.interval.ms=500
group.consumer.min.heartbeat.interval.ms=250
auto.create.topics.enable=false
delete.topic.enable=true
EOF
  # INFO to stdout (-> logs/kafka.log): the "Kafka Server started" line is a readiness sign.
  cat >"$KAFKA_DIR/log4j2.properties" <<'EOF'
rootLogger.level=INFO
rootLogger.appenderRef.out.ref=OUT
appender.out.type=Console
appender.out.name=OUT
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=INFO
logger.state.name=state.change.logger
logger.state.level=WARN
EOF
}

kafka_java() {
  java -Dlog4j2.configurationFile="file:$KAFKA_DIR/log4j2.properties" -cp "$KAFKA_HOME/lib/*" "$@"
}

kafka_ready() {
  if command -v kcat >/dev/null; then
    # A real metadata round trip: the broker answers and lists itself.
    [[ $(kcat -L -b "127.0.0.1:$KAFKA_PORT" -m 5 2>/dev/null) == *" 1 brokers:"* ]]
  else
    port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$KAFKA_LOG"
  fi
}

kafka_up() {
  # A healthy broker already on our port (left by another checkout's stack) is used as is:
  # tests work under unique prefixes, and refusing would fail a fresh clone's `make test`.
  if ! live_pid "$KAFKA_PIDF" "$KAFKA_MATCH" >/dev/null && port_open "$KAFKA_PORT" && command -v kcat >/dev/null &&
    [[ $(kcat -L -b "127.0.0.1:$KAFKA_PORT" -m 5 2>/dev/null) == *" 1 brokers:"* ]]; then
    log "kafka: adopting the broker already serving 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  if live_pid "$KAFKA_PIDF" "$KAFKA_MATCH" >/dev/null; then
    log "kafka: already running (pid $(cat "$KAFKA_PIDF"))"
  else
    kafka_install
    kafka_config
    ports_free "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
      # One-time storage format; the cluster id must be a Kafka Uuid, so let Kafka make it.
      local id
      id=$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
      kafka_java kafka.tools.StorageTool format -t "$id" -c "$KAFKA_DIR/server.properties" \
        --ignore-formatted >"$KAFKA_DIR/logs/format.log" 2>&1 ||
        { cat "$KAFKA_DIR/logs/format.log" >&2; die "kafka: storage format failed"; }
    fi
    log "kafka: starting $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT"
    spawn "$KAFKA_LOG" "$KAFKA_PIDF" java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="file:$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
      -cp "$KAFKA_HOME/lib/*" kafka.Kafka "$KAFKA_DIR/server.properties"
  fi
  wait_until kafka "$KAFKA_TIMEOUT" "$KAFKA_LOG" kafka_ready || { kafka_down; return 1; }
}

kafka_down() { stop_pid "$KAFKA_PIDF" "$KAFKA_MATCH" 30; }

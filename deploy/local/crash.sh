#!/usr/bin/env bash
# The crash test at full size (`make crash`): tests/crash_stack.rs, which `make test` runs at a
# bounded size, here with release binaries and the sizes below. The load tool drives changes
# through Kafka to real WebSocket clients while aggregation, write, transport_manager and track
# are each SIGKILLed and restarted 2 s later, then the test's own Kafka broker is SIGKILLed and
# restarted; it passes with 0 lost, 0 duplicate deliveries and the exact stored state.
#
#   deploy/local/crash.sh                      # defaults below
#   CRASH_RATE=1000 CRASH_FLOW=20 deploy/local/crash.sh
#
# Sizes (environment): CRASH_CLIENTS, CRASH_CHANNELS, CRASH_SUBS (per client), CRASH_FILTERED
# (fraction of filtered subscriptions), CRASH_RATE (changes/s), CRASH_SEED (objects per channel
# before the load), CRASH_PARTITIONS (of aggregation, write, transport_manager), CRASH_FLOW
# (seconds of load before each kill and after the last restart), CRASH_BROKER_DOWN (seconds the
# broker stays down before its restart, which also waits for its controller to fence it).
# Output: the timeline, the load tool's table, a summary line; every process's log and the
# tool's results stay in the directory named at the end; the whole output in target/crash.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/up.sh >&2
set -a; source deploy/local/stack.env; set +a
export CRASH_CLIENTS=${CRASH_CLIENTS:-1000} CRASH_CHANNELS=${CRASH_CHANNELS:-300} CRASH_SUBS=${CRASH_SUBS:-3}
export CRASH_FILTERED=${CRASH_FILTERED:-0.3} CRASH_RATE=${CRASH_RATE:-500} CRASH_SEED=${CRASH_SEED:-4}
export CRASH_PARTITIONS=${CRASH_PARTITIONS:-6} CRASH_FLOW=${CRASH_FLOW:-10} CRASH_KEEP=1
echo "[crash] clients=$CRASH_CLIENTS channels=$CRASH_CHANNELS subs=$CRASH_SUBS filtered=$CRASH_FILTERED" \
  "rate=$CRASH_RATE/s seed=$CRASH_SEED partitions=$CRASH_PARTITIONS flow=${CRASH_FLOW}s" >&2
mkdir -p target
cargo test --release --test crash_stack -- --nocapture 2>&1 | tee target/crash.log
echo "[crash] full output: target/crash.log" >&2

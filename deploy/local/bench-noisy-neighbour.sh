#!/usr/bin/env bash
# Noisy-neighbour benchmark (issue 14 item 5): an abusive client of one application at 10x the
# limits against another application's delivery latency, on `-t all` with its embedded defaults
# (no Kafka, Redis or Cassandra needed). Alternates baseline and attacked runs, each on a fresh
# process, and prints both sides' p50/p99 and the ratio (examples/bench_noisy_neighbour.rs;
# method and results in BENCHMARKS.md). Arguments go to the example, e.g.
#   deploy/local/bench-noisy-neighbour.sh --rounds 3 --secs 20 --clients 200 --rate 200
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin nexxus-worker --example bench_noisy_neighbour
nproc
lscpu | head -n 15
exec target/release/examples/bench_noisy_neighbour "$@"

#!/usr/bin/env bash
# Benchmark of the sockets transport on the local stack: memory per idle connection and fan-out
# of one change stream to many WebSocket clients (examples/bench_sockets.rs; method in
# BENCHMARKS.md). Arguments go to the example, e.g.
#   deploy/local/bench-sockets.sh --clients 10000 --messages 200 --rate 50 --idle 10000,19000
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/up.sh
cargo build --release --bin nexxus-worker --example bench_sockets
set -a; source deploy/local/stack.env; set +a
exec target/release/examples/bench_sockets "$@"

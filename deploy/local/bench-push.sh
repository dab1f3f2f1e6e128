#!/usr/bin/env bash
# Push throughput of ios_transport and android_transport against the local APNs/FCM stand-ins
# (examples/bench_push.rs; method in BENCHMARKS.md). Arguments go to the example, e.g.
#   deploy/local/bench-push.sh --messages 200 --devices 500
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/up.sh
cargo build --release --bin nexxus-worker --example bench_push
set -a; source deploy/local/stack.env; set +a
exec target/release/examples/bench_push "$@"

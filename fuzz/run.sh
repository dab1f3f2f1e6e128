#!/usr/bin/env bash
# Bounded fuzzing of message decoding, called by `make fuzz`.
#
#   fuzz/run.sh [SECONDS]        default 60 (FUZZ_SECONDS also works)
#
# Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# Not part of `make test`: it is slow and needs nightly. Crashes land in
# fuzz/artifacts/decode/; the corpus grows in fuzz/corpus/decode/ (both git-ignored).
set -euo pipefail

# cargo-fuzz finds fuzz/ from the crate root.
cd "$(dirname "$0")/.."
seconds="${1:-${FUZZ_SECONDS:-60}}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: needs cargo-fuzz (cargo install cargo-fuzz)" >&2
    exit 2
fi

# Seed the corpus with the contract's example messages so the fuzzer starts past the
# first checks.
corpus=fuzz/corpus/decode
mkdir -p "$corpus"
seed() { printf '%s' "$2" > "$corpus/seed-$1"; }
seed create '{"op":"create","object":{"type":"task","context_id":"c1","application_id":"app1","user_id":"u1","title":"x"},"application_id":"app1","timestamp":1700000000000000}'
seed update '{"op":"update","patches":[{"op":"increment","path":"task/t1/votes","value":1}],"application_id":"app1","timestamp":1700000000000001}'
seed delete '{"op":"delete","object":{"model":"task","id":"t1"},"application_id":"app1","timestamp":1700000000000002}'
seed register '{"op":"device_register","application_id":"app1","device":{"id":"d1","info":{},"persistent":{"type":"ios","token":"t"}}}'
seed subscribe '{"op":"subscribe","application_id":"app1","device_id":"d1","channel":{"model":"task","context":"c1"},"filters":{"or":[{"and":[{"is":{"a":1}},{"range":{"b":{"gte":1,"lt":6}}}]},{"not":{"like":{"c":"x"}}},{"exists":{"field":"d"}},{"in_array":{"e":[1,"2"]}}]}}'
seed filter '{"and":[{"is":{"status":"open"}},{"or":[{"is":{"user_id":"u1"}},{"is":{"owner_id":"u1"}}]}]}'
seed key 'blg:app1:context:c1:task:filter:eyJhbmQiOlt7ImlzIjp7ImEiOjJ9fV19'

exec cargo +nightly fuzz run decode "$corpus" -- -max_total_time="$seconds" -max_len=4096

#!/usr/bin/env bash
# The criterion micro-benchmarks (issue 2): the router (cache hit and cold
# trie match with 100 000 subscriptions), publish -> fan-out to 1, 10 and
# 1000 subscriptions, enqueue -> deliver -> ack, and the STOMP codec. Runs
# them (`cargo bench`), then writes their figures and the issue's targets
# into the last section of docs/benchmarks.md, which bench/compare.sh keeps.
#
#   bench/micro.sh                      # everything
#   bench/micro.sh --sample-size 20     # arguments go to criterion
#
# Not part of CI (the benches are compiled by `cargo clippy --all-targets`).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
# One package and bench target at a time: criterion's options would reach
# the libtest harness of the libraries otherwise.
cargo bench -p switchyard-router --bench router -- --noplot "$@"
cargo bench -p switchyard-bench --bench core -- --noplot "$@"
cargo bench -p switchyard-stomp --bench codec -- --noplot "$@"
cargo build --release -p switchyard-bench
SWITCHYARD_BENCH_COMMAND="bench/micro.sh${*:+ $*}" \
  "$target/release/switchyard-bench" micro --criterion "$target/criterion" --write docs/benchmarks.md

#!/usr/bin/env bash
# Switchyard beside its peers, in one run: installs the peers if missing
# (Debian packages nats-server, mosquitto, rabbitmq-server), builds a release
# Switchyard and the load generator, runs every scenario of every protocol
# against Switchyard and each peer that speaks it (alternating, 3
# repetitions, medians) and writes docs/benchmarks.md. Every broker it
# starts runs on free loopback ports in a temporary directory and is
# stopped at the end.
#
#   bench/compare.sh            # the full comparison (< 20 min on 2 cores)
#   bench/compare.sh --quick    # a tenth of the messages (development)
#   bench/compare.sh --sections nats,mqtt --reps 5
#
# Not part of CI (CI runs the smoke test: cargo test -p switchyard-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

missing=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

cargo build --release -p switchyard -p switchyard-bench
export SWITCHYARD_BENCH_COMMAND="bench/compare.sh $*"
exec "$target/release/switchyard-bench" compare \
  --switchyard "$target/release/switchyard" \
  --write docs/benchmarks.md "$@"

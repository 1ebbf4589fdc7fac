#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), at most JOBS at a
# time (default 1), under `nice -n 19`. Seeds come from fuzz/corpus (written
# by the `seeds` binary when missing); new inputs are added there. Crashes
# land in fuzz/artifacts/<target>/; each target's log in fuzz/logs/.
#   fuzz/run.sh 600            # 10 minutes each, one at a time
#   JOBS=2 fuzz/run.sh 600     # two at once
#   fuzz/run.sh 60 mqtt nats   # only these targets
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(mqtt amqp stomp nats http_headers journal)
fi
jobs=${JOBS:-1}
mkdir -p fuzz/logs
if [ ! -d fuzz/corpus/journal ]; then
    cargo run -q --release --manifest-path fuzz/Cargo.toml --bin seeds
fi
cargo +nightly fuzz build -O
# The journal target writes a segment file per input: keep that in memory.
if [ -d /dev/shm ]; then export TMPDIR=/dev/shm; fi
status=0
run() {
    local t=$1
    # -rss_limit_mb: out-of-memory is a finding; -timeout: a hang is too;
    # LeakSanitizer (on by default) makes a leak one as well.
    nice -n 19 cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
        -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1
    local rc=$?
    local execs per_sec
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' || echo '?')
    per_sec=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' || echo '?')
    echo "$t: exit $rc, ${execs} executions, ${per_sec}/s, log fuzz/logs/$t.log"
    return $rc
}
running=0
for t in "${targets[@]}"; do
    run "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || status=1
        running=$((running - 1))
    fi
done
while [ "$running" -gt 0 ]; do
    wait -n || status=1
    running=$((running - 1))
done
exit $status

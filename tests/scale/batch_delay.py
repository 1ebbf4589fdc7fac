#!/usr/bin/env python3
"""How `journal.max_batch_delay` changes persistent throughput and confirm
latency (issue 8: "choose the default by measurement and write down why").

Outside CI. For each delay, starts the real (release) binary on a fresh data
directory and runs the load generator's AMQP persistent scenario (durable
queue, persistent 1 KiB messages, publisher confirms, acking consumer) with 1
and 10 publishers as fast as confirms allow, and with 1 publisher at a fixed
2000 msg/s; several repetitions, medians printed as a Markdown table with
the store's fsyncs per second and records per fsync (from /metrics).

    cargo build --release -p switchyard -p switchyard-bench
    .venv/bin/python tests/scale/batch_delay.py --delays 0ms,1ms,2ms,5ms --reps 3
"""

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile

import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "clients"))
os.environ.setdefault("SWITCHYARD_BIN", str(ROOT / "target" / "release" / "switchyard"))
from conftest import Broker  # noqa: E402


def store_counters(http):
    text = requests.get(f"http://{http}/metrics", timeout=10).text
    out = {}
    for name in ("fsyncs", "records_appended", "batches"):
        m = re.search(rf"^switchyard_store_{name}_total(?:{{[^}}]*}})? (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def run_once(bench, delay, publishers, rate, count):
    with tempfile.TemporaryDirectory(prefix="sy-delay-") as d:
        b = Broker(d, extra_env={"SWITCHYARD_JOURNAL__MAX_BATCH_DELAY": delay})
        try:
            host, port = b.addr("http")
            http = f"{host}:{port}"
            ahost, aport = b.addr("amqp")
            before = store_counters(http)
            cmd = [
                bench, "run", "--broker", "switchyard", "--pid", str(b.proc.pid),
                "--addr", f"{ahost}:{aport}", "--driver", "amqp:persistent",
                "--shape", "queue", "--publishers", str(publishers),
                "--subscribers", "1", "--size", "1024", "--count", str(count), "--json",
            ]
            if rate:
                cmd += ["--rate", str(rate)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
            after = store_counters(http)
        finally:
            b.stop()
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    r = json.loads(line)
    secs = r["seconds"]
    fsyncs = after["fsyncs"] - before["fsyncs"]
    records = after["records_appended"] - before["records_appended"]
    return {
        "rate": r["rate"],
        "confirm_p50_ms": (r.get("confirm_us") or {}).get("p50", float("nan")) / 1000,
        "confirm_p99_ms": (r.get("confirm_us") or {}).get("p99", float("nan")) / 1000,
        "fsyncs_per_s": fsyncs / secs if secs else 0.0,
        "records_per_fsync": records / fsyncs if fsyncs else 0.0,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=str(ROOT / "target" / "release" / "switchyard-bench"))
    ap.add_argument("--delays", default="0ms,1ms,2ms,5ms")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--count", type=int, default=20000)
    args = ap.parse_args()
    cases = [(1, None), (10, None), (1, 2000)]
    delays = args.delays.split(",")
    # Repetitions interleave the delays, so that the machine's changing load
    # falls on every delay alike.
    runs = {}
    for _ in range(args.reps):
        for delay in delays:
            for pubs, rate in cases:
                count = 4000 if rate else args.count
                runs.setdefault((delay, pubs, rate), []).append(
                    run_once(args.bench, delay, pubs, rate, count)
                )
    print("| max_batch_delay | publishers | offered | msg/s | confirm p50 | confirm p99 | fsyncs/s | records per fsync |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for delay in delays:
        for pubs, rate in cases:
            rs = runs[(delay, pubs, rate)]
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            print(
                f"| {delay} | {pubs} | {'%d/s' % rate if rate else 'max'} | {med['rate']:.0f} "
                f"| {med['confirm_p50_ms']:.1f} ms | {med['confirm_p99_ms']:.1f} ms "
                f"| {med['fsyncs_per_s']:.0f} | {med['records_per_fsync']:.1f} |"
            )

if __name__ == "__main__":
    main()

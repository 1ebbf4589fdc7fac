#!/usr/bin/env python3
"""Scale check of the durable queue (issue 8), outside CI.

Fills one durable queue with COUNT persistent messages of SIZE bytes through
the real (release) binary, checks the broker's resident memory stays under a
limit while the queue pages to the journal, restarts the broker (recovery of
the whole queue), then drains it in order and checks every message arrives
once, in publish order. Prints peak RSS, journal disk use, and the fill,
recovery and drain rates.

    cargo build --release -p switchyard
    .venv/bin/python tests/scale/journal_scale.py            # 5 million x 1 KiB
    .venv/bin/python tests/scale/journal_scale.py --count 200000   # quick

Messages go in as HTTP NDJSON batches (`?batch=true&durable=true`, answered
after the journal's fsync) and come out by long-poll with acks: both are
bulk paths that keep the Python client from being the limit. Each body is a
JSON string holding its sequence number, padded to SIZE bytes.
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "clients"))
os.environ.setdefault("SWITCHYARD_BIN", str(ROOT / "target" / "release" / "switchyard"))
from conftest import Broker  # noqa: E402

QUEUE = "scale.journal"
MIB = 1024 * 1024


def body(n, size):
    head = '"%010d' % n
    return (head + "x" * (size - len(head) - 1) + '"').encode()


def rss_kib(pid, field="VmRSS"):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def disk_bytes(path):
    total = 0
    for p in pathlib.Path(path).rglob("*"):
        if p.is_file():
            total += p.stat().st_blocks * 512
    return total


class RssSampler:
    """Samples a process's VmRSS every 100 ms; keeps the peak."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self._stop.wait(0.1)

    def stop(self):
        self._stop.set()
        self._t.join()
        # The kernel's own high-water mark catches peaks between samples.
        return max(self.peak, rss_kib(self.pid, "VmHWM"))


def fill(base, count, size, batch):
    s = requests.Session()
    url = f"{base}/v1/queues/{QUEUE}?batch=true&durable=true"
    n = 0
    t0 = time.monotonic()
    last = t0
    while n < count:
        k = min(batch, count - n)
        data = b"\n".join(body(i, size) for i in range(n, n + k)) + b"\n"
        while True:
            r = s.post(url, data=data, headers={"content-type": "application/x-ndjson"}, timeout=120)
            if r.status_code == 503 and r.json().get("error") == "blocked":
                time.sleep(float(r.headers.get("retry-after", "1")))
                continue
            break
        if r.status_code != 202:
            raise SystemExit(f"publish failed at {n}: {r.status_code} {r.text}")
        n += k
        now = time.monotonic()
        if now - last > 10:
            print(f"  filled {n:,} ({n / (now - t0):,.0f} msg/s)", flush=True)
            last = now
    return time.monotonic() - t0


def drain(base, count, size, max_msgs):
    s = requests.Session()
    url = f"{base}/v1/queues/{QUEUE}/messages?max={max_msgs}&wait=5&visibility=600"
    ack = f"{base}/v1/queues/{QUEUE}/ack"
    expect = 0
    t0 = time.monotonic()
    last = t0
    while expect < count:
        r = s.get(url, timeout=60)
        if r.status_code != 200:
            raise SystemExit(f"receive failed at {expect}: {r.status_code} {r.text}")
        msgs = r.json()["messages"]
        if not msgs:
            raise SystemExit(f"queue ran dry at {expect} of {count}")
        for m in msgs:
            got = m["body"]
            want = body(expect, size).decode()
            if got != want:
                raise SystemExit(f"out of order or corrupt at {expect}: got {got[:12]!r}")
            if m["redelivered"]:
                raise SystemExit(f"message {expect} redelivered")
            expect += 1
        r = s.post(ack, json={"receipts": [m["receipt"] for m in msgs]}, timeout=60)
        a = r.json()
        if r.status_code != 200 or a["acked"] != len(msgs):
            raise SystemExit(f"ack failed at {expect}: {r.status_code} {a}")
        now = time.monotonic()
        if now - last > 10:
            print(f"  drained {expect:,} ({expect / (now - t0):,.0f} msg/s)", flush=True)
            last = now
    left = s.get(f"{base}/v1/queues/{QUEUE}/messages?max=1&wait=0", timeout=10).json()["messages"]
    if left:
        raise SystemExit(f"an extra message after the last one: {left[0]['body'][:12]!r}")
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=5_000_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=10_000, help="messages per NDJSON publish")
    ap.add_argument("--rss-limit-mib", type=int, default=1024)
    ap.add_argument("--data-dir", help="journal location (default: a temporary directory)")
    args = ap.parse_args()
    if args.size < 16:
        raise SystemExit("--size must be at least 16")

    tmp = None
    data = args.data_dir
    if data is None:
        tmp = tempfile.mkdtemp(prefix="switchyard-scale-")
        data = tmp
    env = {
        "SWITCHYARD_LISTENERS__HTTP__MAX_MESSAGES": "1000",
        "SWITCHYARD_LISTENERS__HTTP__MAX_BATCH_MESSAGES": str(args.batch),
        "SWITCHYARD_LISTENERS__HTTP__MAX_BATCH_BODY": str(args.batch * (args.size + 1) + 1024),
    }
    print(f"binary {os.environ['SWITCHYARD_BIN']}, data {data}")
    print(f"{args.count:,} messages of {args.size} B into durable queue {QUEUE!r}")
    peaks = []
    failed = False
    try:
        b = Broker(data, env)
        sampler = RssSampler(b.proc.pid)
        fill_s = fill(b.url(), args.count, args.size, args.batch)
        full_rss = rss_kib(b.proc.pid)
        disk = disk_bytes(data)
        peaks.append(sampler.stop())
        print(f"fill: {fill_s:.1f} s, {args.count / fill_s:,.0f} msg/s; RSS now {full_rss / 1024:.0f} MiB, "
              f"peak {peaks[-1] / 1024:.0f} MiB; disk {disk / MIB:,.0f} MiB "
              f"({disk / max(1, args.count * args.size):.2f}x the bodies)")
        if b.stop() != 0:
            raise SystemExit("broker did not stop cleanly")

        t0 = time.monotonic()
        b = Broker(data, env)
        rec_s = time.monotonic() - t0
        sampler = RssSampler(b.proc.pid)
        ready = requests.get(b.url() + "/readyz", timeout=10).json()
        rec = ready["recovery"]
        print(f"restart: ready after {rec_s:.1f} s; recovered {rec['messages']:,} messages "
              f"({rec['paged']:,} left paged) from {rec['segments']} segments in {rec['elapsed_ms'] / 1000:.1f} s; "
              f"RSS {rss_kib(b.proc.pid) / 1024:.0f} MiB")
        if rec["messages"] != args.count:
            raise SystemExit(f"recovered {rec['messages']} messages, expected {args.count}")
        drain_s = drain(b.url(), args.count, args.size, 1000)
        peaks.append(sampler.stop())
        time.sleep(2)  # let compaction delete the drained segments
        print(f"drain: {drain_s:.1f} s, {args.count / drain_s:,.0f} msg/s, all {args.count:,} in order; "
              f"peak RSS {peaks[-1] / 1024:.0f} MiB; disk after drain {disk_bytes(data) / MIB:,.0f} MiB")
        if b.stop() != 0:
            raise SystemExit("broker did not stop cleanly")
    except SystemExit as e:
        failed = True
        print(f"FAILED: {e}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    peak = max(peaks, default=0)
    print(f"peak RSS {peak / 1024:.0f} MiB (limit {args.rss_limit_mib} MiB)")
    if failed or peak > args.rss_limit_mib * 1024:
        print("RESULT: FAIL")
        return 1
    print("RESULT: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())

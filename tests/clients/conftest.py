"""Shared fixtures for the Python real-client tests.

`broker` starts the real `switchyard serve` binary with JSON logs and every
listener on 127.0.0.1:0 (through SWITCHYARD_LISTENERS__*__BIND), reads the
bound addresses from its `listening` log lines, and stops it with SIGTERM
afterwards. The binary is $SWITCHYARD_BIN, or target/debug/switchyard.
"""

import json
import os
import pathlib
import signal
import subprocess
import tempfile
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def binary():
    path = os.environ.get("SWITCHYARD_BIN") or str(ROOT / "target" / "debug" / "switchyard")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} not found: run `cargo build -p switchyard` first")
    return path


def protocols():
    """Names of the protocols (= default listeners) the binary serves."""
    out = subprocess.run([binary(), "protocols"], check=True, capture_output=True, text=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


class Broker:
    """A running switchyard process."""

    def __init__(self, data_dir, extra_env=None, args=(), wait_ready=True):
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        # Test-harness variables share the SWITCHYARD_ prefix but are not
        # configuration keys (the config would reject them as unknown).
        for key in list(env):
            if key == "SWITCHYARD_BIN" or key.startswith(("SWITCHYARD_TEST_", "SWITCHYARD_CRASH_")):
                del env[key]
        env["SWITCHYARD_LOG__FORMAT"] = "json"
        env["SWITCHYARD_LOG__LEVEL"] = "info"
        env["SWITCHYARD_SERVER__DATA_DIR"] = str(data_dir)
        for name in protocols():
            env[f"SWITCHYARD_LISTENERS__{name.upper()}__BIND"] = "127.0.0.1:0"
        env.update(extra_env or {})
        self.proc = subprocess.Popen(
            [binary(), "serve", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addrs = {}
        self.log = []
        self._ready = threading.Event()
        self._is_ready = False
        # Set once the HTTP listener is bound, which is before the journal
        # has been recovered (readiness follows recovery).
        self._http_bound = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not wait_ready:
            if not self._http_bound.wait(60):
                self.kill()
                raise RuntimeError("switchyard did not bind HTTP:\n" + "\n".join(self.log))
            return
        if not self._ready.wait(60) or not self._is_ready:
            self.kill()
            raise RuntimeError("switchyard did not become ready:\n" + "\n".join(self.log))

    def _read(self):
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.log.append(line)
            if os.environ.get("SWITCHYARD_TEST_ECHO"):
                print("[switchyard]", line)
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if fields.get("message") == "listening":
                host, port = fields["addr"].rsplit(":", 1)
                self.addrs[fields["listener"]] = (host, int(port))
                if fields["listener"] == "http":
                    self._http_bound.set()
            elif fields.get("message") == "switchyard ready":
                self._is_ready = True
                self._ready.set()
        # stderr closed: the process ended (before or after becoming ready).
        self._ready.set()
        self._http_bound.set()

    def addr(self, listener):
        return self.addrs[listener]

    def port(self, listener):
        return self.addrs[listener][1]

    def url(self):
        host, port = self.addrs["http"]
        return f"http://{host}:{port}"

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def broker():
    with tempfile.TemporaryDirectory() as data:
        b = Broker(data)
        try:
            yield b
        finally:
            code = b.stop()
            assert code == 0, "broker exited with %r\n%s" % (code, "\n".join(b.log[-50:]))


@pytest.fixture
def broker_factory():
    """Start brokers with custom environment; all are stopped afterwards."""
    started = []
    dirs = []

    def start(extra_env=None, data_dir=None, wait_ready=True):
        if data_dir is None:
            d = tempfile.TemporaryDirectory()
            dirs.append(d)
            data_dir = d.name
        b = Broker(data_dir, extra_env, wait_ready=wait_ready)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()
    for d in dirs:
        d.cleanup()


def wait_for(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def pytest_terminal_summary(terminalreporter):
    """Prints the cross-protocol matrix (test_interop_matrix.py) as a
    publisher × subscriber table of pass/FAIL, when any pair ran."""
    results = {}
    for outcome in ("passed", "failed", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(rep, "nodeid", "")
            if "test_interop_matrix.py::test_pair[" not in nodeid or rep.when not in ("call", "setup"):
                continue
            pair = nodeid.split("[", 1)[1].rstrip("]")
            pub, sub = pair.split("->")
            ok = outcome == "passed"
            if rep.when == "setup" and ok:
                continue
            results[(pub, sub)] = "pass" if ok else "FAIL"
    if not results:
        return
    order = ["mqtt3", "mqtt5", "amqp", "stomp", "nats", "http"]
    pubs = [p for p in order if any(k[0] == p for k in results)]
    subs = [s for s in order if any(k[1] == s for k in results)]
    tr = terminalreporter
    tr.section("interop matrix (rows: publisher, columns: subscriber)")
    tr.write_line("| pub \\ sub | " + " | ".join(subs) + " |")
    tr.write_line("| --- |" + " --- |" * len(subs))
    for p in pubs:
        cells = [results.get((p, s), "-") for s in subs]
        tr.write_line(f"| {p} | " + " | ".join(cells) + " |")
    passed = sum(1 for v in results.values() if v == "pass")
    tr.write_line(f"{passed}/{len(results)} pairs pass")

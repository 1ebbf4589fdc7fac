"""Hostile input on every protocol while well-behaved clients keep working.

One broker (anonymous, `max_connections_per_ip = 200`,
`handshake_timeout = "2s"`). A well-behaved client per protocol publishes
and consumes its own messages the whole time. Meanwhile, in turn:

1. malformed and oversized inputs on each protocol (each connection must be
   closed, or answered with an error, within seconds);
2. slowloris: a silent connection and a byte-at-a-time handshake per
   protocol (closed by the handshake timeout);
3. clients that subscribe and never read while 20 MB are published to them;
4. 2000 connections at once from one other source IP (127.0.0.2), far past
   the per-IP limit.

At the end every well-behaved client must have received every message it
published, in order, and the broker's resident memory must stay under a
bound (printed).
"""

import json
import os
import socket
import threading
import time

import paho.mqtt.client as mqtt
import pika
import pytest
import requests

from conftest import Broker

from security_helpers import Nats, Raw, Stomp

RSS_BOUND_MB = 768
PER_IP = 200


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0


@pytest.fixture
def hostile_broker(tmp_path):
    env = {
        "SWITCHYARD_LIMITS__MAX_CONNECTIONS_PER_IP": str(PER_IP),
        "SWITCHYARD_LIMITS__HANDSHAKE_TIMEOUT": "2s",
    }
    b = Broker(tmp_path / "data", env)
    try:
        yield b
    finally:
        code = b.stop()
        assert code == 0, "\n".join(b.log[-50:])


# ------------------------------------------------------- well-behaved clients


class Good(threading.Thread):
    """Publishes numbered messages and consumes them, until stopped."""

    def __init__(self, b, proto):
        super().__init__(daemon=True)
        self.b, self.proto = b, proto
        self.sent, self.got = 0, []
        self.error = None
        self.stop = threading.Event()
        self.started_ok = threading.Event()

    def run(self):
        try:
            getattr(self, "run_" + self.proto)()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = repr(e)
        finally:
            self.started_ok.set()

    def run_nats(self):
        n = Nats(self.b.addr("nats")).ok()
        n.send(b"SUB good.nats 1\r\n")
        n.ping()
        self.started_ok.set()
        while not self.stop.is_set():
            body = str(self.sent).encode()
            n.send(b"PUB good.nats %d\r\n%s\r\n" % (len(body), body))
            self.sent += 1
            (_, got), = n.msgs(1, timeout=20)
            self.got.append(int(got))
            time.sleep(0.01)
        n.close()

    def run_stomp(self):
        s = Stomp(self.b.addr("stomp"))
        assert s.command() == b"CONNECTED"
        s.send(b"SUBSCRIBE\nid:1\ndestination:/queue/good.stomp\nreceipt:s\n\n\0")
        assert s.command() == b"RECEIPT"
        self.started_ok.set()
        while not self.stop.is_set():
            body = str(self.sent).encode()
            s.send(b"SEND\ndestination:/queue/good.stomp\nreceipt:r\n\n" + body + b"\0")
            self.sent += 1
            for _ in range(2):
                f = s.frame(timeout=20)
                if f.startswith(b"MESSAGE"):
                    self.got.append(int(f.split(b"\n\n", 1)[1].rstrip(b"\0")))
            time.sleep(0.01)
        s.close()

    def run_mqtt(self):
        got_one = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="good-mqtt")

        def on_message(client, userdata, msg):
            self.got.append(int(msg.payload))
            got_one.set()

        c.on_message = on_message
        host, port = self.b.addr("mqtt")
        c.connect(host, port, keepalive=30)
        c.loop_start()
        c.subscribe("good/mqtt", qos=1).__class__
        time.sleep(0.3)
        self.started_ok.set()
        try:
            while not self.stop.is_set():
                got_one.clear()
                c.publish("good/mqtt", str(self.sent).encode(), qos=1).wait_for_publish(20)
                self.sent += 1
                assert got_one.wait(20), "mqtt message did not come back"
                time.sleep(0.01)
        finally:
            c.disconnect()
            c.loop_stop()

    def run_amqp(self):
        host, port = self.b.addr("amqp")
        conn = pika.BlockingConnection(pika.ConnectionParameters(host, port, heartbeat=0))
        ch = conn.channel()
        ch.queue_declare("good.amqp")
        ch.confirm_delivery()
        self.started_ok.set()
        while not self.stop.is_set():
            ch.basic_publish("", "good.amqp", str(self.sent).encode())
            self.sent += 1
            deadline = time.time() + 20
            while True:
                _, _, body = ch.basic_get("good.amqp", auto_ack=True)
                if body is not None:
                    self.got.append(int(body))
                    break
                assert time.time() < deadline, "amqp message did not come back"
                time.sleep(0.01)
            time.sleep(0.01)
        conn.close()

    def run_http(self):
        s = requests.Session()
        url = self.b.url()
        self.started_ok.set()
        while not self.stop.is_set():
            r = s.post(f"{url}/v1/queues/good.http", data=str(self.sent).encode(), timeout=20)
            assert r.status_code == 202, r.text
            self.sent += 1
            r = s.get(f"{url}/v1/queues/good.http/messages?max=1&wait=10", timeout=20)
            assert r.status_code == 200, r.text
            msgs = r.json()["messages"]
            assert len(msgs) == 1, msgs
            self.got.append(int(msgs[0]["body"]))
            r = s.post(
                f"{url}/v1/queues/good.http/ack",
                data=json.dumps({"receipts": [msgs[0]["receipt"]]}),
                timeout=20,
            )
            assert r.status_code in (200, 204), r.text
            time.sleep(0.01)


# -------------------------------------------------------------- hostile input


def ends(sock, timeout):
    """True when the peer closes (or resets) within `timeout` seconds."""
    deadline = time.time() + timeout
    sock.settimeout(0.5)
    while time.time() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return True
        if not data:
            return True
    return False


MALFORMED = {
    "mqtt": [
        b"\xff\xff\xff\xff\xff",  # reserved packet type, bad length
        b"\x10\xff\xff\xff\x7f",  # CONNECT claiming 256 MB
        b"\x10\x0c\x00\x04MQTT\x09\x02\x00\x3c\x00\x00",  # unknown version
    ],
    "amqp": [
        b"HTTP/1.1 200 OK\r\n\r\n",  # wrong protocol header
        b"AMQP\x00\x00\x09\x01" + b"\x01\x00\x00\x7f\xff\xff\xff" + b"x" * 100,  # 2 GB frame
        b"AMQP\x00\x00\x09\x01" + b"\x09\x00\x00\x00\x00\x00\x04abcd\xce",  # unknown frame type
    ],
    "stomp": [
        b"FOO\n\n\0",
        b"CONNECT\n" + b"x" * (2 * 1024 * 1024),  # a 2 MB header line
        b"CONNECT\naccept-version:1.2\ncontent-length:99999999999\n\n",
    ],
    "nats": [
        b"FOO BAR\r\n",
        b"CONNECT {}\r\nPUB x 999999999\r\n",
        b"CONNECT " + b"{" * (2 * 1024 * 1024),
    ],
    "http": [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * 1024 * 1024) + b"\r\n\r\n",
        b"POST /v1/topics/a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    ],
}


def check_malformed(b, proto, inputs, failures):
    for data in inputs:
        s = socket.create_connection(b.addr(proto), timeout=10)
        try:
            try:
                s.sendall(data)
            except OSError:
                continue  # closed while we were still sending: fine
            if proto == "http":
                s.settimeout(10)
                try:
                    head = s.recv(64)
                except OSError:
                    head = b""
                if head and not head.startswith(b"HTTP/1.1 4"):
                    failures.append(f"http answered {head!r} to {data[:40]!r}")
            elif not ends(s, 10):
                failures.append(f"{proto}: not closed after {data[:40]!r}")
        finally:
            s.close()


HANDSHAKE_PREFIX = {
    "mqtt": b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd",
    "amqp": b"AMQP\x00\x00\x09\x01",
    "stomp": b"CONNECT\naccept-version:1.2\n",
    "nats": b"CONNECT {\"verbose\":false}",
    "http": b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
}


def slowloris(b, proto, failures):
    silent = socket.create_connection(b.addr(proto), timeout=10)
    drip = socket.create_connection(b.addr(proto), timeout=10)
    start = time.time()
    closed_drip = False
    for byte in HANDSHAKE_PREFIX[proto] * 100:
        try:
            drip.sendall(bytes([byte]))
        except OSError:
            closed_drip = True
            break
        time.sleep(0.25)
        if time.time() - start > 40:
            break
    if not closed_drip:
        closed_drip = ends(drip, 5)
    # HTTP: the handshake timeout covers the first byte; after it, hyper's
    # header read timeout (30s) ends a dribbled request.
    if not closed_drip:
        failures.append(f"{proto}: byte-at-a-time handshake not cut off")
    if not ends(silent, 5):
        failures.append(f"{proto}: silent connection not closed")
    silent.close()
    drip.close()


def never_reads(b, failures):
    """Subscribers that never read; 20 MB are published to them."""
    idle = []
    n = socket.create_connection(b.addr("nats"))
    n.sendall(b"CONNECT {\"verbose\":false}\r\nSUB flood.> 1\r\n")
    idle.append(n)
    s = socket.create_connection(b.addr("stomp"))
    s.sendall(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/flood.#\n\n\0")
    idle.append(s)
    m = socket.create_connection(b.addr("mqtt"))
    m.sendall(b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x00\x00\x02id")
    m.sendall(b"\x82\x0c\x00\x01\x00\x07flood/#\x00")
    idle.append(m)
    for sock in idle:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    time.sleep(0.5)
    pub = Nats(b.addr("nats")).ok()
    body = b"z" * 10_000
    for i in range(2000):
        pub.send(b"PUB flood.x %d\r\n%s\r\n" % (len(body), body))
        if i % 100 == 0:
            pub.ping()
    pub.ping()
    pub.close()
    time.sleep(1)
    for sock in idle:
        sock.close()


def flood(b, failures):
    """2000 connections at once from 127.0.0.2, past the per-IP limit."""
    socks = []
    accepted = 0
    host, port = b.addr("nats")
    for _ in range(2000):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.bind(("127.0.0.2", 0))
            s.connect((host, port))
            # A complete handshake: admitted ones stay open (no timeout).
            s.sendall(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        except OSError:
            s.close()
            continue
        socks.append(s)
    time.sleep(1)
    for s in socks:
        s.settimeout(2)
        data = b""
        try:
            while b"PONG" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        if b"PONG" in data:
            accepted += 1  # admitted, and still open
    for s in socks:
        s.close()
    print(f"flood: {len(socks)} TCP connects, {accepted} admitted (limit {PER_IP})")
    if accepted > PER_IP or accepted == 0:
        failures.append(f"{accepted} connections admitted from one IP, limit {PER_IP}")
    text = requests.get(b.url() + "/metrics", timeout=10).text
    refused = [l for l in text.splitlines() if l.startswith('switchyard_connections_refused_total{protocol="nats"}')]
    print("metrics:", refused)
    if not refused or int(float(refused[0].split()[-1])) < len(socks) - accepted:
        failures.append(f"refused connections not counted: {refused}")


def test_hostile_inputs_do_not_hurt_well_behaved_clients(hostile_broker):
    b = hostile_broker
    pid = b.proc.pid
    goods = [Good(b, p) for p in ["nats", "stomp", "mqtt", "amqp", "http"]]
    for g in goods:
        g.start()
    for g in goods:
        assert g.started_ok.wait(30), g.proto
        assert g.error is None, (g.proto, g.error)
    failures = []
    peak = rss_mb(pid)

    for proto, inputs in MALFORMED.items():
        check_malformed(b, proto, inputs, failures)
    peak = max(peak, rss_mb(pid))

    threads = [threading.Thread(target=slowloris, args=(b, p, failures)) for p in HANDSHAKE_PREFIX]
    for t in threads:
        t.start()
    never_reads(b, failures)
    peak = max(peak, rss_mb(pid))
    flood(b, failures)
    peak = max(peak, rss_mb(pid))
    for t in threads:
        t.join(60)
    peak = max(peak, rss_mb(pid))

    time.sleep(0.5)
    for g in goods:
        g.stop.set()
    for g in goods:
        g.join(60)
    print(f"broker peak RSS {peak:.0f} MiB (bound {RSS_BOUND_MB} MiB)")
    for g in goods:
        print(f"{g.proto}: sent {g.sent}, received {len(g.got)}")
        assert g.error is None, (g.proto, g.error)
        assert g.sent > 0
        assert g.got == list(range(g.sent)), (g.proto, g.sent, g.got[-5:])
    assert not failures, failures
    assert peak < RSS_BOUND_MB
    # the broker is still fine
    assert requests.get(b.url() + "/healthz", timeout=10).status_code == 200

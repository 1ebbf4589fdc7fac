"""Protocol-neutral publishers and subscribers over the real Python clients,
for the cross-protocol tests (`test_interop*.py`).

Every subscriber returns what arrived as an `Arrival` (body bytes, content
type, user headers as a dict of strings, plus the protocol's raw message for
checks of other fields), so a test can compare any publisher with any
subscriber. Addresses are canonical (`a.b.c`); each wrapper writes them in
its protocol's syntax (MQTT `a/b/c`, STOMP `/topic/a.b.c`, ...).
"""

import asyncio
import base64
import queue
import socket
import threading
import time
import uuid

import nats
import paho.mqtt.client as mqtt
import pika
import requests
import stomp
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import http_sse

WAIT = 10.0

PROTOCOLS = ["mqtt3", "mqtt5", "amqp", "stomp", "nats", "http"]

# What each protocol can carry of the checked fields, both ways. MQTT 3.1.1
# PUBLISH has a topic, flags and a payload, nothing else (MQTT 3.1.1 §3.3).
CARRIES_CONTENT_TYPE = {"mqtt5", "amqp", "stomp", "nats", "http"}
CARRIES_HEADERS = {"mqtt5", "amqp", "stomp", "nats", "http"}


def mqtt_topic(address):
    """The MQTT topic of a canonical address or filter (no escapes needed for
    the addresses these tests use)."""
    return "/".join("+" if w == "*" else w for w in address.split("."))


class Arrival:
    def __init__(self, body, content_type=None, headers=None, raw=None, address=None):
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}
        self.raw = raw
        self.address = address

    def __repr__(self):
        return f"Arrival({self.address!r}, {self.body[:16]!r}..., ct={self.content_type!r}, h={self.headers!r})"


# ---------------------------------------------------------------- NATS loop


class NatsLoop:
    """One asyncio loop in a thread for every nats-py client of a test module."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


def nats_url(broker):
    host, port = broker.addr("nats")
    return f"nats://{host}:{port}"


# ---------------------------------------------------------------- MQTT


class Mqtt:
    def __init__(self, broker, v5):
        self.v5 = v5
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        self.acks = {}
        connected = queue.Queue()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id="interop-" + uuid.uuid4().hex[:10],
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self.c.on_connect = lambda c, u, f, rc, p: connected.put(rc)
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc)
        host, port = broker.addr("mqtt")
        self.c.connect(host, port, keepalive=30)
        self.c.loop_start()
        rc = connected.get(timeout=WAIT)
        assert not rc.is_failure, rc

    def subscribe_topic(self, topic, qos=1):
        if self.v5:
            self.c.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos))
        else:
            self.c.subscribe(topic, qos)
        rcs = self.subacks.get(timeout=WAIT)
        assert all(not rc.is_failure for rc in rcs), rcs

    def subscribe(self, address):
        self.subscribe_topic(mqtt_topic(address))

    def publish_topic(self, topic, body, qos=1, props=None):
        info = self.c.publish(topic, body, qos=qos, properties=props)
        info.wait_for_publish(WAIT)
        if qos:
            deadline = time.monotonic() + WAIT
            while info.mid not in self.acks and time.monotonic() < deadline:
                time.sleep(0.005)
            assert info.mid in self.acks, "no PUBACK"

    def publish(self, address, body, content_type=None, headers=None):
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            if content_type:
                props.ContentType = content_type
            if headers:
                props.UserProperty = list(headers.items())
        self.publish_topic(mqtt_topic(address), body, props=props)

    def raw(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def get(self, timeout=WAIT):
        m = self.raw(timeout)
        if m is None:
            return None
        ct, headers = None, {}
        if self.v5 and m.properties is not None:
            ct = getattr(m.properties, "ContentType", None)
            headers = dict(getattr(m.properties, "UserProperty", []) or [])
        return Arrival(bytes(m.payload), ct, headers, m, m.topic.replace("/", "."))

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


# ---------------------------------------------------------------- AMQP


class Amqp:
    def __init__(self, broker):
        host, port = broker.addr("amqp")
        self.conn = pika.BlockingConnection(
            pika.ConnectionParameters(host=host, port=port, heartbeat=0, blocked_connection_timeout=WAIT)
        )
        self.ch = self.conn.channel()
        self.queue = None

    def subscribe(self, address):
        q = self.ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        self.ch.queue_bind(q, "amq.topic", routing_key=address)
        self.queue = q

    def publish(self, address, body, content_type=None, headers=None, exchange="amq.topic", **props):
        self.ch.basic_publish(
            exchange,
            address,
            body,
            pika.BasicProperties(content_type=content_type, headers=headers, **props),
        )

    def get(self, timeout=WAIT, queue_name=None):
        q = queue_name or self.queue
        deadline = time.monotonic() + timeout
        while True:
            method, props, body = self.ch.basic_get(q, auto_ack=True)
            if method is not None:
                headers = {k: v for k, v in (props.headers or {}).items()}
                return Arrival(body, props.content_type, headers, (method, props), method.routing_key)
            if time.monotonic() >= deadline:
                return None
            self.conn.sleep(0.01)

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


# ---------------------------------------------------------------- STOMP


class _StompListener(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()
        self.errors = queue.Queue()
        self.receipts = queue.Queue()

    def on_message(self, frame):
        self.messages.put(frame)

    def on_error(self, frame):
        self.errors.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers.get("receipt-id"))


# Headers STOMP itself puts on a MESSAGE (not user headers).
STOMP_OWN = {
    "destination", "message-id", "subscription", "ack", "content-length",
    "content-type", "content-encoding", "redelivered", "correlation-id",
    "reply-to", "priority", "expires", "timestamp", "persistent", "amqp-message-id",
}


class Stomp:
    def __init__(self, broker):
        self.conn = stomp.Connection12([broker.addr("stomp")], auto_decode=False, heartbeats=(0, 0))
        self.listener = _StompListener()
        self.conn.set_listener("l", self.listener)
        self.conn.connect("guest", "guest", wait=True)
        self.n = 0

    def _receipt(self):
        r = "r-" + uuid.uuid4().hex[:10]
        return r

    def _wait(self, r):
        deadline = time.monotonic() + WAIT
        seen = []
        while time.monotonic() < deadline:
            try:
                got = self.listener.receipts.get(timeout=0.1)
            except queue.Empty:
                if not self.listener.errors.empty():
                    raise AssertionError(f"STOMP ERROR {self.listener.errors.get().headers}")
                continue
            if got == r:
                for s in seen:
                    self.listener.receipts.put(s)
                return
            seen.append(got)
        raise AssertionError(f"no RECEIPT {r}")

    def subscribe_destination(self, destination, ack="auto", **headers):
        self.n += 1
        r = self._receipt()
        headers["receipt"] = r
        self.conn.subscribe(destination, f"s{self.n}", ack=ack, headers=headers)
        self._wait(r)

    def subscribe(self, address):
        self.subscribe_destination("/topic/" + address)

    def send(self, destination, body, content_type=None, headers=None):
        r = self._receipt()
        h = dict(headers or {})
        h["receipt"] = r
        self.conn.send(destination, body, content_type=content_type, headers=h)
        self._wait(r)

    def publish(self, address, body, content_type=None, headers=None):
        self.send("/topic/" + address, body, content_type, headers)

    def raw(self, timeout=WAIT):
        try:
            return self.listener.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def get(self, timeout=WAIT):
        f = self.raw(timeout)
        if f is None:
            return None
        h = f.headers
        user = {k: v for k, v in h.items() if k not in STOMP_OWN}
        dest = h.get("destination", "")
        return Arrival(f.body, h.get("content-type"), user, f, dest.removeprefix("/topic/"))

    def close(self):
        if self.conn.is_connected():
            self.conn.disconnect()


# ---------------------------------------------------------------- NATS

NATS_OWN = {"Content-Type", "Content-Encoding", "Nats-Msg-Id", "Correlation-Id"}


class Nats:
    def __init__(self, broker, loop):
        self.loop = loop
        self.messages = queue.Queue()
        self.nc = loop.run(nats.connect(nats_url(broker), allow_reconnect=False))

    async def _cb(self, m):
        self.messages.put(m)

    def subscribe(self, subject):
        async def sub():
            s = await self.nc.subscribe(subject.replace("#", ">"), cb=self._cb)
            await self.nc.flush()
            return s

        return self.loop.run(sub())

    def publish(self, address, body, content_type=None, headers=None, reply=""):
        h = dict(headers or {})
        if content_type:
            h["Content-Type"] = content_type

        async def pub():
            await self.nc.publish(address, body, reply=reply, headers=h or None)
            await self.nc.flush()

        self.loop.run(pub())

    def raw(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def get(self, timeout=WAIT):
        m = self.raw(timeout)
        if m is None:
            return None
        h = dict(m.headers or {})
        ct = h.get("Content-Type")
        user = {k: v for k, v in h.items() if k not in NATS_OWN}
        return Arrival(m.data, ct, user, m, m.subject)

    def close(self):
        try:
            self.loop.run(self.nc.close())
        except Exception:
            pass


# ---------------------------------------------------------------- HTTP


class Http:
    def __init__(self, broker):
        self.base = broker.url()
        self.sse = None
        self.events = queue.Queue()

    def subscribe(self, address):
        # Quoted by Sse (`#` as %23); the stream is read by a thread so that
        # `get` can wait with any timeout.
        self.sse = http_sse.Sse(self.base, address, timeout=60)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        try:
            while True:
                self.events.put(self.sse.event())
        except Exception:
            pass

    def publish(self, address, body, content_type=None, headers=None, **extra):
        h = {"x-msg-" + k: v for k, v in (headers or {}).items()}
        if content_type:
            h["content-type"] = content_type
        h.update(extra)
        r = requests.post(f"{self.base}/v1/topics/{address}", data=body, headers=h, timeout=WAIT)
        assert r.status_code == 202, r.text
        return r.json()

    def get(self, timeout=WAIT):
        try:
            e = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        meta = e.meta
        h = meta.get("headers", {})
        user = {k.removeprefix("x-msg-"): v for k, v in h.items() if k.startswith("x-msg-")}
        return Arrival(e.body, h.get("content-type"), user, e, meta.get("address"))

    def close(self):
        if self.sse is not None:
            # Shut the socket down first: the pump thread is blocked reading it,
            # and a plain close would wait for the next keep-alive comment.
            conn = getattr(self.sse.response.raw, "_connection", None)
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.sse.close()


def client(proto, broker, loop):
    """A connected client of `proto` (one of PROTOCOLS)."""
    if proto == "mqtt3":
        return Mqtt(broker, v5=False)
    if proto == "mqtt5":
        return Mqtt(broker, v5=True)
    if proto == "amqp":
        return Amqp(broker)
    if proto == "stomp":
        return Stomp(broker)
    if proto == "nats":
        return Nats(broker, loop)
    if proto == "http":
        return Http(broker)
    raise ValueError(proto)


def queue_consume_http(broker, name, wait=0.5, max=10):
    """One long poll of an HTTP queue; acks what it got. Returns the bodies."""
    r = requests.get(
        f"{broker.url()}/v1/queues/{name}/messages",
        params={"max": max, "wait": wait},
        timeout=WAIT + wait,
    )
    assert r.status_code == 200, r.text
    msgs = r.json()["messages"]
    if msgs:
        a = requests.post(
            f"{broker.url()}/v1/queues/{name}/ack",
            json={"receipts": [m["receipt"] for m in msgs]},
            timeout=WAIT,
        )
        assert a.status_code == 200, a.text
    out = []
    for m in msgs:
        body = base64.b64decode(m["body"]) if m.get("encoding") == "base64" else m["body"].encode()
        out.append(body)
    return out


"""MQTT 3.1.1 and 5.0 with paho-mqtt 2.x against the real binary.

Every QoS both ways, retained messages, wills (with delay), persistent
sessions, takeover, shared subscriptions, `$` topics, topic aliases, user
properties and request/response, message expiry, maximum packet size, the
keep-alive timeout (a raw socket) and MQTT over WebSocket.
"""

import os
import queue
import socket
import struct
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 10


class Client:
    """A paho client running its network loop in a thread, with queues."""

    def __init__(self, broker, client_id=None, v5=False, clean=True, ws=False,
                 will=None, will_props=None, connect_props=None):
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.subacks = queue.Queue()
        self.unsubacks = queue.Queue()
        self.acks = {}
        self.v5 = v5
        kwargs = {}
        if not v5:
            kwargs["clean_session"] = clean
        self.client_id = client_id if client_id is not None else "py-" + uuid.uuid4().hex[:8]
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            transport="websockets" if ws else "tcp",
            **kwargs,
        )
        if ws:
            self.c.ws_set_options(path="/mqtt")
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags, rc, props))
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put(rcs)
        self.c.on_unsubscribe = lambda c, u, mid, rcs, props: self.unsubacks.put(rcs)
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.c.on_publish = self._on_publish
        if will:
            topic, payload, qos = will
            self.c.will_set(topic, payload, qos, properties=will_props)
        host, port = broker.addr("http" if ws else "mqtt")
        if v5:
            self.c.connect(host, port, keepalive=30, clean_start=clean, properties=connect_props)
        else:
            self.c.connect(host, port, keepalive=30)
        self.c.loop_start()
        self.flags, self.rc, self.props = self.connacks.get(timeout=WAIT)
        assert not self.rc.is_failure, self.rc

    def _on_publish(self, c, u, mid, rc, props):
        self.acks[mid] = rc

    def sub(self, topic, qos=0, **options):
        if self.v5:
            opts = mqtt.SubscribeOptions(qos=qos, **options)
            self.c.subscribe(topic, options=opts)
        else:
            self.c.subscribe(topic, qos)
        return self.subacks.get(timeout=WAIT)

    def pub(self, topic, payload, qos=0, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(WAIT)
        if qos > 0:
            deadline = time.monotonic() + WAIT
            while info.mid not in self.acks and time.monotonic() < deadline:
                time.sleep(0.01)
            return self.acks.get(info.mid)
        return None

    def get(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Drops the connection without DISCONNECT."""
        self.c.loop_stop()
        self.c.socket().close()


def props(kind=PacketTypes.PUBLISH, **values):
    p = Properties(kind)
    for k, v in values.items():
        setattr(p, k, v)
    return p


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
def test_mqtt_every_qos_both_ways(broker, v5):
    sub = Client(broker, v5=v5)
    pub = Client(broker, v5=v5)
    for s in range(3):
        topic = f"qos/{s}"
        sub.sub(topic, s)
        for p in range(3):
            body = f"pub{p}-sub{s}".encode()
            pub.pub(topic, body, qos=p)
            m = sub.get()
            assert m is not None, (p, s)
            assert m.payload == body
            assert m.qos == min(p, s)
    assert sub.get(0.3) is None, "nothing twice"
    sub.close()
    pub.close()


def test_mqtt_retained(broker):
    pub = Client(broker)
    pub.pub("ret/a", b"kept", qos=1, retain=True)
    sub = Client(broker, v5=True)
    sub.sub("ret/#", 1)
    m = sub.get()
    assert m.payload == b"kept" and m.retain
    pub.pub("ret/a", b"", qos=1, retain=True)
    assert sub.get().payload == b""
    late = Client(broker)
    late.sub("ret/#", 1)
    assert late.get(0.5) is None, "cleared by the empty retained publish"
    for c in (pub, sub, late):
        c.close()


def test_mqtt_will_and_will_delay(broker):
    watcher = Client(broker, v5=True)
    watcher.sub("will/#", 1)
    dying = Client(broker, will=("will/now", b"gone", 1))
    dying.kill()
    m = watcher.get()
    assert m.topic == "will/now" and m.payload == b"gone"
    delayed = Client(
        broker, v5=True, clean=False,
        will=("will/later", b"late", 1),
        will_props=props(PacketTypes.WILLMESSAGE, WillDelayInterval=1),
        connect_props=props(PacketTypes.CONNECT, SessionExpiryInterval=30),
    )
    delayed.kill()
    start = time.monotonic()
    assert watcher.get(0.5) is None, "held for its delay"
    m = watcher.get()
    assert m.topic == "will/later"
    assert time.monotonic() - start >= 0.9
    watcher.close()


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
def test_mqtt_persistent_session_gets_what_was_published_offline(broker, v5):
    cid = "persist-" + uuid.uuid4().hex[:6]
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=300) if v5 else None
    s = Client(broker, client_id=cid, v5=v5, clean=False, connect_props=cp)
    s.sub("offline/#", 2)
    s.close()
    pub = Client(broker)
    pub.pub("offline/1", b"q1", qos=1)
    pub.pub("offline/2", b"q2", qos=2)
    back = Client(broker, client_id=cid, v5=v5, clean=False, connect_props=cp)
    assert back.flags.session_present
    got = sorted((back.get().payload, ) for _ in range(2))
    assert got == [(b"q1",), (b"q2",)]
    assert back.get(0.3) is None
    back.close()
    pub.close()


def test_mqtt_takeover(broker):
    first = Client(broker, client_id="same", v5=True)
    second = Client(broker, client_id="same", v5=True)
    rc = first.disconnects.get(timeout=WAIT)
    assert rc.value == 0x8E, rc
    second.sub("t/x", 0)
    second.close()


def test_mqtt_shared_subscriptions(broker):
    a = Client(broker, v5=True)
    b = Client(broker)
    a.sub("$share/workers/jobs/+", 1)
    b.sub("$share/workers/jobs/+", 1)
    pub = Client(broker)
    for i in range(20):
        pub.pub("jobs/x", str(i).encode(), qos=1)
    got = []
    counts = []
    for c in (a, b):
        n = 0
        while (m := c.get(0.5)) is not None:
            got.append(int(m.payload))
            n += 1
        counts.append(n)
    assert sorted(got) == list(range(20)), "each message exactly once"
    assert all(n > 0 for n in counts), counts
    for c in (a, b, pub):
        c.close()


def test_mqtt_dollar_topics_and_leading_wildcards(broker):
    everything = Client(broker)
    everything.sub("#", 0)
    dollar = Client(broker)
    dollar.sub("$app/#", 0)
    pub = Client(broker, v5=True)
    pub.pub("$app/x", b"hidden from #", qos=1)
    assert dollar.get().payload == b"hidden from #"
    assert everything.get(0.3) is None
    rc = pub.pub("$SYS/fake", b"no", qos=1)
    assert rc is not None and rc.value == 0x87, rc
    for c in (everything, dollar, pub):
        c.close()


def test_mqtt_topic_aliases(broker):
    sub = Client(broker)
    sub.sub("alias/#", 1)
    pub = Client(broker, v5=True)
    pub.pub("alias/a/long/topic", b"1", qos=1, props=props(TopicAlias=5))
    pub.pub("", b"2", qos=1, props=props(TopicAlias=5))
    for want in (b"1", b"2"):
        m = sub.get()
        assert m.topic == "alias/a/long/topic" and m.payload == want
    sub.close()
    pub.close()


def test_mqtt_user_properties_and_request_response(broker):
    responder = Client(broker, v5=True)
    responder.sub("svc/time", 1)
    requester = Client(broker, v5=True)
    requester.sub("reply/me", 1)
    requester.pub("svc/time", b"now?", qos=1, props=props(
        ResponseTopic="reply/me", CorrelationData=b"\x00id\xff",
        UserProperty=[("trace", "abc"), ("tenant", "t1")], ContentType="text/plain"))
    req = responder.get()
    assert req.properties.UserProperty == [("trace", "abc"), ("tenant", "t1")]
    assert req.properties.ContentType == "text/plain"
    responder.pub(req.properties.ResponseTopic, b"12:00", qos=1,
                  props=props(CorrelationData=req.properties.CorrelationData))
    rep = requester.get()
    assert rep.payload == b"12:00"
    assert rep.properties.CorrelationData == b"\x00id\xff"
    responder.close()
    requester.close()


def test_mqtt_message_expiry(broker):
    cid = "exp-" + uuid.uuid4().hex[:6]
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=300)
    s = Client(broker, client_id=cid, v5=True, clean=False, connect_props=cp)
    s.sub("exp/#", 1)
    s.close()
    pub = Client(broker, v5=True)
    pub.pub("exp/short", b"stale", qos=1, props=props(MessageExpiryInterval=1))
    pub.pub("exp/long", b"fresh", qos=1, props=props(MessageExpiryInterval=60))
    time.sleep(2.1)
    back = Client(broker, client_id=cid, v5=True, clean=False, connect_props=cp)
    m = back.get()
    assert m.payload == b"fresh"
    assert 57 <= m.properties.MessageExpiryInterval <= 59
    assert back.get(0.3) is None
    back.close()
    pub.close()


def test_mqtt_maximum_packet_size(broker):
    small = Client(broker, v5=True, connect_props=props(PacketTypes.CONNECT, MaximumPacketSize=300))
    assert small.props.MaximumPacketSize >= 1024, "the server's limit is announced"
    small.sub("mps/#", 1)
    pub = Client(broker, v5=True)
    pub.pub("mps/big", b"x" * 2000, qos=1)
    pub.pub("mps/small", b"fits", qos=1)
    assert small.get().payload == b"fits", "the oversized packet was not sent"
    small.close()
    pub.close()


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_mqtt_keepalive_timeout_closes_a_silent_client(broker):
    host, port = broker.addr("mqtt")
    s = socket.create_connection((host, port), timeout=10)
    cid = b"silent"
    body = b"\x00\x04MQTT\x04\x02" + struct.pack(">H", 1) + struct.pack(">H", len(cid)) + cid
    s.sendall(b"\x10" + _varint(len(body)) + body)
    assert s.recv(4) == b"\x20\x02\x00\x00", "CONNACK accepted"
    start = time.monotonic()
    data = s.recv(16)  # blocks until the server closes
    elapsed = time.monotonic() - start
    assert data == b"", data
    assert 1.4 <= elapsed < 5, elapsed
    s.close()
    # The broker is fine.
    c = Client(broker)
    c.sub("ka/x", 0)
    c.close()


def test_mqtt_over_websocket(broker):
    ws = Client(broker, ws=True, v5=True)
    tcp = Client(broker)
    ws.sub("ws/#", 1)
    tcp.sub("tcp/#", 1)
    tcp.pub("ws/in", b"to the browser", qos=1)
    assert ws.get().payload == b"to the browser"
    ws.pub("tcp/in", b"from the browser", qos=2)
    assert tcp.get().payload == b"from the browser"
    ws.close()
    tcp.close()


@pytest.mark.parametrize("ws", [False, True], ids=["tcp", "websocket"])
def test_mqtt_large_bodies_arrive_byte_identical(broker, ws):
    """Payloads of 64 KiB and 1 MiB (sent by the broker straight from the
    message, not copied into its write buffer) among small ones, at QoS 0
    and 1, over TCP and WebSocket."""
    sub = Client(broker, ws=ws)
    pub = Client(broker)
    sub.sub("big/#", 1)
    sizes = [64 * 1024, 16, 1 << 20, 8 * 1024, 8 * 1024 - 1, 0, 64 * 1024 + 3]
    want = [os.urandom(n) for n in sizes]
    for i, body in enumerate(want):
        pub.pub("big/x", body, qos=i % 2)
    got = [sub.get() for _ in want]
    assert [m and len(m.payload) for m in got] == sizes
    assert [m.payload for m in got] == want
    sub.close()
    pub.close()

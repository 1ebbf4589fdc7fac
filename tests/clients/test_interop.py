"""Issue 9 beyond the pair matrix (test_interop_matrix.py): point-to-point
across protocols, wildcard parity, request/reply across protocols, typed
AMQP headers on text-only protocols, and the address edge cases of
docs/protocol-mapping.md."""

import asyncio
import threading
import time
import uuid

import pika
import pytest
import requests
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import interop
from interop import WAIT


@pytest.fixture
def loop():
    lp = interop.NatsLoop()
    yield lp
    lp.close()


def drain(get, timeout=0.3):
    """Everything a subscriber's `get` returns until it is quiet."""
    out = []
    while True:
        a = get(timeout=timeout)
        if a is None:
            return out
        out.append(a)


# ------------------------------------------------------------ point-to-point


class StompQueue:
    """A STOMP consumer of /queue/NAME, client-individual acks."""

    def __init__(self, broker, name, prefetch):
        self.c = interop.Stomp(broker)
        self.c.subscribe_destination(f"/queue/{name}", ack="client-individual", **{"prefetch-count": str(prefetch)})
        self.held = []

    def take(self, timeout):
        f = self.c.raw(timeout)
        if f is None:
            return None
        self.held.append(f)
        return f.body

    def ack_all(self):
        for f in self.held:
            self.c.conn.ack(f.headers["ack"])
        self.held = []

    def close(self):
        self.c.close()


class AmqpQueue:
    """An AMQP basic.consume of queue NAME, manual acks."""

    def __init__(self, broker, name, prefetch):
        self.c = interop.Amqp(broker)
        self.c.ch.basic_qos(prefetch_count=prefetch)
        self.got = []
        self.c.ch.basic_consume(name, self._on, auto_ack=False)
        self.held = []

    def _on(self, ch, method, props, body):
        self.got.append((method.delivery_tag, body))

    def take(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.got and time.monotonic() < deadline:
            self.c.conn.process_data_events(time_limit=0.02)
        if not self.got:
            return None
        tag, body = self.got.pop(0)
        self.held.append(tag)
        return body

    def ack_all(self):
        for tag in self.held:
            self.c.ch.basic_ack(tag)
        self.c.conn.process_data_events(time_limit=0)
        self.held = []

    def close(self):
        self.c.close()


class HttpQueue:
    """HTTP long-poll consumption with receipts, acked on `ack_all`."""

    def __init__(self, broker, name, prefetch):
        self.base = broker.url()
        self.name = name
        self.max = prefetch
        self.receipts = []
        self.ready = []

    def take(self, timeout):
        if not self.ready:
            r = requests.get(
                f"{self.base}/v1/queues/{self.name}/messages",
                params={"max": self.max, "wait": min(timeout, 1.0), "visibility": 60},
                timeout=WAIT + timeout,
            )
            assert r.status_code == 200, r.text
            for m in r.json()["messages"]:
                self.receipts.append(m["receipt"])
                self.ready.append(m["body"].encode())
        return self.ready.pop(0) if self.ready else None

    def ack_all(self):
        if self.receipts:
            r = requests.post(f"{self.base}/v1/queues/{self.name}/ack", json={"receipts": self.receipts}, timeout=WAIT)
            assert r.status_code == 200 and r.json()["acked"] == len(self.receipts), r.text
        self.receipts = []

    def close(self):
        pass


CONSUMERS = {"stomp": StompQueue, "amqp": AmqpQueue, "http": HttpQueue}


def publish_to_queue(broker, proto, name, body):
    if proto == "stomp":
        c = interop.Stomp(broker)
        c.send(f"/queue/{name}", body)
        c.close()
    elif proto == "amqp":
        c = interop.Amqp(broker)
        c.ch.confirm_delivery()
        c.ch.basic_publish("", name, body, mandatory=True)
        c.close()
    else:
        r = requests.post(f"{broker.url()}/v1/queues/{name}", data=body, timeout=WAIT)
        assert r.status_code == 202 and r.json()["routed"] == 1, r.text


@pytest.mark.parametrize(
    "holder,drainer",
    [("stomp", "amqp"), ("amqp", "http"), ("http", "stomp"), ("amqp", "stomp"), ("http", "amqp"), ("stomp", "http")],
    ids=lambda p: p,
)
def test_interop_point_to_point_orders_each_message_to_exactly_one_consumer(broker, holder, drainer):
    """STOMP /queue/orders, AMQP queue `orders` and HTTP /v1/queues/orders are
    one queue. Nine orders (three from each protocol); two consumers of
    different protocols compete: the first holds one message unacked
    (prefetch 1), so the second must get the other eight and not that one;
    then both stay attached for six more, and every order reaches exactly
    one of them."""
    # The queue, created the way HTTP creates it (durable).
    publish_to_queue(broker, "http", "orders", b"warm-up")
    assert interop.queue_consume_http(broker, "orders", wait=1) == [b"warm-up"]

    first = [f"order-{i}-{p}".encode() for i, p in enumerate(["stomp", "amqp", "http"] * 3)]
    for body in first:
        publish_to_queue(broker, body.decode().rsplit("-", 1)[1], "orders", body)

    a = CONSUMERS[holder](broker, "orders", 1)
    b = None
    try:
        held = a.take(WAIT)
        assert held is not None, f"{holder} got nothing"
        b = CONSUMERS[drainer](broker, "orders", 100)
        rest = []
        while len(rest) < 8:
            m = b.take(WAIT)
            assert m is not None, f"{drainer} got {len(rest)} of 8: {rest}"
            rest.append(m)
        assert b.take(0.3) is None
        assert held not in rest
        assert sorted(rest + [held]) == sorted(first)
        a.ack_all()
        b.ack_all()

        second = [f"late-{i}-{p}".encode() for i, p in enumerate(["amqp", "http", "stomp"] * 2)]
        for body in second:
            publish_to_queue(broker, body.decode().rsplit("-", 1)[1], "orders", body)
        got_a, got_b = [], []
        deadline = time.monotonic() + 20
        while len(got_a) + len(got_b) < len(second) and time.monotonic() < deadline:
            for c, into in ((a, got_a), (b, got_b)):
                m = c.take(0.1)
                if m is not None:
                    into.append(m)
                    c.ack_all()
        assert sorted(got_a + got_b) == sorted(second), (got_a, got_b)
        assert not set(got_a) & set(got_b)
        assert a.take(0.3) is None and b.take(0.3) is None
    finally:
        a.close()
        if b is not None:
            b.close()


# ------------------------------------------------------------ wildcard parity

ADDRESSES = ["a.b.c", "a.x.c", "a.b.d", "a.b.c.d", "a.c", "b.b.c", "a", "a.b"]


@pytest.mark.parametrize(
    "canonical,expected",
    [
        ("a.*.c", {"a.b.c", "a.x.c"}),
        ("a.#", {"a.b.c", "a.x.c", "a.b.d", "a.b.c.d", "a.c", "a", "a.b"}),
    ],
    ids=["star", "hash"],
)
def test_interop_wildcard_parity(broker, loop, canonical, expected):
    """The same filter in each protocol's syntax — MQTT `a/+/c`, STOMP
    `/topic/a.*.c`, an AMQP queue bound to amq.topic with `a.*.c`, NATS
    `a.*.c`, HTTP SSE `a.*.c` (and the `#` forms: `a/#`, `a.#`, `a.>`) —
    receives exactly the same set from publishers of every protocol."""
    subs = {}
    mqtt_sub = interop.Mqtt(broker, v5=True)
    mqtt_sub.subscribe_topic(interop.mqtt_topic(canonical))
    subs["mqtt"] = mqtt_sub
    st = interop.Stomp(broker)
    st.subscribe_destination("/topic/" + canonical)
    subs["stomp"] = st
    am = interop.Amqp(broker)
    am.subscribe(canonical)
    subs["amqp"] = am
    na = interop.Nats(broker, loop)
    na.subscribe(canonical.replace("#", ">"))
    subs["nats"] = na
    ht = interop.Http(broker)
    ht.subscribe(canonical)
    subs["http"] = ht
    pubs = {p: interop.client(p, broker, loop) for p in ["mqtt3", "mqtt5", "amqp", "stomp", "nats", "http"]}
    try:
        for p, c in pubs.items():
            for addr in ADDRESSES:
                c.publish(addr, f"{p}:{addr}".encode())
        want = {f"{p}:{a}" for p in pubs for a in expected}
        got = {}
        for name, s in subs.items():
            bodies = []
            deadline = time.monotonic() + 20
            while len(bodies) < len(want) and time.monotonic() < deadline:
                a = s.get(timeout=1)
                if a is not None:
                    bodies.append(a.body.decode())
            bodies += [a.body.decode() for a in drain(s.get)]
            got[name] = bodies
        for name, bodies in got.items():
            assert len(bodies) == len(set(bodies)), f"{name} got duplicates"
            assert set(bodies) == want, f"{name}: missing {want - set(bodies)}, extra {set(bodies) - want}"
    finally:
        for c in list(pubs.values()) + list(subs.values()):
            c.close()


# ------------------------------------------------------------ request/reply


def test_interop_nats_request_answered_by_mqtt5_responder(broker, loop):
    """NATS request → MQTT 5 responder: the reply subject arrives as the
    Response Topic, a `Correlation-Id` header as Correlation Data; the
    responder publishes to the Response Topic with the Correlation Data and
    the requester gets the answer (with the correlation id back)."""
    responder = interop.Mqtt(broker, v5=True)
    responder.subscribe_topic("rpc/mqtt/svc")
    nc = interop.Nats(broker, loop)
    try:
        async def request():
            return await nc.nc.request("rpc.mqtt.svc", b"ping", timeout=WAIT, headers={"Correlation-Id": "c-42"})

        fut = asyncio.run_coroutine_threadsafe(request(), loop.loop)
        m = responder.raw()
        assert m is not None, "the MQTT responder got no request"
        assert m.payload == b"ping"
        rt = m.properties.ResponseTopic
        assert rt.startswith("_INBOX/"), rt
        assert m.properties.CorrelationData == b"c-42"
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = m.properties.CorrelationData
        responder.publish_topic(rt, b"pong:" + m.payload, props=props)
        reply = fut.result(WAIT + 5)
        assert reply.data == b"pong:ping"
        assert reply.headers["Correlation-Id"] == "c-42"
    finally:
        responder.close()
        nc.close()


def amqp_rpc_server(broker, binding):
    """A pika RPC server in the classic shape: a queue bound to amq.topic,
    answering on the default exchange with routing key = reply_to and the
    request's correlation_id."""
    c = interop.Amqp(broker)
    q = c.ch.queue_declare("", exclusive=True).method.queue
    c.ch.queue_bind(q, "amq.topic", routing_key=binding)
    return c, q


def amqp_serve_one(c, q):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        method, props, body = c.ch.basic_get(q, auto_ack=True)
        if method is not None:
            c.ch.basic_publish(
                "",
                props.reply_to,
                b"pong:" + body,
                pika.BasicProperties(correlation_id=props.correlation_id),
            )
            return props
        c.conn.sleep(0.01)
    raise AssertionError("the AMQP RPC server got no request")


def test_interop_nats_request_answered_by_amqp_rpc_server(broker, loop):
    """NATS request → AMQP RPC server: reply_to is the NATS reply subject;
    the server answers on the default exchange with that routing key, which
    names no queue, so it goes to the multicast address of the same name
    (docs/protocol-mapping.md, "Request/reply")."""
    server, q = amqp_rpc_server(broker, "rpc.amqp.svc")
    nc = interop.Nats(broker, loop)
    try:
        async def request():
            return await nc.nc.request("rpc.amqp.svc", b"ping", timeout=WAIT, headers={"Correlation-Id": "c-7"})

        fut = asyncio.run_coroutine_threadsafe(request(), loop.loop)
        props = amqp_serve_one(server, q)
        assert props.reply_to.startswith("_INBOX."), props.reply_to
        assert props.correlation_id == "c-7"
        reply = fut.result(WAIT + 5)
        assert reply.data == b"pong:ping"
        assert reply.headers["Correlation-Id"] == "c-7"
    finally:
        server.close()
        nc.close()


def test_interop_mqtt5_request_answered_by_amqp_rpc_server(broker):
    """MQTT 5 requester (Response Topic + Correlation Data) → AMQP RPC server."""
    server, q = amqp_rpc_server(broker, "rpc.amqp.mq")
    requester = interop.Mqtt(broker, v5=True)
    requester.subscribe_topic("replies/me")
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "replies/me"
        props.CorrelationData = b"corr-1"
        requester.publish_topic("rpc/amqp/mq", b"ping", props=props)
        p = amqp_serve_one(server, q)
        assert p.reply_to == "replies.me"
        assert p.correlation_id == "corr-1"
        m = requester.raw()
        assert m is not None and m.payload == b"pong:ping"
        assert m.properties.CorrelationData == b"corr-1"
    finally:
        server.close()
        requester.close()


def amqp_rpc_call(broker, routing_key, body):
    """The classic pika RPC client: an exclusive server-named reply queue,
    reply_to + correlation_id on a publish to amq.topic. Returns (reply
    body, reply properties)."""
    c = interop.Amqp(broker)
    try:
        reply_q = c.ch.queue_declare("", exclusive=True).method.queue
        corr = str(uuid.uuid4())
        c.ch.basic_publish(
            "amq.topic",
            routing_key,
            body,
            pika.BasicProperties(reply_to=reply_q, correlation_id=corr),
        )
        a = c.get(timeout=WAIT, queue_name=reply_q)
        assert a is not None, "no reply reached the AMQP RPC client"
        method, props = a.raw
        assert props.correlation_id == corr
        return a.body, props, reply_q
    finally:
        c.close()


def test_interop_amqp_rpc_client_answered_by_nats_responder(broker, loop):
    """AMQP RPC client → NATS responder (`msg.respond`): the reply subject is
    the client's reply queue name; the responder's publish to it reaches the
    queue because the AMQP adapter binds a publisher's reply_to queue to
    amq.topic under its own name."""
    na = interop.Nats(broker, loop)

    async def serve():
        async def handler(m):
            await m.respond(b"pong:" + m.data)

        await na.nc.subscribe("rpc.nats.svc", cb=handler)
        await na.nc.flush()

    loop.run(serve())
    try:
        body, props, reply_q = amqp_rpc_call(broker, "rpc.nats.svc", b"ping")
        assert body == b"pong:ping"
    finally:
        na.close()


def test_interop_amqp_rpc_client_answered_by_mqtt5_and_stomp_responders(broker):
    """The same AMQP RPC client answered by an MQTT 5 responder (Response
    Topic = the reply queue, written as a topic) and a STOMP responder
    (reply-to: /topic/<reply queue>)."""
    mq = interop.Mqtt(broker, v5=True)
    mq.subscribe_topic("rpc/mqtt5/svc")
    st = interop.Stomp(broker)
    st.subscribe_destination("/topic/rpc.stomp.svc")
    try:
        def mqtt_responder():
            m = mq.raw()
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = m.properties.CorrelationData
            mq.publish_topic(m.properties.ResponseTopic, b"pong:" + m.payload, props=props)

        t = threading.Thread(target=mqtt_responder, daemon=True)
        t.start()
        body, _, _ = amqp_rpc_call(broker, "rpc.mqtt5.svc", b"m")
        assert body == b"pong:m"
        t.join(WAIT)

        def stomp_responder():
            f = st.raw()
            st.send(f.headers["reply-to"], b"pong:" + f.body, headers={"correlation-id": f.headers["correlation-id"]})

        t = threading.Thread(target=stomp_responder, daemon=True)
        t.start()
        body, _, _ = amqp_rpc_call(broker, "rpc.stomp.svc", b"s")
        assert body == b"pong:s"
        t.join(WAIT)
    finally:
        mq.close()
        st.close()


def test_interop_amqp_default_exchange_to_an_existing_queue_is_unchanged(broker, loop):
    """The reply-path fallback applies only when no queue has the name: a
    default-exchange publish to an existing queue goes to that queue and
    not to multicast subscribers of the same address; a mandatory publish
    that reaches nobody at all is still returned."""
    c = interop.Amqp(broker)
    na = interop.Nats(broker, loop)
    try:
        c.ch.queue_declare("jobs.x")
        na.subscribe("jobs.x")
        c.publish("jobs.x", b"to-queue", exchange="")
        a = c.get(queue_name="jobs.x")
        assert a is not None and a.body == b"to-queue"
        assert na.get(timeout=0.3) is None
        returned = []
        c.ch.add_on_return_callback(lambda *args: returned.append(args))
        c.ch.basic_publish("", "nobody.here", b"x", mandatory=True)
        c.conn.process_data_events(time_limit=0.5)
        assert len(returned) == 1
    finally:
        c.close()
        na.close()


# ------------------------------------------------------------ typed headers


def test_interop_typed_amqp_headers_as_text_elsewhere_and_typed_back_into_amqp(broker, loop):
    """An AMQP publisher's typed headers reach STOMP, NATS, MQTT 5 and HTTP
    as their canonical text (`Value::to_text`) and an AMQP consumer with
    their types; text headers from the text protocols reach AMQP as strings
    (no guessing: `"42"` stays a string)."""
    import datetime
    import decimal

    headers = {
        "int": 42,
        "neg": -7,
        "big": 2**40,
        "yes": True,
        "no": False,
        "raw": b"\x00\xff\x10",
        "dec": decimal.Decimal("12.50"),
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "list": [1, "x"],
        "map": {"k": "v"},
        "str": "plain",
    }
    text = {
        "int": "42",
        "neg": "-7",
        "big": str(2**40),
        "yes": "true",
        "no": "false",
        "raw": "00ff10",
        "dec": "12.5",  # pika sends Decimal("12.50") normalized: scale 1, value 125
        "when": str(int(datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc).timestamp())),
        "list": "[1,x]",
        "map": "{k:v}",
        "str": "plain",
    }
    address = "typed.headers"
    subs = {
        "stomp": interop.Stomp(broker),
        "nats": interop.Nats(broker, loop),
        "mqtt5": interop.Mqtt(broker, v5=True),
        "http": interop.Http(broker),
        "amqp": interop.Amqp(broker),
    }
    pubs = []
    try:
        for s in subs.values():
            s.subscribe(address)
        amqp_pub = interop.Amqp(broker)
        pubs.append(amqp_pub)
        amqp_pub.publish(address, b"typed", headers=headers)
        for name, s in subs.items():
            a = s.get()
            assert a is not None, name
            if name == "amqp":
                got = a.headers
                assert got["int"] == 42 and got["neg"] == -7 and got["big"] == 2**40
                assert got["yes"] is True and got["no"] is False
                assert got["raw"] == b"\x00\xff\x10"
                assert got["dec"] == decimal.Decimal("12.50")
                assert got["when"] == datetime.datetime(2026, 1, 2, 3, 4, 5)
                assert got["list"] == [1, b"x"] or got["list"] == [1, "x"]
                assert got["map"] == {"k": b"v"} or got["map"] == {"k": "v"}
                assert got["str"] in ("plain", b"plain")
            else:
                for k, v in text.items():
                    got = a.headers.get(k)
                    if isinstance(got, bytes):
                        got = got.decode()
                    assert got == v, f"{name}: header {k} = {got!r}, want {v!r}"

        # Text protocols → AMQP: strings stay strings.
        for name, c in [("stomp", interop.Stomp(broker)), ("nats", interop.Nats(broker, loop)),
                        ("mqtt5", interop.Mqtt(broker, v5=True)), ("http", interop.Http(broker))]:
            pubs.append(c)
            c.publish(address, name.encode(), headers={"n": "42", "b": "true"})
            a = None
            for _ in range(10):
                a = subs["amqp"].get()
                if a is None or a.body == name.encode():
                    break
            assert a is not None and a.body == name.encode(), name
            assert a.headers["n"] in ("42", b"42"), (name, a.headers)
            assert a.headers["b"] in ("true", b"true"), (name, a.headers)
    finally:
        for c in list(subs.values()) + pubs:
            c.close()


# ------------------------------------------------------------ address edge cases


def test_interop_edge_dot_inside_an_mqtt_level(broker, loop):
    """MQTT `v1.0/status`: `/` and `.` swap, so it is address `v1/0.status`
    (NATS subject, AMQP routing key, STOMP /topic/, HTTP path) — and back."""
    mq = interop.Mqtt(broker, v5=True)
    mq.subscribe_topic("v1.0/status")
    na = interop.Nats(broker, loop)
    na.subscribe("v1/0.status")
    try:
        mq.publish_topic("v1.0/status", b"from-mqtt")
        a = na.get()
        assert a is not None and a.body == b"from-mqtt" and a.address == "v1/0.status"
        assert mq.raw().payload == b"from-mqtt"
        na.publish("v1/0.status", b"from-nats")
        m = mq.raw()
        assert m is not None and m.topic == "v1.0/status" and m.payload == b"from-nats"
    finally:
        mq.close()
        na.close()


def test_interop_edge_empty_and_leading_levels(broker, loop):
    """MQTT `e//b` is address `e.%.b`; `/devices/x` is `%.devices.x` (an
    empty level is the word `%`, a level of only `%` gets one more)."""
    mq = interop.Mqtt(broker, v5=True)
    mq.subscribe_topic("e//b")
    mq.subscribe_topic("/devices/x")
    na = interop.Nats(broker, loop)
    na.subscribe("e.%.b")
    st = interop.Stomp(broker)
    st.subscribe_destination("/topic/%.devices.x")
    try:
        mq.publish_topic("e//b", b"empty-level")
        a = na.get()
        assert a is not None and a.address == "e.%.b" and a.body == b"empty-level"
        mq.publish_topic("/devices/x", b"leading")
        a = st.get()
        assert a is not None and a.address == "%.devices.x" and a.body == b"leading"
        na.publish("e.%.b", b"back")
        got = {(m.topic, bytes(m.payload)) for m in drain(mq.raw, 1)}
        assert got == {("e//b", b"empty-level"), ("/devices/x", b"leading"), ("e//b", b"back")}
    finally:
        mq.close()
        na.close()
        st.close()


def test_interop_edge_dollar_addresses_skip_leading_wildcards_everywhere(broker, loop):
    """`$`-addresses (`$SYS/x` in MQTT, `$SYS.x` elsewhere) are not matched by
    a filter that starts with a wildcard, in every protocol (MQTT's rule
    [MQTT-4.7.2-1] applied to all; nats-server would match `>`)."""
    mq = interop.Mqtt(broker, v5=True)
    mq.subscribe_topic("#")
    na = interop.Nats(broker, loop)
    na.subscribe(">")
    am = interop.Amqp(broker)
    am.subscribe("#")
    st = interop.Stomp(broker)
    st.subscribe_destination("/topic/*.x")
    explicit = interop.Nats(broker, loop)
    explicit.subscribe("$app.x")
    pub = interop.Http(broker)
    try:
        pub.publish("$app.x", b"dollar")
        a = explicit.get()
        assert a is not None and a.body == b"dollar"
        for name, s in [("mqtt", mq), ("nats", na), ("amqp", am), ("stomp", st)]:
            assert s.get(timeout=0.3) is None, f"{name} leading wildcard matched a $ address"
    finally:
        for c in (mq, na, am, st, explicit):
            c.close()


def test_interop_edge_addresses_nats_cannot_write(broker, loop):
    """An address with whitespace (MQTT `nf/a b`) is valid canonically but
    not as a NATS subject: MQTT and AMQP subscribers get it, a NATS wildcard
    subscriber does not (the delivery is dropped and counted). A NATS
    subscription with a `#` token is refused with -ERR 'Invalid Subject'."""
    mq = interop.Mqtt(broker, v5=True)
    mq.subscribe_topic("nf/#")
    am = interop.Amqp(broker)
    am.subscribe("nf.#")
    na = interop.Nats(broker, loop)
    na.subscribe("nf.>")
    try:
        mq.publish_topic("nf/a b", b"space")
        mq.publish_topic("nf/ok", b"fine")
        assert {mq.raw().payload, mq.raw().payload} == {b"space", b"fine"}
        assert sorted(a.body for a in drain(am.get, 1)) == [b"fine", b"space"]
        got = drain(na.get, 1)
        assert [a.body for a in got] == [b"fine"]
    finally:
        mq.close()
        am.close()
        na.close()

    # nats-py has no way to see this -ERR (the server closes at once), so a
    # raw socket speaks the protocol.
    import socket

    sock = socket.create_connection(broker.addr("nats"), timeout=WAIT)
    buf = b""
    while b"\r\n" not in buf:
        buf += sock.recv(4096)
    assert buf.startswith(b"INFO ")
    sock.sendall(b'CONNECT {"verbose":false}\r\nSUB bad.# 1\r\n')
    buf = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    sock.close()
    assert b"-ERR 'Invalid Subject'" in buf, buf


def test_interop_edge_stomp_destinations_without_prefix(broker, loop):
    """A bare STOMP destination `jobs` is the queue `jobs` (default_destination
    = "queue"), the same queue AMQP and HTTP name `jobs`; an unknown prefix
    `/foo/x` is an ERROR frame (and the connection closes)."""
    st = interop.Stomp(broker)
    try:
        st.send("bare-jobs", b"bare")
        assert interop.queue_consume_http(broker, "bare-jobs", wait=2) == [b"bare"]
    finally:
        st.close()
    import stomp_helpers

    raw = stomp_helpers.RawClient(broker.addr("stomp"))
    raw.connect()
    raw.send(b"SEND\ndestination:/foo/x\n\nbody\x00")
    err = raw.error_then_close()
    assert err[1]["message"] == "unknown destination", err
    raw.close()


def test_interop_edge_very_long_addresses(broker, loop):
    """1024 bytes (MAX_ADDRESS_LEN) is the longest address: it crosses
    MQTT → NATS, STOMP and HTTP SSE unchanged, and reaches an AMQP consumer
    bound with `long.#` with its routing key cut to 255 bytes (a shortstr).
    1025 bytes is refused by each protocol in its own way: MQTT 5 PUBACK
    0x90 (Topic Name invalid), HTTP 400, STOMP ERROR, NATS not routed."""
    words = ["long"] + ["x" * 9] * 102
    addr = ".".join(words)[:1024].rstrip(".")
    addr = addr + "y" * (1024 - len(addr))
    assert len(addr) == 1024
    na = interop.Nats(broker, loop)
    na.subscribe("long.>")
    st = interop.Stomp(broker)
    st.subscribe_destination("/topic/long.#")
    ht = interop.Http(broker)
    ht.subscribe("long.#")
    am = interop.Amqp(broker)
    am.subscribe("long.#")
    mq = interop.Mqtt(broker, v5=True)
    try:
        mq.publish_topic(interop.mqtt_topic(addr), b"long")
        for name, s in [("nats", na), ("stomp", st), ("http", ht)]:
            a = s.get()
            assert a is not None and a.address == addr and a.body == b"long", name
        a = am.get()
        assert a is not None and a.body == b"long"
        assert a.address == addr[:255]

        too_long = addr + "z"
        r = requests.post(f"{broker.url()}/v1/topics/{too_long}", data=b"x", timeout=WAIT)
        assert r.status_code == 400, r.text
        na.publish(too_long, b"x")
        assert na.get(timeout=0.5) is None
        import stomp_helpers

        raw = stomp_helpers.RawClient(broker.addr("stomp"))
        raw.connect()
        raw.send(f"SEND\ndestination:/topic/{too_long}\n\nx\x00".encode())
        err = raw.error_then_close()
        assert err[0] == "ERROR"
        raw.close()
        bad = interop.Mqtt(broker, v5=True)
        info = bad.c.publish(interop.mqtt_topic(too_long), b"x", qos=1)
        deadline = time.monotonic() + WAIT
        while info.mid not in bad.acks and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bad.acks[info.mid].value == 0x90, bad.acks
        bad.close()
    finally:
        for c in (na, st, ht, am, mq):
            c.close()


def test_interop_edge_addresses_mqtt_cannot_write(broker, loop):
    """An address with `+` or `#` inside a word (NATS `plus.a+b`) has no MQTT
    topic name: MQTT subscribers skip it, the other protocols get it."""
    mq = interop.Mqtt(broker, v5=True)
    mq.subscribe_topic("plus/#")
    am = interop.Amqp(broker)
    am.subscribe("plus.#")
    na = interop.Nats(broker, loop)
    try:
        na.publish("plus.a+b", b"plus")
        na.publish("plus.a#b", b"hash")
        na.publish("plus.ok", b"fine")
        assert [m.payload for m in drain(mq.raw, 1)] == [b"fine"]
        assert sorted(a.body for a in drain(am.get, 1)) == [b"fine", b"hash", b"plus"]
    finally:
        mq.close()
        am.close()
        na.close()


def test_interop_http_and_stomp_requests_answered_across_protocols(broker, loop):
    """HTTP requester (`x-reply-to`, `x-correlation-id`, the answer on an SSE
    stream) answered by an AMQP RPC server; STOMP requester (`reply-to:
    /topic/…`, `correlation-id`) answered by a NATS responder."""
    server, q = amqp_rpc_server(broker, "rpc.http.svc")
    ht = interop.Http(broker)
    ht.subscribe("replies.http")
    try:
        ht.publish("rpc.http.svc", b"ping", **{"x-reply-to": "replies.http", "x-correlation-id": "h-1"})
        props = amqp_serve_one(server, q)
        assert props.reply_to == "replies.http" and props.correlation_id == "h-1"
        a = ht.get()
        assert a is not None and a.body == b"pong:ping"
        assert a.raw.meta["headers"]["x-correlation-id"] == "h-1"
    finally:
        server.close()
        ht.close()

    na = interop.Nats(broker, loop)

    async def serve():
        async def handler(m):
            await na.nc.publish(m.reply, b"pong:" + m.data, headers={"Correlation-Id": m.headers["Correlation-Id"]})

        await na.nc.subscribe("rpc.stomp2nats", cb=handler)
        await na.nc.flush()

    loop.run(serve())
    st = interop.Stomp(broker)
    st.subscribe_destination("/topic/replies.stomp")
    try:
        st.send("/topic/rpc.stomp2nats", b"ping", headers={"reply-to": "/topic/replies.stomp", "correlation-id": "s-1"})
        f = st.raw()
        assert f is not None and f.body == b"pong:ping"
        assert f.headers["correlation-id"] == "s-1"
    finally:
        st.close()
        na.close()

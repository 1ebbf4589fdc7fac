"""STOMP with stomp.py (versions 1.0, 1.1 and 1.2) against the real binary:
publish/subscribe, ack modes, NACK and dead-lettering, transactions,
receipts, heart-beats, binary and large bodies, wildcards, durable
subscriptions, competing consumers and bad input."""

import time

import pytest

from stomp_helpers import (
    WAIT,
    RawClient,
    ack,
    close,
    connect,
    rid,
    send,
    subscribe,
)

ALL = ["1.0", "1.1", "1.2"]


@pytest.mark.parametrize("version", ALL)
def test_stomp_publish_subscribe_each_version(broker, version):
    sub, sl = connect(broker, version)
    pub, pl = connect(broker, version)
    subscribe(sub, sl, "/topic/py.ver", "s1")
    send(pub, pl, "/topic/py.ver", "hello " + version, **{"x-app": "tests"})
    m = sl.next()
    assert m.body == "hello " + version
    assert m.headers["destination"] == "/topic/py.ver"
    assert m.headers["subscription"] == "s1"
    assert m.headers["x-app"] == "tests"
    assert "message-id" in m.headers
    close(sub)
    close(pub)


@pytest.mark.parametrize(
    "version,mode,left",
    [
        ("1.0", "client", ["m2"]),
        ("1.1", "client", ["m2"]),
        ("1.2", "client", ["m2"]),
        ("1.1", "client-individual", ["m0", "m2"]),
        ("1.2", "client-individual", ["m0", "m2"]),
        ("1.2", "auto", []),
    ],
)
def test_stomp_ack_modes(broker, version, mode, left):
    q = f"/queue/py.ack.{version}.{mode}"
    c, l = connect(broker, version)
    subscribe(c, l, q, "a", ack=mode)
    for i in range(3):
        send(c, l, q, f"m{i}")
    got = [l.next() for _ in range(3)]
    assert [m.body for m in got] == ["m0", "m1", "m2"]
    if mode != "auto":
        r = rid()
        ack(c, got[1], receipt=r)
        l.receipt(r)
    close(c)
    c, l = connect(broker, version)
    subscribe(c, l, q, "b", ack="client-individual" if version != "1.0" else "client")
    assert [l.next().body for _ in left] == left
    l.none()
    close(c)


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_stomp_nack_redelivers_then_dead_letters(broker_factory, version):
    b = broker_factory(
        {
            "SWITCHYARD_ADDRESSES__POISON__MAX_DELIVERIES": "2",
            "SWITCHYARD_ADDRESSES__POISON__DLQ": "poison.dead",
        }
    )
    c, l = connect(b, version)
    subscribe(c, l, "/queue/poison", "p", ack="client-individual")
    send(c, l, "/queue/poison", "bad")
    first = l.next()
    ack(c, first, nack=True)
    second = l.next()
    assert second.body == "bad"
    assert second.headers.get("redelivered") == "true"
    r = rid()
    ack(c, second, nack=True, receipt=r)
    l.receipt(r)
    l.none()
    subscribe(c, l, "/queue/poison.dead", "d")
    dead = l.next()
    assert dead.body == "bad"
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    close(c)


def test_stomp_transactions_commit_and_abort(broker):
    sub, sl = connect(broker)
    subscribe(sub, sl, "/topic/py.tx", "t")
    c, l = connect(broker)
    tx = c.begin()
    c.send("/topic/py.tx", "in tx 1", transaction=tx)
    c.send("/topic/py.tx", "in tx 2", transaction=tx)
    sl.none()
    r = rid()
    c.commit(tx, receipt=r)
    l.receipt(r)
    assert [sl.next().body, sl.next().body] == ["in tx 1", "in tx 2"]
    tx = c.begin()
    c.send("/topic/py.tx", "aborted", transaction=tx)
    r = rid()
    c.abort(tx, receipt=r)
    l.receipt(r)
    sl.none()

    # ACKs in a transaction: aborted ones are undone, committed ones apply.
    for i in range(2):
        send(c, l, "/queue/py.txack", f"q{i}")
    subscribe(c, l, "/queue/py.txack", "q", ack="client-individual")
    m0, m1 = l.next(), l.next()
    tx = c.begin()
    ack(c, m0, transaction=tx)
    c.abort(tx)
    tx = c.begin()
    ack(c, m1, transaction=tx)
    r = rid()
    c.commit(tx, receipt=r)
    l.receipt(r)
    close(c)
    c, l = connect(broker)
    subscribe(c, l, "/queue/py.txack", "q2", ack="client-individual")
    assert l.next().body == "q0"
    l.none()
    close(c)
    close(sub)


def test_stomp_receipts_and_disconnect(broker):
    c, l = connect(broker)
    subscribe(c, l, "/queue/py.rcpt", "r", ack="client")
    send(c, l, "/queue/py.rcpt", "x")
    m = l.next()
    r = rid()
    ack(c, m, receipt=r)
    l.receipt(r)
    r = rid()
    c.unsubscribe("r", headers={"receipt": r})
    l.receipt(r)
    # stomp.py's disconnect sends a receipt and waits for it.
    c.disconnect(receipt="bye")
    l.receipt("bye")
    assert l.disconnected.wait(WAIT)


def test_stomp_heart_beats_keep_a_quiet_connection_open(broker):
    c, l = connect(broker, heartbeats=(500, 500))
    time.sleep(4)
    assert c.is_connected()
    assert l.heartbeats >= 2, l.heartbeats
    subscribe(c, l, "/topic/py.hb", "h")
    send(c, l, "/topic/py.hb", "still here")
    assert l.next().body == "still here"
    close(c)


def test_stomp_silent_client_is_dropped(broker):
    raw = RawClient(broker.addr("stomp"))
    raw.connect(heart_beat="500,0")
    started = time.monotonic()
    err = raw.error_then_close()
    assert err[1]["message"] == "heart-beat timeout"
    assert time.monotonic() - started >= 1.0
    raw.close()


def test_stomp_binary_body_with_nul_bytes(broker):
    c, l = connect(broker, auto_decode=False)
    subscribe(c, l, "/topic/py.bin", "b")
    body = bytes(range(256)) * 4
    send(c, l, "/topic/py.bin", body)
    m = l.next()
    assert m.body == body
    assert m.headers["content-length"] == str(len(body))
    close(c)


def test_stomp_one_mib_body(broker):
    c, l = connect(broker, auto_decode=False)
    subscribe(c, l, "/queue/py.big", "b")
    body = bytes(i % 251 for i in range(1024 * 1024))
    send(c, l, "/queue/py.big", body)
    assert l.next().body == body
    close(c)


def test_stomp_wildcard_topic_subscriptions(broker):
    c, l = connect(broker)
    subscribe(c, l, "/topic/py.w.*.x", "star")
    subscribe(c, l, "/topic/py.h.#", "hash")
    for a in ["py.w.1.x", "py.w.x", "py.w.1.2.x", "py.h", "py.h.1.2", "py.other"]:
        send(c, l, "/topic/" + a, a)
    got = sorted(
        (m.headers["subscription"], m.body) for m in [l.next() for _ in range(3)]
    )
    assert got == [("hash", "py.h"), ("hash", "py.h.1.2"), ("star", "py.w.1.x")]
    l.none()
    close(c)


@pytest.mark.parametrize("style", ["activemq", "rabbitmq"])
def test_stomp_durable_subscription_receives_while_away(broker, style):
    dest = f"/topic/py.dur.{style}"
    if style == "activemq":
        connect_headers = {"client-id": "py-app"}
        sub_headers = {"activemq.subscriptionName": "feed"}
    else:
        connect_headers = {}
        sub_headers = {"durable": "true", "auto-delete": "false"}
    pub, pl = connect(broker)
    c, l = connect(broker, headers=connect_headers)
    subscribe(c, l, dest, "dur-1", ack="client-individual", **sub_headers)
    send(pub, pl, dest, "while here")
    m = l.next()
    ack(c, m)
    close(c)
    send(pub, pl, dest, "while away 1")
    send(pub, pl, dest, "while away 2")
    c, l = connect(broker, headers=connect_headers)
    subscribe(c, l, dest, "dur-1", ack="client-individual", **sub_headers)
    assert [l.next().body, l.next().body] == ["while away 1", "while away 2"]
    l.none()
    close(c)
    close(pub)


def test_stomp_queue_consumers_compete(broker):
    c1, l1 = connect(broker)
    c2, l2 = connect(broker)
    subscribe(c1, l1, "/queue/py.work", "w1")
    subscribe(c2, l2, "/queue/py.work", "w2")
    p, pl = connect(broker)
    for i in range(40):
        send(p, pl, "/queue/py.work", f"job{i}")
    deadline = time.monotonic() + WAIT
    while l1.messages.qsize() + l2.messages.qsize() < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    a = [l1.messages.get_nowait().body for _ in range(l1.messages.qsize())]
    b = [l2.messages.get_nowait().body for _ in range(l2.messages.qsize())]
    l1.none()
    l2.none()
    assert sorted(a + b) == sorted(f"job{i}" for i in range(40))
    assert not set(a) & set(b)
    assert a and b, (len(a), len(b))
    for c in (c1, c2, p):
        close(c)


BAD = [
    (b"SEND\ndestination:/queue/a\ncontent-length:5\n\nhelloX", False, "frame not terminated by NUL"),
    (b"FOO\n\n\x00", False, "unknown command"),
    (b"SEND\ndestination\n\n\x00", False, "malformed frame"),
    (b"SEND\ndestination:/queue/a\nx:\\t\n\n\x00", False, "invalid header escape"),
    (b"SEND\ndestination:/queue/a\ncontent-length:100\n\nshort\x00", True, "incomplete frame"),
    (b"SEND\ncontent-length:1\n\nx\x00", False, "missing destination header"),
    (b"ACK\nid:12-34\n\n\x00", False, "unknown message id"),
]


@pytest.mark.parametrize("data,half_close,message", BAD)
def test_stomp_bad_input_gets_error_and_close(broker, data, half_close, message):
    other, ol = connect(broker)
    subscribe(other, ol, "/topic/py.ok", "ok")
    raw = RawClient(broker.addr("stomp"))
    raw.connect()
    raw.send(data)
    if half_close:
        raw.sock.shutdown(1)
    err = raw.error_then_close()
    assert err[1]["message"] == message
    assert err[2], "the ERROR body explains"
    raw.close()
    send(other, ol, "/topic/py.ok", "fine")
    assert ol.next().body == "fine"
    close(other)

"""AMQP 0-9-1 with pika, the Python client RabbitMQ documents: exchanges,
queue arguments, consuming and acknowledging, basic.get, returns, confirms,
transactions, queue lifecycle, dead-lettering, heartbeats and big
messages, against the real `switchyard` binary."""

import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, UnroutableError

from conftest import wait_for


def pump(conn, seconds):
    """Runs pika's I/O loop for `seconds` (process_data_events returns as
    soon as it has dispatched something)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)


def connect(broker, **kw):
    host, port = broker.addr("amqp")
    params = pika.ConnectionParameters(host=host, port=port, **kw)
    return pika.BlockingConnection(params)


@pytest.fixture
def conn(broker):
    c = connect(broker)
    yield c
    if c.is_open:
        c.close()


def drain(ch, queue):
    out = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body.decode())


def test_every_exchange_type(conn):
    ch = conn.channel()
    for name, kind in [("px.direct", "direct"), ("px.fanout", "fanout"), ("px.topic", "topic"), ("px.headers", "headers")]:
        ch.exchange_declare(name, kind)
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q1, "px.direct", "k1")
    ch.queue_bind(q2, "px.direct", "k2")
    ch.queue_bind(q1, "px.fanout")
    ch.queue_bind(q2, "px.fanout")
    ch.queue_bind(q1, "px.topic", "a.*")
    ch.queue_bind(q2, "px.topic", "a.#")
    ch.queue_bind(q1, "px.headers", arguments={"x-match": "all", "f": "pdf", "t": "report"})
    ch.queue_bind(q2, "px.headers", arguments={"x-match": "any", "f": "pdf", "t": "log"})
    ch.basic_publish("px.direct", "k1", b"d1")
    ch.basic_publish("px.fanout", "ignored", b"f")
    ch.basic_publish("px.topic", "a.b.c", b"t-deep")
    ch.basic_publish("px.topic", "a.b", b"t-one")
    ch.basic_publish("px.headers", "", b"h-both", pika.BasicProperties(headers={"f": "pdf", "t": "report"}))
    ch.basic_publish("px.headers", "", b"h-any", pika.BasicProperties(headers={"f": "pdf"}))
    assert drain(ch, q1) == ["d1", "f", "t-one", "h-both"]
    assert drain(ch, q2) == ["f", "t-deep", "t-one", "h-both", "h-any"]


def test_queue_arguments(conn):
    ch = conn.channel()
    ch.exchange_declare("pdlx", "fanout")
    dead = ch.queue_declare("p.dead").method.queue
    ch.queue_bind(dead, "pdlx")
    ch.queue_declare("p.ttl", arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "pdlx", "x-dead-letter-routing-key": "gone"})
    ch.basic_publish("", "p.ttl", b"expires")
    assert wait_for(lambda: ch.queue_declare("p.dead", passive=True).method.message_count == 1)
    method, props, body = ch.basic_get(dead, auto_ack=True)
    assert body == b"expires"
    assert method.routing_key == "gone"
    death = props.headers["x-death"][0]
    assert death["reason"] == "expired"
    assert death["queue"] == "p.ttl"
    assert death["count"] == 1
    assert props.headers["x-first-death-reason"] == "expired"

    ch.queue_declare("p.len", arguments={"x-max-length": 2})
    for m in [b"1", b"2", b"3"]:
        ch.basic_publish("", "p.len", m)
    assert drain(ch, "p.len") == ["2", "3"]

    ch.queue_declare("p.bytes", arguments={"x-max-length-bytes": 4})
    for m in [b"aaa", b"bbb"]:
        ch.basic_publish("", "p.bytes", m)
    assert drain(ch, "p.bytes") == ["bbb"]

    ch.queue_declare("p.prio", arguments={"x-max-priority": 9})
    for body, p in [(b"low", 1), (b"high", 8), (b"mid", 4)]:
        ch.basic_publish("", "p.prio", body, pika.BasicProperties(priority=p))
    assert drain(ch, "p.prio") == ["high", "mid", "low"]

    ch.queue_declare("p.exp", arguments={"x-expires": 100})
    time.sleep(0.6)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("p.exp", passive=True)
    assert e.value.reply_code == 404


def test_reject_publish_overflow_nacks_with_confirms(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("p.rp", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish("", "p.rp", b"1")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", "p.rp", b"2")


def test_single_active_consumer(conn):
    ch = conn.channel()
    ch.queue_declare("p.sac", arguments={"x-single-active-consumer": True})
    got = {"a": [], "b": []}
    ch.basic_consume("p.sac", lambda c, m, p, b: got["a"].append(b), auto_ack=True)
    ch.basic_consume("p.sac", lambda c, m, p, b: got["b"].append(b), auto_ack=True)
    for m in [b"1", b"2", b"3"]:
        ch.basic_publish("", "p.sac", m)
    pump(conn, 0.5)
    assert got == {"a": [b"1", b"2", b"3"], "b": []}


def test_prefetch_fair_dispatch(broker):
    c1, c2 = connect(broker), connect(broker)
    slow, fast = c1.channel(), c2.channel()
    slow.queue_declare("p.work")
    for ch in (slow, fast):
        ch.basic_qos(prefetch_count=1)
    held = []
    done = []
    slow.basic_consume("p.work", lambda c, m, p, b: held.append(m))
    fast.basic_consume("p.work", lambda c, m, p, b: (done.append(b), c.basic_ack(m.delivery_tag)))
    pub = c1.channel()
    for i in range(10):
        pub.basic_publish("", "p.work", str(i).encode())
    deadline = time.monotonic() + 10
    while len(held) + len(done) < 10 and time.monotonic() < deadline:
        c1.process_data_events(time_limit=0.05)
        c2.process_data_events(time_limit=0.05)
    assert len(held) == 1
    assert len(done) == 9
    c1.close()
    c2.close()


def test_manual_ack_nack_reject_and_redelivery(conn):
    ch = conn.channel()
    ch.queue_declare("p.rq")
    ch.basic_publish("", "p.rq", b"m")
    method, _, _ = ch.basic_get("p.rq")
    assert not method.redelivered
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, _ = ch.basic_get("p.rq")
    assert method.redelivered
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, _ = ch.basic_get("p.rq")
    assert method.redelivered
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert ch.basic_get("p.rq") == (None, None, None)
    for i in range(3):
        ch.basic_publish("", "p.rq", str(i).encode())
    tags = [ch.basic_get("p.rq")[0].delivery_tag for _ in range(3)]
    ch.basic_ack(tags[-1], multiple=True)
    ch.basic_publish("", "p.rq", b"x")
    method, _, _ = ch.basic_get("p.rq", auto_ack=True)
    assert method.message_count == 0
    # An unknown tag is a channel error; the connection goes on.
    ch.basic_ack(999)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("p.rq", passive=True)
    assert e.value.reply_code == 406
    assert "unknown delivery tag 999" in e.value.reply_text
    assert conn.is_open
    conn.channel().queue_declare("p.rq", passive=True)


def test_basic_get_empty_and_counts(conn):
    ch = conn.channel()
    ch.queue_declare("p.get")
    assert ch.basic_get("p.get") == (None, None, None)
    ch.basic_publish("", "p.get", b"a")
    ch.basic_publish("", "p.get", b"b")
    method, _, body = ch.basic_get("p.get", auto_ack=True)
    assert body == b"a"
    assert method.message_count == 1


def test_mandatory_return_and_confirms(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(UnroutableError) as e:
        ch.basic_publish("", "nobody-home", b"lost", mandatory=True)
    assert e.value.messages[0].body == b"lost"
    ch.queue_declare("p.conf")
    for _ in range(20):
        ch.basic_publish("", "p.conf", b"x")
    assert ch.queue_declare("p.conf", passive=True).method.message_count == 20


def test_transactions(conn):
    ch = conn.channel()
    ch.queue_declare("p.tx")
    ch.tx_select()
    ch.basic_publish("", "p.tx", b"rolled back")
    ch.tx_rollback()
    ch.basic_publish("", "p.tx", b"committed")
    assert ch.queue_declare("p.tx", passive=True).method.message_count == 0
    ch.tx_commit()
    assert drain(ch, "p.tx") == ["committed"]


def test_exclusive_and_auto_delete_lifecycle(broker):
    owner, other = connect(broker), connect(broker)
    och = owner.channel()
    och.queue_declare("p.excl", exclusive=True)
    xch = other.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        xch.basic_consume("p.excl", lambda *a: None)
    assert e.value.reply_code == 405
    owner.close()
    xch = other.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        xch.queue_declare("p.excl", passive=True)
    assert e.value.reply_code == 404
    xch = other.channel()
    xch.queue_declare("p.auto", auto_delete=True)
    tag = xch.basic_consume("p.auto", lambda *a: None)
    xch.basic_cancel(tag)
    with pytest.raises(ChannelClosedByBroker) as e:
        xch.queue_declare("p.auto", passive=True)
    assert e.value.reply_code == 404
    other.close()


def test_all_properties_round_trip(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={"int": 1, "str": "s", "bool": True, "list": [1, "a"], "map": {"k": "v"}, "none": None, "bytes": b"\x00\xff"},
        delivery_mode=2,
        priority=3,
        correlation_id="c-1",
        reply_to="r",
        expiration="60000",
        message_id="m-1",
        timestamp=1700000000,
        type="kind",
        user_id="guest",
        app_id="app",
        cluster_id="cl",
    )
    ch.basic_publish("", q, b"p", props)
    _, got, body = ch.basic_get(q, auto_ack=True)
    assert body == b"p"
    for field in ["content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id", "reply_to", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id"]:
        assert getattr(got, field) == getattr(props, field), field
    assert 59000 < int(got.expiration) <= 60000


def test_one_mib_message_split_by_frame_max(broker):
    c = connect(broker, frame_max=4096)
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    body = bytes(i % 251 for i in range(1024 * 1024))
    ch.basic_publish("", q, body)
    _, _, got = ch.basic_get(q, auto_ack=True)
    assert got == body
    c.close()


def test_heartbeats_keep_an_idle_connection_alive(broker):
    c = connect(broker, heartbeat=1)
    ch = c.channel()
    c.sleep(3.5)  # pika answers heartbeats while it sleeps
    assert c.is_open
    ch.queue_declare("p.hb")
    c.close()


def test_server_cancels_consumer_when_its_queue_is_deleted(conn):
    ch = conn.channel()
    ch.queue_declare("p.doomed")
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume("p.doomed", lambda *a: None)
    conn.channel().queue_delete("p.doomed")
    pump(conn, 0.5)
    assert cancelled == [tag]

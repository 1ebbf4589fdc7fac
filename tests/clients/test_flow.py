"""Flow control against the real binary: past the memory high watermark,
publishers are held back (AMQP clients are told with connection.blocked)
and the state shows in /metrics."""

import time

import pika
import requests

from conftest import wait_for


def test_memory_watermark_blocks_publishers_and_tells_amqp_clients(broker_factory):
    # 1 MiB is far below any real resident size: blocked from the first check.
    b = broker_factory({"SWITCHYARD_LIMITS__MEMORY_HIGH_WATERMARK": "1MiB"})
    metrics = lambda: requests.get(b.url() + "/metrics", timeout=5).text
    assert wait_for(lambda: "switchyard_publishers_blocked 1" in metrics(), timeout=10)

    host, port = b.addr("amqp")
    blocked = []
    params = pika.ConnectionParameters(host=host, port=port, blocked_connection_timeout=None)
    conn = pika.BlockingConnection(params)
    conn.add_on_connection_blocked_callback(lambda c, m: blocked.append(m.method.reason))
    ch = conn.channel()
    ch.queue_declare("flow.q")
    # A consumer-only connection is not held back: declaring and reading work.
    consumer = pika.BlockingConnection(params).channel()
    assert consumer.basic_get("flow.q", auto_ack=True) == (None, None, None)
    # The first publish makes this a publishing connection: it is told.
    ch.basic_publish("", "flow.q", b"x")
    deadline = time.monotonic() + 10
    while not blocked and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert blocked and "memory" in blocked[0], blocked
    # A held-back connection is not read, so it cannot be closed with a
    # handshake (as with RabbitMQ); the broker's shutdown ends it.

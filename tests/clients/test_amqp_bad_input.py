"""Bad AMQP input, frame by frame (tests/clients/amqp_raw.py): each case
gets the reply code RabbitMQ 3.10 answers with and the connection closes,
while a pika client on the same broker keeps working."""

import socket
import struct
import time

import pika
import pytest

from amqp_raw import HEADER, RawPeer, frame, method, shortstr


@pytest.fixture
def bystander(broker):
    """A pika connection that must survive every bad client."""
    host, port = broker.addr("amqp")
    c = pika.BlockingConnection(pika.ConnectionParameters(host=host, port=port))
    ch = c.channel()
    ch.queue_declare("bystander")
    yield ch
    ch.basic_publish("", "bystander", b"still here")
    _, _, body = ch.basic_get("bystander", auto_ack=True)
    assert body == b"still here"
    c.close()


def peer(broker):
    return RawPeer(broker.addr("amqp"))


def publish(ch, rk=b"q", flags=b"\x00"):
    return method(ch, 60, 40, struct.pack(">H", 0) + shortstr("") + shortstr(rk) + flags)


def test_wrong_protocol_header_gets_ours_and_close(broker, bystander):
    s = socket.create_connection(broker.addr("amqp"), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while True:
        chunk = s.recv(100)
        if not chunk:
            break
        got += chunk
    assert got == HEADER
    s.close()


def test_method_on_unopened_channel_is_504(broker, bystander):
    p = peer(broker)
    p.handshake()
    p.send(method(1, 50, 10, struct.pack(">H", 0) + shortstr("q") + b"\x00" + struct.pack(">I", 0)))
    assert p.expect_connection_close() == (504, "CHANNEL_ERROR - expected 'channel.open'")
    assert p.expect_eof()


def test_body_without_header_is_505(broker, bystander):
    p = peer(broker)
    p.handshake()
    p.open_channel(1)
    p.send(frame(3, 1, b"hello"))
    code, text = p.expect_connection_close()
    assert code == 505
    assert text == "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
    assert p.expect_eof()


def test_body_after_publish_without_header_is_505(broker, bystander):
    p = peer(broker)
    p.handshake()
    p.open_channel(1)
    p.send(publish(1) + frame(3, 1, b"hello"))
    code, text = p.expect_connection_close()
    assert code == 505
    assert "expected content header for class 60" in text
    assert p.expect_eof()


def test_frame_larger_than_negotiated_is_501(broker, bystander):
    p = peer(broker)
    p.handshake(frame_max=4096)
    p.open_channel(1)
    p.send(publish(1) + frame(2, 1, struct.pack(">HHQH", 60, 0, 5000, 0)) + frame(3, 1, b"x" * 5000))
    code, text = p.expect_connection_close()
    assert code == 501
    assert text.startswith("FRAME_ERROR - frame size 5000 exceeds")
    assert p.expect_eof()


@pytest.mark.parametrize("class_id,method_id", [(60, 999), (77, 10)])
def test_unknown_class_or_method_is_540(broker, bystander, class_id, method_id):
    p = peer(broker)
    p.handshake()
    p.open_channel(1)
    p.send(method(1, class_id, method_id))
    code, text = p.expect_connection_close()
    assert code == 540
    assert text == f"NOT_IMPLEMENTED - unknown method: class {class_id}, method {method_id}"
    assert p.expect_eof()


def test_truncated_method_arguments_are_501(broker, bystander):
    p = peer(broker)
    p.handshake()
    p.open_channel(1)
    p.send(method(1, 50, 10, b"\x00"))
    code, _ = p.expect_connection_close()
    assert code == 501
    assert p.expect_eof()


def test_soft_errors_close_only_the_channel(broker, bystander):
    p = peer(broker)
    p.handshake()
    p.open_channel(1)
    p.send(method(1, 60, 20, struct.pack(">H", 0) + shortstr("nosuch") + shortstr("") + b"\x00" + struct.pack(">I", 0)))
    ch, c, m, args = p.read_method()
    assert (ch, c, m) == (1, 20, 40)
    assert struct.unpack(">H", args[:2])[0] == 404
    assert b"NOT_FOUND - no queue 'nosuch' in vhost '/'" in args
    p.send(method(1, 20, 41))
    p.open_channel(2)
    p.send(method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0)))
    assert p.read_method()[1:3] == (10, 51)
    assert p.expect_eof()


def test_missed_heartbeats_close_the_connection(broker, bystander):
    p = peer(broker)
    p.handshake(heartbeat=1)
    started = time.monotonic()
    # Say nothing; the server sends heartbeats and gives up after 2 s.
    kinds = set()
    try:
        while True:
            kind, _, _ = p.read_frame(timeout=10)
            kinds.add(kind)
    except EOFError:
        pass
    elapsed = time.monotonic() - started
    assert 8 in kinds, "the server sent heartbeats"
    assert 1.5 < elapsed < 8, elapsed

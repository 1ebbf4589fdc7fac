"""Issue 9: every ordered pair (publisher, subscriber) of MQTT 3.1.1, MQTT 5,
AMQP 0-9-1, STOMP 1.2, NATS and HTTP (SSE for subscribing) — 36 pairs.

Each pair: a multicast publish to an address of its own with a body of all
256 byte values, a content type and a user header; the subscriber must get
the body byte-identical, and the content type and header wherever both
sides can carry them (MQTT 3.1.1 carries neither: its PUBLISH has no
properties). One broker serves the whole module. The session prints a
pairs × pass/fail table (conftest.py, `pytest_terminal_summary`).
"""

import pytest

from conftest import Broker
import interop
from interop import CARRIES_CONTENT_TYPE, CARRIES_HEADERS, PROTOCOLS

BODY = bytes(range(256))
CONTENT_TYPE = "application/x-interop"


@pytest.fixture(scope="module")
def mod_broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("interop-matrix"))
    yield b
    assert b.stop() == 0, "\n".join(b.log[-50:])


@pytest.fixture(scope="module")
def nats_loop():
    loop = interop.NatsLoop()
    yield loop
    loop.close()


PAIRS = [(p, s) for p in PROTOCOLS for s in PROTOCOLS]


@pytest.mark.parametrize("pub,sub", PAIRS, ids=[f"{p}->{s}" for p, s in PAIRS])
def test_pair(mod_broker, nats_loop, pub, sub):
    address = f"matrix.{pub}.{sub}"
    header = f"{pub}-to-{sub}"
    subscriber = interop.client(sub, mod_broker, nats_loop)
    publisher = interop.client(pub, mod_broker, nats_loop)
    try:
        subscriber.subscribe(address)
        publisher.publish(address, BODY, content_type=CONTENT_TYPE, headers={"trace": header})
        got = subscriber.get()
        assert got is not None, f"{sub} subscriber got nothing from {pub}"
        assert got.body == BODY, "body not byte-identical"
        assert got.address == address
        if pub in CARRIES_CONTENT_TYPE and sub in CARRIES_CONTENT_TYPE:
            assert got.content_type == CONTENT_TYPE
        else:
            assert got.content_type is None
        if pub in CARRIES_HEADERS and sub in CARRIES_HEADERS:
            assert got.headers.get("trace") == header, got.headers
        else:
            assert "trace" not in got.headers
        # Exactly one copy.
        assert subscriber.get(timeout=0.2) is None
    finally:
        publisher.close()
        subscriber.close()

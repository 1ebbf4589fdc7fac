"""Bad HTTP input: each request gets its documented status and JSON error
({"error": code, "detail": text}), and the broker goes on serving a second
client."""

import pytest
import requests

from http_sse import Sse


@pytest.fixture
def bystander(broker):
    """A subscriber that must keep receiving whatever the bad clients do."""
    sse = Sse(broker.url(), "bystander")
    yield sse
    other = requests.Session()
    r = other.post(broker.url() + "/v1/topics/bystander", data=b"still here", timeout=10)
    assert r.status_code == 202
    assert sse.event().body == b"still here"
    sse.close()


def expect(r, status, code):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"] == code
    assert body["detail"]
    return body


@pytest.mark.parametrize("address", ["a..b", ".a", "a.", "a%00b"])
def test_malformed_address(broker, bystander, address):
    expect(requests.post(f"{broker.url()}/v1/topics/{address}", data=b"x", timeout=10), 400, "invalid_address")


@pytest.mark.parametrize("address", ["a.*", "a.%23", "*.b"])
def test_wildcard_in_publish(broker, bystander, address):
    body = expect(requests.post(f"{broker.url()}/v1/topics/{address}", data=b"x", timeout=10), 400, "invalid_address")
    assert "wildcard" in body["detail"]


def test_oversized_body(broker_factory):
    b = broker_factory({"SWITCHYARD_LISTENERS__HTTP__MAX_BODY": "1KiB"})
    sse = Sse(b.url(), "bystander")
    expect(requests.post(f"{b.url()}/v1/topics/big", data=b"x" * 1025, timeout=10), 413, "body_too_large")

    def chunks():
        yield b"x" * 800
        yield b"y" * 800

    expect(requests.post(f"{b.url()}/v1/queues/big", data=chunks(), timeout=10), 413, "body_too_large")
    assert requests.post(f"{b.url()}/v1/topics/bystander", data=b"fine", timeout=10).status_code == 202
    assert sse.event().body == b"fine"
    sse.close()


def test_unknown_queue(broker, bystander):
    expect(requests.get(f"{broker.url()}/v1/queues/nowhere/messages", timeout=10), 404, "queue_not_found")
    expect(
        requests.post(f"{broker.url()}/v1/queues/nowhere/ack", json={"receipts": []}, timeout=10),
        404,
        "queue_not_found",
    )


def test_unknown_queue_without_auto_create(broker_factory):
    b = broker_factory({"SWITCHYARD_ADDRESSES__FIXED__AUTO_CREATE_QUEUES": "false"})
    expect(requests.post(f"{b.url()}/v1/queues/fixed", data=b"x", timeout=10), 404, "queue_not_found")
    assert requests.post(f"{b.url()}/v1/queues/other", data=b"x", timeout=10).status_code == 202


def test_bad_ndjson_line_publishes_nothing(broker, bystander):
    sse = Sse(broker.url(), "nd")
    body = expect(
        requests.post(
            f"{broker.url()}/v1/topics/nd?batch=true",
            data=b'{"a": 1}\n{"b": 2}\nnot json\n{"c": 3}\n',
            headers={"content-type": "application/x-ndjson"},
            timeout=10,
        ),
        415,
        "bad_batch_line",
    )
    assert body["line"] == 3
    expect(
        requests.post(
            f"{broker.url()}/v1/topics/nd?batch=true", data=b"1\n", headers={"content-type": "text/plain"}, timeout=10
        ),
        415,
        "unsupported_media_type",
    )
    # Nothing from the refused batches: the next event is this one.
    assert requests.post(f"{broker.url()}/v1/topics/nd", data=b"after", timeout=10).status_code == 202
    assert sse.event().body == b"after"
    sse.close()


@pytest.mark.parametrize("query", ["priority=10", "ttl=soon", "durable=perhaps", "unknown=1"])
def test_bad_publish_parameters(broker, bystander, query):
    expect(requests.post(f"{broker.url()}/v1/topics/p?{query}", data=b"x", timeout=10), 400, "invalid_parameter")

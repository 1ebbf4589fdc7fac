"""The HTTP adapter with `requests` (the real binary on ephemeral ports):
publish and follow over Server-Sent Events, binary and header round trips,
NDJSON batches, long-poll consumption with ack and redelivery, a NATS
client on the other side, metrics as Prometheus text, the OpenAPI
document."""

import asyncio
import base64
import json
import pathlib
import threading
import time

import nats
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, wait_for
from http_sse import Sse


def post(url, data=b"", headers=None, status=202):
    r = requests.post(url, data=data, headers=headers or {}, timeout=10)
    assert r.status_code == status, r.text
    return r.json()


def test_publish_and_receive_over_sse(broker):
    base = broker.url()
    sse = Sse(base, "py.*.temp")
    r = post(f"{base}/v1/topics/py.room1.temp?priority=6", b"21.5", {"content-type": "text/plain"})
    assert r["routed"] == 1
    post(f"{base}/v1/topics/py.room1.humidity", b"not for us")
    post(f"{base}/v1/topics/py.room2.temp", b"19")
    e = sse.event()
    assert (e.kind, e.id, e.data) == ("message", str(r["id"]), "21.5")
    assert e.meta["address"] == "py.room1.temp"
    assert e.meta["headers"] == {"content-type": "text/plain"}
    assert e.meta["priority"] == 6
    assert sse.event().meta["address"] == "py.room2.temp"
    sse.close()


def test_binary_body_round_trip(broker):
    base = broker.url()
    sse = Sse(base, "py.bin")
    body = bytes(range(256)) * 8 + b"\r\n\x00"
    post(f"{base}/v1/topics/py.bin", body, {"content-type": "application/octet-stream"})
    e = sse.event()
    assert e.fields["encoding"] == "base64"
    assert e.body == body
    sse.close()
    # And through a queue with long-poll.
    post(f"{base}/v1/queues/py.binq", body)
    got = requests.get(f"{base}/v1/queues/py.binq/messages", timeout=10).json()["messages"]
    assert got[0]["encoding"] == "base64"
    assert base64.b64decode(got[0]["body"]) == body


def test_headers_round_trip_via_x_msg(broker):
    base = broker.url()
    sse = Sse(base, "py.h")
    sent = {
        "x-msg-trace-id": "abc-123",
        "x-msg-tenant": "blue",
        "x-correlation-id": "req-7",
        "x-reply-to": "py.replies",
        "content-type": "application/json",
    }
    post(f"{base}/v1/topics/py.h", b"{}", sent)
    headers = sse.event().meta["headers"]
    assert headers == sent
    # What comes out publishes the same message again.
    post(f"{base}/v1/topics/py.h", b"{}", headers)
    assert sse.event().meta["headers"] == sent
    sse.close()


def test_batch_publish(broker):
    base = broker.url()
    sse = Sse(base, "py.batch")
    lines = [json.dumps({"n": i, "text": "caf\u00e9"}) for i in range(100)]
    r = post(
        f"{base}/v1/topics/py.batch?batch=true",
        ("\n".join(lines) + "\n").encode(),
        {"content-type": "application/x-ndjson"},
    )
    assert r["count"] == 100 and r["routed"] == 100
    assert [sse.event().data for _ in lines] == lines
    sse.close()


def test_long_poll_ack_and_redelivery_after_visibility_timeout(broker):
    base = broker.url()
    for body in [b"one", b"two"]:
        post(f"{base}/v1/queues/py.jobs", body)
    got = requests.get(f"{base}/v1/queues/py.jobs/messages?max=10&visibility=1", timeout=10).json()["messages"]
    assert [m["body"] for m in got] == ["one", "two"]
    assert all(m["delivery_count"] == 1 and not m["redelivered"] for m in got)
    r = requests.post(f"{base}/v1/queues/py.jobs/ack", json={"receipts": [got[0]["receipt"]]}, timeout=10)
    assert r.json() == {"acked": 1, "failed": []}
    # "two" was not acked: it comes back after its visibility timeout.
    started = time.monotonic()
    again = requests.get(f"{base}/v1/queues/py.jobs/messages?wait=10", timeout=15).json()["messages"]
    assert [m["body"] for m in again] == ["two"]
    assert again[0]["redelivered"] and again[0]["delivery_count"] == 2
    assert again[0]["receipt"] != got[1]["receipt"]
    assert time.monotonic() - started < 9
    r = requests.post(
        f"{base}/v1/queues/py.jobs/ack",
        json={"receipts": [got[1]["receipt"], again[0]["receipt"]]},
        timeout=10,
    ).json()
    assert r["acked"] == 1
    assert r["failed"] == [{"receipt": got[1]["receipt"], "error": "unknown_receipt"}]
    assert requests.get(f"{base}/v1/queues/py.jobs/messages?wait=0.2", timeout=10).json() == {"messages": []}


def test_long_poll_is_woken_by_a_publish(broker):
    base = broker.url()
    post(f"{base}/v1/queues/py.wake", b"seed")
    m = requests.get(f"{base}/v1/queues/py.wake/messages", timeout=10).json()["messages"][0]
    requests.post(f"{base}/v1/queues/py.wake/ack", json={"receipts": [m["receipt"]]}, timeout=10)
    result = {}

    def poll():
        result["r"] = requests.get(f"{base}/v1/queues/py.wake/messages?wait=20", timeout=30).json()

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)
    assert t.is_alive()
    post(f"{base}/v1/queues/py.wake", b"now")
    t.join(10)
    assert not t.is_alive()
    assert [m["body"] for m in result["r"]["messages"]] == ["now"]


def test_http_and_nats_clients_meet(broker):
    base = broker.url()
    host, port = broker.addr("nats")

    async def main():
        nc = await nats.connect(f"nats://{host}:{port}")
        sub = await nc.subscribe("py.cross.>")
        await nc.flush()
        body = bytes(range(256))
        await asyncio.to_thread(post, f"{base}/v1/topics/py.cross.in", body, {"x-msg-from": "http"})
        m = await sub.next_msg(timeout=5)
        assert m.data == body
        assert m.headers["from"] == "http"
        sse = await asyncio.to_thread(Sse, base, "py.back")
        await nc.publish("py.back", b"from nats", headers={"k": "v"})
        await nc.flush()
        e = await asyncio.to_thread(sse.event)
        assert e.body == b"from nats"
        assert e.meta["headers"]["x-msg-k"] == "v"
        sse.close()
        await nc.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def metrics(broker):
    r = requests.get(broker.url() + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    samples = {}
    for f in families.values():
        for s in f.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def test_metrics_parse_as_prometheus_text_and_move_with_traffic(broker):
    base = broker.url()
    families, before = metrics(broker)
    for name in ["switchyard_protocol_messages_received", "switchyard_protocol_messages_sent", "switchyard_connections_active"]:
        assert families[name].type in ("counter", "gauge"), name
    key = lambda name, **labels: (name, tuple(sorted(labels.items())))
    received = key("switchyard_protocol_messages_received_total", protocol="http")
    sent = key("switchyard_protocol_messages_sent_total", protocol="http")
    sse = Sse(base, "py.m")
    for _ in range(4):
        post(f"{base}/v1/topics/py.m", b"abc")
    for _ in range(4):
        sse.event()
    post(f"{base}/v1/queues/py.mq", b"x")
    assert wait_for(lambda: metrics(broker)[1][sent] - before[sent] == 4)
    _, after = metrics(broker)
    assert after[received] - before[received] == 5
    assert after[key("switchyard_protocol_received_bytes_total", protocol="http")] - before[
        key("switchyard_protocol_received_bytes_total", protocol="http")
    ] == 13
    assert after[key("switchyard_queue_messages", queue="py.mq")] == 1
    assert after[key("switchyard_connections_active", protocol="http")] >= 1
    assert 0 <= after[key("switchyard_route_cache_hit_ratio")] <= 1
    sse.close()


def test_readiness_and_health(broker):
    r = requests.get(broker.url() + "/readyz", timeout=5)
    assert r.status_code == 200
    assert r.json()["ready"] is True and r.json()["shutting_down"] is False
    assert requests.get(broker.url() + "/healthz", timeout=5).text == "ok\n"


def test_readiness_is_503_while_draining(broker_factory):
    b = broker_factory({"SWITCHYARD_SERVER__DRAIN_PERIOD": "3s"})
    url = b.url()
    assert requests.get(url + "/readyz", timeout=5).status_code == 200
    b.proc.send_signal(__import__("signal").SIGTERM)
    assert wait_for(lambda: requests.get(url + "/readyz", timeout=5).status_code == 503, timeout=2.5)
    body = requests.get(url + "/readyz", timeout=5).json()
    assert body["ready"] is False and body["shutting_down"] is True
    assert requests.get(url + "/healthz", timeout=5).status_code == 200
    assert b.proc.wait(20) == 0


def test_openapi_document_is_served_from_docs(broker):
    r = requests.get(broker.url() + "/v1/openapi.json", timeout=5)
    assert r.status_code == 200
    assert r.text == (ROOT / "docs" / "openapi.json").read_text()
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/topics/{filter}/events" in doc["paths"]


def test_durable_publish_is_on_disk_when_answered_and_survives_a_restart(broker_factory, tmp_path):
    first = broker_factory(data_dir=str(tmp_path))
    base = first.url()
    fsyncs = lambda b: metrics(b)[1][("switchyard_store_fsyncs_total", ())]
    before = fsyncs(first)
    r = post(f"{base}/v1/queues/py.durable?durable=true", b"kept", {"x-msg-k": "v"})
    assert r["routed"] == 1
    # The answer came after the journal's sync.
    assert fsyncs(first) > before
    post(f"{base}/v1/queues/py.durable", b"not persistent")
    # A received, unacknowledged durable message is not lost either.
    post(f"{base}/v1/queues/py.held?durable=true", b"held")
    got = requests.get(f"{base}/v1/queues/py.held/messages", timeout=10).json()["messages"]
    assert got[0]["body"] == "held"
    assert first.stop() == 0

    second = broker_factory(data_dir=str(tmp_path))
    base = second.url()
    got = requests.get(f"{base}/v1/queues/py.durable/messages?max=10", timeout=10).json()["messages"]
    assert [m["body"] for m in got] == ["kept"]
    assert got[0]["headers"]["x-msg-k"] == "v"
    assert got[0]["durable"] is True
    held = requests.get(f"{base}/v1/queues/py.held/messages", timeout=10).json()["messages"]
    assert [m["body"] for m in held] == ["held"]


def test_readiness_before_and_after_the_store_recovered(broker_factory, tmp_path):
    """/readyz answers 503 while the journal is recovered (the HTTP listener
    is up first, so Kubernetes sees the pod alive but not ready) and 200 with
    the recovery report once it is; /v1/ routes wait for it too."""
    first = broker_factory(data_dir=str(tmp_path))
    base = first.url()
    lines = b"".join(b'{"n":%d}\n' % i for i in range(10000))
    batches = 5
    for _ in range(batches):
        r = post(
            f"{base}/v1/queues/py.recover?batch=true&durable=true",
            lines,
            {"content-type": "application/x-ndjson"},
        )
    assert first.stop() == 0

    second = broker_factory(data_dir=str(tmp_path), wait_ready=False)
    base = second.url()
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = requests.get(f"{base}/readyz", timeout=10)
        body = r.json()
        if not seen or seen[-1][0] != r.status_code:
            starting = requests.post(f"{base}/v1/queues/py.other", data=b"x", timeout=10)
            seen.append((r.status_code, body, starting.status_code))
        if r.status_code == 200:
            break
        time.sleep(0.002)
    statuses = [s for s, _, _ in seen]
    assert statuses == [503, 200], seen
    before, after = seen[0][1], seen[1][1]
    assert before["ready"] is False and before["recovery"] is None, before
    # Publishing waits for recovery as well.
    assert seen[0][2] == 503, seen
    assert after["ready"] is True
    assert after["recovery"]["messages"] == batches * 10000, after
    assert seen[1][2] == 202
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200

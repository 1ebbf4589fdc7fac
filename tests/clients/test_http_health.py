"""Health, readiness and metrics with `requests`."""

import requests


def test_health_and_readiness(broker):
    r = requests.get(broker.url() + "/healthz", timeout=5)
    assert r.status_code == 200
    assert r.text == "ok\n"
    r = requests.get(broker.url() + "/readyz", timeout=5)
    assert r.status_code == 200
    assert r.json()["ready"] is True


def test_metrics_are_prometheus_text(broker):
    r = requests.get(broker.url() + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = [l for l in r.text.splitlines() if l and not l.startswith("#")]
    assert any(l.startswith("switchyard_messages_published_total ") for l in samples)
    for line in samples:
        float(line.rsplit(" ", 1)[1])

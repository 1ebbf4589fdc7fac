"""TLS listeners with public clients (the real binary, ephemeral ports):
paho-mqtt on mqtt-tls, pika on amqp-tls, stomp.py on stomp-tls, nats-py on
NATS with TLS after INFO, requests on https; mutual TLS (the verified
client certificate's name in the log), certificate reload on SIGHUP, and
`check-config` loading the files.

Certificates are made at test time with `trustme` (throwaway CA, nothing is
committed)."""

import asyncio
import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import nats
import paho.mqtt.client as mqtt
import pika
import pytest
import requests
import stomp
import trustme
from cryptography import x509

from conftest import Broker, binary, wait_for


class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, and client
    certificates, written as PEM files into `dir`."""

    def __init__(self, dir):
        self.dir = pathlib.Path(dir)
        self.ca = trustme.CA()
        self.ca_file = self.dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file = self.dir / "server.pem"
        self.key_file = self.dir / "server-key.pem"
        self.write_server(self.server)

    def write_server(self, cert):
        cert.private_key_pem.write_to_path(str(self.key_file))
        with open(self.cert_file, "wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())

    def client(self, name, **kw):
        """A client certificate's (cert, key) files."""
        c = self.ca.issue_cert(*kw.pop("sans", ()), common_name=name, **kw) if name else self.ca.issue_cert(*kw.pop("sans"))
        tag = (name or "noname").replace("@", "_")
        cert = self.dir / f"client-{tag}.pem"
        key = self.dir / f"client-{tag}-key.pem"
        c.cert_chain_pems[0].write_to_path(str(cert))
        c.private_key_pem.write_to_path(str(key))
        return str(cert), str(key)

    def context(self, client=None):
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client:
            ctx.load_cert_chain(*client)
        return ctx

    def tls(self, auth="none"):
        t = f'tls = {{ cert = "{self.cert_file}", key = "{self.key_file}"'
        if auth != "none":
            t += f', client_ca = "{self.ca_file}", client_auth = "{auth}"'
        return t + " }"


def config(pki, nats_auth="none"):
    return f"""
[listeners.mqtt-tls]
bind = "127.0.0.1:0"
{pki.tls("optional")}

[listeners.amqp-tls]
bind = "127.0.0.1:0"
{pki.tls()}

[listeners.stomp-tls]
bind = "127.0.0.1:0"
{pki.tls("required")}

[listeners.https]
bind = "127.0.0.1:0"
{pki.tls()}

[listeners.nats]
bind = "127.0.0.1:0"
{pki.tls(nats_auth)}
"""


@pytest.fixture
def tls_broker():
    with tempfile.TemporaryDirectory() as d:
        pki = Pki(d)
        path = pathlib.Path(d) / "switchyard.toml"
        path.write_text(config(pki))
        data = pathlib.Path(d) / "data"
        b = Broker(str(data), args=("--config", str(path)))
        b.pki = pki
        try:
            yield b
        finally:
            code = b.stop()
            assert code == 0, "broker exited with %r\n%s" % (code, "\n".join(b.log[-50:]))


def log_fields(broker, message):
    out = []
    for line in list(broker.log):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        f = rec.get("fields", {})
        if f.get("message") == message:
            out.append((f, rec.get("span", {}), rec.get("spans", [])))
    return out


def mqtt_client(broker, cid, ctx):
    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    c.tls_set_context(ctx)
    c.on_message = lambda _c, _u, m: got.append(m.payload)
    host, port = broker.addr("mqtt-tls")
    c.connect(host, port)
    c.loop_start()
    return c, got


def test_mqtt_over_tls(tls_broker):
    c, got = mqtt_client(tls_broker, "tls-a", tls_broker.pki.context())
    r = c.subscribe("tls/t", qos=1)
    assert r[0] == mqtt.MQTT_ERR_SUCCESS
    time.sleep(0.3)
    c.publish("tls/t", b"over tls", qos=1).wait_for_publish(10)
    assert wait_for(lambda: got == [b"over tls"])
    c.loop_stop()
    c.disconnect()


def test_amqp_over_tls(tls_broker):
    host, port = tls_broker.addr("amqp-tls")
    params = pika.ConnectionParameters(
        host=host,
        port=port,
        ssl_options=pika.SSLOptions(tls_broker.pki.context(), "localhost"),
    )
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("tls.q")
    ch.basic_publish("", "tls.q", b"amqps body")
    for _ in range(50):
        method, _props, body = ch.basic_get("tls.q", auto_ack=True)
        if method:
            break
        time.sleep(0.1)
    assert body == b"amqps body"
    conn.close()


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.messages = []

    def on_message(self, frame):
        self.messages.append(frame.body)


def stomp_conn(broker, client):
    host, port = broker.addr("stomp-tls")
    c = stomp.Connection12([(host, port)])
    c.set_ssl(
        for_hosts=[(host, port)],
        ca_certs=str(broker.pki.ca_file),
        cert_file=client[0] if client else None,
        key_file=client[1] if client else None,
    )
    return c


def test_stomp_over_mutual_tls_logs_the_certificate_name(tls_broker):
    pki = tls_broker.pki
    c = stomp_conn(tls_broker, pki.client("stomp-alice"))
    l = Listener()
    c.set_listener("", l)
    c.connect(wait=True)
    c.subscribe("/queue/tls.s", id="1", ack="auto")
    c.send("/queue/tls.s", "stomp over tls")
    assert wait_for(lambda: l.messages == ["stomp over tls"])
    c.disconnect()
    # The identity is the subject CN; the log line belongs to the STOMP
    # connection's span.
    assert wait_for(lambda: any(
        f.get("tls_identity") == "stomp-alice" for f, _s, _ss in log_fields(tls_broker, "TLS client certificate verified")
    )), "\n".join(tls_broker.log[-30:])
    hits = [(f, s, ss) for f, s, ss in log_fields(tls_broker, "TLS client certificate verified") if f.get("tls_identity") == "stomp-alice"]
    assert any(s.get("protocol") == "stomp" or any(x.get("protocol") == "stomp" for x in ss) for _f, s, ss in hits), hits


def test_mutual_tls_required_refuses_a_client_without_a_certificate(tls_broker):
    host, port = tls_broker.addr("stomp-tls")
    ctx = tls_broker.pki.context()
    with socket.create_connection((host, port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                # TLS 1.3: the refusal arrives after the client's handshake.
                s.sendall(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
                if not s.recv(1024):
                    raise ConnectionResetError("closed")


def test_identity_falls_back_to_the_first_san(tls_broker):
    # No CN: the first DNS or email subjectAltName is the identity.
    pki = tls_broker.pki
    cert = pki.client(None, sans=("bob@example.org", "other.example.org"))
    c = stomp_conn(tls_broker, cert)
    c.connect(wait=True)
    c.disconnect()
    assert wait_for(lambda: any(
        f.get("tls_identity") == "bob@example.org" for f, _s, _ss in log_fields(tls_broker, "TLS client certificate verified")
    )), "\n".join(tls_broker.log[-30:])


def test_nats_upgrades_after_info(tls_broker):
    host, port = tls_broker.addr("nats")
    # INFO comes in clear and says TLS is required.
    with socket.create_connection((host, port), timeout=10) as s:
        line = s.makefile("rb").readline()
        assert line.startswith(b"INFO ")
        info = json.loads(line[5:])
        assert info["tls_required"] is True and info["tls_available"] is False
        # A client that answers in clear is told so.
        s.sendall(b"CONNECT {}\r\n")
        assert b"-ERR 'Secure Connection - TLS Required'" in s.recv(1024)

    async def round_trip():
        nc = await nats.connect(f"tls://{host}:{port}", tls=tls_broker.pki.context(), tls_hostname="localhost")
        sub = await nc.subscribe("tls.n")
        await nc.publish("tls.n", b"nats over tls")
        msg = await sub.next_msg(timeout=10)
        await nc.close()
        return msg.data

    assert asyncio.run(round_trip()) == b"nats over tls"


def test_nats_tls_optional_serves_both(tmp_path):
    pki = Pki(tmp_path)
    path = tmp_path / "switchyard.toml"
    path.write_text(f"""
[listeners.nats]
bind = "127.0.0.1:0"
tls = {{ cert = "{pki.cert_file}", key = "{pki.key_file}", allow_non_tls = true }}
""")
    b = Broker(str(tmp_path / "data"), args=("--config", str(path)))
    try:
        host, port = b.addr("nats")

        async def round_trip(url, **kw):
            nc = await nats.connect(url, **kw)
            sub = await nc.subscribe("opt.n")
            await nc.publish("opt.n", b"x")
            msg = await sub.next_msg(timeout=10)
            await nc.close()
            return msg.data

        with socket.create_connection((host, port), timeout=10) as s:
            info = json.loads(s.makefile("rb").readline()[5:])
            assert info["tls_required"] is False and info["tls_available"] is True
        assert asyncio.run(round_trip(f"nats://{host}:{port}")) == b"x"
        assert asyncio.run(round_trip(f"tls://{host}:{port}", tls=pki.context(), tls_hostname="localhost")) == b"x"
    finally:
        assert b.stop() == 0


def test_https(tls_broker):
    host, port = tls_broker.addr("https")
    base = f"https://localhost:{port}"
    ca = str(tls_broker.pki.ca_file)
    assert requests.get(f"{base}/healthz", verify=ca, timeout=10).text == "ok\n"
    r = requests.post(f"{base}/v1/queues/tls.h", data=b"https body", verify=ca, timeout=10)
    assert r.status_code == 202, r.text
    got = requests.get(f"{base}/v1/queues/tls.h/messages", verify=ca, timeout=10).json()["messages"]
    assert got[0]["body"] == "https body"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{base}/healthz", timeout=10)  # not trusted by the system store


def peer_serial(host, port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_certificate_reload_on_sighup_keeps_open_connections(tls_broker):
    pki = tls_broker.pki
    host, port = tls_broker.addr("mqtt-tls")
    old_serial = peer_serial(host, port)
    c, got = mqtt_client(tls_broker, "tls-old", pki.context())
    c.subscribe("reload/t", qos=1)
    time.sleep(0.3)
    # New certificate (same CA), files replaced, SIGHUP.
    new = pki.ca.issue_cert("127.0.0.1", "localhost")
    pki.write_server(new)
    new_serial = x509.load_pem_x509_certificate(new.cert_chain_pems[0].bytes()).serial_number
    assert new_serial != old_serial
    tls_broker.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: len(log_fields(tls_broker, "TLS certificate reloaded")) >= 5), "\n".join(tls_broker.log[-20:])
    # A new connection sees the new certificate...
    assert peer_serial(host, port) == new_serial
    assert peer_serial(*tls_broker.addr("https")) == new_serial
    # ...and the connection opened before the reload still works.
    c.publish("reload/t", b"after reload", qos=1).wait_for_publish(10)
    assert wait_for(lambda: got == [b"after reload"])
    c.loop_stop()
    c.disconnect()
    # A reload whose files are bad keeps the old certificate.
    pki.key_file.write_text("not a key")
    tls_broker.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: log_fields(tls_broker, "TLS reload failed; the previous certificate stays in use"))
    assert peer_serial(host, port) == new_serial


def test_check_config_loads_the_tls_files(tmp_path):
    pki = Pki(tmp_path)
    good = tmp_path / "good.toml"
    good.write_text(config(pki))
    out = subprocess.run([binary(), "check-config", str(good)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(config(pki).replace(str(pki.key_file), str(tmp_path / "missing.pem"), 1))
    out = subprocess.run([binary(), "check-config", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "listeners.mqtt-tls.tls" in out.stderr and "missing.pem" in out.stderr, out.stderr
    # A TLS listener without its files is an error, not a silent plain port.
    nofiles = tmp_path / "nofiles.toml"
    nofiles.write_text('[listeners.amqp-tls]\nbind = "127.0.0.1:0"\n')
    out = subprocess.run([binary(), "check-config", str(nofiles)], capture_output=True, text=True)
    assert out.returncode != 0 and "listeners.amqp-tls.tls" in out.stderr, out.stderr


def test_mqtt_large_bodies_over_tls(tls_broker):
    """64 KiB and 1 MiB payloads among small ones arrive byte-identical."""
    c, got = mqtt_client(tls_broker, "tls-big", tls_broker.pki.context())
    r = c.subscribe("tls/big", qos=1)
    assert r[0] == mqtt.MQTT_ERR_SUCCESS
    time.sleep(0.3)
    want = [os.urandom(n) for n in (64 * 1024, 16, 1 << 20, 8 * 1024, 0, 64 * 1024 + 1)]
    for i, body in enumerate(want):
        c.publish("tls/big", body, qos=i % 2).wait_for_publish(10)
    assert wait_for(lambda: len(got) == len(want), timeout=20)
    assert got == want
    c.loop_stop()
    c.disconnect()

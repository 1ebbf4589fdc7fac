"""Users and ACLs, the same table on all five protocols.

alice may publish and subscribe under `sensors.#` and nothing else; root may
do everything. Anonymous access is off (users are configured). For each
protocol: alice's publish to sensors.* arrives, her publish to admin.* is
refused with the protocol's own error and does not arrive; her subscription
to sensors.# receives, her subscription to admin.# is refused; a wrong
password and no credentials at all are refused.
"""

import threading
import time
import urllib.parse

import paho.mqtt.client as mqtt
import pika
import pytest
import requests
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from security_helpers import Nats, Stomp, basic, start

PROTOCOLS = ["mqtt", "amqp", "stomp", "nats", "http"]

USERS = {"alice": ("alice-pw", "alice.tok-1"), "root": ("root-pw", None)}
ACL = [
    {"user": "alice", "addresses": ["sensors.#"], "verbs": ["publish", "subscribe"]},
    {"user": "root", "addresses": ["#"], "verbs": ["publish", "subscribe", "consume", "manage"]},
]
LIMITS = '[limits]\nauth_failure_delay = "1ms"\nauth_failure_max_delay = "5ms"\n'


@pytest.fixture(scope="module")
def secured():
    b = start(USERS, ACL, LIMITS)
    try:
        yield b
    finally:
        code = b.stop()
        assert code == 0, "\n".join(b.log[-50:])


def observer(b):
    n = Nats(b.addr("nats"), user="root", **{"pass": "root-pw"}).ok()
    n.send(b"SUB > 1\r\n")
    n.ping()
    return n


def seen_until_marker(obs, b, marker):
    """Every subject the observer got before `marker` (published by root)."""
    root = Nats(b.addr("nats"), user="root", **{"pass": "root-pw"}).ok()
    root.send(f"PUB {marker} 1\r\nx\r\n".encode())
    root.ping()
    root.close()
    subjects = []
    while True:
        (s, _), = obs.msgs(1)
        if s == marker:
            return subjects
        subjects.append(s)


def root_publish(b, subject, body=b"ping"):
    root = Nats(b.addr("nats"), user="root", **{"pass": "root-pw"}).ok()
    root.send(f"PUB {subject} {len(body)}\r\n".encode() + body + b"\r\n")
    root.ping()
    root.close()


# ---------------------------------------------------------------- publish


def publish_mqtt(b, proto):
    """Returns (allowed ok, denial evidence)."""
    results = {}
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="alice-pub", protocol=mqtt.MQTTv5)
    c.username_pw_set("alice", "alice-pw")

    def on_publish(client, userdata, mid, reason_code, properties):
        results[mid] = reason_code.value if hasattr(reason_code, "value") else reason_code
        if len(results) == 3:
            done.set()

    c.on_publish = on_publish
    host, port = b.addr("mqtt")
    c.connect(host, port)
    c.loop_start()
    try:
        ok = c.publish("sensors/mqtt", b"m", qos=1).mid
        bad = c.publish("admin/mqtt", b"m", qos=1).mid
        kept = c.publish("admin/retained", b"m", qos=1, retain=True).mid
        assert done.wait(10), results
    finally:
        c.disconnect()
        c.loop_stop()
    assert results[ok] < 0x80, results
    assert results[bad] == 0x87, results
    assert results[kept] == 0x87, results
    # the refused retained message was not stored
    got = []
    r = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="root-ret", protocol=mqtt.MQTTv5)
    r.username_pw_set("root", "root-pw")
    r.on_message = lambda client, userdata, msg: got.append(msg.topic)
    r.connect(*b.addr("mqtt"))
    r.loop_start()
    r.subscribe("admin/#", qos=0)
    time.sleep(1)
    r.disconnect()
    r.loop_stop()
    assert got == [], got


def publish_amqp(b, proto):
    host, port = b.addr("amqp")
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(host, port, credentials=pika.PlainCredentials("alice", "alice-pw"))
    )
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("amq.topic", "sensors.amqp", b"a")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish("amq.topic", "admin.amqp", b"a")
        assert e.value.reply_code == 403, e.value
        assert conn.is_open, "a channel error leaves the connection open"
    finally:
        conn.close()


def publish_stomp(b, proto):
    s = Stomp(b.addr("stomp"), "alice", "alice-pw")
    assert s.command() == b"CONNECTED"
    s.send(b"SEND\ndestination:/topic/sensors.stomp\nreceipt:r1\n\ns\0")
    assert s.command() == b"RECEIPT"
    s.send(b"SEND\ndestination:/topic/admin.stomp\nreceipt:r2\n\ns\0")
    f = s.frame()
    assert f.startswith(b"ERROR"), f
    assert b"admin.stomp" in f
    assert s.closed(), "STOMP closes after ERROR"


def publish_nats(b, proto):
    n = Nats(b.addr("nats"), user="alice", **{"pass": "alice-pw"}).ok()
    n.send(b"PUB sensors.nats 1\r\nn\r\nPUB admin.nats 1\r\nn\r\nPING\r\n")
    err = n.read_until(b"\r\n")
    assert err.startswith(b"-ERR 'Permissions Violation for Publish to"), err
    assert n.read_until(b"\r\n") == b"PONG\r\n", "nats keeps the connection open"
    n.close()


def publish_http(b, proto):
    auth = {"Authorization": basic("alice", "alice-pw")}
    r = requests.post(b.url() + "/v1/topics/sensors.http", data=b"h", headers=auth, timeout=10)
    assert r.status_code == 202, r.text
    r = requests.post(b.url() + "/v1/topics/admin.http", data=b"h", headers=auth, timeout=10)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "access_refused"
    # Bearer works the same
    tok = {"Authorization": "Bearer alice.tok-1"}
    r = requests.post(b.url() + "/v1/topics/admin.http", data=b"h", headers=tok, timeout=10)
    assert r.status_code == 403, r.text


PUBLISH = {
    "mqtt": publish_mqtt,
    "amqp": publish_amqp,
    "stomp": publish_stomp,
    "nats": publish_nats,
    "http": publish_http,
}


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_acl_publish_sensors_allowed_admin_denied(secured, proto):
    obs = observer(secured)
    PUBLISH[proto](secured, proto)
    subjects = seen_until_marker(obs, secured, f"done.{proto}")
    assert f"sensors.{proto}" in subjects, subjects
    assert f"admin.{proto}" not in subjects, subjects
    obs.close()


# -------------------------------------------------------------- subscribe


def subscribe_mqtt(b, proto):
    codes = {}
    got = []
    ready = threading.Event()
    arrived = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="alice-sub", protocol=mqtt.MQTTv5)
    c.username_pw_set("alice", "alice-pw")

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        codes[mid] = [r.value for r in reason_codes]
        if len(codes) == 2:
            ready.set()

    def on_message(client, userdata, msg):
        got.append(msg.topic)
        arrived.set()

    c.on_subscribe = on_subscribe
    c.on_message = on_message
    host, port = b.addr("mqtt")
    c.connect(host, port)
    c.loop_start()
    try:
        _, ok = c.subscribe("sensors/#", qos=0)
        _, bad = c.subscribe("admin/#", qos=0)
        assert ready.wait(10), codes
        assert codes[ok][0] < 0x80, codes
        assert codes[bad][0] == 0x87, codes
        root_publish(b, "admin.sub.mqtt")
        root_publish(b, "sensors.sub.mqtt")
        assert arrived.wait(10)
        time.sleep(0.2)
        assert got == ["sensors/sub/mqtt"], got
    finally:
        c.disconnect()
        c.loop_stop()


def subscribe_amqp(b, proto):
    host, port = b.addr("amqp")
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(host, port, credentials=pika.PlainCredentials("alice", "alice-pw"))
    )
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "amq.topic", "sensors.#")
        root_publish(b, "sensors.sub.amqp")
        deadline = time.time() + 10
        body = None
        while body is None and time.time() < deadline:
            _, _, body = ch.basic_get(q, auto_ack=True)
            if body is None:
                time.sleep(0.05)
        assert body == b"ping"
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_bind(q, "amq.topic", "admin.#")
        assert e.value.reply_code == 403
        # `#` would include admin.*: refused too
        ch2 = conn.channel()
        q2 = ch2.queue_declare("", exclusive=True).method.queue
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch2.queue_bind(q2, "amq.topic", "#")
        assert e.value.reply_code == 403
    finally:
        conn.close()


def subscribe_stomp(b, proto):
    s = Stomp(b.addr("stomp"), "alice", "alice-pw")
    assert s.command() == b"CONNECTED"
    s.send(b"SUBSCRIBE\nid:1\ndestination:/topic/sensors.#\nreceipt:r1\n\n\0")
    assert s.command() == b"RECEIPT"
    root_publish(b, "sensors.sub.stomp")
    f = s.frame()
    assert f.startswith(b"MESSAGE") and f.endswith(b"ping\0"), f
    s.send(b"SUBSCRIBE\nid:2\ndestination:/topic/admin.#\nreceipt:r2\n\n\0")
    f = s.frame()
    assert f.startswith(b"ERROR"), f
    assert s.closed()


def subscribe_nats(b, proto):
    n = Nats(b.addr("nats"), user="alice", **{"pass": "alice-pw"}).ok()
    n.send(b"SUB sensors.> 1\r\nSUB admin.> 2\r\nPING\r\n")
    err = n.read_until(b"\r\n")
    assert err.startswith(b"-ERR 'Permissions Violation for Subscription to"), err
    assert n.read_until(b"\r\n") == b"PONG\r\n"
    root_publish(b, "admin.sub.nats")
    root_publish(b, "sensors.sub.nats")
    (subject, body), = n.msgs(1)
    assert subject == "sensors.sub.nats" and body == b"ping"
    n.close()


def subscribe_http(b, proto):
    auth = {"Authorization": basic("alice", "alice-pw")}
    bad = urllib.parse.quote("admin.#", safe="")
    r = requests.get(b.url() + f"/v1/topics/{bad}/events", headers=auth, timeout=10)
    assert r.status_code == 403, r.text
    ok = urllib.parse.quote("sensors.#", safe="")
    with requests.get(
        b.url() + f"/v1/topics/{ok}/events", headers=auth, stream=True, timeout=10
    ) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(lines)
        assert first.startswith(b":"), first
        root_publish(b, "sensors.sub.http")
        for line in lines:
            if line.startswith(b"data:"):
                assert b"ping" in line
                break


SUBSCRIBE = {
    "mqtt": subscribe_mqtt,
    "amqp": subscribe_amqp,
    "stomp": subscribe_stomp,
    "nats": subscribe_nats,
    "http": subscribe_http,
}


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_acl_subscribe_sensors_allowed_admin_denied(secured, proto):
    SUBSCRIBE[proto](secured, proto)


# ---------------------------------------------------------- authentication


def login_mqtt(b, user, password):
    result = {}
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="login", protocol=mqtt.MQTTv5)
    if user is not None:
        c.username_pw_set(user, password)

    def on_connect(client, userdata, flags, reason_code, properties):
        result["rc"] = reason_code.value
        done.set()

    c.on_connect = on_connect
    host, port = b.addr("mqtt")
    c.connect(host, port)
    c.loop_start()
    try:
        assert done.wait(10)
    finally:
        c.disconnect()
        c.loop_stop()
    # 3.1.1 as well
    import socket

    s = socket.create_connection((host, port), timeout=10)
    payload = b"\x00\x04MQTT\x04" + bytes([0x02 | (0xC0 if user is not None else 0)]) + b"\x00\x3c"
    payload += b"\x00\x02v3"
    if user is not None:
        payload += len(user).to_bytes(2, "big") + user.encode()
        payload += len(password).to_bytes(2, "big") + password.encode()
    s.sendall(bytes([0x10, len(payload)]) + payload)
    connack = s.recv(4)
    s.close()
    return result["rc"], connack[3]


def login_amqp(b, user, password):
    host, port = b.addr("amqp")
    creds = pika.PlainCredentials(user or "", password or "")
    try:
        pika.BlockingConnection(
            pika.ConnectionParameters(host, port, credentials=creds, connection_attempts=1)
        ).close()
        return "ok"
    except pika.exceptions.AMQPConnectionError as e:
        return repr(e)


def login_stomp(b, user, password):
    s = Stomp(b.addr("stomp"), user, password)
    f = s.frame()
    closed = s.closed() if f.startswith(b"ERROR") else False
    s.close()
    return f.split(b"\n", 1)[0], closed


def login_nats(b, user, password):
    opts = {}
    if user is not None:
        opts = {"user": user, "pass": password}
    n = Nats(b.addr("nats"), **opts)
    got = n.read_until(b"\r\n")
    closed = n.closed()
    n.close()
    return n.info, got, closed


def login_http(b, user, password):
    headers = {} if user is None else {"Authorization": basic(user, password)}
    r = requests.post(b.url() + "/v1/topics/sensors.login", data=b"x", headers=headers, timeout=10)
    return r.status_code, r.headers.get("WWW-Authenticate", "")


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_wrong_password_and_no_credentials_are_refused(secured, proto):
    b = secured
    if proto == "mqtt":
        assert login_mqtt(b, "alice", "alice-pw") == (0, 0)
        assert login_mqtt(b, "alice", "nope") == (0x86, 4)
        assert login_mqtt(b, "mallory", "alice-pw") == (0x86, 4)
        assert login_mqtt(b, None, None) == (0x87, 5)
    elif proto == "amqp":
        assert login_amqp(b, "alice", "alice-pw") == "ok"
        for user, pw in [("alice", "nope"), ("mallory", "x"), (None, None)]:
            r = login_amqp(b, user, pw)
            assert "403" in r or "ACCESS_REFUSED" in r or "Authentication" in r, r
    elif proto == "stomp":
        assert login_stomp(b, "alice", "alice-pw")[0] == b"CONNECTED"
        assert login_stomp(b, "alice", "nope") == (b"ERROR", True)
        assert login_stomp(b, None, None) == (b"ERROR", True)
    elif proto == "nats":
        info, got, _ = login_nats(b, "alice", "alice-pw")
        assert b'"auth_required":true' in info, info
        assert got == b"PONG\r\n"
        for user, pw in [("alice", "nope"), (None, None)]:
            _, got, closed = login_nats(b, user, pw)
            assert got == b"-ERR 'Authorization Violation'\r\n", got
            assert closed
        n = Nats(b.addr("nats"), auth_token="alice.tok-1")
        assert n.read_until(b"\r\n") == b"PONG\r\n"
        n.close()
        n = Nats(b.addr("nats"), auth_token="wrong")
        assert n.read_until(b"\r\n").startswith(b"-ERR 'Authorization Violation'")
        n.close()
    elif proto == "http":
        assert login_http(b, "alice", "alice-pw")[0] == 202
        status, challenge = login_http(b, "alice", "nope")
        assert status == 401 and "Basic" in challenge and "Bearer" in challenge
        assert login_http(b, None, None)[0] == 401
        r = requests.post(
            b.url() + "/v1/topics/sensors.x",
            headers={"Authorization": "Bearer wrong"},
            timeout=10,
        )
        assert r.status_code == 401
        # health, readiness and metrics stay open
        for path in ["/healthz", "/readyz", "/metrics"]:
            assert requests.get(b.url() + path, timeout=10).status_code == 200, path


def test_denials_and_failures_are_counted(secured):
    n = Nats(secured.addr("nats"), user="alice", **{"pass": "alice-pw"}).ok()
    n.send(b"PUB admin.count 1\r\nx\r\nPING\r\n")
    n.read_until(b"PONG\r\n")
    n.close()
    text = requests.get(secured.url() + "/metrics", timeout=10).text
    line = [l for l in text.splitlines() if l.startswith('switchyard_acl_denied_total{protocol="nats",verb="publish"}')]
    assert line and int(line[0].split()[-1]) >= 1, line
    assert "switchyard_auth_failures_total" in text


def test_websocket_paths_authenticate_too(secured):
    """MQTT over the HTTP listener's /mqtt path goes through the same login."""
    result = {}
    done = threading.Event()
    host, port = secured.addr("http")
    for password, want in [("nope", 0x86), ("alice-pw", 0)]:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="ws", protocol=mqtt.MQTTv5, transport="websockets"
        )
        c.ws_set_options(path="/mqtt")
        c.username_pw_set("alice", password)
        done.clear()

        def on_connect(client, userdata, flags, reason_code, properties):
            result["rc"] = reason_code.value
            done.set()

        c.on_connect = on_connect
        c.connect(host, port)
        c.loop_start()
        try:
            assert done.wait(10)
        finally:
            c.disconnect()
            c.loop_stop()
        assert result["rc"] == want


def test_tokens_name_their_user(tmp_path):
    """`switchyard token NAME` prints a token naming its user and its hash;
    the token logs in as that user (HTTP Bearer, NATS auth_token); a token
    whose name is another user's, or that names no one, is refused."""
    import subprocess

    from conftest import Broker, binary

    made = {}
    for name in ("alice", "svc.bob"):
        out = subprocess.run([binary(), "token", name], capture_output=True, text=True, check=True)
        token, hash_ = out.stdout.split()
        assert token.startswith(name + ".") and len(token) == len(name) + 65, token
        assert hash_.startswith("$argon2id$"), hash_
        made[name] = (token, hash_)
    cfg = tmp_path / "switchyard.toml"
    cfg.write_text(
        "".join(f'[[users]]\nname = "{n}"\ntoken_hash = "{h}"\n' for n, (_, h) in made.items())
    )
    b = Broker(str(tmp_path / "data"), args=["--config", str(cfg)])
    try:
        url = b.url() + "/v1/topics/t.x"
        for name, (token, _) in made.items():
            r = requests.post(url, data=b"x", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert r.status_code == 202, (name, r.text)
        alice, bob = made["alice"][0], made["svc.bob"][0]
        secret_of_bob = bob.rsplit(".", 1)[1]
        for bad in ("alice." + secret_of_bob, secret_of_bob, "nobody." + secret_of_bob):
            r = requests.post(url, data=b"x", headers={"Authorization": f"Bearer {bad}"}, timeout=10)
            assert r.status_code == 401, bad
        n = Nats(b.addr("nats"), auth_token=bob)
        assert n.read_until(b"\r\n") == b"PONG\r\n"
        n.close()
    finally:
        assert b.stop() == 0

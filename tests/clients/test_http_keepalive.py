"""HTTP request-head timeouts on keep-alive connections, HTTP and HTTPS.

`[listeners.http] header_timeout` bounds the time from a request's first
byte to the end of its header block, on every request of a connection
(not only the first); `keep_alive_timeout` closes a connection idle after a
response; `[limits] handshake_timeout` is the first request's idle limit.
Raw sockets play the hostile clients; `requests` (a keep-alive pool) and a
long poll longer than every one of these timeouts keep working.
"""

import pathlib
import socket
import ssl
import tempfile
import time

import pytest
import requests
import trustme

from conftest import Broker

HEADER = 1.0  # header_timeout
IDLE = 3.0  # keep_alive_timeout
FIRST = 2.0  # limits.handshake_timeout


@pytest.fixture(scope="module")
def broker():
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        ca = trustme.CA()
        ca_file = d / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        server = ca.issue_cert("127.0.0.1", "localhost")
        cert, key = d / "server.pem", d / "server-key.pem"
        server.private_key_pem.write_to_path(str(key))
        with open(cert, "wb") as f:
            for blob in server.cert_chain_pems:
                f.write(blob.bytes())
        timeouts = f'header_timeout = "{HEADER}s"\nkeep_alive_timeout = "{IDLE}s"\n'
        (d / "switchyard.toml").write_text(
            f"""
[limits]
handshake_timeout = "{FIRST}s"

[listeners.http]
bind = "127.0.0.1:0"
{timeouts}
[listeners.https]
bind = "127.0.0.1:0"
tls = {{ cert = "{cert}", key = "{key}" }}
{timeouts}
"""
        )
        b = Broker(str(d / "data"), args=("--config", str(d / "switchyard.toml")))
        b.ca_file = str(ca_file)
        try:
            yield b
        finally:
            assert b.stop() == 0, "\n".join(b.log[-30:])


def connect(b, listener):
    host, port = b.addr(listener)
    s = socket.create_connection((host, port), timeout=15)
    if listener == "https":
        ctx = ssl.create_default_context(cafile=b.ca_file)
        s = ctx.wrap_socket(s, server_hostname="localhost")
    return s


REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def read_response(s):
    """One response to GET /healthz (fixed length body)."""
    data = b""
    while b"\r\n\r\nok\n" not in data:
        chunk = s.recv(4096)
        assert chunk, f"closed before a whole response: {data!r}"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data
    return data


def closed_after(s, limit=15):
    """Seconds until the server closes `s` (reading and dropping data)."""
    start = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    except socket.timeout:
        return None
    return time.monotonic() - start


@pytest.mark.parametrize("listener", ["http", "https"])
def test_a_partial_header_after_a_good_request_is_cut_off(broker, listener):
    s = connect(broker, listener)
    s.sendall(REQUEST)
    read_response(s)
    # The next request's headers start and never end.
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    took = closed_after(s)
    s.close()
    assert took is not None, "a partial header block kept the connection open"
    assert HEADER * 0.8 <= took < IDLE, f"closed after {took:.2f}s, header_timeout {HEADER}s"


@pytest.mark.parametrize("listener", ["http", "https"])
def test_a_header_dribbled_a_byte_at_a_time_is_cut_off(broker, listener):
    s = connect(broker, listener)
    s.sendall(REQUEST)
    read_response(s)
    start = time.monotonic()
    closed = False
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
        try:
            s.sendall(bytes([b]))
        except OSError:
            closed = True
            break
        s.settimeout(0.2)
        try:
            if s.recv(4096) == b"":
                closed = True
                break
        except socket.timeout:
            pass
        except (ConnectionResetError, ssl.SSLError):
            closed = True
            break
        if time.monotonic() - start > 10:
            break
    took = time.monotonic() - start
    s.close()
    assert closed, "a client dribbling its headers was never cut off"
    assert took < HEADER + 1.5, f"cut off after {took:.2f}s, header_timeout {HEADER}s"


@pytest.mark.parametrize("listener", ["http", "https"])
def test_an_idle_keep_alive_connection_is_closed_after_keep_alive_timeout(broker, listener):
    s = connect(broker, listener)
    s.sendall(REQUEST)
    read_response(s)
    took = closed_after(s)
    s.close()
    assert took is not None
    assert IDLE * 0.8 <= took < IDLE + 3, f"closed after {took:.2f}s, keep_alive_timeout {IDLE}s"


@pytest.mark.parametrize("listener", ["http", "https"])
def test_pauses_longer_than_the_header_timeout_between_requests_are_fine(broker, listener):
    s = connect(broker, listener)
    for _ in range(3):
        s.sendall(REQUEST)
        read_response(s)
        time.sleep(HEADER * 1.5)  # idle, not sending a header: keep_alive_timeout applies
    s.close()


def test_a_silent_connection_is_closed_after_the_handshake_timeout(broker):
    s = connect(broker, "http")
    took = closed_after(s)
    s.close()
    assert took is not None and FIRST * 0.8 <= took < FIRST + 3, took


def test_requests_keep_alive_and_a_long_poll_longer_than_every_timeout(broker):
    base = broker.url()
    with requests.Session() as session:
        for i in range(4):
            r = session.post(f"{base}/v1/queues/ka.q", data=b"m%d" % i, timeout=10)
            assert r.status_code == 202, r.text
            time.sleep(HEADER * 1.5)
        got = session.get(f"{base}/v1/queues/ka.q/messages?max=10", timeout=10).json()["messages"]
        assert [m["body"] for m in got] == ["m%d" % i for i in range(4)]
    # A long poll on a fresh connection (its first request) and on a reused
    # one, each waiting longer than handshake, header and keep-alive timeouts
    # (ka.q's messages were just received: none is visible for 30 s).
    wait = IDLE + 1.5
    reused = requests.Session()
    assert reused.get(f"{base}/healthz", timeout=10).text == "ok\n"
    for session in (requests, reused):
        start = time.monotonic()
        r = session.get(f"{base}/v1/queues/ka.q/messages?wait={wait}", timeout=30)
        assert r.status_code == 200 and r.json() == {"messages": []}, r.text
        assert time.monotonic() - start >= wait * 0.9

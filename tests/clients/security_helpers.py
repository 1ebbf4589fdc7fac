"""Helpers for the security tests: a broker with users and ACLs, and small
raw-socket clients for NATS and STOMP (their error frames are what the tests
look at)."""

import base64
import os
import socket
import subprocess
import tempfile
import time

from conftest import Broker, binary


def passwd(secret):
    out = subprocess.run(
        [binary(), "passwd"], input=secret + "\n", capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def write_config(path, users, acl, extra=""):
    """users: {name: (password, token or None)}; acl: list of dicts."""
    lines = [extra]
    for name, (password, token) in users.items():
        lines.append("[[users]]")
        lines.append(f'name = "{name}"')
        lines.append(f'password_hash = "{passwd(password)}"')
        if token:
            lines.append(f'token_hash = "{passwd(token)}"')
    for rule in acl:
        lines.append("[[acl]]")
        for k, v in rule.items():
            if isinstance(v, list):
                lines.append(f"{k} = [" + ", ".join(f'"{x}"' for x in v) + "]")
            else:
                lines.append(f'{k} = "{v}"')
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def start(users, acl, extra="", env=None):
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "switchyard.toml")
    write_config(cfg, users, acl, extra)
    return Broker(os.path.join(d, "data"), env, args=["--config", cfg])


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Raw:
    """A line-oriented raw socket client."""

    def __init__(self, addr, timeout=10):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def read_until(self, token, timeout=10):
        deadline = time.time() + timeout
        while token not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"waiting for {token!r}, have {self.buf!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed while waiting for {token!r}, have {self.buf!r}")
            self.buf += chunk
        i = self.buf.index(token) + len(token)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def closed(self, timeout=10):
        """True once the peer closes (after whatever it still sends)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except OSError:
                return True
            if not chunk:
                return True
            self.buf += chunk
        return False

    def close(self):
        self.sock.close()


class Nats(Raw):
    def __init__(self, addr, **connect):
        super().__init__(addr)
        self.info = self.read_until(b"\r\n")
        import json

        opts = {"verbose": False, "pedantic": False, "protocol": 1, "headers": True}
        opts.update(connect)
        self.send(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")

    def ok(self):
        """Reads the PONG answering CONNECT's PING (or raises on -ERR)."""
        got = self.read_until(b"\r\n")
        if got.startswith(b"-ERR"):
            raise PermissionError(got.decode())
        assert got == b"PONG\r\n", got
        return self

    def ping(self):
        self.send(b"PING\r\n")
        return self.read_until(b"PONG\r\n")

    def msgs(self, n, timeout=10):
        out = []
        for _ in range(n):
            head = self.read_until(b"\r\n", timeout)
            while head.startswith(b"PING"):
                self.send(b"PONG\r\n")
                head = self.read_until(b"\r\n", timeout)
            parts = head.split()
            assert parts[0] == b"MSG", head
            size = int(parts[-1])
            body = self.read_until(b"\r\n", timeout)[:-2]
            assert len(body) == size
            out.append((parts[1].decode(), body))
        return out


class Stomp(Raw):
    def __init__(self, addr, login=None, passcode=None):
        super().__init__(addr)
        frame = b"CONNECT\naccept-version:1.2\nhost:/\n"
        if login is not None:
            frame += b"login:" + login.encode() + b"\n"
        if passcode is not None:
            frame += b"passcode:" + passcode.encode() + b"\n"
        self.send(frame + b"\n\0")

    def frame(self, timeout=10):
        f = self.read_until(b"\0", timeout)
        return f.lstrip(b"\r\n")

    def command(self, timeout=10):
        return self.frame(timeout).split(b"\n", 1)[0]

"""Helpers for the stomp.py tests: a collecting listener, connection and
subscription helpers that wait for receipts, and a raw-socket frame reader
for the cases stomp.py cannot produce (bad input, silent clients)."""

import queue
import socket
import threading
import time
import uuid

import stomp

VERSIONS = {
    "1.0": stomp.Connection10,
    "1.1": stomp.Connection11,
    "1.2": stomp.Connection12,
}

WAIT = 10.0


class Collector(stomp.ConnectionListener):
    """Collects what a connection receives."""

    def __init__(self):
        self.messages = queue.Queue()
        self.errors = queue.Queue()
        self._receipts = set()
        self._cond = threading.Condition()
        self.heartbeats = 0
        self.disconnected = threading.Event()

    def on_message(self, frame):
        self.messages.put(frame)

    def on_error(self, frame):
        self.errors.put(frame)

    def on_receipt(self, frame):
        with self._cond:
            self._receipts.add(frame.headers.get("receipt-id"))
            self._cond.notify_all()

    def on_heartbeat(self):
        self.heartbeats += 1

    def on_disconnected(self):
        self.disconnected.set()

    def receipt(self, rid, timeout=WAIT):
        with self._cond:
            ok = self._cond.wait_for(lambda: rid in self._receipts, timeout)
        assert ok, f"no RECEIPT {rid}; errors: {list(self.errors.queue)}"

    def next(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no MESSAGE arrived; errors: {list(self.errors.queue)}")

    def none(self, timeout=0.3):
        try:
            frame = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected MESSAGE {frame.headers} {frame.body!r}")


def connect(broker, version="1.2", heartbeats=(0, 0), auto_decode=True, headers=None):
    kwargs = {"auto_decode": auto_decode}
    if version != "1.0":  # heart-beating is STOMP 1.1+
        kwargs["heartbeats"] = heartbeats
    conn = VERSIONS[version]([broker.addr("stomp")], **kwargs)
    listener = Collector()
    conn.set_listener("collector", listener)
    conn.connect("guest", "guest", wait=True, headers=headers or {})
    return conn, listener


def rid():
    return "r-" + uuid.uuid4().hex[:12]


def subscribe(conn, listener, destination, sub_id, ack="auto", **headers):
    r = rid()
    headers["receipt"] = r
    if conn.version == "1.0":
        conn.subscribe(destination, id=sub_id, ack=ack, headers=headers)
    else:
        conn.subscribe(destination, sub_id, ack=ack, headers=headers)
    listener.receipt(r)


def send(conn, listener, destination, body, **headers):
    r = rid()
    headers["receipt"] = r
    conn.send(destination, body, headers=headers)
    listener.receipt(r)


def ack(conn, frame, nack=False, **kwargs):
    """ACK (or NACK) `frame` the way this connection's version spells it."""
    h = frame.headers
    if conn.version == "1.2":
        args = (h["ack"],)
    elif conn.version == "1.1":
        args = (h["message-id"], h["subscription"])
    else:
        args = (h["message-id"],)
    (conn.nack if nack else conn.ack)(*args, **kwargs)


def close(conn):
    """Disconnects cleanly (DISCONNECT with a receipt, waited for)."""
    if conn.is_connected():
        conn.disconnect()


class RawClient:
    """A raw STOMP connection over a socket."""

    def __init__(self, addr, timeout=WAIT):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def connect(self, version="1.2", heart_beat=None):
        hb = f"heart-beat:{heart_beat}\n" if heart_beat else ""
        self.send(f"CONNECT\naccept-version:{version}\nhost:/\n{hb}\n\x00".encode())
        frame = self.frame()
        assert frame is not None and frame[0] == "CONNECTED", frame
        return frame

    def frame(self):
        """The next frame as (command, headers, body), or None at EOF."""
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\n\n")
            if end >= 0:
                head = self.buf[:end].decode()
                lines = head.split("\n")
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers.setdefault(k, v)
                start = end + 2
                if "content-length" in headers:
                    n = int(headers["content-length"])
                    if len(self.buf) >= start + n + 1:
                        body = self.buf[start : start + n]
                        self.buf = self.buf[start + n + 1 :]
                        return lines[0], headers, body
                else:
                    nul = self.buf.find(b"\x00", start)
                    if nul >= 0:
                        body = self.buf[start:nul]
                        self.buf = self.buf[nul + 1 :]
                        return lines[0], headers, body
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def error_then_close(self):
        """Expects an ERROR frame, then the server closing the socket."""
        deadline = time.monotonic() + WAIT
        error = None
        while time.monotonic() < deadline:
            f = self.frame()
            if f is None:
                assert error is not None, "closed without an ERROR frame"
                return error
            if f[0] == "ERROR":
                error = f
        raise AssertionError("the server did not close the connection")

    def close(self):
        self.sock.close()

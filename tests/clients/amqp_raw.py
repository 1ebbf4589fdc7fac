"""A minimal raw AMQP 0-9-1 peer for bad-input tests: it completes the
handshake frame by frame, then sends whatever bytes a test wants and reads
the server's answer (a `connection.close` with its reply code, a
`channel.close`, or the socket closing)."""

import socket
import struct
import time

HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = b"\xce"


def frame(kind, channel, payload):
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def shortstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">B", len(b)) + b


def longstr(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack(">I", len(b)) + b


def method(channel, class_id, method_id, args=b""):
    return frame(1, channel, struct.pack(">HH", class_id, method_id) + args)


class RawPeer:
    def __init__(self, addr, timeout=10.0):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n, deadline):
        while len(self.buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, timeout=10.0):
        """(type, channel, payload) of the next frame; EOFError when closed."""
        deadline = time.monotonic() + timeout
        head = self.recv_exact(7, deadline)
        kind, channel, size = struct.unpack(">BHI", head)
        payload = self.recv_exact(size + 1, deadline)[:-1]
        return kind, channel, payload

    def read_method(self, timeout=10.0):
        """(channel, class_id, method_id, args), skipping heartbeats."""
        while True:
            kind, channel, payload = self.read_frame(timeout)
            if kind == 1:
                class_id, method_id = struct.unpack(">HH", payload[:4])
                return channel, class_id, method_id, payload[4:]

    def handshake(self, frame_max=131072, heartbeat=0):
        self.send(HEADER)
        _, c, m, _ = self.read_method()
        assert (c, m) == (10, 10), (c, m)
        props = struct.pack(">I", 0)
        self.send(method(0, 10, 11, props + shortstr("PLAIN") + longstr(b"\x00guest\x00guest") + shortstr("en_US")))
        _, c, m, args = self.read_method()
        assert (c, m) == (10, 30), (c, m)
        channel_max, server_frame_max, server_hb = struct.unpack(">HIH", args[:8])
        self.frame_max = min(frame_max, server_frame_max)
        self.send(method(0, 10, 31, struct.pack(">HIH", channel_max, self.frame_max, heartbeat)))
        self.send(method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
        _, c, m, _ = self.read_method()
        assert (c, m) == (10, 41), (c, m)

    def open_channel(self, ch):
        self.send(method(ch, 20, 10, shortstr("")))
        got = self.read_method()
        assert got[1:3] == (20, 11), got

    def expect_connection_close(self, timeout=10.0):
        """Reads until connection.close; answers close-ok; returns (code, text).
        Then checks the server closes the socket."""
        while True:
            ch, c, m, args = self.read_method(timeout)
            if (c, m) == (10, 50):
                code = struct.unpack(">H", args[:2])[0]
                n = args[2]
                text = args[3 : 3 + n].decode()
                self.send(method(0, 10, 51))
                return code, text

    def expect_eof(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.recv_exact(len(self.buf) + 1, deadline)
        except EOFError:
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

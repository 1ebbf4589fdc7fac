"""STOMP over WebSocket (`/stomp` on the HTTP listener) with the
`websockets` package speaking STOMP frames, against stomp.py over TCP."""

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from stomp_helpers import close, connect, send, subscribe

WAIT = 10


class WsStomp:
    """A STOMP client over a WebSocket: frames are text (or binary) messages;
    one message may carry several frames."""

    def __init__(self, broker, subprotocol="v12.stomp"):
        host, port = broker.addr("http")
        self.ws = ws_connect(
            f"ws://{host}:{port}/stomp", subprotocols=[subprotocol], open_timeout=WAIT
        )
        self.buf = b""
        self.kinds = []

    def send(self, frame):
        self.ws.send(frame if isinstance(frame, str) else frame)

    def frame(self):
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\n\n")
            if end >= 0:
                lines = self.buf[:end].decode().split("\n")
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers.setdefault(k, v)
                start = end + 2
                n = int(headers.get("content-length", -1))
                stop = start + n if n >= 0 else self.buf.find(b"\x00", start)
                if stop >= 0 and len(self.buf) > stop:
                    body = self.buf[start:stop]
                    self.buf = self.buf[stop + 1 :]
                    return lines[0], headers, body
            msg = self.ws.recv(timeout=WAIT)
            self.kinds.append(type(msg))
            self.buf += msg.encode() if isinstance(msg, str) else msg

    def close(self):
        self.ws.close()


@pytest.mark.parametrize(
    "subprotocol,version", [("v12.stomp", "1.2"), ("v11.stomp", "1.1"), ("v10.stomp", "1.0")]
)
def test_stomp_over_websocket(broker, subprotocol, version):
    ws = WsStomp(broker, subprotocol)
    assert ws.ws.subprotocol == subprotocol
    ws.send(f"CONNECT\naccept-version:{version}\nhost:/\n\n\x00")
    cmd, headers, _ = ws.frame()
    assert cmd == "CONNECTED"
    assert headers["version"] == version
    ws.send("SUBSCRIBE\nid:ws\ndestination:/topic/ws.in\nreceipt:s\n\n\x00")
    assert ws.frame()[0] == "RECEIPT"

    tcp, tl = connect(broker)
    subscribe(tcp, tl, "/topic/ws.out", "t")
    send(tcp, tl, "/topic/ws.in", "from tcp")
    cmd, headers, body = ws.frame()
    assert cmd == "MESSAGE"
    assert headers["destination"] == "/topic/ws.in"
    assert body == b"from tcp"
    assert str in ws.kinds, "UTF-8 frames arrive as text messages"

    ws.send("SEND\ndestination:/topic/ws.out\ncontent-type:text/plain\n\nfrom websocket\x00")
    m = tl.next()
    assert m.body == "from websocket"
    assert m.headers["content-type"] == "text/plain"
    close(tcp)

    ws.send("DISCONNECT\nreceipt:bye\n\n\x00")
    cmd, headers, _ = ws.frame()
    assert (cmd, headers["receipt-id"]) == ("RECEIPT", "bye")
    ws.close()


def test_stomp_over_websocket_binary_body(broker):
    ws = WsStomp(broker)
    ws.send("CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
    assert ws.frame()[0] == "CONNECTED"
    ws.send("SUBSCRIBE\nid:b\ndestination:/queue/ws.bin\nreceipt:s\n\n\x00")
    assert ws.frame()[0] == "RECEIPT"
    body = bytes(range(256))
    frame = b"SEND\ndestination:/queue/ws.bin\ncontent-length:256\n\n" + body + b"\x00"
    ws.send(frame)
    cmd, headers, got = ws.frame()
    assert cmd == "MESSAGE"
    assert got == body
    assert bytes in ws.kinds, "non-UTF-8 frames arrive as binary messages"
    ws.close()


def test_stomp_over_websocket_bad_input_closes(broker):
    ws = WsStomp(broker)
    ws.send("CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
    assert ws.frame()[0] == "CONNECTED"
    ws.send("BOGUS\n\n\x00")
    cmd, headers, _ = ws.frame()
    assert cmd == "ERROR"
    assert headers["message"] == "unknown command"
    with pytest.raises(ConnectionClosed):
        ws.ws.recv(timeout=WAIT)
    ws.close()

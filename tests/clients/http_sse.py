"""A small Server-Sent Events reader over `requests` (the WHATWG
"Server-sent events" interpretation), for the HTTP adapter's tests."""

import base64
import json

import requests


class Event:
    def __init__(self, kind, data, id, fields):
        self.kind = kind
        self.data = data
        self.id = id
        self.fields = fields

    @property
    def meta(self):
        return json.loads(self.fields["meta"])

    @property
    def body(self):
        if self.fields.get("encoding") == "base64":
            return base64.b64decode(self.data)
        assert "encoding" not in self.fields
        return self.data.encode()


class Sse:
    """GET /v1/topics/{filter}/events, read event by event."""

    def __init__(self, base_url, filter, timeout=10):
        quoted = requests.utils.quote(filter, safe="*.")
        self.response = requests.get(
            f"{base_url}/v1/topics/{quoted}/events", stream=True, timeout=(5, timeout)
        )
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["content-type"] == "text/event-stream"
        self.chunks = self.response.iter_content(chunk_size=None)
        self.buffer = b""
        self.comments = []
        self.pending = []
        self._reset()
        # The opening comment: the subscription exists from here on.
        while not self.comments:
            self._read()
        assert self.comments[0].startswith("subscribed to ")

    def _reset(self):
        self.data, self.kind, self.fields = [], "", {}

    def _read(self):
        chunk = next(self.chunks)
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self._line(line.decode())

    def _line(self, line):
        if line == "":
            if self.data:
                self.pending.append(Event(self.kind or "message", "\n".join(self.data), self.last_id, self.fields))
            self._reset()
            return
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
            return
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self.data.append(value)
        elif field == "event":
            self.kind = value
        elif field == "id":
            self.last_id = value
        else:
            self.fields[field] = value

    last_id = ""

    def event(self):
        """The next event; raises on timeout or end of stream."""
        while not self.pending:
            self._read()
        return self.pending.pop(0)

    def close(self):
        self.response.close()

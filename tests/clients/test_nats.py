"""The NATS adapter against nats-py (the real binary on ephemeral ports)."""

import asyncio

import nats
import nats.errors
import pytest


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def url(broker):
    host, port = broker.addr("nats")
    return f"nats://{host}:{port}"


def test_pubsub_and_wildcards(broker):
    async def main():
        nc = await nats.connect(url(broker))
        star = await nc.subscribe("py.*.temp")
        full = await nc.subscribe("py.>")
        await nc.flush()
        for subject in ["py.room1.temp", "py.room1.humidity", "py.a.b.temp"]:
            await nc.publish(subject, subject.encode())
        await nc.flush()
        m = await star.next_msg(timeout=5)
        assert m.subject == "py.room1.temp"
        with pytest.raises(nats.errors.TimeoutError):
            await star.next_msg(timeout=0.3)
        got = sorted([(await full.next_msg(timeout=5)).subject for _ in range(3)])
        assert got == ["py.a.b.temp", "py.room1.humidity", "py.room1.temp"]
        await nc.close()

    run(main())


def test_binary_body_is_byte_identical(broker):
    async def main():
        nc = await nats.connect(url(broker))
        sub = await nc.subscribe("py.bin")
        await nc.flush()
        body = bytes(range(256)) * 4
        await nc.publish("py.bin", body)
        m = await sub.next_msg(timeout=5)
        assert m.data == body
        await nc.close()

    run(main())


def test_queue_groups_split_work_and_cover_everything(broker):
    async def main():
        a = await nats.connect(url(broker))
        b = await nats.connect(url(broker))
        got_a, got_b = [], []

        def collect(into):
            async def cb(m):
                into.append(m.data)

            return cb

        await a.subscribe("py.jobs", queue="workers", cb=collect(got_a))
        await b.subscribe("py.jobs", queue="workers", cb=collect(got_b))
        await a.flush()
        await b.flush()
        p = await nats.connect(url(broker))
        for i in range(200):
            await p.publish("py.jobs", str(i).encode())
        await p.flush()
        for _ in range(100):
            if len(got_a) + len(got_b) == 200:
                break
            await asyncio.sleep(0.05)
        assert len(got_a) + len(got_b) == 200
        assert set(got_a).isdisjoint(got_b)
        assert got_a and got_b
        for c in (a, b, p):
            await c.close()

    run(main())


def test_request_reply_and_no_responders(broker):
    async def main():
        nc = await nats.connect(url(broker))

        async def handler(msg):
            await msg.respond(b"pong:" + msg.data)

        await nc.subscribe("py.svc", cb=handler)
        await nc.flush()
        reply = await nc.request("py.svc", b"ping", timeout=5)
        assert reply.data == b"pong:ping"
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request("py.nobody", b"ping", timeout=5)
        await nc.close()

    run(main())


def test_headers_round_trip(broker):
    async def main():
        nc = await nats.connect(url(broker))
        sub = await nc.subscribe("py.hdr")
        await nc.flush()
        await nc.publish("py.hdr", b"x", headers={"X-Trace": "abc", "Content-Type": "text/plain"})
        m = await sub.next_msg(timeout=5)
        assert m.headers["X-Trace"] == "abc"
        assert m.headers["Content-Type"] == "text/plain"
        await nc.close()

    run(main())


def test_unsubscribe_with_max(broker):
    async def main():
        nc = await nats.connect(url(broker))
        sub = await nc.subscribe("py.max")
        await sub.unsubscribe(limit=2)
        await nc.flush()
        for i in range(5):
            await nc.publish("py.max", str(i).encode())
        await nc.flush()
        got = []
        try:
            while True:
                got.append((await sub.next_msg(timeout=0.5)).data)
        except (nats.errors.TimeoutError, nats.errors.BadSubscriptionError):
            pass
        assert got == [b"0", b"1"]
        await nc.close()

    run(main())


def test_echo_off(broker):
    async def main():
        quiet = await nats.connect(url(broker), no_echo=True)
        other = await nats.connect(url(broker))
        sub = await quiet.subscribe("py.echo")
        await quiet.flush()
        await quiet.publish("py.echo", b"mine")
        await quiet.flush()
        await other.publish("py.echo", b"theirs")
        await other.flush()
        m = await sub.next_msg(timeout=5)
        assert m.data == b"theirs"
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.3)
        await quiet.close()
        await other.close()

    run(main())


def test_large_payload_up_to_max_payload_and_error_past_it(broker):
    async def main():
        nc = await nats.connect(url(broker))
        assert nc.max_payload == 1024 * 1024
        sub = await nc.subscribe("py.large")
        await nc.flush()
        body = b"z" * nc.max_payload
        await nc.publish("py.large", body)
        m = await sub.next_msg(timeout=10)
        assert m.data == body
        with pytest.raises(nats.errors.MaxPayloadError):
            await nc.publish("py.large", body + b"!")
        await nc.close()

    run(main())


def test_reconnect_after_the_server_restarts(broker_factory):
    first = broker_factory()
    host, port = first.addr("nats")

    async def main():
        reconnected = asyncio.Event()

        async def on_reconnect():
            reconnected.set()

        nc = await nats.connect(
            f"nats://{host}:{port}",
            reconnect_time_wait=0.1,
            max_reconnect_attempts=-1,
            reconnected_cb=on_reconnect,
        )
        sub = await nc.subscribe("py.restart")
        await nc.flush()
        assert first.stop() == 0
        second = broker_factory({"SWITCHYARD_LISTENERS__NATS__BIND": f"{host}:{port}"})
        await asyncio.wait_for(reconnected.wait(), 30)
        await nc.publish("py.restart", b"after")
        m = await sub.next_msg(timeout=5)
        assert m.data == b"after"
        await nc.close()
        return second

    run(main())

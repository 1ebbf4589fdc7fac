"""Crash test of the durable store (issue 8), with the real binary.

Publishers on AMQP (publisher confirms, pika), MQTT (QoS 1 into a persistent
session, paho-mqtt) and STOMP (receipts on `persistent:true` SENDs, stomp.py)
send numbered persistent messages while consumers on the same protocols
receive and acknowledge them; the broker is killed with SIGKILL at random
moments several times and restarted on the same data directory. At the end
the consumers drain everything. The test counts and prints, per protocol:

- confirmed: messages whose publisher was told they are safe;
- delivered: distinct messages a consumer received;
- lost: confirmed but never delivered — must be 0;
- acked-came-back: delivered again after the consumer's acknowledgement was
  known to be on disk — must be 0;
- duplicated: delivered more than once (an acknowledgement in flight at the
  kill, which at-least-once delivery allows);
- unconfirmed: sent without a confirmation (the in-flight tail at a kill),
  and how many of those arrived anyway.

When an acknowledgement is "on disk": AMQP and MQTT acknowledgements get no
answer, so each consumer follows a run of acks with a confirmed persistent
publish on the same connection (to a barrier queue). The broker handles a
connection's frames in order and journals in order, so that confirm — sent
after the fsync covering the barrier message — covers the earlier acks.
STOMP acks carry a receipt, which the broker sends once the ack is on disk.
"""

import os
import pathlib
import queue
import random
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pika
import stomp

PROTOCOLS = ("amqp", "mqtt", "stomp")
AMQP_QUEUE = "crash.amqp"
AMQP_BARRIER = "crash.amqp.barrier"
MQTT_TOPIC = "crash/mqtt"
MQTT_BARRIER = "crash/mqtt-barrier"
MQTT_SUBSCRIBER = "crash-mqtt-subscriber"
STOMP_QUEUE = "/queue/crash.stomp"
ACK_BATCH = 20
WAIT = 10


class Ledger:
    """What one protocol's publisher and consumer saw, across every round."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.sent = set()
        self.confirmed = set()
        self.deliveries = {}
        self.committed = set()
        self.came_back = set()
        # (time, event) lines written out when the test fails.
        self.events = []

    def event(self, what):
        with self.lock:
            self.events.append(f"{time.monotonic():.3f} {what}")

    def on_sent(self, mid):
        with self.lock:
            self.sent.add(mid)

    def on_confirmed(self, mid):
        with self.lock:
            self.confirmed.add(mid)

    def on_delivered(self, mid):
        with self.lock:
            self.deliveries[mid] = self.deliveries.get(mid, 0) + 1
            if mid in self.committed:
                self.came_back.add(mid)

    def on_committed(self, mids):
        with self.lock:
            self.committed.update(mids)

    def drained(self):
        with self.lock:
            return self.confirmed <= self.deliveries.keys()

    def report(self):
        with self.lock:
            delivered = set(self.deliveries)
            unconfirmed = self.sent - self.confirmed
            return {
                "sent": len(self.sent),
                "confirmed": len(self.confirmed),
                "delivered": len(delivered),
                "lost": sorted(self.confirmed - delivered),
                "acked_came_back": sorted(self.came_back),
                "duplicated": sum(1 for n in self.deliveries.values() if n > 1),
                "unconfirmed": len(unconfirmed),
                "unconfirmed_delivered": len(unconfirmed & delivered),
                "phantom": sorted(delivered - self.sent),
            }


class Worker(threading.Thread):
    """Runs `body` until `stop` is set or the connection breaks."""

    def __init__(self, name, body, stop):
        super().__init__(name=name, daemon=True)
        self.body = body
        self.stop = stop
        self.error = None

    def run(self):
        try:
            self.body(self.stop)
        except Exception as e:  # the broker was killed under it
            self.error = e


# --- AMQP -----------------------------------------------------------------


def amqp_connect(broker):
    host, port = broker.addr("amqp")
    params = pika.ConnectionParameters(
        host=host, port=port, heartbeat=0, connection_attempts=1, socket_timeout=5,
        blocked_connection_timeout=WAIT,
    )
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(AMQP_QUEUE, durable=True)
    return conn, ch


def amqp_publisher(broker, ledger, tag):
    def run(stop):
        conn, ch = amqp_connect(broker)
        props = pika.BasicProperties(delivery_mode=2)
        n = 0
        while not stop.is_set():
            mid = f"amqp-{tag}-{n}"
            n += 1
            ledger.on_sent(mid)
            # Returns once the broker confirmed it (raises on a nack).
            ch.basic_publish("", AMQP_QUEUE, mid.encode(), props)
            ledger.on_confirmed(mid)
        conn.close()

    return run


def amqp_consumer(broker, ledger):
    def run(stop):
        conn, ch = amqp_connect(broker)
        ch.queue_declare(AMQP_BARRIER, durable=True, arguments={"x-max-length": 1})
        ch.basic_qos(prefetch_count=2 * ACK_BATCH)
        props = pika.BasicProperties(delivery_mode=2)
        pending = []

        def commit():
            if pending:
                ch.basic_publish("", AMQP_BARRIER, b"barrier", props)
                ledger.on_committed(pending)
                pending.clear()

        for method, _props, body in ch.consume(AMQP_QUEUE, inactivity_timeout=0.2):
            if method is not None:
                ledger.on_delivered(body.decode())
                ch.basic_ack(method.delivery_tag)
                pending.append(body.decode())
            if method is None or len(pending) >= ACK_BATCH:
                commit()
            if stop.is_set() and method is None:
                break
        conn.close()

    return run


# --- MQTT -----------------------------------------------------------------


def mqtt_client(broker, client_id, clean, manual_ack=False, on_message=None, on_disconnect=None):
    """A connected paho client. Callbacks are set before CONNECT: a resumed
    session's messages come right behind the CONNACK, and paho drops (and,
    with manual acks, never acknowledges) a message that arrives before
    `on_message` is set."""
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=clean,
        manual_ack=manual_ack,
        reconnect_on_failure=False,
    )
    c.on_message = on_message
    c.on_disconnect = on_disconnect
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    host, port = broker.addr("mqtt")
    c.connect(host, port, keepalive=60)
    c.loop_start()
    if not connected.wait(WAIT):
        raise RuntimeError("no CONNACK")
    return c


def mqtt_confirmed(info):
    """Waits for the PUBACK of a QoS 1 publish; False if the connection broke."""
    try:
        info.wait_for_publish(WAIT)
    except (RuntimeError, ValueError):
        return False
    return info.is_published()


def mqtt_publisher(broker, ledger, tag):
    def run(stop):
        c = mqtt_client(broker, f"crash-pub-{tag}", clean=True)
        n = 0
        while not stop.is_set():
            mid = f"mqtt-{tag}-{n}"
            n += 1
            ledger.on_sent(mid)
            if not mqtt_confirmed(c.publish(MQTT_TOPIC, mid.encode(), qos=1)):
                ledger.event(f"publisher: {mid} not confirmed")
                break
            ledger.on_confirmed(mid)
        c.loop_stop()
        c.disconnect()

    return run


def mqtt_subscribe(broker):
    """Creates the persistent session before anything is published."""
    c = mqtt_client(broker, MQTT_SUBSCRIBER, clean=False)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe([(MQTT_TOPIC, 1), (MQTT_BARRIER, 1)])
    assert done.wait(WAIT), "no SUBACK"
    c.disconnect()
    c.loop_stop()


def mqtt_consumer(broker, ledger):
    def run(stop):
        inbox = queue.Queue()
        broken = threading.Event()

        def on_disconnect(*a):
            ledger.event(f"consumer disconnected {a[3:]!r}")
            broken.set()

        c = mqtt_client(broker, MQTT_SUBSCRIBER, clean=False, manual_ack=True,
                        on_message=lambda _c, _u, m: inbox.put(m), on_disconnect=on_disconnect)
        ledger.event("consumer connected")
        pending = []

        def commit():
            if pending:
                if not mqtt_confirmed(c.publish(MQTT_BARRIER, b"barrier", qos=1)):
                    raise ConnectionError("barrier not confirmed")
                ledger.event(f"committed {len(pending)} up to {pending[-1]}")
                ledger.on_committed(pending)
                pending.clear()

        while not broken.is_set():
            try:
                m = inbox.get(timeout=0.2)
            except queue.Empty:
                commit()
                if stop.is_set():
                    break
                continue
            ledger.event(f"got {m.topic} {m.payload[:40]!r} packet {m.mid} dup {m.dup}")
            if m.topic == MQTT_TOPIC:
                ledger.on_delivered(m.payload.decode())
                pending.append(m.payload.decode())
            c.ack(m.mid, m.qos)
            if len(pending) >= ACK_BATCH:
                commit()
        c.disconnect()
        c.loop_stop()

    return run


# --- STOMP ----------------------------------------------------------------


class StompListener(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()
        self.receipts = set()
        self.cond = threading.Condition()
        self.broken = threading.Event()

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_error(self, frame):
        self.broken.set()
        with self.cond:
            self.cond.notify_all()

    def on_disconnected(self):
        self.broken.set()
        with self.cond:
            self.cond.notify_all()

    def wait_receipt(self, rid):
        with self.cond:
            self.cond.wait_for(lambda: rid in self.receipts or self.broken.is_set(), WAIT)
            return rid in self.receipts


def stomp_connect(broker):
    host, port = broker.addr("stomp")
    conn = stomp.Connection12([(host, port)], heartbeats=(0, 0), reconnect_attempts_max=1)
    listener = StompListener()
    conn.set_listener("crash", listener)
    conn.connect(wait=True)
    return conn, listener


def stomp_publisher(broker, ledger, tag):
    def run(stop):
        conn, listener = stomp_connect(broker)
        n = 0
        while not stop.is_set():
            mid = f"stomp-{tag}-{n}"
            n += 1
            ledger.on_sent(mid)
            rid = uuid.uuid4().hex
            conn.send(STOMP_QUEUE, mid, headers={"persistent": "true", "receipt": rid})
            if not listener.wait_receipt(rid):
                break
            ledger.on_confirmed(mid)
        conn.disconnect()

    return run


def stomp_consumer(broker, ledger):
    def run(stop):
        conn, listener = stomp_connect(broker)
        conn.subscribe(STOMP_QUEUE, id="crash", ack="client-individual")
        while not listener.broken.is_set():
            frames = []
            try:
                frames.append(listener.messages.get(timeout=0.2))
                while len(frames) < ACK_BATCH:
                    frames.append(listener.messages.get_nowait())
            except queue.Empty:
                if not frames and stop.is_set():
                    break
            if not frames:
                continue
            for f in frames:
                ledger.on_delivered(f.body)
            # Every ack but the last goes without a receipt; the receipt of
            # the last comes once all of them are on disk.
            for f in frames[:-1]:
                conn.ack(f.headers["ack"])
            rid = uuid.uuid4().hex
            conn.ack(frames[-1].headers["ack"], receipt=rid)
            if not listener.wait_receipt(rid):
                break
            ledger.on_committed([f.body for f in frames])
        conn.disconnect()

    return run


# --- the test -------------------------------------------------------------


def start_workers(broker, ledgers, round_no, publishers=True):
    stop = threading.Event()
    bodies = [
        ("amqp-consumer", amqp_consumer(broker, ledgers["amqp"])),
        ("mqtt-consumer", mqtt_consumer(broker, ledgers["mqtt"])),
        ("stomp-consumer", stomp_consumer(broker, ledgers["stomp"])),
    ]
    if publishers:
        bodies += [
            ("amqp-publisher", amqp_publisher(broker, ledgers["amqp"], round_no)),
            ("mqtt-publisher", mqtt_publisher(broker, ledgers["mqtt"], round_no)),
            ("stomp-publisher", stomp_publisher(broker, ledgers["stomp"], round_no)),
        ]
    workers = [Worker(name, body, stop) for name, body in bodies]
    for w in workers:
        w.start()
    return stop, workers


def join(workers, timeout=30):
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(max(0.1, deadline - time.monotonic()))
    stuck = [w.name for w in workers if w.is_alive()]
    assert not stuck, f"workers did not stop: {stuck}"


def test_no_confirmed_message_is_lost_across_kill_9(broker_factory, tmp_path):
    seed = int(os.environ.get("SWITCHYARD_CRASH_SEED", random.randrange(1 << 30)))
    kills = int(os.environ.get("SWITCHYARD_CRASH_KILLS", "4"))
    rng = random.Random(seed)
    print(f"\ncrash test: seed {seed} (SWITCHYARD_CRASH_SEED), {kills} kills")
    data = str(tmp_path / "data")
    ledgers = {p: Ledger(p) for p in PROTOCOLS}
    brokers = []

    def start():
        b = broker_factory(data_dir=data)
        brokers.append(b)
        for l in ledgers.values():
            l.event(f"broker {len(brokers) - 1} ready")
        return b

    for round_no in range(kills):
        b = start()
        if round_no == 0:
            mqtt_subscribe(b)
        stop, workers = start_workers(b, ledgers, round_no)
        time.sleep(rng.uniform(1.0, 3.0))
        for name in ("amqp-publisher", "mqtt-publisher", "stomp-publisher"):
            w = next(w for w in workers if w.name == name)
            assert w.is_alive(), f"{name} stopped before the kill: {w.error!r}"
        b.kill()
        for l in ledgers.values():
            l.event(f"broker {len(brokers) - 1} killed")
        stop.set()
        join(workers)
        counts = {p: (len(l.confirmed), len(l.deliveries)) for p, l in ledgers.items()}
        print(f"round {round_no}: killed; confirmed/delivered so far {counts}")

    # The last restart: consumers drain everything.
    b = start()
    stop, workers = start_workers(b, ledgers, kills, publishers=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(l.drained() for l in ledgers.values()):
        time.sleep(0.2)
    time.sleep(1.0)  # redeliveries that would still come
    stop.set()
    join(workers)
    assert b.stop() == 0

    failures = []
    print("protocol  sent  confirmed  delivered  lost  acked-came-back  duplicated  unconfirmed (delivered)")
    for p, l in ledgers.items():
        r = l.report()
        print(f"{p:8} {r['sent']:5} {r['confirmed']:10} {r['delivered']:10} {len(r['lost']):5} "
              f"{len(r['acked_came_back']):16} {r['duplicated']:11} {r['unconfirmed']:12} "
              f"({r['unconfirmed_delivered']})")
        assert r["confirmed"] > 0, f"{p}: nothing was confirmed"
        if r["lost"]:
            failures.append(f"{p}: lost {len(r['lost'])} confirmed messages, e.g. {r['lost'][:5]}")
        if r["acked_came_back"]:
            failures.append(f"{p}: {len(r['acked_came_back'])} acked messages came back, "
                            f"e.g. {r['acked_came_back'][:5]}")
        if r["phantom"]:
            failures.append(f"{p}: delivered messages never sent: {r['phantom'][:5]}")
        # Publishers send one message at a time: at most one is in flight
        # at each kill.
        if r["unconfirmed"] > kills:
            failures.append(f"{p}: {r['unconfirmed']} unconfirmed messages for {kills} kills")
    if failures:
        # What each broker logged and what the clients saw, for the post-mortem.
        out = pathlib.Path(os.environ.get("SWITCHYARD_CRASH_LOGDIR") or tmp_path) / f"seed-{seed}"
        out.mkdir(parents=True, exist_ok=True)
        for i, b in enumerate(brokers):
            (out / f"broker-{i}.log").write_text("\n".join(b.log) + "\n")
        for p, l in ledgers.items():
            (out / f"{p}-events.log").write_text("\n".join(l.events) + "\n")
        failures.append(f"logs in {out}")
    assert not failures, f"seed {seed}: " + "; ".join(failures)

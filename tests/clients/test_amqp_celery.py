"""A real Celery worker process (kombu over py-amqp, pool=solo) consumes a
task a Celery client publishes, both through Switchyard's AMQP listener;
plus a plain kombu producer/consumer round trip."""

import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import time

import kombu
import pytest

from conftest import wait_for

APP = textwrap.dedent(
    """
    import os
    from celery import Celery

    app = Celery("sytasks", broker=os.environ["SY_BROKER_URL"])
    app.conf.update(
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
    )

    @app.task(name="sytasks.record")
    def record(path, text):
        with open(path, "a") as f:
            f.write(text + "\\n")
        return text
    """
)


def broker_url(broker):
    host, port = broker.addr("amqp")
    return f"amqp://guest:guest@{host}:{port}//"


def test_kombu_round_trip(broker):
    with kombu.Connection(broker_url(broker)) as conn:
        q = kombu.Queue("kombu.q", kombu.Exchange("kombu.x", type="direct"), routing_key="k")
        with conn.Producer() as producer:
            producer.publish({"hello": "world"}, exchange=q.exchange, routing_key="k", declare=[q], serializer="json")
        got = []
        with conn.Consumer(q, callbacks=[lambda body, msg: (got.append(body), msg.ack())], accept=["json"]):
            conn.drain_events(timeout=10)
        assert got == [{"hello": "world"}]


def test_celery_worker_consumes_a_task_from_a_celery_client(broker):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "sytasks.py").write_text(APP)
        out = tmp / "out.txt"
        env = dict(os.environ)
        env["SY_BROKER_URL"] = broker_url(broker)
        env["PYTHONPATH"] = str(tmp)
        env.pop("SWITCHYARD_BIN", None)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "sytasks", "worker", "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            sys.path.insert(0, str(tmp))
            os.environ["SY_BROKER_URL"] = env["SY_BROKER_URL"]
            import sytasks  # noqa: E402

            sytasks.app.conf.broker_url = env["SY_BROKER_URL"]
            for i in range(3):
                sytasks.record.delay(str(out), f"task-{i}")
            ok = wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 3, timeout=60)
            if not ok:
                worker.terminate()
                log = worker.communicate(timeout=20)[0]
                pytest.fail(f"worker did not run the tasks; worker log:\n{log}")
            assert sorted(out.read_text().splitlines()) == ["task-0", "task-1", "task-2"]
        finally:
            sys.path.remove(str(tmp))
            sys.modules.pop("sytasks", None)
            if worker.poll() is None:
                worker.terminate()
                try:
                    log = worker.communicate(timeout=30)[0]
                except subprocess.TimeoutExpired:
                    worker.kill()
                    log = worker.communicate()[0]
            else:
                log = worker.communicate()[0]
        # A warm shutdown: the worker left cleanly.
        assert worker.returncode == 0, log

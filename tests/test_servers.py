"""The mode switch under the servers Django is deployed on.

Each server starts on loopback in a fixture, serves tests/serverproject,
and gets 2,000 concurrent, interleaved requests: mass loads in deferred
scopes, validations in disabled scopes of which half raise, and requests
that set no mode.  Every request must see exactly the mode its own code set,
a request that raised must leave nothing behind (Django's 500 handler, which
runs next on the same worker, reports the mode there), and the database must
end with no drift.
"""

import asyncio
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection

from tests.concurrency import database_url

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Requests per server test: 2,000 by default; CI's runs on PostgreSQL and
# MariaDB send 500, after the README's run has sent 2,000 on SQLite.
REQUESTS = int(os.environ.get("MAINTAINED_FIELDS_SERVER_REQUESTS", 2000))
CONCURRENCY = 16
BROKER = "redis://127.0.0.1:6379/14"

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.servers]


@pytest.fixture
def server_db(tmp_path):
    """A database URL the servers' processes can share, set up with three studies."""
    if connection.vendor == "sqlite":
        url = f"sqlite:///{tmp_path / 'servers.sqlite3'}"
        django_admin(url, "migrate", "--run-syncdb", "--verbosity", "0")
    else:
        url = database_url(connection.settings_dict)
    django_admin(url, "loaddata", "servers", "--verbosity", "0")
    yield url
    result = django_admin(url, "check_maintained_fields", check=False)
    assert result.returncode == 0, f"drift after the run:\n{result.stdout}{result.stderr}"
    end_other_sessions()


def end_other_sessions(timeout=5):
    """Let the stopped servers' connections close, then end any left (a thread
    of the test process that died with its event loop can leave one):
    PostgreSQL cannot drop the test database while a session is open."""
    if connection.vendor != "postgresql":
        return
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(f"SELECT count(*) {others}")
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.2)
        cursor.execute(f"SELECT pg_terminate_backend(pid) {others}")


def environment(url):
    return {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tests.serverproject.settings",
            "PYTHONPATH": str(ROOT)}


def django_admin(url, *args, check=True):
    return subprocess.run([sys.executable, "-m", "django", *args], env=environment(url), cwd=ROOT,
                          capture_output=True, text=True, check=check, timeout=300)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, url, command):
        self.port = free_port()
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([part.format(port=self.port) for part in command], env=environment(url),
                                        cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # its own process group, workers and all

    def wait(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if request(self.port, "/mode/")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"the server did not start:\n{self.output()}")

    def output(self):
        self.log.seek(0)
        return self.log.read()[-5000:]

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever worker processes outlived their parent
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def request(port, path, connection_=None):
    conn = connection_ or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if connection_ is None:
        conn.close()
    return response.status, json.loads(body) if body.startswith(b"{") else {}


def plan(prefixes, count=REQUESTS, seed=0):
    """Interleaved requests: (path, expected status, expected mode seen)."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        prefix = rng.choice(prefixes)
        kind = rng.random()
        study = rng.randint(1, 3)
        if kind < 0.25:
            requests.append((f"{prefix}load/?study={study}", 200, "deferred"))
        elif kind < 0.5:
            requests.append((f"{prefix}validate/?study={study}", 200, "disabled"))
        elif kind < 0.75:
            requests.append((f"{prefix}validate/?study={study}&fail=1", 500, None))
        else:
            requests.append((f"{prefix}mode/", 200, "immediate"))
    return requests


def fire(port, requests):
    """Send the requests from CONCURRENCY threads; return (request, status, body) triples."""
    chunks = [requests[i::CONCURRENCY] for i in range(CONCURRENCY)]

    def run(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        results = []
        for path, status, seen in chunk:
            try:
                results.append(((path, status, seen), *request(port, path, conn)))
            except (http.client.HTTPException, OSError):  # a server closing keep-alive: reconnect
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                results.append(((path, status, seen), *request(port, path, conn)))
        conn.close()
        return results

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return [result for results in pool.map(run, chunks) for result in results]


def assert_isolated(results):
    assert len(results) >= REQUESTS
    wrong = [(req, status, body) for req, status, body in results
             if status != req[1] or body.get("after") != "immediate" or (req[2] and body.get("seen") != req[2])]
    assert wrong == [], f"{len(wrong)} requests saw a mode not their own, e.g. {wrong[:3]}"
    workers = Counter(body["worker"] for _, _, body in results)
    failures = sum(1 for _, status, _ in results if status == 500)
    return len(workers), failures


SERVERS = {
    "gunicorn-sync": [str(BIN / "gunicorn"), "tests.serverproject.wsgi", "-b", "127.0.0.1:{port}", "-w", "2",
                      "--worker-class", "sync", "--log-level", "warning"],
    "gunicorn-gthread": [str(BIN / "gunicorn"), "tests.serverproject.wsgi", "-b", "127.0.0.1:{port}", "-w", "2",
                         "--threads", "8", "--worker-class", "gthread", "--log-level", "warning"],
    "uvicorn": [str(BIN / "uvicorn"), "tests.serverproject.asgi:application", "--host", "127.0.0.1",
                "--port", "{port}", "--workers", "2", "--log-level", "warning"],
    "daphne": [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", "{port}", "-v", "0",
               "tests.serverproject.asgi:application"],
    "runserver": [sys.executable, "-m", "django", "runserver", "127.0.0.1:{port}", "--noreload", "--skip-checks"],
}


@pytest.fixture(params=list(SERVERS))
def server(request, server_db):
    """Each server in turn, started on loopback for one test and stopped after it."""
    server = Server(server_db, SERVERS[request.param]).wait()
    server.name = request.param
    yield server
    server.stop()


def test_server_keeps_every_request_in_its_own_mode(server):
    results = fire(server.port, plan(["/", "/async/"], seed=len(server.name)))
    workers, failures = assert_isolated(results)
    assert failures > REQUESTS // 5
    print(f"\n{server.name}: {len(results)} requests, {failures} raised, {workers} workers seen")


def test_django_test_client_with_interleaved_async_requests(settings):
    from django.test import AsyncClient

    from tests.testapp.models import Lab, Study

    settings.ROOT_URLCONF = "tests.serverproject.urls"
    settings.DEBUG_PROPAGATE_EXCEPTIONS = False
    lab = Lab.objects.create(name="Shared")
    for pk in (1, 2, 3):
        Study.objects.create(pk=pk, name=str(pk), lab=lab)
    requests = plan(["/async/"], seed=7)

    async def run():
        client = AsyncClient(raise_request_exception=False)
        results = []
        for start in range(0, len(requests), 50):  # fifty tasks interleaving at a time
            batch = requests[start:start + 50]
            responses = await asyncio.gather(*(client.get(path) for path, _, _ in batch))
            results += [(req, r.status_code, json.loads(r.content)) for req, r in zip(batch, responses)]
        return results

    assert_isolated(asyncio.run(run()))
    from django.core.management import call_command

    call_command("check_maintained_fields")
    end_other_sessions()


def redis_available():
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["threads", "prefork"])
def celery_worker(request, server_db):
    """A Celery worker on the Redis broker, with each pool in turn."""
    if not redis_available():
        pytest.skip("Celery's broker, Redis, is not running on 127.0.0.1:6379")
    from celery import Celery

    client = Celery(broker=BROKER, backend=BROKER)
    client.connection_for_write().default_channel.client.flushdb()
    worker = Server(server_db, [str(BIN / "celery"), "-A", "tests.serverproject", "worker", "--pool", request.param,
                                "--concurrency", "4", "--loglevel", "WARNING", "--without-gossip",
                                "--without-mingle", "--without-heartbeat"])
    yield client, worker
    worker.stop()


def test_celery_worker_keeps_every_task_in_its_own_mode(celery_worker):
    client, worker = celery_worker
    rng = random.Random(3)
    sent = []
    for _ in range(REQUESTS):
        kind = rng.random()
        if kind < 0.25:
            sent.append(("deferred", client.send_task("tests.serverproject.tasks.load", [rng.randint(1, 3)])))
        elif kind < 0.5:
            sent.append(("disabled", client.send_task("tests.serverproject.tasks.validate", [False])))
        elif kind < 0.75:
            sent.append((None, client.send_task("tests.serverproject.tasks.validate", [True])))
        else:
            sent.append(("immediate", client.send_task("tests.serverproject.tasks.mode")))
    wrong, failed = [], 0
    for expected, result in sent:
        value = result.get(timeout=120, propagate=False)
        if expected is None:
            failed += isinstance(value, ValueError)
            wrong += [] if isinstance(value, ValueError) else [value]
        elif not isinstance(value, dict) or value["seen"] != expected:
            wrong.append((expected, value))
    assert wrong == [], f"{len(wrong)} tasks saw a mode not their own, e.g. {wrong[:3]}\n{worker.output()}"
    assert failed > REQUESTS // 5


# The background mode with a real worker: every write of 2,000 requests under
# gunicorn is recomputed by a worker process, and the columns must converge.
# django-tasks-db's worker runs on PostgreSQL; Celery through
# django-tasks-fennel, on Redis, with the other databases.


def pytest_generate_tests(metafunc):
    if "background" in metafunc.fixturenames:
        from django.conf import settings

        postgres = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
        metafunc.parametrize("background", ["db"] if postgres else ["celery"], indirect=True)


@pytest.fixture
def background(request, monkeypatch):
    """The default mode is background in every process started from here on."""
    if request.param == "celery" and not redis_available():
        pytest.fail("Celery's broker, Redis, is not running on 127.0.0.1:6379")
    monkeypatch.setenv("MAINTAINED_FIELDS_BACKGROUND", request.param)
    return request.param


def queue_empty(kind):
    if kind == "db":
        from django_tasks_db.models import DBTaskResult

        return not DBTaskResult.objects.filter(status__in=["READY", "RUNNING"]).exists()
    from celery import Celery

    with Celery(broker=BROKER).connection_for_write() as broker:
        return broker.default_channel.client.llen("default") == 0


def test_background_mode_converges_with_a_real_worker(background, server_db):
    if background == "celery":
        from celery import Celery

        Celery(broker=BROKER).connection_for_write().default_channel.client.flushdb()
        command = [str(BIN / "celery"), "-A", "tests.serverproject", "worker", "--pool", "threads",
                   "--concurrency", "4", "-Q", "default", "--loglevel", "WARNING", "--without-gossip",
                   "--without-mingle", "--without-heartbeat"]
    else:
        command = [sys.executable, "-m", "django", "db_worker", "--interval", "0.05", "--no-startup-delay"]
    worker = Server(server_db, command)
    server = Server(server_db, SERVERS["gunicorn-gthread"]).wait()
    try:
        rng = random.Random(11)
        requests = []
        for n in range(REQUESTS):
            action = rng.choice(["create", "create", "move", "delete"])
            # Creates make samples 1, 2, ...: moves and deletes pick among them.
            requests.append((f"/write/?action={action}&study={rng.randint(1, 3)}&sample={rng.randint(1, n // 2 + 1)}",
                             200, "background"))
        results = fire(server.port, requests)
        last_request = time.monotonic()
        wrong = [(req, status, body) for req, status, body in results if status != 200 or body["seen"] != "background"]
        assert wrong == [], f"{len(wrong)} writes failed or saw another mode, e.g. {wrong[:3]}\n{server.output()}"
        deadline = last_request + 300
        while True:
            drained = queue_empty(background)
            if drained and django_admin(server_db, "check_maintained_fields", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"no convergence in 300 s (queue drained: {drained})\n{worker.output()}")
            time.sleep(0.5)
        print(f"\nbackground via {background}: {len(results)} writes, right {time.monotonic() - last_request:.1f} s "
              "after the last one")
    finally:
        server.stop()
        worker.stop()

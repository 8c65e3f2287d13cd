#!/usr/bin/env python
"""Request latency of a write endpoint in each mode, and how long the
background mode's worker takes to make the columns right.

    python benchmarks/background.py [--database-url postgres://...] [--requests 1000] [--runs 3]

gunicorn (2 gthread workers x 8 threads) serves tests/serverproject, whose
``/write/`` view creates a sample, moves one to another study or deletes
one, in the default mode, which each run sets: ``disabled`` (the floor),
``immediate``, and ``background`` with a worker beside it: django-tasks-db's
``db_worker`` (``--worker db``) or Celery on Redis through django-tasks-fennel
(``--worker celery``).  A fourth run, ``background, worker after``, starts
the worker only once the last response is in: what the writer itself pays,
as where the worker runs on other cores.  Client threads (8, or
--clients) send the requests on loopback.  Each run starts fresh
processes; runs are interleaved, the order rotated.  The
table gives the median over runs of each run's p50 and p99 latency, the
ratio of p99 to the disabled mode's, and for the background mode the time
from the last response until every study's and the lab's count is right
(convergence).  Needs the ``test`` extra (gunicorn, django-tasks-db).
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Each run kind: the default mode, and for "background, worker after" the same mode with the
# worker started only after the last response (what the writer pays, with no worker beside it).
KINDS = {"disabled": "disabled", "immediate": "immediate", "background": "background",
         "background, worker after": "background"}
CLIENTS = 8


WORKER = "db"  # or "celery": see --worker
NICE = 19  # the worker's niceness: see --worker-nice
BROKER = "redis://127.0.0.1:6379/13"


def environment(url, mode):
    # The worker's backend is installed in every run (django-tasks-db's table
    # is in every database); the default mode is the run's.
    return {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tests.serverproject.settings",
            "PYTHONPATH": str(ROOT), "MAINTAINED_FIELDS_BACKGROUND": WORKER, "MAINTAINED_FIELDS_DEFAULT_MODE": mode,
            "CELERY_BROKER_URL": BROKER}


def manage(url, mode, *args):
    subprocess.run([sys.executable, "-m", "django", *args], env=environment(url, mode), cwd=ROOT, check=True,
                   capture_output=True, text=True, timeout=600)


def start(command, url, mode):
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command, env=environment(url, mode), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    process.log = log
    return process


def output(process):
    process.log.seek(0)
    return process.log.read()[-3000:]


def stop(process):
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(conn, path):
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
    return time.perf_counter() - started, json.loads(body)


def plan(count, seed):
    rng = random.Random(seed)
    return [f"/write/?action={rng.choice(['create', 'create', 'move', 'delete'])}&study={rng.randint(1, 3)}"
            f"&sample={rng.randint(1, n // 2 + 1)}" for n in range(count)]


def fire(port, paths):
    def run(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        timings = [get(conn, path) for path in chunk]
        conn.close()
        return timings

    with ThreadPoolExecutor(CLIENTS) as pool:
        return [timing for chunk in pool.map(run, [paths[i::CLIENTS] for i in range(CLIENTS)]) for timing in chunk]


def right(url):
    """Whether every study's sample_count and the lab's sample_total hold what the rows say."""
    script = (
        "from django.db.models import Count\n"
        "from tests.testapp.models import Lab, Sample, Study\n"
        "counts = dict(Sample.objects.values_list('study').annotate(n=Count('pk')).order_by())\n"
        "ok = all(s.sample_count == counts.get(s.pk, 0) for s in Study.objects.all())\n"
        "labs = dict(Sample.objects.values_list('study__lab').annotate(n=Count('pk')).order_by())\n"
        "ok = ok and all(lab.sample_total == labs.get(lab.pk, 0) for lab in Lab.objects.all())\n"
        "print('yes' if ok else 'no')\n"
    )
    result = subprocess.run([sys.executable, "-c", f"import django; django.setup()\n{script}"],
                            env=environment(url, "disabled"), cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout.strip() == "yes"


def start_worker(url, mode):
    if WORKER == "db":
        return start(["nice", "-n", str(NICE), sys.executable, "-m", "django", "db_worker", "--interval", "0.05",
                      "--no-startup-delay"], url, mode)
    return start(["nice", "-n", str(NICE), str(BIN / "celery"), "-A", "tests.serverproject", "worker",
                  "--pool", "threads", "--concurrency", "4", "-Q", "default", "--loglevel", "WARNING",
                  "--without-gossip", "--without-mingle", "--without-heartbeat"], url, mode)


def one_run(url, kind, requests, seed):
    mode = KINDS[kind]
    manage(url, mode, "flush", "--no-input")
    if WORKER == "celery":
        from celery import Celery

        with Celery(broker=BROKER).connection_for_write() as broker:
            broker.default_channel.client.flushdb()
    manage(url, mode, "loaddata", "servers")
    port = free_port()
    server = start([str(BIN / "gunicorn"), "tests.serverproject.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2",
                    "--threads", "8", "--worker-class", "gthread", "--log-level", "warning"], url, mode)
    worker = start_worker(url, mode) if kind == "background" else None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                get(conn, "/mode/")
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            timings = fire(port, plan(requests, seed))
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{output(server)}") from None
        last = time.perf_counter()
        if kind != mode:
            worker = start_worker(url, mode)
        latencies = sorted(t for t, _ in timings)
        seen = {body["seen"] for _, body in timings}
        assert seen == {mode}, f"the {mode} run saw {seen}"
        converged = None
        if mode == "background":
            while not right(url):
                if time.perf_counter() - last > 600:
                    raise RuntimeError("the background run did not converge in 600 s")
                time.sleep(0.2)
            converged = time.perf_counter() - last
        elif mode == "immediate" and not right(url):
            raise RuntimeError("the immediate run left drift")
        return {"p50": latencies[len(latencies) // 2], "p99": latencies[int(len(latencies) * 0.99)],
                "converged": converged}
    finally:
        stop(server)
        if worker is not None:
            stop(worker)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/mf_bench_background")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", choices=["db", "celery"], default="db",
                        help="the background mode's worker: django-tasks-db, or Celery on Redis (database 13)")
    parser.add_argument("--clients", type=int, default=8,
                        help="client threads sending requests (8 keep the two cores busy; 2 leave them room)")
    parser.add_argument("--worker-nice", type=int, default=19,
                        help="the worker's niceness (nice -n): beside the server on one machine, it should yield")
    args = parser.parse_args()
    global WORKER, NICE, CLIENTS
    WORKER, NICE, CLIENTS = args.worker, args.worker_nice, args.clients
    url = args.database_url
    manage(url, "disabled", "migrate", "--run-syncdb", "--verbosity", "0")
    kinds = list(KINDS)
    results = {kind: [] for kind in kinds}
    for run in range(args.runs):
        for kind in kinds[run % len(kinds):] + kinds[:run % len(kinds)]:
            results[kind].append(one_run(url, kind, args.requests, seed=run))
        print(f"run {run + 1}/{args.runs}: " + ", ".join(
            f"{k} p99 {results[k][-1]['p99'] * 1000:.1f} ms" for k in kinds), flush=True)
    floor = statistics.median(r["p99"] for r in results["disabled"])
    print(f"\n{args.requests} writes per run from {CLIENTS} clients, gunicorn 2 gthread workers x 8 threads, "
          f"{url.split(':', 1)[0]}, worker {WORKER}, median of {args.runs} interleaved runs\n")
    print(f"{'mode':<26} {'p50 ms':>8} {'p99 ms':>8} {'p99 vs disabled':>16} {'converged s':>12}")
    for kind in kinds:
        p50 = statistics.median(r["p50"] for r in results[kind]) * 1000
        p99 = statistics.median(r["p99"] for r in results[kind])
        converged = [r["converged"] for r in results[kind] if r["converged"] is not None]
        after = f"{statistics.median(converged):>12.1f}" if converged else f"{'-':>12}"
        print(f"{kind:<26} {p50:>8.1f} {p99 * 1000:>8.1f} {p99 / floor:>15.2f}x {after}")


if __name__ == "__main__":
    main()

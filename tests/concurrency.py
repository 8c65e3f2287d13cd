"""Concurrent writers: processes that insert, move and delete children of the
same few parents at once.  Used by test_concurrency.py and by
benchmarks/concurrent_writers.py.

A worker is ``python -m tests.concurrency MODE SEED OPERATIONS START_AT``,
run with DATABASE_URL naming the database to write to.
"""

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


def database_url(settings_dict):
    """The URL of the database a connection uses (the test database, in tests)."""
    url = urlsplit(os.environ["DATABASE_URL"])
    return url._replace(path="/" + settings_dict["NAME"]).geturl()


def run_workers(url, mode, *, workers=8, operations=40, lock_rows=True, timeout=240):
    """Run ``workers`` writer processes at once; return their (exit code, output)."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(ROOT),
        "LOCK_ROWS": "1" if lock_rows else "0",
    }
    start_at = time.time() + 3  # every worker set up and connected by then
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.concurrency", mode, str(seed), str(operations), str(start_at)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in range(workers)
    ]
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=timeout)
        results.append((process.returncode, output))
    return results


def work(mode, seed, operations, start_at):
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    from maintained_fields import override_autoupdate
    from tests.testapp.models import Sample, Study

    settings.MAINTAINED_FIELDS = {"LOCK_ROWS": os.environ["LOCK_ROWS"] == "1"}
    rng = random.Random(seed)
    studies = list(Study.objects.order_by("pk").values_list("pk", flat=True))
    mine = []
    connection.ensure_connection()
    time.sleep(max(0, start_at - time.time()))
    done = 0
    while done < operations:
        with override_autoupdate(mode=mode):  # a deferred scope of a few writes
            for _ in range(5 if mode == "deferred" else 1):
                choice = rng.random()
                if choice < 0.5 or not mine:
                    sample = Sample.objects.create(study_id=rng.choice(studies), name=f"w{seed}-{done}")
                    mine.append(sample)
                elif choice < 0.8:
                    sample = rng.choice(mine)
                    sample.study_id = rng.choice(studies)
                    sample.save()
                else:
                    mine.pop(rng.randrange(len(mine))).delete()
                done += 1


if __name__ == "__main__":
    mode, seed, operations, start_at = sys.argv[1:]
    work(mode, int(seed), int(operations), float(start_at))

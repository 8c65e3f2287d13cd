"""Concurrent writers: processes that create, move, reweigh and delete samples
of the same few studies at once.  Used by test_concurrency.py and by
benchmarks/concurrent_writers.py.

A worker is ``python -m tests.concurrency ROLE SEED OPERATIONS START_AT``, run
with DATABASE_URL naming the database to write to.  ROLE is

- ``immediate`` or ``deferred`` (blocks of five writes): each write is, at
  random, 50% a create in a random study, 25% a move of a random sample to a
  random study with save(), 15% a delete, 10% a change of weight;
- ``bulk``: QuerySet.update() moves of a few samples, and bulk_create();
- ``links``: many-to-many adds and removes between the studies and tags;
- ``renames``: renames of the lab and the studies, which flow down to every
  sample's copy of their names (QuerySet.update() and save(), in turn);
- ``plain``: the same writes as ``immediate``, with the package disabled (the
  baseline the benchmark compares with);
- ``vials``: moves of tests.chain's vials between batches, in turn with
  save(), update() of a few and update() of every vial of one batch;
- ``racks``: moves of tests.chain's racks between sites (save(), update())
  and of tubes between racks (save()), and a tube deleted and another
  created, in turn.

Each worker prints one line ``done WRITES SECONDS RETRIES`` when it ends.
A worker exits non-zero when a write fails.
"""

import os
import random
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


def database_url(settings_dict):
    """The URL of the database a connection uses (the test database, in tests)."""
    url = urlsplit(os.environ["DATABASE_URL"])
    return url._replace(path="/" + settings_dict["NAME"]).geturl()


def run_workers(url, roles, *, operations=100, lock_rows=True, isolation=None, timeout=300):
    """Run one writer process per role, all at once; return their (exit code, output)."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(ROOT),
        "LOCK_ROWS": "1" if lock_rows else "0",
        "ISOLATION": isolation or "",
    }
    start_at = time.time() + 3  # every worker set up and connected by then
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.concurrency", role, str(seed), str(operations), str(start_at)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed, role in enumerate(roles)
    ]
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=timeout)
        results.append((process.returncode, output))
    return results


def summary(results):
    """(writes, seconds of the slowest worker, retries, failed workers) of a run."""
    writes = seconds = retries = 0.0
    for _, output in results:
        for line in output.splitlines():
            if line.startswith("done "):
                done, took, retried = line.split()[1:]
                writes += int(done)
                seconds = max(seconds, float(took))
                retries += int(retried)
    return int(writes), seconds, int(retries), sum(code != 0 for code, _ in results)


def work(role, seed, operations, start_at):
    import logging

    import django

    django.setup()
    from django.conf import settings
    from django.db import DatabaseError, connection

    from maintained_fields import override_autoupdate
    from tests.testapp.models import Lab, Sample, Study, Tag

    retries = []

    class CountRetries(logging.Handler):
        def emit(self, record):
            if "retry" in record.getMessage().lower():
                retries.append(record)

    logging.getLogger("maintained_fields").addHandler(CountRetries(logging.WARNING))
    settings.MAINTAINED_FIELDS = {"LOCK_ROWS": os.environ["LOCK_ROWS"] == "1"}
    if os.environ.get("ISOLATION"):
        connection.settings_dict["OPTIONS"] = {
            **connection.settings_dict.get("OPTIONS", {}),
            "isolation_level": _isolation(connection.vendor, os.environ["ISOLATION"]),
        }
    rng = random.Random(seed)
    studies = list(Study.objects.order_by("pk").values_list("pk", flat=True))
    connection.ensure_connection()
    time.sleep(max(0, start_at - time.time()))
    started = time.perf_counter()
    done = 0

    def one_write():
        choice = rng.random()
        if choice < 0.5:
            Sample.objects.create(study_id=rng.choice(studies), name=f"w{seed}-{done}", weight=rng.randint(1, 9))
            return
        sample = Sample.objects.order_by("?").first()
        if sample is None:
            return
        # update_fields: a sample another writer deleted meanwhile is not
        # resurrected (plain save() would insert it again), the write fails.
        try:
            if choice < 0.75:
                sample.study_id = rng.choice(studies)
                sample.save(update_fields=["study"])
            elif choice < 0.9:
                sample.delete()
            else:
                sample.weight = Decimal(rng.randint(1, 9))
                sample.save(update_fields=["weight"])
        except DatabaseError as error:
            if "did not affect any rows" not in str(error):
                raise

    def one_bulk_write():
        if rng.random() < 0.5:
            pks = list(Sample.objects.order_by("?").values_list("pk", flat=True)[:3])
            Sample.objects.filter(pk__in=pks).update(study_id=rng.choice(studies))
        else:
            Sample.objects.bulk_create(
                [Sample(study_id=rng.choice(studies), name=f"b{seed}-{done}-{i}") for i in range(3)]
            )

    tags = list(Tag.objects.order_by("pk"))

    def one_rename():
        name = f"r{seed}-{done}"
        if done % 2:
            Lab.objects.filter(pk=rng.choice(labs)).update(name=name)
        else:
            study = Study.objects.get(pk=rng.choice(studies))
            study.name = name
            study.save()

    labs = list(Lab.objects.order_by("pk").values_list("pk", flat=True))

    def one_link():
        study = Study.objects.get(pk=rng.choice(studies))
        if rng.random() < 0.6:
            study.tags.add(*rng.sample(tags, 2))
        else:
            rng.choice(tags).studies.remove(study)

    if os.environ.get("ISOLATION"):
        # Under REPEATABLE READ and SERIALIZABLE a transaction of the user's
        # own may fail to serialize; the user retries it, as the docs say.
        one_write, one_bulk_write, one_link, one_rename = (
            _retried(write, rng) for write in (one_write, one_bulk_write, one_link, one_rename)
        )

    def one_vial_move():
        from tests.chain.models import Batch, Vial

        batches = list(Batch.objects.order_by("pk").values_list("pk", flat=True))
        if done % 3 == 0:
            vial = Vial.objects.order_by("?").first()
            vial.batch_id = rng.choice(batches)
            vial.save()
        elif done % 3 == 1:
            pks = list(Vial.objects.order_by("?").values_list("pk", flat=True)[:3])
            Vial.objects.filter(pk__in=pks).update(batch_id=rng.choice(batches))
        else:
            # Filtered on the column it writes: rows may join the filter meanwhile.
            source, target = rng.sample(batches, 2)
            Vial.objects.filter(batch_id=source).update(batch_id=target)

    def one_rack_or_tube_move():
        from tests.chain.models import Rack, Site, Tube

        step = done % 4
        if step == 0:
            rack = Rack.objects.order_by("?").first()
            rack.site = rng.choice(list(Site.objects.all()))
            rack.save()
        elif step == 1:
            tube = Tube.objects.order_by("?").first()
            tube.rack = rng.choice(list(Rack.objects.all()))
            tube.save()
        elif step == 2:
            rack = Rack.objects.order_by("?").first()
            Rack.objects.filter(pk=rack.pk).update(site=rng.choice(list(Site.objects.all())))
        else:
            Tube.objects.order_by("?").first().delete()
            Tube.objects.create(rack=rng.choice(list(Rack.objects.all())))

    roles = {
        "bulk": one_bulk_write,
        "links": one_link,
        "renames": one_rename,
        "vials": one_vial_move,
        "racks": one_rack_or_tube_move,
    }
    if role in roles:
        write = roles[role]
        while done < operations:
            write()
            done += 1
    else:
        mode = {"immediate": "immediate", "deferred": "deferred", "plain": "disabled"}[role]
        while done < operations:
            with override_autoupdate(mode=mode):  # a deferred scope of a few writes
                for _ in range(5 if mode == "deferred" else 1):
                    one_write()
                    done += 1
    print(f"done {done} {time.perf_counter() - started:.3f} {len(retries)}", flush=True)


def _retried(write, rng, attempts=100):
    from django.db import OperationalError, transaction

    def run():
        for attempt in range(attempts):
            try:
                with transaction.atomic():
                    return write()
            except OperationalError as error:
                if getattr(error.__cause__, "sqlstate", None) not in ("40001", "40P01") or attempt == attempts - 1:
                    raise
                # Exponential backoff with full jitter: writers that collided
                # spread out instead of colliding again.
                time.sleep(rng.uniform(0, min(0.2, 0.01 * 2**attempt)))

    return run


def _isolation(vendor, name):
    if vendor == "postgresql":
        from psycopg import IsolationLevel

        return getattr(IsolationLevel, name.upper().replace(" ", "_"))
    return name.lower()


if __name__ == "__main__":
    role, seed, operations, start_at = sys.argv[1:]
    work(role, int(seed), int(operations), float(start_at))

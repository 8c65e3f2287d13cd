#!/usr/bin/env python
"""Concurrent writers: throughput, failures, retries and drift, against plain Django.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python benchmarks/concurrent_writers.py
    DATABASE_URL=mysql://root@127.0.0.1:3306/test python benchmarks/concurrent_writers.py

Each run starts writer processes at once (tests/concurrency.py): creates,
moves, deletes and weight changes of samples of three shared studies
("mixed", 8 writers), or creates and moves under one single study ("hot
parent", 16 writers).  The same writes with the package disabled are the
baseline.  Runs are interleaved, round by round; the table gives medians of
writes per second (all writers' writes over the slowest writer's wall-clock
time), their ratio to the baseline of the same rounds, and the totals of
failed writers, retries of the package's own flushes and drifted rows.
Runs in a scratch test database that it creates and drops.
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORKLOADS = {
    "mixed": (8, "abc"),
    "hot parent": (16, "a"),
}
ROLES = ("plain", "immediate", "deferred")


def drifted_rows():
    """Maintained values that differ from what the rows say, counted here."""
    from django.db.models import Count, Sum

    from tests.testapp.models import Lab, Sample, Study

    wrong = 0
    for study in Study.objects.annotate(n=Count("samples"), w=Sum("samples__weight")):
        wrong += (study.sample_count, study.total_weight) != (study.n, study.w or 0)
    for lab in Lab.objects.all():
        wrong += lab.sample_total != Sample.objects.filter(study__lab=lab).count()
    return wrong


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every combination")
    parser.add_argument("--operations", type=int, default=60, help="writes per writer")
    args = parser.parse_args()
    if "DATABASE_URL" not in os.environ:
        sys.exit("Set DATABASE_URL to a PostgreSQL or MariaDB database (see --help).")
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import django

    django.setup()
    from django.db import connection

    from maintained_fields import override_autoupdate
    from tests.concurrency import database_url, run_workers, summary
    from tests.testapp.models import Lab, Sample, Study

    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    results = {}
    try:
        url = database_url(connection.settings_dict)
        for _ in range(args.rounds):
            for workload, (writers, studies) in WORKLOADS.items():
                for role in ROLES:
                    with override_autoupdate(mode="disabled"):
                        Sample.objects.all().delete()
                        Study.objects.all().delete()
                        Lab.objects.all().delete()
                    lab = Lab.objects.create(name="shared")
                    for name in studies:
                        Study.objects.create(name=name, lab=lab)
                    runs = run_workers(url, [role] * writers, operations=args.operations)
                    writes, seconds, retries, failed = summary(runs)
                    drift = drifted_rows() if role != "plain" else 0
                    results.setdefault((workload, role), []).append((writes / seconds, failed, retries, drift))
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)

    print(f"{connection.vendor}, {args.operations} writes per writer, {args.rounds} interleaved rounds\n")
    print(f"{'workload':<11} {'writers':>7} {'mode':<10} {'writes/s':>9} {'ratio':>6} {'failed':>7} "
          f"{'retries':>8} {'drift':>6}")
    for workload, (writers, _) in WORKLOADS.items():
        baseline = statistics.median(r[0] for r in results[workload, "plain"])
        for role in ROLES:
            rows = results[workload, role]
            rate = statistics.median(r[0] for r in rows)
            mode = "no package" if role == "plain" else role
            print(f"{workload:<11} {writers:>7} {mode:<10} {rate:>9.0f} {rate / baseline:>6.2f} "
                  f"{sum(r[1] for r in rows):>7} {sum(r[2] for r in rows):>8} {sum(r[3] for r in rows):>6}")


if __name__ == "__main__":
    main()

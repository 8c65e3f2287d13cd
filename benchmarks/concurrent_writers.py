#!/usr/bin/env python
"""Concurrent writers, with and without row locks.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python benchmarks/concurrent_writers.py
    DATABASE_URL=mysql://root@127.0.0.1:3306/test python benchmarks/concurrent_writers.py

Eight processes insert, move and delete samples of the same three studies at
once, in each mode, with MAINTAINED_FIELDS['LOCK_ROWS'] on and off; the table
gives the maintained values left wrong (drift) and the workers that failed
(deadlocks).  Runs in a scratch test database that it creates and drops.
"""

import argparse
import os
import sys
from io import StringIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each combination")
    parser.add_argument("--operations", type=int, default=40, help="writes per worker")
    args = parser.parse_args()
    if "DATABASE_URL" not in os.environ:
        sys.exit("Set DATABASE_URL to a PostgreSQL or MariaDB database (see --help).")
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import django

    django.setup()
    from django.core.management import CommandError, call_command
    from django.db import connection

    from tests.concurrency import database_url, run_workers
    from tests.testapp.models import Lab, Study

    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        url = database_url(connection.settings_dict)
        print(f"{connection.vendor}, 8 workers x {args.operations} writes, {args.rounds} rounds each\n")
        print(f"{'mode':<10} {'locks':<6} {'drift':>12} {'failed workers':>16}")
        for mode in ("immediate", "deferred"):
            for lock_rows in (False, True):
                drift, failed = [], []
                for _ in range(args.rounds):
                    Lab.objects.all().delete()
                    lab = Lab.objects.create(name="shared")
                    for name in "abc":
                        Study.objects.create(name=name, lab=lab)
                    results = run_workers(url, mode, operations=args.operations, lock_rows=lock_rows)
                    failed.append(sum(code != 0 for code, _ in results))
                    out = StringIO()
                    try:
                        call_command("check_maintained_fields", stdout=out)
                    except CommandError:
                        pass
                    drift.append(len(out.getvalue().splitlines()))
                print(f"{mode:<10} {'on' if lock_rows else 'off':<6} {'/'.join(map(str, drift)):>12} "
                      f"{'/'.join(map(str, failed)):>16}", flush=True)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()

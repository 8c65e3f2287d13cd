#!/usr/bin/env python
"""Mass load: plain Django (the floor) against each autoupdate mode.

    python benchmarks/mass_load.py [--rows 10000] [--runs 5]

Loads the example project's schema (labs > studies > samples, one save() per
row, in one transaction) into an on-disk SQLite database.  Runs are
interleaved, in an order rotated each run, so that noise on a shared machine
hits every variant alike; the table reports medians and their ratios to the
floor measured in the same run.  Times are CPU seconds of this process
(SQLite runs in it), which other jobs on the machine disturb less than
wall-clock time.
"""

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example")]


def setup(directory):
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["maintained_fields", "lab", "benchmarks.floor"],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(directory, "bench.sqlite3")}
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0)


def measure(variant, rows):
    from django.db import connection
    from lab.loading import load
    from lab.models import Lab, Sample, Study

    from benchmarks.floor.models import PlainLab, PlainSample, PlainStudy
    from maintained_fields import override_autoupdate

    schema = (PlainLab, PlainStudy, PlainSample) if variant == "floor" else (Lab, Study, Sample)
    schema[0].objects.all().delete()
    queries = 0

    def count(execute, sql, params, many, context):
        nonlocal queries
        queries += 1
        return execute(sql, params, many, context)

    mode = "disabled" if variant == "floor" else variant
    gc.collect()
    gc.disable()  # as timeit does: collections at arbitrary moments are noise
    try:
        with connection.execute_wrapper(count), override_autoupdate(mode=mode):
            started = time.process_time()
            load(*schema, labs=10, studies=10, samples=rows // 100)
            seconds = time.process_time() - started
    finally:
        gc.enable()
    return seconds, queries


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="samples to load (a multiple of 100)")
    parser.add_argument("--runs", type=int, default=7, help="interleaved runs per variant")
    parser.add_argument("--skip-immediate", action="store_true", help="leave out the slowest variant")
    args = parser.parse_args()
    variants = ["floor", "disabled", "deferred"] + ([] if args.skip_immediate else ["immediate"])
    with tempfile.TemporaryDirectory() as directory:
        setup(directory)
        times = {v: [] for v in variants}
        queries = {}
        for run in range(args.runs):
            # Rotate the order each run so no variant always goes first.
            for variant in variants[run % len(variants):] + variants[: run % len(variants)]:
                seconds, queries[variant] = measure(variant, args.rows)
                times[variant].append(seconds)
            print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in variants), flush=True)
    floor = statistics.median(times["floor"])
    print(f"\n{args.rows} samples, median of {args.runs} interleaved runs, SQLite on disk\n")
    print(f"{'variant':<10} {'CPU s':>9} {'vs floor':>9} {'queries':>9} {'vs floor':>9}")
    for variant in variants:
        median = statistics.median(times[variant])
        print(
            f"{variant:<10} {median:>9.3f} {median / floor:>8.2f}x {queries[variant]:>9} "
            f"{queries[variant] / queries['floor']:>8.2f}x"
        )
    if "immediate" in queries:
        print(f"\ndeferred issues {queries['deferred'] / queries['immediate']:.1%} of immediate's queries")


if __name__ == "__main__":
    main()

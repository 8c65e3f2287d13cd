#!/usr/bin/env python
"""Repair after a load with maintenance off: rebuild_maintained_fields on the
expression-field schema against django-computedfields' updatedata on the same
rows.

    python benchmarks/rebuild.py --database-url postgres://... [--samples 1000000] [--runs 3]

The same rows (--samples samples, 50 per study, 20 studies per lab) are put
into both schemas with plain bulk inserts, every maintained column left at
its default.  Each run resets those columns (untimed), then repairs them in
a fresh process with the garbage collector on; runs are interleaved.  The
table gives medians of wall-clock time, the ratio of the peer's time to each
variant's, queries, and whether the columns hold what the rows say.  Needs
the ``bench`` extra.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example")]

from benchmarks.mass_load import correct, database_settings, empty, measure, schema, setup  # noqa: E402

VARIANTS = {
    "rebuild_maintained_fields": ("expression", ["rebuild_maintained_fields", "expressions", "--verbosity", "0"]),
    # The default before 1 December 2026 on PostgreSQL, which now takes four times BATCH_SIZE keys a batch.
    "rebuild --batch-size 500": (
        "expression", ["rebuild_maintained_fields", "expressions", "--batch-size", "500", "--verbosity", "0"]
    ),
    "peer updatedata": ("peer", ["updatedata", "peer", "--verbosity", "0"]),
}


def fill(samples):
    """Put the same rows in both schemas, every maintained column at its default."""
    from decimal import Decimal

    from django.db import models, transaction

    for name in ("expression", "peer"):
        lab_model, study_model, sample_model = schema(name)
        with transaction.atomic():
            empty((lab_model, study_model, sample_model))
            labs = models.QuerySet(lab_model).bulk_create(
                [lab_model(name=f"Lab {n}") for n in range(samples // 1000)], batch_size=1000
            )
            studies = models.QuerySet(study_model).bulk_create(
                [study_model(lab=lab, name=f"Study {n}") for lab in labs for n in range(20)], batch_size=1000
            )
            for start in range(0, len(studies), 200):
                models.QuerySet(sample_model).bulk_create(
                    [
                        sample_model(study=study, name=f"sample {n}", weight=Decimal(n % 97) / 8)
                        for study in studies[start : start + 200]
                        for n in range(50)
                    ],
                    batch_size=2000,
                )


def analyze():
    """Gather the planner's statistics, as autovacuum would soon after a load:
    without them PostgreSQL misjudges the aggregate subqueries and compiles
    them to machine code (JIT), for both variants alike."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def reset(name):
    from django.db import models

    lab_model, study_model, sample_model = schema(name)
    models.QuerySet(lab_model).update(sample_count=0)
    models.QuerySet(study_model).update(sample_count=0, total_weight=0)
    models.QuerySet(sample_model).update(code="")


def child(variant, database):
    setup(database, peer=True)
    from django.core.management import call_command

    name, command = VARIANTS[variant]
    reset(name)
    measured = measure(lambda: call_command(*command))
    print(json.dumps({**measured, "correct": correct(schema(name))}))


def run_child(variant, database):
    result = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--database", json.dumps(database)],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        sys.exit(f"{variant} failed:\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000, help="samples (a multiple of 1,000)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per variant")
    parser.add_argument("--database-url", default="", help="a PostgreSQL or MariaDB database (default: SQLite)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--fill", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, json.loads(args.database))
    if args.fill:
        setup(json.loads(args.database), peer=True)
        from django.core.management import call_command

        call_command("migrate", run_syncdb=True, verbosity=0)
        fill(args.fill)
        return analyze()
    with tempfile.TemporaryDirectory() as directory:
        database = database_settings(args.database_url, directory)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--fill", str(args.samples), "--database", json.dumps(database)], check=True
        )
        print(f"filled {args.samples} samples per schema in {time.perf_counter() - started:.0f}s")
        results = {variant: [] for variant in VARIANTS}
        for run in range(args.runs):
            for variant in list(VARIANTS)[run % len(VARIANTS) :] + list(VARIANTS)[: run % len(VARIANTS)]:
                results[variant].append(run_child(variant, database))
            print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{v} {results[v][-1]['wall']:.1f}s" for v in VARIANTS))
        peer = statistics.median(r["wall"] for r in results["peer updatedata"])
        where = "SQLite file" if database["ENGINE"].endswith("sqlite3") else database["ENGINE"].rsplit(".", 1)[-1]
        print(f"\n{args.samples} samples, {args.samples // 50} studies, {args.samples // 1000} labs, {where}, "
              f"median of {args.runs} interleaved runs, each in a fresh process\n")
        print(f"{'variant':<28} {'wall s':>8} {'peer/this':>9} {'CPU s':>8} {'queries':>9}  correct")
        for variant in VARIANTS:
            wall = statistics.median(r["wall"] for r in results[variant])
            cpu = statistics.median(r["cpu"] for r in results[variant])
            ok = "yes" if all(r["correct"] for r in results[variant]) else "NO"
            print(f"{variant:<28} {wall:>8.2f} {peer / wall:>8.1f}x {cpu:>8.2f} "
                  f"{results[variant][-1]['queries']:>9}  {ok}")


if __name__ == "__main__":
    main()

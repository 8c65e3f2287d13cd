#!/usr/bin/env python
"""Mass load: plain Django (the floor) against each mode of this package, with
method fields and with expression fields, and django-computedfields (the peer).

    python benchmarks/mass_load.py [--rows 10000] [--runs 5] [--database-url URL]
    python benchmarks/mass_load.py --scaling [--database-url URL]
    python benchmarks/mass_load.py --database-url postgres://... --server-side-binding
    python benchmarks/mass_load.py --instructions --variants deferred disabled

A loader saves labs > studies > samples one by one in one transaction (the
example project's schema, example/lab/loading.py), in four copies of the
schema: plain models, method fields, expression fields (maintained()) and
django-computedfields.  Their tables' names are alike in length (see
benchmarks/floor/models.py).  Every measurement runs in a fresh process with the
garbage collector on, from a collected heap; runs are interleaved, in an order rotated each run, so
that noise on a shared machine hits every variant alike.  The table gives
medians of wall-clock time (CPU time of the loading process beside it), the
ratio to the floor measured in the same run, queries, and whether the loaded
columns hold what the rows say (counted by the benchmark itself).  The
"by hand" rows are the floor's loader keeping the columns itself, with the
example methods' queries, after every save (immediate) or once the load has
committed (deferred; benchmarks/floor/by_hand.py): what the same maintenance
costs in plain Django, package or not.

SQLite runs in a file in a temporary directory; --database-url names a
PostgreSQL or MariaDB database to use instead (its tables are created and
emptied).  --scaling loads 1,000, 10,000 and 100,000 samples in deferred mode
and prints the time per row.  The peer needs the ``bench`` extra.

--instructions counts, instead of timing, the machine instructions each
variant's load executes on SQLite, under valgrind's callgrind: the count
of a process that loads, less that of one that only sets up.  The count is
the same from run to run whatever else the machine does, so it tells
whether a change made the work smaller on a machine too noisy to time it;
it is not what users see (a cache miss costs more than an instruction), so
it stands beside the wall-clock table, never instead of it.  Under
valgrind a load runs about fifty times slower: leave out the peer's default
mode (--variants).
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example")]

# variant: (schema, how it loads)
VARIANTS = {
    "floor": ("plain", None),
    "by hand immediate": ("plain", "at once"),
    "by hand deferred": ("plain", "then update"),
    "method disabled": ("method", "disabled"),
    "method deferred": ("method", "deferred"),
    "method immediate": ("method", "immediate"),
    "expression disabled": ("expression", "disabled"),
    "expression deferred": ("expression", "deferred"),
    "expression immediate": ("expression", "immediate"),
    "peer default": ("peer", "default"),
    "peer not_computed(recover)": ("peer", "recover"),
}


def has_peer():
    try:
        import computedfields  # noqa: F401
    except ImportError:
        return False
    return True


def setup(database, peer=True):
    """Configure Django for a child process, on ``database`` (a settings dict).

    The peer is installed only where it is measured (``peer``): its signal
    receivers run on every model's save, the floor's too.
    """
    import django
    from django.conf import settings

    apps = ["maintained_fields", "lab", "benchmarks.floor", "benchmarks.expressions"]
    if peer and has_peer():
        apps = ["django.contrib.contenttypes", "computedfields", *apps, "benchmarks.peer"]
    settings.configure(
        INSTALLED_APPS=apps,
        DATABASES={"default": database},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
        SILENCED_SYSTEM_CHECKS=["computedfields.W001"],
    )
    django.setup()


def schema(name):
    if name == "plain":
        from benchmarks.floor.models import PlainLab, PlainSample, PlainStudy

        return PlainLab, PlainStudy, PlainSample
    if name == "method":
        from lab.models import Lab, Sample, Study

        return Lab, Study, Sample
    if name == "expression":
        from benchmarks.expressions.models import ExprLab, ExprSample, ExprStudy

        return ExprLab, ExprStudy, ExprSample
    from benchmarks.peer.models import PeerLab, PeerSample, PeerStudy

    return PeerLab, PeerStudy, PeerSample


def empty(models):
    from django.db import connection

    with connection.cursor() as cursor:
        for model in reversed(models):
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)}")


def correct(models):
    """Whether every maintained column holds what the rows say, counted here."""
    from django.db.models import Count, Sum

    lab_model, study_model, sample_model = models
    samples = sample_model._base_manager
    counts = dict(samples.values_list("study").annotate(n=Count("pk")).order_by())
    weights = dict(samples.values_list("study").annotate(w=Sum("weight")).order_by())
    for study in study_model._base_manager.values("pk", "lab", "sample_count", "total_weight"):
        if (study["sample_count"], study["total_weight"]) != (counts.get(study["pk"], 0), weights.get(study["pk"], 0)):
            return False
    per_lab = dict(samples.values_list("study__lab").annotate(n=Count("pk")).order_by())
    if any(n != per_lab.get(pk, 0) for pk, n in lab_model._base_manager.values_list("pk", "sample_count")):
        return False
    return all(code == name.upper().replace(" ", "-") for name, code in samples.values_list("name", "code"))


def child(variant, rows, database, per_study, load_rows=True, check=True):
    """Load ``rows`` samples as ``variant`` says, ``per_study`` to a study and
    20 studies to a lab; print what was measured, as JSON.  Without
    ``load_rows``, set up the same way and load nothing; without ``check``,
    do not count what the columns should hold."""
    setup(database, peer=variant.startswith("peer"))
    from contextlib import nullcontext

    from lab.loading import load

    from maintained_fields import override_autoupdate

    schema_name, how = VARIANTS[variant]
    models = schema(schema_name)
    empty(models)
    if schema_name == "plain" and how:
        from benchmarks.floor import by_hand

        load = by_hand.load_at_once if how == "at once" else by_hand.load_then_update
        context = nullcontext()
    elif schema_name == "peer":
        from computedfields.models import not_computed

        context = not_computed(recover=True) if how == "recover" else nullcontext()
    else:
        context = override_autoupdate(mode=how or "disabled")
    def work():
        with context:  # a deferred scope's flush is part of the load
            load(*models, labs=rows // (20 * per_study), studies=20, samples=per_study)

    measured = measure(work if load_rows else lambda: None)
    verdict = correct(models) if check and how not in (None, "disabled") else None
    print(json.dumps({**measured, "correct": verdict}))


def measure(work):
    """Run ``work()``: its wall-clock and CPU seconds, and the queries it ran."""
    from django.db import connection

    queries = 0

    def count(execute, sql, params, many, context):
        nonlocal queries
        queries += 1
        return execute(sql, params, many, context)

    # Each measurement starts from a collected heap, the collector on:
    # otherwise the first full collection of the setup's objects (15-60 ms)
    # falls in whichever variant allocates past its threshold, never in the floor.
    gc.collect()
    with connection.execute_wrapper(count):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall": wall, "cpu": cpu, "queries": queries}


def database_settings(url, directory):
    if not url:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(directory, "bench.sqlite3")}
    import dj_database_url

    return dj_database_url.parse(url)


def run_child(variant, rows, database, per_study=None, options=(), prefix=()):
    """Measure ``variant`` in a fresh process; by default 10 labs of 20 studies share the ``rows``."""
    per_study = per_study or rows // 200
    result = subprocess.run(
        [*prefix, sys.executable, __file__, "--child", variant, "--rows", str(rows), "--per-study", str(per_study),
         "--database", json.dumps(database), *options],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        sys.exit(f"{variant} failed:\n{result.stderr}")
    return {**json.loads(result.stdout.splitlines()[-1]), "stderr": result.stderr}


def instructions(args, database):
    """Instructions each variant's load executes (callgrind), against the floor's."""
    if not database["ENGINE"].endswith("sqlite3"):
        sys.exit("--instructions counts this process's instructions: it measures SQLite only.")
    variants = [v for v in VARIANTS if has_peer() or not v.startswith("peer")]
    if args.variants:
        variants = ["floor", *(v for v in variants if v != "floor" and any(w in v for w in args.variants))]
    valgrind = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
    counted = {}
    for variant in variants:
        loaded, set_up = (
            run_child(variant, args.rows, database, options=options, prefix=valgrind)
            for options in (("--no-check",), ("--no-check", "--no-load"))
        )
        collected = [int(r["stderr"].rsplit("Collected : ", 1)[1].split()[0]) for r in (loaded, set_up)]
        counted[variant] = (collected[0] - collected[1], loaded["queries"])
        print(f"{variant}: {counted[variant][0] / 1e6:,.0f} million instructions", flush=True)
    floor = counted["floor"][0]
    print(f"\n{args.rows} samples ({args.rows // 200} per study, 20 studies per lab, 10 labs), SQLite file, "
          "instructions of the load (callgrind), one run each\n")
    print(f"{'variant':<28} {'millions':>9} {'vs floor':>9} {'queries':>9}")
    for variant, (count, queries) in counted.items():
        print(f"{variant:<28} {count / 1e6:>9,.0f} {count / floor:>8.3f}x {queries:>9}")


def create_tables(database):
    subprocess.run([sys.executable, __file__, "--create", "--database", json.dumps(database)], check=True)


def compare(args, database):
    variants = [v for v in VARIANTS if has_peer() or not v.startswith("peer")]
    if args.variants:
        variants = ["floor", *(v for v in variants if v != "floor" and any(w in v for w in args.variants))]
    results = {v: [] for v in variants}
    for run in range(args.runs):
        # Rotate the order each run so no variant always goes first.
        for variant in variants[run % len(variants) :] + variants[: run % len(variants)]:
            results[variant].append(run_child(variant, args.rows, database))
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{v} {results[v][-1]['wall']:.2f}s" for v in variants))
    floor = statistics.median(r["wall"] for r in results["floor"])
    where = "SQLite file" if database["ENGINE"].endswith("sqlite3") else database["ENGINE"].rsplit(".", 1)[-1]
    print(f"\n{args.rows} samples ({args.rows // 200} per study, 20 studies per lab, 10 labs), {where}, "
          f"median of {args.runs} interleaved runs, each in a fresh process\n")
    print(f"{'variant':<28} {'wall s':>8} {'vs floor':>9} {'CPU s':>8} {'queries':>9} {'per row':>8}  correct")
    for variant in variants:
        wall = statistics.median(r["wall"] for r in results[variant])
        cpu = statistics.median(r["cpu"] for r in results[variant])
        queries = results[variant][-1]["queries"]
        checks = {r["correct"] for r in results[variant]}
        verdict = "n/a" if checks == {None} else ("yes" if checks == {True} else "NO")
        print(f"{variant:<28} {wall:>8.2f} {wall / floor:>8.2f}x {cpu:>8.2f} {queries:>9} "
              f"{queries / args.rows:>8.2f}  {verdict}")


def scaling(args, database):
    """Deferred loads of 1,000, 10,000 and 100,000 samples of one shape (50
    samples to a study, 20 studies to a lab, so 21, 210 and 2,100 parents):
    time per sample, and the ratio to the floor at the same size."""
    sizes = [1_000, 10_000, 100_000]
    variants = ["floor", "method deferred", "expression deferred"]
    results = {(v, n): [] for v in variants for n in sizes}
    for run in range(args.runs):
        for rows in sizes:
            for variant in variants[run % len(variants) :] + variants[: run % len(variants)]:
                results[variant, rows].append(run_child(variant, rows, database, per_study=50))
        print(f"run {run + 1}/{args.runs} done", flush=True)
    wall = {key: statistics.median(r["wall"] for r in found) for key, found in results.items()}
    print(f"\nWall-clock microseconds per sample, and the ratio to the floor, median of {args.runs} runs\n")
    print(f"{'variant':<22}" + "".join(f"{n:>10,}" for n in sizes) + "".join(f"{n:>10,}" for n in sizes) + "  correct")
    for variant in variants:
        per_row = [wall[variant, n] / n * 1e6 for n in sizes]
        ratios = [wall[variant, n] / wall["floor", n] for n in sizes]
        checks = {r["correct"] for n in sizes for r in results[variant, n]}
        ok = "n/a" if checks == {None} else ("yes" if checks == {True} else "NO")
        print(f"{variant:<22}" + "".join(f"{t:>10.1f}" for t in per_row) + "".join(f"{x:>9.2f}x" for x in ratios)
              + f"  {ok}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="samples to load (a multiple of 200)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs per variant")
    parser.add_argument("--database-url", default="", help="a PostgreSQL or MariaDB database (default: SQLite)")
    parser.add_argument("--variants", nargs="*", help="only variants containing these words (and the floor)")
    parser.add_argument("--scaling", action="store_true", help="time per row of deferred loads at three sizes")
    parser.add_argument("--server-side-binding", action="store_true",
                        help="PostgreSQL: OPTIONS server_side_binding, so psycopg prepares repeated statements")
    parser.add_argument("--instructions", action="store_true",
                        help="SQLite: count each load's instructions under valgrind instead of timing it")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--per-study", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--create", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--no-load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.create:
        database = json.loads(args.database)
        if args.child:
            return child(args.child, args.rows, database, args.per_study, not args.no_load, not args.no_check)
        setup(database)
        from django.core.management import call_command

        return call_command("migrate", run_syncdb=True, verbosity=0)
    with tempfile.TemporaryDirectory() as directory:
        database = database_settings(args.database_url, directory)
        if args.server_side_binding:
            database.setdefault("OPTIONS", {})["server_side_binding"] = True
        create_tables(database)
        (scaling if args.scaling else instructions if args.instructions else compare)(args, database)


if __name__ == "__main__":
    main()

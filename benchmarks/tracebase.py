#!/usr/bin/env python
"""TraceBase's schema and example studies (the example project's tracebase
app): loading in each mode, and the edits that made TraceBase's own
maintenance slow, against a full rebuild.

    python benchmarks/tracebase.py [--copies 1] [--runs 3] [--only loads|edits]

Loads: the compounds study, then every other example study ``--copies``
times (the copies under renamed animals and samples), with
load_tracebase_study's loader in each mode; time, queries, rows recomputed
(as the package's log counts them: rows recomputed after writes, not a
row's own fields computed before its write) and whether every maintained
column is right afterwards (disabled: not expected).  The background mode
runs its tasks on django-tasks' ImmediateBackend, in the loading process,
after the commit.

Edits, each in immediate mode on the data loaded in deferred mode, against
rebuild_maintained_fields of the whole app: deleting the last serum
PeakGroup of an animal with four serum samples (its FCirc.is_last), moving
that serum sample to another tissue (is_serum_sample, last_serum_sample,
is_last), relabelling the nitrogen of valine-[13C5,15N1] (tracer and
infusate names), renaming valine (two tracers, two infusates).

Every measurement runs in a fresh process on a copy of a SQLite file made
once; runs are interleaved, the order rotated each run; the table gives
medians of wall-clock time.
"""

import argparse
import json
import logging
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example")]
DATA = ROOT / "example" / "tracebase" / "data" / "examples"
COMPOUNDS = "compounds_tissues_treatments_lcprotocols"
STUDIES = [
    "obob_fasted",
    "obob_fasted_glc_lac_gln_ala_multiple_labels",
    "obob_fasted_ace_glycerol_3hb_citrate_eaa_fa_multiple_tracers",
    "13C_Valine_and_PI3Ki_in_flank_KPC_mice",
]
MODES = ["immediate", "deferred", "disabled", "background"]
EDITS = ["delete serum PeakGroup", "change sample tissue", "relabel TracerLabel", "rename compound", "full rebuild"]


def setup(path):
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django_tasks", "maintained_fields", "tracebase"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
        TASKS={"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}},
    )
    django.setup()


class Recomputed(logging.Handler):
    """Sums the rows the package's log lines say were recomputed."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.rows = 0

    def emit(self, record):
        found = re.search(r"recomputed (\d+) row", record.getMessage())
        if found:
            self.rows += int(found[1])


def measure(work):
    """mass_load's measure(), with the rows the package recomputed (from its log)."""
    from benchmarks.mass_load import measure as measure_work

    handler = Recomputed()
    logger = logging.getLogger("maintained_fields")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        measured = measure_work(work)
    finally:
        logger.removeHandler(handler)
    return {**measured, "recomputed": handler.rows}


def load_all(copies, mode):
    from tracebase.loading import load_study

    for copy in range(copies):
        for study in STUDIES:
            load_study(DATA / study, mode=mode, suffix=f"_c{copy}" if copy else "")


def right():
    """Whether check_maintained_fields finds nothing."""
    from io import StringIO

    from django.core.management import CommandError, call_command

    try:
        call_command("check_maintained_fields", "tracebase", stdout=StringIO())
    except CommandError:
        return False
    return True


def edit(name):
    """Run one edit; the rows it acts on are chosen before the clock starts."""
    from django.core.management import call_command
    from tracebase.models import Compound, PeakGroup, Sample, Tissue, TracerLabel

    from maintained_fields import override_autoupdate

    if name == "full rebuild":
        return lambda: call_command("rebuild_maintained_fields", "tracebase", verbosity=0)
    # The first copy's animal demo_a146 (13C-valine study): four serum samples, the last at 120 min.
    if name == "delete serum PeakGroup":
        group = PeakGroup.objects.get(msrun_sample__sample__name="demo_t120_a146", name="valine")
        work = group.delete
    elif name == "change sample tissue":
        sample = Sample.objects.get(name="demo_t120_a146")
        brain = Tissue.objects.get(name="brain")

        def work():
            sample.tissue = brain
            sample.save()
    elif name == "relabel TracerLabel":
        label = TracerLabel.objects.get(tracer__name="valine-[13C5,15N1]", element="N")

        def work():
            label.mass_number = 14
            label.save()
    else:  # valine: the compound of two tracers, in two infusates
        compound = Compound.objects.get(name="valine")

        def work():
            compound.name = "L-valine"
            compound.save()

    def in_immediate_mode():
        with override_autoupdate(mode="immediate"):
            work()

    return in_immediate_mode


def child(args):
    setup(args.database)
    from django.core.management import call_command

    if args.child == "create":
        call_command("migrate", verbosity=0)
        from tracebase.loading import load_study

        load_study(DATA / COMPOUNDS)
        return
    if args.child == "template":
        load_all(args.copies, "deferred")
        return
    if args.child.startswith("load "):
        mode = args.child.split(" ", 1)[1]
        result = measure(lambda: load_all(args.copies, mode))
        result["right"] = None if mode == "disabled" else right()
    else:
        result = measure(edit(args.child))
        result["right"] = right()
    from tracebase.models import FCirc, PeakGroup, Sample

    result["rows"] = {"samples": Sample.objects.count(), "peak groups": PeakGroup.objects.count(),
                      "fcircs": FCirc.objects.count()}  # fmt: skip
    print(json.dumps(result))


def run_child(variant, database, copies):
    done = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--database", str(database), "--copies", str(copies)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"{variant} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1]) if done.stdout.strip() else None


def table(title, variants, results, runs):
    print(f"\n{title}, median of {runs} interleaved runs, each in a fresh process\n")
    print(f"{'':<26} {'wall s':>8} {'queries':>9} {'recomputed':>11}  right")
    for variant in variants:
        found = results[variant]
        wall = statistics.median(r["wall"] for r in found)
        verdict = {r["right"] for r in found}
        verdict = "n/a" if verdict == {None} else ("yes" if verdict == {True} else "NO")
        print(f"{variant:<26} {wall:>8.3f} {found[-1]['queries']:>9} {found[-1]['recomputed']:>11}  {verdict}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=1, help="load each example study this many times")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per variant")
    parser.add_argument("--only", choices=["loads", "edits"], help="measure only the loads or only the edits")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        empty, loaded, work = directory / "empty.sqlite3", directory / "loaded.sqlite3", directory / "run.sqlite3"
        run_child("create", empty, args.copies)
        groups = []
        if args.only != "edits":
            groups.append(("loads", [f"load {mode}" for mode in MODES], empty))
        if args.only != "loads":
            shutil.copy(empty, loaded)
            run_child("template", loaded, args.copies)
            groups.append(("edits", EDITS, loaded))
        for name, variants, template in groups:
            results = {v: [] for v in variants}
            for run in range(args.runs):
                for variant in variants[run % len(variants) :] + variants[: run % len(variants)]:
                    shutil.copy(template, work)
                    results[variant].append(run_child(variant, work, args.copies))
                print(f"{name} run {run + 1}/{args.runs}: "
                      + ", ".join(f"{v} {results[v][-1]['wall']:.2f}s" for v in variants), flush=True)  # fmt: skip
            rows = results[variants[0]][-1]["rows"]
            size = ", ".join(f"{n} {what}" for what, n in rows.items())
            title = f"{name.capitalize()}: the example studies x {args.copies} ({size}), SQLite file"
            table(title, variants, results, args.runs)


if __name__ == "__main__":
    main()

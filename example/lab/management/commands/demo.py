"""Load the same rows in each mode and show time, queries and correctness."""

import time
from io import StringIO

from django.core.management import BaseCommand, CommandError, call_command
from django.db import connection

from lab.loading import load
from lab.models import Lab, Sample, Study
from maintained_fields import override_autoupdate


class QueryCounter:
    def __init__(self):
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)


def stale_values():
    out = StringIO()
    try:
        call_command("check_maintained_fields", stdout=out)
    except CommandError:
        pass
    return len(out.getvalue().splitlines())


class Command(BaseCommand):
    help = "Mass-load a few thousand rows in each autoupdate mode and compare."

    def add_arguments(self, parser):
        parser.add_argument("--samples", type=int, default=100, help="Samples per study (3 labs x 10 studies).")

    def handle(self, *args, samples, **options):
        call_command("migrate", verbosity=0)
        self.stdout.write(f"{'mode':<10} {'rows':>6} {'seconds':>8} {'queries':>8}  maintained values")
        for mode in ("immediate", "deferred", "disabled"):
            Lab.objects.all().delete()
            counter = QueryCounter()
            started = time.perf_counter()
            with connection.execute_wrapper(counter), override_autoupdate(mode=mode):
                rows = load(Lab, Study, Sample, samples=samples)
            seconds = time.perf_counter() - started
            stale = stale_values()
            verdict = "all right" if not stale else f"{stale} stale (expected: nothing was maintained)"
            self.stdout.write(f"{mode:<10} {rows:>6} {seconds:>8.2f} {counter.count:>8}  {verdict}")
        call_command("rebuild_maintained_fields", verbosity=0)
        stale = stale_values()
        self.stdout.write(f"\nAfter rebuild_maintained_fields: {'all right' if not stale else f'{stale} stale'}.")
        if stale:
            raise CommandError("The demo found stale values after a rebuild.")

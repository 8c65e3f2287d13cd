from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS, models
from tqdm import tqdm

from ...conf import get_config
from ...propagation import process, recompute_records
from ...writes import batches
from ._selection import add_selection_arguments, selected_groups


class Command(BaseCommand):
    help = (
        "Recompute maintained fields on every row (or the rows of the named apps "
        "and models), in batches, and update what depends on the values that change."
    )

    def add_arguments(self, parser: Any) -> None:
        add_selection_arguments(parser)

    def handle(self, *args: Any, targets: list[str], labels: list[str] | None, **options: Any) -> None:
        size = get_config()["BATCH_SIZE"]
        label_filter = frozenset(labels) if labels else None
        rows = 0
        # tqdm redraws its line with carriage returns: no newline after each write.
        self.stderr.ending = ""
        try:
            for model, specs in selected_groups(targets, labels):
                rows += self._rebuild(model, specs, label_filter, size, options["verbosity"])
        finally:
            self.stderr.ending = "\n"
        if options["verbosity"]:
            self.stdout.write(f"Recomputed maintained fields on {rows} row(s).")

    def _rebuild(self, model: type, specs: tuple, labels: frozenset[str] | None, size: int, verbosity: int) -> int:
        pks = models.QuerySet(model, using=DEFAULT_DB_ALIAS).values_list("pk", flat=True)
        names = ", ".join(spec.field.name for spec in specs)
        rows = 0
        with tqdm(
            total=pks.count(),
            desc=f"{model._meta.label} ({names})",
            unit="rows",
            file=self.stderr,
            disable=True if verbosity == 0 else None,  # None: shown on a terminal only
        ) as progress:
            for batch in batches(pks, size):
                process(DEFAULT_DB_ALIAS, labels, recompute_records(specs, batch))
                progress.update(len(batch))
                rows += len(batch)
        return rows

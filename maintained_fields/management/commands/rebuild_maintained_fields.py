from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand
from django.db import models
from tqdm import tqdm

from ...conf import get_config
from ...graph import Spec
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

    def handle(
        self,
        *args: Any,
        targets: list[str],
        labels: list[str] | None,
        database: str,
        batch_size: int | None,
        verbosity: int,
        **options: Any,
    ) -> None:
        size = batch_size or get_config()["BATCH_SIZE"]
        label_filter = frozenset(labels) if labels else None
        rows = 0
        # tqdm redraws its line with carriage returns: no newline after each write.
        self.stderr.ending = ""
        try:
            for model, specs in selected_groups(targets, labels):
                pks = models.QuerySet(model, using=database).values_list("pk", flat=True)
                with tqdm(
                    total=pks.count(),
                    desc=f"{model._meta.label} ({', '.join(spec.field.name for spec in specs)})",
                    unit="rows",
                    file=self.stderr,
                    disable=True if verbosity == 0 else None,  # None: shown on a terminal only
                ) as progress:
                    for batch in batches(pks, size):
                        self._rebuild(database, label_filter, specs, batch, size)
                        progress.update(len(batch))
                        rows += len(batch)
        finally:
            self.stderr.ending = "\n"
        if verbosity:
            self.stdout.write(f"Recomputed maintained fields on {rows} row(s).")

    def _rebuild(
        self, database: str, labels: frozenset[str] | None, specs: tuple[Spec, ...], pks: list[Any], size: int
    ) -> None:
        records = recompute_records(specs, pks)
        process(database, labels, records, batch_size=size, level=logging.INFO)

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.management.base import BaseCommand
from django.db import models, transaction
from tqdm import tqdm

from ...conf import get_config
from ...graph import Spec, get_graph
from ...propagation import Records, merge, process, records_for
from ...writes import lock, locking, recompute
from ._selection import add_selection_arguments, selected_groups

logger = logging.getLogger("maintained_fields")


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
        groups = list(selected_groups(targets, labels))
        selected = {spec for _, specs in groups for spec in specs}
        # What the changes lead to outside the selection, recomputed once at
        # the end; inside it, each row is recomputed once, in its own group.
        downstream: Records = {}
        # tqdm redraws its line with carriage returns: no newline after each write.
        self.stderr.ending = ""
        try:
            for model, specs in groups:
                pks: models.QuerySet[Any, Any] = models.QuerySet(model, using=database).values_list("pk", flat=True)
                with tqdm(
                    total=pks.count(),
                    desc=f"{model._meta.label} ({', '.join(spec.field.name for spec in specs)})",
                    unit="rows",
                    file=self.stderr,
                    disable=True if verbosity == 0 else None,  # None: shown on a terminal only
                ) as progress:
                    started, changed, group_rows = time.perf_counter(), 0, 0
                    last = None
                    while True:
                        # Each batch is read, locked and recomputed in a
                        # transaction of its own: the page query takes the locks.
                        with transaction.atomic(using=database):
                            page = pks.order_by("pk") if last is None else pks.order_by("pk").filter(pk__gt=last)
                            if locking(database):
                                page = lock(page)
                            batch = list(page[:size])
                            if not batch:
                                break
                            changed += self._rebuild(database, label_filter, specs, batch, size, selected, downstream)
                        last = batch[-1]
                        progress.update(len(batch))
                        group_rows += len(batch)
                    rows += group_rows
                    logger.info(
                        "Rebuilt %s (%s) on %r: recomputed %d row(s), %d changed, in %.3fs.",
                        model._meta.label,
                        ", ".join(spec.field.name for spec in specs),
                        database,
                        group_rows,
                        changed,
                        time.perf_counter() - started,
                    )
            if downstream:
                process(database, label_filter, downstream, batch_size=size, level=logging.INFO)
        finally:
            self.stderr.ending = "\n"
        if verbosity:
            self.stdout.write(f"Recomputed maintained fields on {rows} row(s).")

    def _rebuild(
        self,
        database: str,
        labels: frozenset[str] | None,
        specs: tuple[Spec, ...],
        pks: list[Any],
        size: int,
        selected: set[Spec],
        downstream: Records,
    ) -> int:
        """Recompute ``specs`` on the rows ``pks``, locked already; add what their changes lead
        to outside ``selected`` to ``downstream``; return how many changed."""
        model = specs[0].model
        changed = recompute(model, {pk: set(specs) for pk in pks}, database, size, locked=True)
        node = get_graph().nodes[model]
        if all(dep.spec in selected for dep, _ in node.edges):
            return len(changed)  # what the changes lead to is rebuilt in its own group
        for instance, old in changed:
            records = records_for(node, instance, labels=labels, changed=frozenset(old), old=old)
            merge(downstream, {key: found for key, found in records.items() if key[0].spec not in selected})
        return len(changed)

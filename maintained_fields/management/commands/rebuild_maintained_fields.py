from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand
from django.db import connections, models, transaction
from tqdm import tqdm

from ...conf import get_config
from ...graph import Spec, get_graph
from ...propagation import FLUSH_RETRIES, Records, merge, process_retrying, records_for, retrying
from ...writes import dry_run as rolled_back
from ...writes import in_users_transaction, keys, lock, locking, recompute
from ._selection import add_selection_arguments, drift_entry, drift_line, selected_groups

logger = logging.getLogger("maintained_fields")


class Command(BaseCommand):
    help = (
        "Recompute maintained fields on every row (or the rows of the named apps "
        "and models), in batches, and update what depends on the values that change."
    )

    def add_arguments(self, parser: Any) -> None:
        add_selection_arguments(parser)
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="List the values the rebuild would change, as check_maintained_fields --deep does, "
            "and keep none: the rebuild runs in a transaction that is rolled back.",
        )

    def handle(
        self,
        *args: Any,
        targets: list[str],
        labels: list[str] | None,
        database: str,
        batch_size: int | None,
        dry_run: bool,
        verbosity: int,
        **options: Any,
    ) -> None:
        groups = list(selected_groups(targets, labels))
        # The bar goes to the stream under self.stderr: written through it, it
        # would take the error style (bold red on a terminal) and a newline.
        stream = cast(TextIO, self.stderr._out)
        bars = stream if verbosity > 0 and _is_terminal(stream) else None
        if dry_run:
            drift = would_change(groups, labels, database, batch_size, bars)
            for found in drift:
                self.stdout.write(drift_line(found))
            if verbosity:
                self.stdout.write(f"{len(drift)} maintained value(s) would change; nothing was written.")
            return
        rows = rebuild(groups, labels, database, batch_size, bars)
        if verbosity:
            counts = ", ".join(f"{label} {count}" for label, count in rows.items() if count)
            detail = f" ({counts})" if counts else ""
            self.stdout.write(f"Recomputed maintained fields on {sum(rows.values())} row(s){detail}.")


def would_change(
    groups: list[tuple[type[models.Model], tuple[Spec, ...]]],
    labels: list[str] | None,
    database: str,
    batch_size: int | None,
    bars: TextIO | None = None,
) -> list[dict[str, Any]]:
    """What :func:`rebuild` would change, each value as check_maintained_fields
    reports it; nothing is kept (see :func:`~maintained_fields.writes.dry_run`)."""
    with rolled_back(database) as changes:
        rebuild(groups, labels, database, batch_size, bars)
    return [drift_entry(*key, *values) for key, values in changes.items()]


def rebuild(
    groups: list[tuple[type[models.Model], tuple[Spec, ...]]],
    labels: list[str] | None,
    database: str,
    batch_size: int | None,
    bars: TextIO | None = None,
) -> dict[str, int]:
    """Recompute the fields of ``groups`` (from :func:`selected_groups`) on every row, each
    group in batches, then what their changes lead to outside them; with a progress bar
    on the terminal ``bars``.  Returns the rows recomputed in each model, by label."""
    size = batch_size or get_config()["BATCH_SIZE"]
    if batch_size is None and connections[database].vendor == "postgresql":
        # Each batch is a transaction, whose commit waits for the disk, and
        # PostgreSQL takes its keys as one array, whatever their number.
        size *= 4
    label_filter = frozenset(labels) if labels else None
    # Rows per model: a model whose fields come in several groups is read
    # whole by each, and its rows count once.
    rows: dict[str, int] = {}
    selected = {spec for _, specs in groups for spec in specs}
    # What the changes lead to outside the selection, recomputed once at
    # the end; inside it, each row is recomputed once, in its own group.
    downstream: Records = {}
    with logging_above(bars) if bars else nullcontext():
        for model, specs in groups:
            pks: models.QuerySet[Any, Any] = models.QuerySet(model, using=database).values_list("pk", flat=True)
            with tqdm(
                total=pks.count(),
                desc=f"{model._meta.label} ({', '.join(spec.field.name for spec in specs)})",
                unit="rows",
                file=bars,
                disable=bars is None,
            ) as progress:
                started, changed, group_rows = time.perf_counter(), 0, 0
                last, what = None, f"A rebuild of {model._meta.label}"
                while True:
                    # Each batch is a transaction of its own, retried after a
                    # deadlock with concurrent writers as a flush is: it
                    # recomputes from the rows as they are.
                    work = partial(_batch, database, label_filter, specs, last, size, selected, downstream)
                    if in_users_transaction(database):
                        batch, count = work()
                    else:
                        batch, count = retrying(database, what, work, attempts=FLUSH_RETRIES)
                    if not batch:
                        break
                    changed += count
                    last = batch[-1]
                    progress.update(len(batch))
                    group_rows += len(batch)
            rows[model._meta.label] = max(rows.get(model._meta.label, 0), group_rows)
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
            process_retrying(database, label_filter, downstream, batch_size=size)
    return rows


def _batch(
    database: str,
    labels: frozenset[str] | None,
    specs: tuple[Spec, ...],
    last: Any,
    size: int,
    selected: set[Spec],
    downstream: Records,
) -> tuple[list[Any], int]:
    """Read and lock the ``size`` rows of ``specs``' model after the key
    ``last`` (None: from the first), and recompute them, in a transaction:
    their keys, and how many changed.  The page query takes the locks."""
    model = specs[0].model
    with transaction.atomic(using=database):
        page: models.QuerySet[Any, Any] = models.QuerySet(model, using=database).values_list("pk", flat=True)
        page = page.order_by("pk")
        if last is not None:
            page = page.filter(pk__gt=last)
        if locking(database):
            page = lock(page)
        batch = list(keys(model, page[:size]))
        if not batch:
            return batch, 0
        return batch, _rebuild(database, labels, specs, batch, size, selected, downstream)


def _rebuild(
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
    node = get_graph().nodes[model]
    # What the changes lead to inside the selection is rebuilt in its own group.
    inside = all(dep.spec in selected for dep, _ in node.edges)
    changed = recompute(model, dict.fromkeys(pks, frozenset(specs)), database, size, locked=True, quiet=inside)
    if not inside:
        for instance, old in changed:
            records = records_for(node, instance, labels=labels, changed=frozenset(old), old=old)
            merge(downstream, {key: found for key, found in records.items() if key[0].spec not in selected})
    return changed.total


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty(), or closed
        return False


class _AboveTheBar:
    """A terminal stream on which each write first clears the progress bars
    drawn on ``bars`` and redraws them after, so the text gets lines of its own."""

    def __init__(self, stream: TextIO, bars: TextIO) -> None:
        self.stream, self.bars = stream, bars

    def write(self, text: str) -> None:
        with tqdm.external_write_mode(file=self.bars):
            self.stream.write(text)
            self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def logging_above(bars: TextIO) -> Iterator[None]:
    """While progress bars are drawn on the terminal ``bars``, every logging
    handler that writes to a terminal writes above them instead of through them."""
    handlers = [
        handler
        for logger in [logging.root, *logging.root.manager.loggerDict.values()]
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and _is_terminal(handler.stream)
    ]
    replaced = [(handler, handler.setStream(_AboveTheBar(handler.stream, bars))) for handler in set(handlers)]
    # Where no handler is configured, logging writes warnings to sys.stderr itself.
    last_resort = logging.lastResort
    if isinstance(last_resort, logging.StreamHandler) and _is_terminal(last_resort.stream):
        logging.lastResort = logging.StreamHandler(_AboveTheBar(last_resort.stream, bars))
        logging.lastResort.setLevel(last_resort.level)
    try:
        yield
    finally:
        for handler, stream in replaced:
            handler.setStream(stream)
        logging.lastResort = last_resort

"""The task of the background mode (see :mod:`maintained_fields.background`).

Importing this module needs Django's tasks framework: Django 6.0 and later,
or the ``django-tasks`` backport.
"""

from __future__ import annotations

from typing import Any

from .background import decode
from .conf import tasks_framework
from .propagation import process_retrying


@tasks_framework().task()  # type: ignore[untyped-decorator]  # a module chosen at run time: its task() is untyped
def recompute_recorded(database: str, labels: list[str] | None, records: list[list[Any]]) -> int:
    """Recompute what a background scope or transaction recorded, as a
    deferred flush does (same order, locks and retries), on the rows as they
    are now: running it twice, or after the rows changed again or were
    deleted, leaves the columns right.  Returns how many keys it was given."""
    process_retrying(database, frozenset(labels) if labels is not None else None, decode(records))
    return sum(len(entry[-1]) for entry in records)

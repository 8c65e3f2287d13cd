"""What the maintained-fields commands share: choosing the fields to visit, reporting drift."""

from __future__ import annotations

from argparse import ArgumentTypeError
from collections.abc import Iterator, Sequence
from typing import Any

from django.core.management import CommandError
from django.db import DEFAULT_DB_ALIAS, connections, models

from ...graph import Spec, get_graph


def add_selection_arguments(parser: Any) -> None:
    add_target_arguments(parser)
    parser.add_argument(
        "--database",
        default=DEFAULT_DB_ALIAS,
        choices=list(connections),
        help="The database to work on (default: %(default)s).",
    )
    parser.add_argument(
        "--batch-size",
        type=positive,
        metavar="N",
        help="Rows per query (default: MAINTAINED_FIELDS['BATCH_SIZE']; four times that "
        "when rebuild_maintained_fields writes to PostgreSQL).",
    )


def add_target_arguments(parser: Any) -> None:
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="app_label[.ModelName]",
        help="Only these apps or models (default: every model with maintained fields).",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        metavar="LABEL",
        help="Only the maintained fields with one of these labels.",
    )


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ArgumentTypeError(f"{value} is not a positive number")
    return number


def selected_groups(
    targets: Sequence[str], labels: list[str] | None
) -> Iterator[tuple[type[models.Model], tuple[Spec, ...]]]:
    """The chosen maintained fields, grouped by model, children before parents."""
    graph = get_graph()
    try:
        chosen = set(graph.select(targets, labels))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    for model, group in graph.order:
        specs = tuple(spec for spec in group if spec in chosen)
        if specs:
            yield model, specs


def drift_entry(model: type[models.Model], pk: Any, attname: str, stored: Any, computed: Any) -> dict[str, Any]:
    """One stale value, as ``check_maintained_fields --format json`` reports it."""
    return {
        "model": model._meta.label,
        "pk": pk,
        "field": model._meta.get_field(attname).name,
        "stored": stored,
        "computed": computed,
    }


def drift_line(found: dict[str, Any]) -> str:
    """One stale value, as ``check_maintained_fields`` lists it."""
    return (
        f"{found['model']} pk={found['pk']} {found['field']}: "
        f"stored {found['stored']!r}, computed {found['computed']!r}"
    )

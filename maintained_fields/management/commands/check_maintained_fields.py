from __future__ import annotations

import json
import math
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from ...conf import get_config
from ...writes import batches, compute, evaluate
from ._selection import add_selection_arguments, drift_entry, drift_line, selected_groups
from .rebuild_maintained_fields import would_change


class Command(BaseCommand):
    help = (
        "List the rows whose stored maintained values differ from what their "
        "methods compute, and fail if there are any. Silent when all is right, "
        "unless --format json is given. Columns kept in the background mode are "
        "eventually consistent: run it when the tasks queue is empty."
    )

    def add_arguments(self, parser: Any) -> None:
        add_selection_arguments(parser)
        parser.add_argument(
            "--format",
            choices=["text", "json"],
            default="text",
            help="json: one JSON document on stdout, {'drift': [...], 'count': N}.",
        )
        parser.add_argument(
            "--deep",
            action="store_true",
            help="Report what rebuild_maintained_fields would change, a value over stale values included, "
            "in one pass: the rebuild runs in a transaction that is rolled back, and holds the locks it "
            "takes until it ends. Without it the check only reads, and compares each row with the rows "
            "it reads as they are.",
        )

    def handle(
        self,
        *args: Any,
        targets: list[str],
        labels: list[str] | None,
        database: str,
        batch_size: int | None,
        format: str,
        deep: bool,
        **options: Any,
    ) -> None:
        if deep:
            drift = would_change(list(selected_groups(targets, labels)), labels, database, batch_size)
            if format == "text":
                for found in drift:
                    self.stdout.write(drift_line(found))
        else:
            drift = self._compare(targets, labels, database, batch_size or get_config()["BATCH_SIZE"], format)
        if format == "json":
            report = {"drift": _strict(drift), "count": len(drift)}
            self.stdout.write(json.dumps(report, cls=DjangoJSONEncoder, indent=2, allow_nan=False))
        if drift:
            pending = (
                " The default mode is 'background': values whose tasks have not run yet show "
                "here too, so check again once the tasks queue is empty before repairing."
                if get_config()["DEFAULT_MODE"] == "background"
                else ""
            )
            raise CommandError(
                f"{len(drift)} maintained value(s) differ from what their methods compute. "
                f"Run 'manage.py rebuild_maintained_fields' to repair them.{pending}"
            )

    def _compare(
        self, targets: list[str], labels: list[str] | None, database: str, size: int, format: str
    ) -> list[dict[str, Any]]:
        """Each value that differs from what its method computes from the rows as they are now."""
        drift = []
        for model, specs in selected_groups(targets, labels):
            expressions = [spec for spec in specs if spec.expression is not None]
            for batch in batches(models.QuerySet(model, using=database), size):
                evaluated = evaluate(model, database, [row.pk for row in batch], expressions) if expressions else {}
                for instance in batch:
                    for attname, (stored, computed) in compute(instance, specs, evaluated.get(instance.pk)).items():
                        found = drift_entry(model, instance.pk, attname, stored, computed)
                        drift.append(found)
                        if format == "text":
                            self.stdout.write(drift_line(found))
        return drift


def _strict(value: Any) -> Any:
    """``value`` with each NaN or infinite float, which JSON has no number
    for, as a string ("NaN", "Infinity", "-Infinity")."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value

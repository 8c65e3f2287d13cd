from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from ...conf import get_config
from ...writes import batches, compute, evaluate
from ._selection import add_selection_arguments, selected_groups


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

    def handle(
        self,
        *args: Any,
        targets: list[str],
        labels: list[str] | None,
        database: str,
        batch_size: int | None,
        format: str,
        **options: Any,
    ) -> None:
        size = batch_size or get_config()["BATCH_SIZE"]
        drift = []
        for model, specs in selected_groups(targets, labels):
            expressions = [spec for spec in specs if spec.expression is not None]
            for batch in batches(models.QuerySet(model, using=database), size):
                evaluated = evaluate(model, database, [row.pk for row in batch], expressions) if expressions else {}
                for instance in batch:
                    for attname, (stored, computed) in compute(instance, specs, evaluated.get(instance.pk)).items():
                        found = {
                            "model": model._meta.label,
                            "pk": instance.pk,
                            "field": model._meta.get_field(attname).name,
                            "stored": stored,
                            "computed": computed,
                        }
                        drift.append(found)
                        if format == "text":
                            self.stdout.write(
                                f"{found['model']} pk={instance.pk} {found['field']}: "
                                f"stored {stored!r}, computed {computed!r}"
                            )
        if format == "json":
            self.stdout.write(json.dumps({"drift": drift, "count": len(drift)}, cls=DjangoJSONEncoder, indent=2))
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

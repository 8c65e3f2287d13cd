from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, models

from ...conf import get_config
from ...writes import batches, compute
from ._selection import add_selection_arguments, selected_groups


class Command(BaseCommand):
    help = (
        "List the rows whose stored maintained values differ from what their "
        "methods compute, and fail if there are any. Silent when all is right."
    )

    def add_arguments(self, parser: Any) -> None:
        add_selection_arguments(parser)

    def handle(self, *args: Any, targets: list[str], labels: list[str] | None, **options: Any) -> None:
        size = get_config()["BATCH_SIZE"]
        drift = 0
        for model, specs in selected_groups(targets, labels):
            for batch in batches(models.QuerySet(model, using=DEFAULT_DB_ALIAS), size):
                for instance in batch:
                    for attname, (stored, computed) in compute(instance, specs).items():
                        drift += 1
                        self.stdout.write(
                            f"{model._meta.label} pk={instance.pk} {attname}: "
                            f"stored {stored!r}, computed {computed!r}"
                        )
        if drift:
            raise CommandError(
                f"{drift} maintained value(s) differ from what their methods compute. "
                "Run 'manage.py rebuild_maintained_fields' to repair them."
            )

from __future__ import annotations

from typing import Any

from django.core.management.commands import loaddata

from ...modes import DISABLED, get_autoupdate_mode, override_autoupdate
from ...tracking import loading_fixtures


class Command(loaddata.Command):
    help = (
        loaddata.Command.help + " Then recomputes, once, the maintained fields of the rows "
        "loaded and of the rows that depend on them (unless the mode in force is disabled)."
    )

    def handle(self, *fixture_labels: str, **options: Any) -> str | None:
        if get_autoupdate_mode() == DISABLED:
            return super().handle(*fixture_labels, **options)
        # Fixture rows are saved raw, one by one: record them, maintain at the end.
        with override_autoupdate(mode="deferred"), loading_fixtures():
            return super().handle(*fixture_labels, **options)

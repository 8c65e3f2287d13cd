"""Load a TraceBase study folder into the tracebase example app."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management import BaseCommand, CommandError, CommandParser

from tracebase.loading import LoadError, load_study


class Command(BaseCommand):
    help = (
        "Load a TraceBase study folder (study.xlsx and its peak-annotation files) in one transaction, "
        "with maintenance deferred to the end unless --mode says otherwise."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", type=Path, help="A folder holding study.xlsx.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Load with maintenance disabled, then roll everything back."
        )
        parser.add_argument(
            "--validate",
            action="store_true",
            help="As --dry-run, and fail if the load skipped anything (a column of a peak-annotation file "
            "that no sample of the details names).",
        )
        parser.add_argument(
            "--mode",
            choices=["immediate", "deferred", "disabled", "background"],
            help="Maintain in this mode instead of deferring to the end of the load.",
        )
        parser.add_argument(
            "--suffix", default="", help="Append this to every animal and sample name (to load a study again)."
        )

    def handle(
        self, *args: Any, folder: Path, dry_run: bool, validate: bool, mode: str | None, suffix: str, **options: Any
    ) -> None:
        started = time.perf_counter()
        try:
            report = load_study(folder, dry_run=dry_run or validate, mode=mode, suffix=suffix)
        except LoadError as error:
            raise CommandError(f"Nothing was loaded. {error}") from None
        for warning in report.warnings:
            self.stderr.write(f"warning: {warning}")
        counts = ", ".join(f"{count} {model}" for model, count in sorted(report.created.items())) or "nothing"
        verb = "Would load" if dry_run or validate else "Loaded"
        self.stdout.write(f"{verb} {folder.name}: {counts} ({time.perf_counter() - started:.1f} s).")
        if validate and report.warnings:
            raise CommandError(f"{len(report.warnings)} warnings; nothing was loaded.")

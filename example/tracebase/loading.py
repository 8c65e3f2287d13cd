"""Load a TraceBase study folder: its ``study.xlsx`` sheets, in TraceBase's
load order, and its peak-annotation files (one PeakGroup per sample and
compound), in one transaction.

The maintained fields are never read while loading: in deferred mode they
hold their defaults until the load ends, so rows are found by what the
workbook says (a tracer by its compound and labels, an infusate by its
tracers and concentrations), never by a maintained name.
"""

from __future__ import annotations

import csv
import datetime
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openpyxl
from django.db import transaction

from maintained_fields import override_autoupdate

from .models import (
    SERUM_PREFIX,
    Animal,
    Compound,
    CompoundSynonym,
    FCirc,
    Infusate,
    InfusateTracer,
    MSRunSample,
    MSRunSequence,
    PeakGroup,
    Sample,
    Study,
    Tissue,
    Tracer,
    TracerLabel,
    Treatment,
    positions_text,
)

# The sheets of study.xlsx in the order TraceBase's study loader loads them
# (LC Protocols, which nothing maintained reads, are not modelled).
SHEETS = (
    "Study",
    "Compounds",
    "Tracers",
    "Infusates",
    "Treatments",
    "Animals",
    "Tissues",
    "Samples",
    "Sequences",
    "Peak Annotation Files",
    "Peak Annotation Details",
)



class LoadError(Exception):
    """A value of the study that cannot be loaded, with where it is."""

    def __init__(self, file: str, sheet: str | None, row: int | None, column: str | None, message: str) -> None:
        self.file, self.sheet, self.row, self.column = file, sheet, row, column
        where = [file]
        if sheet is not None:
            where.append(f"sheet {sheet!r}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}")


@dataclass
class LoadReport:
    """What a load created, by model name, and what it skipped (warnings)."""

    created: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    warnings: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One row of a sheet: its number as the spreadsheet shows it, and its cells by header."""

    file: str
    sheet: str
    line: int
    cells: dict[str, Any]

    def error(self, column: str | None, message: str) -> LoadError:
        return LoadError(self.file, self.sheet, self.line, column, message)

    def get(self, column: str) -> Any:
        value = self.cells.get(column)
        if isinstance(value, str):
            value = value.strip()
            if value == "" or value.lower() in ("nan", "none"):
                return None
        return value

    def text(self, column: str, required: bool = True) -> str | None:
        value = self.get(column)
        if value is None:
            if required:
                raise self.error(column, "a value is required here.")
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)

    def number(self, column: str, required: bool = True) -> float | None:
        value = self.get(column)
        if value is None:
            if required:
                raise self.error(column, "a number is required here.")
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise self.error(column, f"{value!r} is not a number.") from None

    def integer(self, column: str) -> int:
        value = self.number(column)
        assert value is not None
        if not value.is_integer() or value < 0:
            raise self.error(column, f"{self.get(column)!r} is not a whole number.")
        return int(value)

    def date(self, column: str) -> datetime.date | None:
        value = self.get(column)
        if value is None:
            return None
        if isinstance(value, datetime.datetime):
            return value.date()
        if isinstance(value, datetime.date):
            return value
        for form in ("%Y-%m-%d", "%m/%d/%Y", "%m/%d/%y"):
            try:
                return datetime.datetime.strptime(str(value), form).date()
            except ValueError:
                pass
        raise self.error(column, f"{value!r} is not a date (YYYY-MM-DD).")


def normalise_tracer_name(name: str) -> str:
    """A tracer name without spaces around its delimiters: ``glutamine-[13C5, 15N2]`` is ``glutamine-[13C5,15N2]``."""
    return re.sub(r"\s*([-\[\],;{}])\s*", r"\1", name.strip())


def normalise_infusate_name(name: str) -> str:
    """An infusate name as TraceBase builds it: no spaces around delimiters, one
    space before ``{``, and the tracers sorted."""
    name = name.strip()
    found = re.fullmatch(r"(?:(.*?)\s*)?\{(.*)\}", name)
    if not found:
        return ";".join(sorted(normalise_tracer_name(part) for part in name.split(";")))
    group, tracers = found[1], found[2]
    parts = ";".join(sorted(normalise_tracer_name(part) for part in tracers.split(";")))
    return f"{group.strip()} {{{parts}}}" if group and group.strip() else parts


def read_workbook(path: Path) -> dict[str, list[Row]]:
    """Every sheet of an .xlsx file, as rows of cells by header (blank rows left out)."""
    try:
        with warnings.catch_warnings():
            # openpyxl drops the sheets' data validation rules, which loading never reads.
            warnings.filterwarnings("ignore", message="Data Validation extension is not supported")
            book = openpyxl.load_workbook(path, data_only=True)
    except Exception as error:
        raise LoadError(path.name, None, None, None, f"cannot be read as an .xlsx workbook ({error}).") from None
    return {sheet.title: list(_rows(path.name, sheet.title, sheet.iter_rows(values_only=True))) for sheet in book}


def read_csv(path: Path) -> list[Row]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return list(_rows(path.name, None, csv.reader(handle)))


def _rows(file: str, sheet: str | None, values: Iterator[Any]) -> Iterator[Row]:
    headers: list[str] | None = None
    for number, cells in enumerate(values, start=1):
        if headers is None:
            headers = [str(h).strip() if h is not None else "" for h in cells]
            continue
        if all(c is None or (isinstance(c, str) and not c.strip()) for c in cells):
            continue
        yield Row(file, sheet or "", number, {h: c for h, c in zip(headers, cells) if h})


class StudyLoader:
    """Loads one study folder; see :func:`load_study`."""

    def __init__(self, folder: Path, suffix: str = "") -> None:
        self.folder = folder
        self.suffix = suffix
        self.report = LoadReport()
        self.workbook_name = "study.xlsx"
        self.tracers: dict[str, Tracer] = {}  # normalised Tracer Name -> tracer
        self.infusates: dict[str, Infusate] = {}  # normalised Infusate Name -> infusate
        self.animals: dict[str, Animal] = {}
        self.samples: dict[str, Sample] = {}
        self.tissues: dict[str, Tissue] = {}
        self.sequences: dict[str, MSRunSequence] = {}
        self.compounds: dict[str, Compound] = {}  # lower-case name or synonym -> compound

    def created(self, instance: Any) -> None:
        self.report.created[type(instance).__name__] += 1

    def load(self) -> LoadReport:
        path = self.folder / self.workbook_name
        if not path.is_file():
            raise LoadError(str(path), None, None, None, "no study.xlsx in this folder.")
        book = read_workbook(path)
        self.compounds = self._compound_index()
        for sheet in SHEETS:
            rows = book.get(sheet, [])
            getattr(self, "load_" + sheet.lower().replace(" ", "_"))(rows)
        return self.report

    # Study, Compounds, Tracers, Infusates, Treatments

    def load_study(self, rows: list[Row]) -> None:
        for row in rows:
            name = row.text("Name")
            study, made = Study.objects.get_or_create(
                name=name, defaults={"description": row.text("Description", False) or ""}
            )
            if made:
                self.created(study)

    def _compound_index(self) -> dict[str, Compound]:
        index = {compound.name.lower(): compound for compound in Compound.objects.all()}
        for synonym in CompoundSynonym.objects.select_related("compound"):
            index.setdefault(synonym.name.lower(), synonym.compound)
        return index

    def compound(self, row: Row, column: str, name: str) -> Compound:
        found = self.compounds.get(name.strip().lower())
        if found is None:
            raise row.error(column, f"no compound is named {name!r} (load its Compounds sheet first).")
        return found

    def load_compounds(self, rows: list[Row]) -> None:
        for row in rows:
            name = row.text("Compound")
            assert name is not None
            compound = self.compounds.get(name.lower())
            if compound is None:
                compound = Compound.objects.create(
                    name=name, formula=row.text("Formula"), hmdb_id=row.text("HMDB ID", False) or ""
                )
                self.created(compound)
                self.compounds[name.lower()] = compound
            elif compound.name != name:
                raise row.error("Compound", f"{name!r} is already a synonym of the compound {compound.name!r}.")
            for synonym in (row.text("Synonyms", False) or "").split(";"):
                synonym = synonym.strip()
                if not synonym or synonym.lower() in self.compounds:
                    continue
                self.created(CompoundSynonym.objects.create(name=synonym, compound=compound))
                self.compounds[synonym.lower()] = compound

    def _tracer_key(self, compound: Compound, labels: list[tuple[str, int, int, str]]) -> tuple[Any, ...]:
        return (compound.pk, frozenset(labels))

    def load_tracers(self, rows: list[Row]) -> None:
        existing = {}
        for tracer in Tracer.objects.prefetch_related("labels"):
            labels = [(lb.element, lb.mass_number, lb.count, lb.positions) for lb in tracer.labels.all()]
            existing[(tracer.compound_id, frozenset(labels))] = tracer
        groups: dict[Any, list[Row]] = defaultdict(list)
        for row in rows:
            groups[row.text("Tracer Row Group")].append(row)
        for group in groups.values():
            first = group[0]
            compound = self.compound(first, "Compound", first.text("Compound") or "")
            labels = []
            for row in group:
                if (
                    row.text("Compound", False)
                    and self.compound(row, "Compound", row.text("Compound") or "") != compound
                ):
                    raise row.error("Compound", "the rows of one Tracer Row Group name one compound.")
                positions = row.get("Label Positions")
                try:
                    numbers = [int(float(p)) for p in str(positions).replace(";", ",").split(",")] if positions else []
                except ValueError:
                    raise row.error("Label Positions", f"{positions!r} is not a list of positions.") from None
                element = row.text("Element")
                assert element is not None
                labels.append(
                    (element.strip(), row.integer("Mass Number"), row.integer("Label Count"), positions_text(numbers))
                )
            key = (compound.pk, frozenset(labels))
            tracer = existing.get(key)
            if tracer is None:
                tracer = Tracer.objects.create(compound=compound)
                self.created(tracer)
                for element, mass_number, count, positions in labels:
                    self.created(
                        TracerLabel.objects.create(
                            tracer=tracer, element=element, mass_number=mass_number, count=count, positions=positions
                        )
                    )
                existing[key] = tracer
            name = first.text("Tracer Name", False)
            if name:
                self.tracers[normalise_tracer_name(name)] = tracer

    def tracer(self, row: Row, column: str, name: str) -> Tracer:
        found = self.tracers.get(normalise_tracer_name(name))
        if found is None:
            found = Tracer.objects.filter(name=normalise_tracer_name(name)).first()
        if found is None:
            raise row.error(column, f"no tracer {name!r} in the Tracers sheet.")
        return found

    def load_infusates(self, rows: list[Row]) -> None:
        existing: dict[Any, Infusate] = {}
        for infusate in Infusate.objects.prefetch_related("tracer_links"):
            links = frozenset((link.tracer_id, link.concentration) for link in infusate.tracer_links.all())
            existing[(infusate.tracer_group_name, links)] = infusate
        groups: dict[Any, list[Row]] = defaultdict(list)
        for row in rows:
            groups[row.text("Infusate Row Group")].append(row)
        for group in groups.values():
            first = group[0]
            group_name = first.text("Tracer Group Name", False)
            links = []
            for row in group:
                if row.text("Tracer Group Name", False) != group_name:
                    raise row.error("Tracer Group Name", "the rows of one Infusate Row Group have one group name.")
                tracer = self.tracer(row, "Tracer", row.text("Tracer") or "")
                links.append((tracer, row.number("Tracer Concentration")))
            key = (group_name, frozenset((tracer.pk, concentration) for tracer, concentration in links))
            infusate = existing.get(key)
            if infusate is None:
                infusate = Infusate.objects.create(tracer_group_name=group_name)
                self.created(infusate)
                for tracer, concentration in links:
                    self.created(
                        InfusateTracer.objects.create(infusate=infusate, tracer=tracer, concentration=concentration)
                    )
                existing[key] = infusate
            name = first.text("Infusate Name", False)
            if name:
                self.infusates[normalise_infusate_name(name)] = infusate

    def load_treatments(self, rows: list[Row]) -> None:
        self.load_named(Treatment, rows, "Animal Treatment", "Treatment Description")

    def load_named(self, model: type[Treatment] | type[Tissue], rows: list[Row], name: str, description: str) -> None:
        """Rows of a sheet that names things and describes them: each name made once."""
        for row in rows:
            thing, made = model.objects.get_or_create(
                name=row.text(name), defaults={"description": row.text(description, False) or ""}
            )
            if made:
                self.created(thing)

    # Animals, Tissues, Samples

    def load_animals(self, rows: list[Row]) -> None:
        for row in rows:
            name = f"{row.text('Animal Name')}{self.suffix}"
            if Animal.objects.filter(name=name).exists():
                raise row.error("Animal Name", f"the animal {name!r} is already loaded.")
            infusate = None
            if infusate_name := row.text("Infusate", False):
                infusate = self.infusates.get(normalise_infusate_name(infusate_name))
                if infusate is None:
                    infusate = Infusate.objects.filter(name=normalise_infusate_name(infusate_name)).first()
                if infusate is None:
                    raise row.error("Infusate", f"no infusate {infusate_name!r} in the Infusates sheet.")
            treatment = None
            if treatment_name := row.text("Treatment", False):
                treatment = Treatment.objects.filter(name=treatment_name).first()
                if treatment is None:
                    raise row.error("Treatment", f"no treatment {treatment_name!r} (Treatments sheet).")
            age = row.number("Age", False)
            sex = (row.text("Sex", False) or "")[:1].upper() or None
            animal = Animal.objects.create(
                name=name,
                infusate=infusate,
                infusion_rate=row.number("Infusion Rate", False),
                genotype=row.text("Genotype", False) or "",
                body_weight=row.number("Weight", False),
                age=datetime.timedelta(weeks=age) if age is not None else None,
                sex=sex,
                diet=row.text("Diet", False),
                feeding_status=row.text("Feeding Status", False),
                treatment=treatment,
            )
            self.created(animal)
            for study_name in (row.text("Study", False) or "").split(";"):
                if study_name.strip():
                    study = Study.objects.filter(name=study_name.strip()).first()
                    if study is None:
                        raise row.error("Study", f"no study {study_name.strip()!r} (Study sheet).")
                    animal.studies.add(study)
            self.animals[name] = animal

    def load_tissues(self, rows: list[Row]) -> None:
        self.load_named(Tissue, rows, "Tissue", "Description")

    def load_samples(self, rows: list[Row]) -> None:
        tissues = {tissue.name: tissue for tissue in Tissue.objects.all()}
        for row in rows:
            name = f"{row.text('Sample')}{self.suffix}"
            animal_name = f"{row.text('Animal')}{self.suffix}"
            animal = self.animals.get(animal_name) or Animal.objects.filter(name=animal_name).first()
            if animal is None:
                raise row.error("Animal", f"no animal {animal_name!r} (Animals sheet).")
            tissue = tissues.get(row.text("Tissue") or "")
            if tissue is None:
                raise row.error("Tissue", f"no tissue {row.text('Tissue')!r} (Tissues sheet).")
            minutes = row.number("Collection Time", False)
            if Sample.objects.filter(name=name).exists():
                raise row.error("Sample", f"the sample {name!r} is already loaded.")
            sample = Sample.objects.create(
                name=name,
                date=row.date("Date Collected"),
                researcher=row.text("Researcher Name", False) or "",
                animal=animal,
                tissue=tissue,
                time_collected=datetime.timedelta(minutes=minutes) if minutes is not None else None,
            )
            self.created(sample)
            self.samples[name] = sample
            # As TraceBase's samples loader does: an FCirc row for each tracer and
            # labelled element of a serum sample's infusate.  The loader judges
            # serum from the tissue itself: the maintained is_serum_sample may be
            # deferred.
            if animal.infusate_id is not None and tissue.name.lower().startswith(SERUM_PREFIX):
                for tracer in Tracer.objects.filter(infusates=animal.infusate_id).prefetch_related("labels"):
                    for element in sorted({label.element for label in tracer.labels.all()}):
                        self.created(FCirc.objects.create(serum_sample=sample, tracer=tracer, element=element))

    # Sequences, peak annotation files and their details, peak groups

    def load_sequences(self, rows: list[Row]) -> None:
        for row in rows:
            name = row.text("Sequence Name")
            assert name is not None
            sequence, made = MSRunSequence.objects.get_or_create(
                name=name,
                defaults={
                    "researcher": row.text("Operator", False) or "",
                    "lc_protocol_name": row.text("LC Protocol Name", False) or "",
                    "instrument": row.text("Instrument", False) or "",
                    "date": row.date("Date"),
                },
            )
            if made:
                self.created(sequence)
            self.sequences[name] = sequence

    def sequence(self, row: Row, column: str, name: str) -> MSRunSequence:
        found = self.sequences.get(name) or MSRunSequence.objects.filter(name=name).first()
        if found is None:
            raise row.error(column, f"no sequence {name!r} (Sequences sheet).")
        return found

    def load_peak_annotation_files(self, rows: list[Row]) -> None:
        self.files: dict[str, tuple[Row, Path, str, MSRunSequence | None]] = {}
        for row in rows:
            listed = row.text("Peak Annotation File")
            assert listed is not None
            basename = Path(listed.replace("\\", "/")).name
            found = sorted(self.folder.rglob(basename))
            if not found:
                raise row.error("Peak Annotation File", f"{basename!r} is not in the study folder.")
            file_format = (row.text("File Format", False) or "").lower()
            if file_format not in ("isocorr", "accucor"):
                raise row.error("File Format", f"{file_format!r}: only isocorr and accucor files are read.")
            default = row.text("Default Sequence", False)
            sequence = self.sequence(row, "Default Sequence", default) if default else None
            self.files[basename] = (row, found[0], file_format, sequence)

    def load_peak_annotation_details(self, rows: list[Row]) -> None:
        headers: dict[str, dict[str, MSRunSample]] = defaultdict(dict)  # file -> sample data header -> msrun sample
        for row in rows:
            if row.text("Skip", False):
                continue
            file = Path((row.text("Peak Annotation File Name") or "").replace("\\", "/")).name
            if file not in self.files:
                raise row.error(
                    "Peak Annotation File Name", f"{file!r} is not listed in the Peak Annotation Files sheet."
                )
            name = f"{row.text('Sample Name')}{self.suffix}"
            sample = self.samples.get(name) or Sample.objects.filter(name=name).first()
            if sample is None:
                raise row.error("Sample Name", f"no sample {name!r} (Samples sheet).")
            sequence_name = row.text("Sequence", False)
            sequence = self.sequence(row, "Sequence", sequence_name) if sequence_name else self.files[file][3]
            if sequence is None:
                raise row.error("Sequence", "no sequence here, and the file has no Default Sequence.")
            msrun_sample, made = MSRunSample.objects.get_or_create(sample=sample, msrun_sequence=sequence)
            if made:
                self.created(msrun_sample)
            headers[file][row.text("Sample Data Header") or ""] = msrun_sample
        for file, (_, path, file_format, _) in self.files.items():
            self.load_peak_groups(path, file_format, headers[file])

    def load_peak_groups(self, path: Path, file_format: str, samples: dict[str, MSRunSample]) -> None:
        """One PeakGroup per sample column listed in the details and per compound (group) of the file."""
        if path.suffix.lower() == ".csv":
            if file_format == "accucor":
                raise LoadError(path.name, None, None, None, "accucor data is read from .xlsx files only.")
            rows, sheet = read_csv(path), None
        else:
            book = read_workbook(path)
            sheet = "Corrected" if file_format == "accucor" else "absolte"
            if sheet not in book:
                sheet = next(iter(book))
            rows = book[sheet]
        if file_format == "accucor":
            compound_column = "Compound"
            formulas = {}
            for row in book.get("Original", []):
                if row.text("compound", False):
                    formulas[row.text("compound")] = row.text("formula", False) or ""
        else:
            compound_column = "compound"  # compoundId is sometimes another database's key (KEGG's C00183)
        if not rows:
            return
        columns = list(rows[0].cells)
        for needed in [compound_column] if file_format == "accucor" else [compound_column, "parent"]:
            if needed not in columns:
                raise LoadError(path.name, sheet, 1, needed, f"no such column in this {file_format} file.")
        for header in columns:
            if header in samples:
                continue
            if file_format == "accucor" and (header == compound_column or header.endswith("_Label")):
                continue
            if file_format != "accucor" and columns.index(header) <= columns.index("parent"):
                continue
            if "blank" in header.lower():  # as TraceBase does, a blank's column is no sample
                continue
            self.report.warnings.append(f"{path.name}: column {header!r} is no sample of the details; skipped.")
        missing = [header for header in samples if header not in columns]
        if missing:
            raise LoadError(path.name, sheet, 1, None, f"no column for the sample data headers {missing}.")
        groups: dict[str, tuple[Row, str]] = {}
        for row in rows:
            name = row.text(compound_column, False)
            if name and name not in groups:
                formula = row.text("formula", False) if file_format != "accucor" else formulas.get(name, "")
                groups[name] = (row, formula or "")
        for name, (row, formula) in groups.items():
            compounds = [self.compound(row, compound_column, part) for part in name.split("/")]
            for msrun_sample in samples.values():
                if PeakGroup.objects.filter(msrun_sample=msrun_sample, name=name).exists():
                    raise row.error(
                        compound_column,
                        f"the sample {msrun_sample.sample.name!r} already has a peak group {name!r} from another file.",
                    )
                group = PeakGroup.objects.create(
                    name=name, formula=formula, msrun_sample=msrun_sample, peak_annotation_file=path.name
                )
                group.compounds.add(*compounds)
                self.created(group)


def _load(folder: Path, suffix: str) -> LoadReport:
    return StudyLoader(folder, suffix).load()


@override_autoupdate(mode="deferred", disable_when="dry_run")
def load_deferred(folder: Path, *, dry_run: bool = False, suffix: str = "") -> LoadReport:
    """Load the study with maintenance deferred to the end, or disabled for a dry run."""
    return _load(folder, suffix)


def load_study(folder: Path | str, *, dry_run: bool = False, mode: str | None = None, suffix: str = "") -> LoadReport:
    """Load a TraceBase study folder in one transaction and return what it created.

    By default maintenance is deferred: every maintained value the load
    affects is computed once, in bulk, before the transaction commits.
    ``mode`` loads in another mode instead (``immediate``, ``deferred``,
    ``disabled``, ``background``).  A dry run loads with maintenance disabled
    and rolls everything back.  ``suffix`` is appended to animal and sample
    names, to load a study again as new animals.  A value that cannot be
    loaded raises :class:`LoadError` naming its file, sheet, row and column,
    and nothing is written.
    """
    folder = Path(folder)
    with transaction.atomic():
        if mode is None:
            report = load_deferred(folder, dry_run=dry_run, suffix=suffix)
        else:
            with override_autoupdate(mode="disabled" if dry_run else mode):
                report = _load(folder, suffix)
        if dry_run:
            transaction.set_rollback(True)
    return report

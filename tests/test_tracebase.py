"""TraceBase's maintained schema on this package (the example project's
tracebase app): its loader end to end on real TraceBase studies, and the
edits that made TraceBase's own maintenance slow, with the values a user
relies on.

Expected values are computed here, from the loaded rows, by this module's
own code (``expected_columns``), never by the package's check.
"""

import datetime
import json
import shutil
from collections import defaultdict
from io import StringIO
from pathlib import Path

import openpyxl
import pytest
from django.apps import apps
from django.core.management import CommandError, call_command

from maintained_fields import override_autoupdate

if not apps.is_installed("tracebase"):
    pytest.skip("the example project's tracebase app is not beside the tests", allow_module_level=True)

from tracebase.loading import load_study, normalise_infusate_name, normalise_tracer_name  # noqa: E402
from tracebase.models import (  # noqa: E402
    Animal,
    Compound,
    FCirc,
    Infusate,
    PeakGroup,
    Sample,
    Tissue,
    Tracer,
    TracerLabel,
)

pytestmark = pytest.mark.filterwarnings("ignore:Data Validation extension is not supported")

DATA = Path(apps.get_app_config("tracebase").path) / "data"
TINY = DATA / "full_tiny_study"
COMPOUNDS = DATA / "examples" / "compounds_tissues_treatments_lcprotocols"
VALINE = DATA / "examples" / "13C_Valine_and_PI3Ki_in_flank_KPC_mice"


def workbook_column(folder, sheet, column):
    """The distinct values of one column of a study's sheet, as the workbook holds them."""
    rows = openpyxl.load_workbook(folder / "study.xlsx", data_only=True)[sheet].iter_rows(values_only=True)
    headers = next(rows)
    index = headers.index(column)
    return {row[index] for row in rows if row[index] is not None}


def expected_columns():
    """{(model, pk, field): value} for every maintained column, computed from the rows."""
    expected = {}
    labels = defaultdict(list)
    for pk, tracer, element, mass, count, positions in TracerLabel.objects.values_list(
        "pk", "tracer", "element", "mass_number", "count", "positions"
    ):
        numbers = sorted(int(p) for p in positions.split(",") if p)
        name = ("".join(f"{n}," for n in numbers)[:-1] + "-" if numbers else "") + f"{mass}{element}{count}"
        expected["TracerLabel", pk, "name"] = name
        labels[tracer].append(((element, mass, count, numbers), name))
    tracer_names, tracer_combos, tracer_compound = {}, {}, {}
    for pk, compound_name, compound in Tracer.objects.values_list("pk", "compound__name", "compound"):
        ordered = [name for _, name in sorted(labels[pk])]
        tracer_names[pk] = f"{compound_name}-[{','.join(ordered)}]" if ordered else compound_name
        tracer_combos[pk] = "+".join(sorted(key[0] for key, _ in labels[pk]))
        tracer_compound[pk] = compound
        expected["Tracer", pk, "name"] = tracer_names[pk]
        expected["Tracer", pk, "label_combo"] = tracer_combos[pk]
    links = defaultdict(list)
    for infusate, tracer, concentration in Infusate.tracers.through.objects.values_list(
        "infusate", "tracer", "concentration"
    ):
        links[infusate].append((tracer, concentration))
    infusate_combos = {}
    for pk, group in Infusate.objects.values_list("pk", "tracer_group_name"):
        parts = sorted(f"{tracer_names[t]}[{c:.3g}]" for t, c in links[pk])
        name = ";".join(parts) if parts else group
        expected["Infusate", pk, "name"] = f"{group} {{{name}}}" if group and parts else name
        infusate_combos[pk] = ", ".join(sorted({tracer_combos[t] for t, _ in links[pk]}))
        expected["Infusate", pk, "label_combo"] = infusate_combos[pk]
    samples = {}
    for pk, animal, name, time, tissue in Sample.objects.values_list(
        "pk", "animal", "name", "time_collected", "tissue__name"
    ):
        samples[pk] = (animal, name, time, tissue.lower().startswith("serum"))
        expected["Sample", pk, "is_serum_sample"] = samples[pk][3]
    animal_tracers = {}
    for pk, infusate in Animal.objects.values_list("pk", "infusate"):
        expected["Animal", pk, "label_combo"] = infusate_combos.get(infusate)
        serum = [(t is not None, t or datetime.timedelta.min, n, s) for s, (a, n, t, ser) in samples.items()
                 if a == pk and ser]  # fmt: skip
        expected["Animal", pk, "last_serum_sample"] = max(serum)[3] if serum else None
        animal_tracers[pk] = {t for t, _ in links.get(infusate, [])}
    for pk in Compound.objects.values_list("pk", flat=True):
        expected["Compound", pk, "animals_by_tracer"] = 0
    for compound in set(tracer_compound.values()):
        infused = {a for a, tracers in animal_tracers.items() if any(tracer_compound[t] == compound for t in tracers)}
        expected["Compound", compound, "animals_by_tracer"] = len(infused)
    # FCirc.is_last: the serum peak groups of each animal and compound, ordered
    # by collection time, then sequence date, then sample name, then key.
    serum_groups = defaultdict(list)
    for pk, compound, sample, date in PeakGroup.objects.values_list(
        "pk", "compounds", "msrun_sample__sample", "msrun_sample__msrun_sequence__date"
    ):
        animal, name, time, serum = samples[sample]
        if serum:
            when = (time is not None, time or datetime.timedelta.min, date, name, pk)
            serum_groups[animal, compound].append((when, sample, (date, pk)))
    for pk, sample, compound in FCirc.objects.values_list("pk", "serum_sample", "tracer__compound"):
        groups = serum_groups[samples[sample][0], compound]
        own = [g for g in groups if g[1] == sample]
        is_last = bool(own) and max(own, key=lambda g: g[2]) == max(groups)
        expected["FCirc", pk, "is_last"] = is_last
    return expected


def stored_columns():
    stored = {}
    for model, fields in [
        (TracerLabel, ["name"]),
        (Tracer, ["name", "label_combo"]),
        (Infusate, ["name", "label_combo"]),
        (Sample, ["is_serum_sample"]),
        (Animal, ["label_combo", "last_serum_sample_id"]),
        (Compound, ["animals_by_tracer"]),
        (FCirc, ["is_last"]),
    ]:
        for pk, *values in model.objects.values_list("pk", *fields):
            for field, value in zip(fields, values):
                stored[model.__name__, pk, field.removesuffix("_id")] = value
    return stored


def assert_no_drift():
    expected, stored = expected_columns(), stored_columns()
    assert stored.keys() == expected.keys()
    assert {key: value for key, value in stored.items() if expected[key] != value} == {}


def row_counts():
    return {model.__name__: model.objects.count() for model in apps.get_app_config("tracebase").get_models()}


@pytest.mark.django_db
@pytest.mark.parametrize("mode", [None, "immediate"])
def test_full_tiny_study_names_are_the_workbooks_and_nothing_drifts(mode):
    report = load_study(TINY, mode=mode)
    assert report.created["Animal"] == 3 and report.created["PeakGroup"] > 0
    tracer_names = {normalise_tracer_name(n) for n in workbook_column(TINY, "Tracers", "Tracer Name")}
    assert set(Tracer.objects.values_list("name", flat=True)) == tracer_names
    infusate_names = {normalise_infusate_name(n) for n in workbook_column(TINY, "Infusates", "Infusate Name")}
    assert set(Infusate.objects.values_list("name", flat=True)) == infusate_names
    assert Animal.objects.get(name="xzl1").label_combo == "C+N"
    assert Animal.objects.get(name="xzl5").last_serum_sample.name == "xzl5_t"
    assert_no_drift()


def test_normalising_a_workbook_name_only_drops_spacing_and_orders_tracers():
    assert normalise_tracer_name("glutamine-[13C5, 15N2]") == "glutamine-[13C5,15N2]"
    assert normalise_infusate_name("BCAAs (VLI) {valine-[13C5][20]; leucine-[13C6][24]}") == (
        "BCAAs (VLI) {leucine-[13C6][24];valine-[13C5][20]}"
    )


@pytest.mark.django_db
@pytest.mark.parametrize("flag", ["--dry-run", "--validate"])
def test_a_dry_run_writes_nothing(flag):
    before = row_counts()
    out = StringIO()
    call_command("load_tracebase_study", str(TINY), flag, stdout=out)
    assert out.getvalue().startswith("Would load full_tiny_study: 3 Animal, ")
    assert row_counts() == before


@pytest.mark.django_db
def test_validate_fails_on_what_a_load_would_skip(tmp_path):
    folder = tmp_path / "study"
    shutil.copytree(TINY, folder)
    book = openpyxl.load_workbook(folder / "alafasted" / "alafasted_cor.xlsx")
    book["absolte"].cell(row=1, column=15, value="xzl9_t")  # the "blank" column, renamed: no sample names it
    book.save(folder / "alafasted" / "alafasted_cor.xlsx")
    err = StringIO()
    with pytest.raises(CommandError, match="^1 warnings; nothing was loaded.$"):
        call_command("load_tracebase_study", str(folder), "--validate", stderr=err)
    assert "alafasted_cor.xlsx: column 'xzl9_t' is no sample of the details; skipped." in err.getvalue()
    assert row_counts()["Animal"] == 0


@pytest.mark.django_db
def test_a_bad_row_names_file_sheet_row_and_column_and_nothing_is_written(tmp_path):
    folder = tmp_path / "study"
    shutil.copytree(TINY, folder)
    book = openpyxl.load_workbook(folder / "study.xlsx", data_only=True)  # cached values for its formulas
    sheet = book["Samples"]
    column = [cell.value for cell in sheet[1]].index("Collection Time") + 1
    sheet.cell(row=4, column=column, value="late")
    book.save(folder / "study.xlsx")
    before = row_counts()
    with pytest.raises(CommandError) as raised:
        call_command("load_tracebase_study", str(folder))
    assert str(raised.value) == (
        "Nothing was loaded. study.xlsx, sheet 'Samples', row 4, column 'Collection Time': 'late' is not a number."
    )
    assert row_counts() == before


@pytest.mark.data
@pytest.mark.django_db
def test_every_example_study_loads_with_the_workbooks_names_and_nothing_drifts():
    # As the issue asks: the compounds first, then every other example study.
    studies = [COMPOUNDS, *sorted(p for p in (DATA / "examples").iterdir() if p.is_dir() and p != COMPOUNDS)]
    tracer_names, infusate_names = set(), set()
    for folder in studies:
        load_study(folder)
        if folder != COMPOUNDS:
            tracer_names |= {normalise_tracer_name(n) for n in workbook_column(folder, "Tracers", "Tracer Name")}
            infusate_names |= {
                normalise_infusate_name(n) for n in workbook_column(folder, "Infusates", "Infusate Name")
            }
    assert len(studies) == 5
    assert set(Tracer.objects.values_list("name", flat=True)) == tracer_names
    assert set(Infusate.objects.values_list("name", flat=True)) == infusate_names
    assert_no_drift()
    out = StringIO()
    call_command("check_maintained_fields", "tracebase", "--format", "json", stdout=out)
    assert json.loads(out.getvalue()) == {"drift": [], "count": 0}


@pytest.fixture(scope="module")
def valine(django_db_setup, django_db_blocker):
    """The compounds and the 13C-valine study, loaded once for the module; each
    test's edits are rolled back with its transaction."""
    with django_db_blocker.unblock():
        load_study(COMPOUNDS)
        load_study(VALINE)
        yield
        with override_autoupdate(mode="disabled"):  # emptied, not maintained
            for model in reversed(list(apps.get_app_config("tracebase").get_models())):
                model._base_manager.all().delete()


@pytest.mark.django_db
def test_the_valine_study_loads_with_the_workbooks_names_and_nothing_drifts(valine):
    assert set(Tracer.objects.values_list("name", flat=True)) == {"valine-[13C5]"}
    names = {normalise_infusate_name(n) for n in workbook_column(VALINE, "Infusates", "Infusate Name")}
    assert set(Infusate.objects.values_list("name", flat=True)) == names
    assert Compound.objects.get(name="valine").animals_by_tracer == 6
    assert Animal.objects.get(name="demo_a146").last_serum_sample.name == "demo_t120_a146"
    assert_no_drift()


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["queryset", "instance"])
def test_deleting_the_samples_an_animal_points_at(valine, how):
    # Animal.last_serum_sample is a maintained foreign key, on_delete=SET_NULL:
    # Django's delete sets it to NULL with update(), whose maintenance put it
    # back on a sample about to go, and MySQL refused the delete.
    animal = Animal.objects.get(name="demo_a146")
    serum = list(Sample.objects.filter(animal=animal, is_serum_sample=True).order_by("pk"))
    if how == "queryset":
        Sample.objects.filter(pk__in=[s.pk for s in serum]).delete()
    else:
        for sample in reversed(serum):
            sample.delete()
    animal.refresh_from_db()
    assert animal.last_serum_sample is None
    assert_no_drift()


def is_last(sample_name):
    return FCirc.objects.get(serum_sample__name=sample_name).is_last


@pytest.mark.django_db
def test_deleting_the_last_serum_peak_group_makes_the_previous_sample_last(valine):
    assert (is_last("demo_t120_a151"), is_last("demo_t0_a151")) == (True, False)
    PeakGroup.objects.get(msrun_sample__sample__name="demo_t120_a151", name="valine").delete()
    assert (is_last("demo_t120_a151"), is_last("demo_t0_a151")) == (False, True)
    assert_no_drift()


@pytest.mark.django_db
def test_changing_a_samples_tissue_moves_the_last_serum_sample(valine):
    sample = Sample.objects.get(name="demo_t120_a151")
    sample.tissue = Tissue.objects.get(name="brain")
    sample.save()
    sample.refresh_from_db()
    assert sample.is_serum_sample is False
    assert Animal.objects.get(name="demo_a151").last_serum_sample.name == "demo_t0_a151"
    assert (is_last("demo_t120_a151"), is_last("demo_t0_a151")) == (False, True)
    assert_no_drift()


@pytest.mark.django_db
def test_renaming_a_tissue_is_maintained_too(valine):
    Tissue.objects.filter(name="serum_plasma_tail").update(name="plasma_tail")
    assert Sample.objects.filter(is_serum_sample=True).count() == 0
    assert set(Animal.objects.values_list("last_serum_sample", flat=True)) == {None}
    assert_no_drift()


@pytest.mark.django_db
def test_relabelling_a_tracer_label_renames_the_tracer_and_infusate(valine):
    label = TracerLabel.objects.get(tracer__name="valine-[13C5]")
    label.count, label.positions = 2, "2,1"
    label.save()
    assert Tracer.objects.get().name == "valine-[1,2-13C2]"
    assert Infusate.objects.get().name == "valine-[1,2-13C2][20]"
    assert_no_drift()


@pytest.mark.django_db
def test_renaming_a_compound_renames_its_tracer_and_infusate(valine):
    compound = Compound.objects.get(name="valine")
    compound.name = "L-valine"
    compound.save()
    assert Tracer.objects.get().name == "L-valine-[13C5]"
    assert Infusate.objects.get().name == "L-valine-[13C5][20]"
    assert_no_drift()

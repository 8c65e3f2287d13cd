"""Every code block of docs/*.rst and README.md is run here, or listed below as not executable.

Blocks that define models are the models modules of test apps
(``MODEL_BLOCKS`` in tests/doc_blocks.py); every other executable block is
run by one test below, on those models, and the test checks what the text
around the block promises.  A block added, moved or rewritten has a new key
and fails ``test_every_block_is_run_or_listed_as_not_executable`` until it
is classified here.
"""

import contextvars
import inspect
import random
import re
import threading
import time
import types
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.apps import apps as django_apps
from django.contrib import admin as django_admin
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection, migrations, models, transaction
from django.test import RequestFactory, override_settings

import maintained_fields
from maintained_fields import get_autoupdate_mode, override_autoupdate
from maintained_fields.conf import DEFAULTS, get_config, validate
from tests.doc_blocks import MODEL_BLOCKS, ROOT, block, blocks
from tests.docs_expressions import models as expressions
from tests.docs_migrating import models as migrating
from tests.docs_quickstart import models as quickstart
from tests.docs_readme import models as readme

SHELL = "a shell command, not Python"
NOT_EXECUTED = {
    (
        "background.rst",
        2,
        "python benchmarks/background.py --requests 1000 --runs 5 [--clients 2] [--worker celery] [--worker-nice N]",
    ): SHELL + " (a benchmark)",
    ("operations.rst", 0, "python manage.py rebuild_maintained_fields [app_label[.ModelName] ...]"): (
        "the command's synopsis; tests/test_commands.py runs the command"
    ),
    ("operations.rst", 1, "python manage.py check_maintained_fields [app_label[.ModelName] ...]"): (
        "the command's synopsis; tests/test_commands.py runs the command"
    ),
    ("operations.rst", 2, "python manage.py graph_maintained_fields [app_label[.ModelName] ...]"): (
        "the command's synopsis; tests/test_commands.py runs the command"
    ),
    ("performance.rst", 0, 'pip install -e ".[bench]"'): SHELL,
    ("performance.rst", 1, "python benchmarks/mass_load.py --rows 10000 --runs 3"): SHELL + " (a benchmark)",
    (
        "performance.rst",
        2,
        "python benchmarks/mass_load.py --database-url postgres://postgres@127.0.0.1:5432/mf_bench",
    ): SHELL + " (a benchmark)",
    ("performance.rst", 3, "python benchmarks/mass_load.py --scaling --runs 5"): SHELL + " (a benchmark)",
    (
        "performance.rst",
        4,
        "python benchmarks/rebuild.py --database-url postgres://postgres@127.0.0.1:5432/mf_bench --samples 1000000",
    ): SHELL + " (a benchmark)",
    ("quickstart.rst", 0, "pip install /path/to/django-maintained-fields"): SHELL,
    ("quickstart.rst", 1, "cd /path/to/django-maintained-fields"): SHELL,
    ("quickstart.rst", 2, 'INSTALLED_APPS = [..., "maintained_fields", "lab"]'): (
        "a settings fragment whose [...] stands for the project's own apps"
    ),
    ("migrating.rst", 0, "from computedfields.models import ComputedFieldsModel, computed"): (
        "django-computedfields' API, shown for comparison"
    ),
    ("migrating.rst", 2, "from computedfields.models import update_dependent"): (
        "django-computedfields' API, shown for comparison"
    ),
    ("migrating.rst", 5, "from computedfields.models import not_computed"): (
        "django-computedfields' API, shown for comparison"
    ),
    ("tracebase.rst", 0, "class Tracer(MaintainedModel, ElementLabel):"): "TraceBase's API, shown for comparison",
    ("tracebase.rst", 2, "@MaintainedModel.defer_autoupdates("): "TraceBase's API, shown for comparison",
    ("tracebase.rst", 6, "python benchmarks/tracebase.py --copies 1 --runs 3"): SHELL + " (a benchmark)",
    (
        "README.md",
        2,
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python example/manage.py demo",
    ): SHELL + "; .ci/run runs it (README demo command)",
    (
        "README.md",
        3,
        'python3 -m venv .venv && .venv/bin/pip install -q -e ".[test]" && .venv/bin/python runtests.py',
    ): SHELL + "; .ci/run runs it (README test command)",
}

RUN = {}  # block key -> the test that runs it


def runs(*key):
    def register(test):
        RUN[key] = test.__name__
        return test

    return register


def execute(key, namespace):
    """Run the block in ``namespace``; return the namespace."""
    exec(compile(block(key), f"<{key[0]} block {key[1]}>", "exec"), namespace)
    return namespace


def names_of(module):
    return {name: value for name, value in vars(module).items() if not name.startswith("__")}


def test_every_block_is_run_or_listed_as_not_executable():
    modelled = {key for keys in MODEL_BLOCKS.values() for key in keys}
    found = [b.key for b in blocks()]
    assert len(found) == len(set(found))
    unclassified = [k for k in found if k not in NOT_EXECUTED and k not in RUN and k not in modelled]
    assert unclassified == [], "classify these code blocks in tests/test_docs.py"
    stale = [k for k in (*NOT_EXECUTED, *RUN, *modelled) if k not in found]
    assert stale == [], "these keys name no code block of the docs any more"
    assert not set(NOT_EXECUTED) & (set(RUN) | modelled)


def test_blocks_marked_as_shell_are_not_python():
    for b in blocks():
        if b.language in ("sh", "console", "shell", "bash"):
            assert b.key in NOT_EXECUTED, b.key


# Models: the blocks are the models modules; these check what the pages say of them.


@pytest.mark.django_db
def test_quickstart_models_keep_both_columns_right():
    study = quickstart.Study.objects.create(name="Soil")
    sample = quickstart.Sample.objects.create(study=study, name="s-1")
    assert sample.code == "S-1"
    study.refresh_from_db()
    assert study.sample_count == 1
    sample.delete()
    study.refresh_from_db()
    assert study.sample_count == 0


@pytest.mark.django_db
def test_quickstart_aliquot_bulk_writes_count():
    assert isinstance(quickstart.Aliquot.objects, maintained_fields.MaintainedManager)
    assert quickstart.Aliquot._meta.base_manager_name == "objects"


@pytest.mark.django_db
def test_quickstart_expression_fields_are_computed_by_the_database():
    study = expressions.Study.objects.create(name="Soil")
    expressions.Sample.objects.bulk_create(
        [expressions.Sample(study=study, name="a", weight=3), expressions.Sample(study=study, name="b", weight=7)]
    )
    study.refresh_from_db()
    assert (study.sample_count, study.total_weight, study.heavy_count) == (2, 10.0, 1)
    assert sorted(expressions.Sample.objects.values_list("code", "study_name")) == [("A", "Soil"), ("B", "Soil")]


@pytest.mark.django_db
@runs("README.md", 1, 'with override_autoupdate(mode="deferred"):   # each study recomputed once, at the end')
def test_readme_deferred_load():
    studies = {"soil": readme.Study.objects.create(name="Soil"), "water": readme.Study.objects.create(name="Water")}
    Row = types.SimpleNamespace
    spreadsheet = [Row(study="soil", name="a"), Row(study="soil", name="b"), Row(study="water", name="c")]
    key = ("README.md", 1, 'with override_autoupdate(mode="deferred"):   # each study recomputed once, at the end')
    execute(key, {**names_of(readme), "studies": studies, "spreadsheet": spreadsheet})
    counts = dict(readme.Study.objects.values_list("name", "sample_count"))
    assert counts == {"Soil": 2, "Water": 1}
    assert sorted(readme.Sample.objects.values_list("code", flat=True)) == ["A", "B", "C"]


@pytest.mark.django_db
@runs("quickstart.rst", 6, "MAINTAINED_FIELDS = {")
def test_quickstart_settings_are_the_defaults():
    documented = execute(("quickstart.rst", 6, "MAINTAINED_FIELDS = {"), {})["MAINTAINED_FIELDS"]
    assert documented == DEFAULTS
    with override_settings(MAINTAINED_FIELDS=documented):
        assert get_config() == DEFAULTS


def test_the_settings_reference_lists_every_key_with_its_default():
    reference = (ROOT / "docs" / "reference.rst").read_text()
    table = reference[reference.index(".. _settings:") :]
    rows = dict(re.findall(r"^``([A-Z_]+)``\s+``([^`]+)``", table, re.M))
    assert rows == {key: repr(value).replace("'", '"') for key, value in DEFAULTS.items()}


@pytest.mark.django_db
@runs("modes.rst", 0, "from maintained_fields import override_autoupdate")
def test_modes_switching():
    study = quickstart.Study.objects.create(name="Soil")
    seen = []

    def load_spreadsheet(path):
        seen.append(get_autoupdate_mode())
        quickstart.Sample.objects.create(study=study, name=path)

    execute(("modes.rst", 0, "from maintained_fields import override_autoupdate"),
            {"load_spreadsheet": load_spreadsheet, "path": "a.xlsx"})  # fmt: skip
    assert seen == ["deferred"]
    study.refresh_from_db()
    assert study.sample_count == 1


@pytest.mark.django_db
@runs("modes.rst", 1, "async def add_samples(study, names):")
def test_modes_async_with():
    study = quickstart.Study.objects.create(name="Soil")
    namespace = execute(("modes.rst", 1, "async def add_samples(study, names):"),
                        {"override_autoupdate": override_autoupdate, "Sample": quickstart.Sample})  # fmt: skip
    async_to_sync(namespace["add_samples"])(study, ["S-1", "S-2"])  # on this test's connection
    study.refresh_from_db()
    assert study.sample_count == 2


@pytest.mark.django_db(transaction=True)
@runs("modes.rst", 2, "from django.db import transaction")
def test_modes_dry_run_rolls_back():
    study = quickstart.Study.objects.create(name="Soil")
    namespace = execute(
        ("modes.rst", 2, "from django.db import transaction"), {"Sample": quickstart.Sample, "study": study}
    )
    study.refresh_from_db()
    assert sorted(quickstart.Sample.objects.values_list("name", flat=True)) == ["S-1", "S-2"]  # the second call only
    assert study.sample_count == 2
    assert namespace["load_samples"](study, ["S-3"], dry_run=True) == 1
    assert quickstart.Sample.objects.count() == 2


@runs("background.rst", 0, '# Django 5.2 only: pip install "django-maintained-fields[background]"')
def test_background_settings_are_valid():
    namespace = execute(
        ("background.rst", 0, '# Django 5.2 only: pip install "django-maintained-fields[background]"'),
        {"INSTALLED_APPS": []},
    )
    assert validate(namespace["MAINTAINED_FIELDS"])["DEFAULT_MODE"] == "background"


@runs("background.rst", 1, "# django-tasks-db: the queue is a table of the project's database.")
def test_background_backends_exist():
    from django.utils.module_loading import import_string

    source = block(("background.rst", 1, "# django-tasks-db: the queue is a table of the project's database."))
    for backend in re.findall(r'"BACKEND": "([\w.]+)"', source):
        import_string(backend)
    namespace = execute(
        ("background.rst", 1, "# django-tasks-db: the queue is a table of the project's database."),
        {"INSTALLED_APPS": []},
    )
    assert namespace["INSTALLED_APPS"] == ["django_tasks_db", "django_tasks_fennel"]


@pytest.mark.django_db
@runs("deployment.rst", 0, "for attempt in range(100):")
def test_deployment_retry_loop_retries_serialization_failures():
    calls = []

    def record_sample(*args):
        calls.append(args)
        if len(calls) < 3:
            driver_error = Exception("could not serialize access")
            driver_error.sqlstate = "40001"  # as psycopg's errors carry it
            raise OperationalError(*driver_error.args) from driver_error

    execute(("deployment.rst", 0, "for attempt in range(100):"), {
        "transaction": transaction, "OperationalError": OperationalError, "time": time, "random": random,
        "record_sample": record_sample,
    })  # fmt: skip
    assert len(calls) == 3


@runs("deployment.rst", 1, "context = contextvars.copy_context()")
def test_deployment_thread_in_a_copied_context_sees_the_override():
    seen = []
    done = threading.Event()

    def load_part(rows):
        seen.append((get_autoupdate_mode(), rows))
        done.set()

    with override_autoupdate(mode="disabled"):
        execute(("deployment.rst", 1, "context = contextvars.copy_context()"), {
            "contextvars": contextvars, "threading": threading, "load_part": load_part, "rows": [1, 2],
        })  # fmt: skip
        assert done.wait(10)
    assert seen == [("disabled", [1, 2])]


@runs("operations.rst", 3, "from maintained_fields import RecomputeMaintainedFields")
def test_operations_migration_example():
    namespace = execute(
        ("operations.rst", 3, "from maintained_fields import RecomputeMaintainedFields"),
        {"migrations": migrations, "models": models},
    )
    add, recompute = namespace["operations"]
    assert isinstance(add, migrations.AddField)
    assert recompute.deconstruct() == ("RecomputeMaintainedFields", ["study"], {"fields": ["sample_count"]})


@pytest.mark.django_db
@runs("operations.rst", 4, "from maintained_fields import MaintainedModelAdminMixin")
def test_operations_admin_example():
    site = django_admin.AdminSite(name="docs")
    admin = types.SimpleNamespace(register=lambda model: django_admin.register(model, site=site),
                                  ModelAdmin=django_admin.ModelAdmin)  # fmt: skip
    execute(("operations.rst", 4, "from maintained_fields import MaintainedModelAdminMixin"),
            {"admin": admin, "Study": quickstart.Study})  # fmt: skip
    model_admin = site._registry[quickstart.Study]
    assert "sample_count" in model_admin.get_readonly_fields(RequestFactory().get("/"))


@pytest.fixture
def two_studies(db):
    return migrating.Study.objects.create(name="Old"), migrating.Study.objects.create(name="New")


@pytest.mark.django_db
def test_migrating_models(two_studies):
    old, new = two_studies
    sample = migrating.Sample.objects.create(study=old, name="s")
    assert sample.label == "Old/s"
    old.refresh_from_db()
    assert old.sample_count == 1


@runs("migrating.rst", 3, "Sample.objects.filter(study=old).update(study=new)")
def test_migrating_bulk_update_needs_no_update_dependent(two_studies):
    old, new = two_studies
    migrating.Sample.objects.create(study=old, name="s")
    execute(("migrating.rst", 3, "Sample.objects.filter(study=old).update(study=new)"),
            {"Sample": migrating.Sample, "old": old, "new": new})  # fmt: skip
    assert dict(migrating.Study.objects.values_list("name", "sample_count")) == {"Old": 0, "New": 1}


@runs("migrating.rst", 4, "from maintained_fields import mark_changed")
def test_migrating_mark_changed_repairs_raw_sql(two_studies):
    old, new = two_studies
    sample = migrating.Sample.objects.create(study=new, name="s")
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {migrating.Sample._meta.db_table} SET name = 't' WHERE id = %s", [sample.pk])
    key = ("migrating.rst", 4, "from maintained_fields import mark_changed")
    execute(key, {"Sample": migrating.Sample, "new": new})
    sample.refresh_from_db()
    assert sample.label == "New/t"


@runs("migrating.rst", 6, "from maintained_fields import override_autoupdate")
def test_migrating_deferred_and_disabled_blocks(two_studies):
    old, new = two_studies
    modes = []

    def load_rows():
        modes.append(get_autoupdate_mode())
        migrating.Sample.objects.create(study=new, name=str(len(modes)))

    execute(("migrating.rst", 6, "from maintained_fields import override_autoupdate"), {"load_rows": load_rows})
    assert modes == ["deferred", "disabled"]
    new.refresh_from_db()
    assert new.sample_count == 1  # the deferred block's sample; the disabled block's is left for a rebuild


def test_the_reference_states_the_real_signatures():
    reference = (ROOT / "docs" / "reference.rst").read_text()
    stated = re.findall(r"^\.\. autoclass:: maintained_fields\.(\w+)(\(.*\))$", reference, re.M)
    assert stated
    for name, signature in stated:
        real = inspect.signature(getattr(maintained_fields, name).__init__)
        real = real.replace(parameters=list(real.parameters.values())[1:], return_annotation=inspect.Signature.empty)
        without_annotations = real.replace(
            parameters=[p.replace(annotation=inspect.Parameter.empty) for p in real.parameters.values()]
        )
        assert signature == str(without_annotations), name



# docs/tracebase.rst: the example project's tracebase app (tests/test_tracebase.py tests it at length).

TRACEBASE_TINY = ROOT / "example" / "tracebase" / "data" / "full_tiny_study"
tracebase_app = pytest.mark.skipif(
    not django_apps.is_installed("tracebase"), reason="the example project's tracebase app is not beside the tests"
)


@tracebase_app
@runs("tracebase.rst", 1, "class Tracer(MaintainedModel):")
def test_tracebase_model_block_is_the_apps_code():
    source = (ROOT / "example" / "tracebase" / "models.py").read_text()
    assert block(("tracebase.rst", 1, "class Tracer(MaintainedModel):")).rstrip() in source


@tracebase_app
@pytest.mark.django_db
@pytest.mark.filterwarnings("ignore:Data Validation extension is not supported")
@pytest.mark.parametrize("dry_run", [False, True])
@runs("tracebase.rst", 3, "from django.db import transaction")
def test_tracebase_deferred_load_and_dry_run(dry_run, monkeypatch):
    from tracebase import loading
    from tracebase.models import Animal, Tracer

    seen = []
    load = loading.StudyLoader.load

    def recording(self):
        seen.append(get_autoupdate_mode())
        return load(self)

    monkeypatch.setattr(loading.StudyLoader, "load", recording)
    namespace = execute(("tracebase.rst", 3, "from django.db import transaction"),
                        {"folder": TRACEBASE_TINY, "dry_run": dry_run})  # fmt: skip
    assert seen == ["disabled" if dry_run else "deferred"]
    assert namespace["report"].created["Animal"] == 3
    if dry_run:
        assert Animal.objects.count() == 0
    else:
        assert Tracer.objects.get(compound__name="glutamine").name == "glutamine-[13C5,15N2]"


@tracebase_app
@pytest.mark.django_db
@pytest.mark.filterwarnings("ignore:Data Validation extension is not supported")
@runs("tracebase.rst", 4, "from maintained_fields import override_autoupdate")
def test_tracebase_disabled_and_labelled_scopes():
    from tracebase.loading import load_study
    from tracebase.models import Infusate, Sample, Tracer

    load_study(TRACEBASE_TINY)
    execute(("tracebase.rst", 4, "from maintained_fields import override_autoupdate"), {})
    assert Sample.objects.get(name="xzl5_t").is_serum_sample is True  # stale, as the comment says
    with pytest.raises(CommandError, match="^2 maintained value"):  # xzl4_t's and xzl5_t's
        call_command("check_maintained_fields", "tracebase", "--labels", "fcirc_calcs", stdout=StringIO())
    assert Tracer.objects.filter(name="L-glutamine-[13C5,15N2]").count() == 1
    assert Infusate.objects.filter(name="L-glutamine-[13C5,15N2][200]").count() == 1


@tracebase_app
@pytest.mark.django_db
@pytest.mark.filterwarnings("ignore:Data Validation extension is not supported")
@runs("tracebase.rst", 5, "from tracebase.models import Compound, Infusate, Tracer")
def test_tracebase_rename_a_compound():
    from tracebase.loading import load_study

    load_study(TRACEBASE_TINY)
    key = ("tracebase.rst", 5, "from tracebase.models import Compound, Infusate, Tracer")
    commented = [line.split("#") for line in block(key).splitlines() if "# '" in line]
    shown = {code.strip(): value.strip() for code, value in commented}
    assert len(shown) == 2
    namespace = execute(key, {})
    for expression, value in shown.items():
        assert repr(eval(expression, namespace)) == value

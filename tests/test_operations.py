"""RecomputeMaintainedFields fills maintained columns in a migration."""

import pytest
from django.apps import apps
from django.db import connection
from django.db.migrations.state import ProjectState
from django.db.migrations.writer import MigrationWriter

from maintained_fields import RecomputeMaintainedFields, override_autoupdate
from tests.testapp.models import Lab, Sample, Study


def run(operation):
    state = ProjectState.from_apps(apps)  # historical models, without the methods
    with connection.schema_editor() as editor:
        operation.database_forwards("testapp", editor, state, state)


@pytest.mark.django_db(transaction=True)
def test_fills_the_named_fields_on_historical_rows():
    with override_autoupdate(mode="disabled"):
        study = Study.objects.create(name="Soil survey")
        Sample.objects.create(study=study, name="a")
    run(RecomputeMaintainedFields("study", fields=["sample_count", "slug"]))
    study.refresh_from_db()
    assert (study.sample_count, study.slug, study.summary) == (1, "soil-survey", "")


@pytest.mark.django_db(transaction=True)
def test_every_field_of_the_model_by_default():
    with override_autoupdate(mode="disabled"):
        Sample.objects.create(study=Study.objects.create(name="S", lab=Lab.objects.create(name="L")), name="a")
    run(RecomputeMaintainedFields("sample"))
    assert list(Sample.objects.values_list("code", "study_name", "lab_name")) == [("A", "S", "L")]


@pytest.mark.django_db(transaction=True)
def test_unknown_field_is_a_clear_error():
    with pytest.raises(ValueError, match="sample_cuont is not a maintained field of testapp.Study"):
        run(RecomputeMaintainedFields("study", fields=["sample_cuont"]))


def test_serializes_into_a_migration_and_describes_itself():
    operation = RecomputeMaintainedFields("study", fields=["sample_count"])
    text, imports = MigrationWriter.serialize(operation)
    assert "maintained_fields.operations.RecomputeMaintainedFields(" in text
    assert "fields=['sample_count']" in text
    assert operation.describe() == "Recompute maintained fields of study"
    assert operation.migration_name_fragment == "recompute_study"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("Study", "sample_count"), r"fields as a list of field names, e.g. fields=\['sample_count'\]"),
        ((None,), "model name"),
    ],
)
def test_bad_arguments_are_refused_when_the_operation_is_written(arguments, message):
    # Not only when the migration runs, with an error about single letters.
    with pytest.raises(TypeError, match=message):
        RecomputeMaintainedFields(*arguments)

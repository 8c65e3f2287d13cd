"""loaddata: fixture rows arrive raw; their maintained fields are right afterwards."""

from decimal import Decimal

import pytest
from django.core.management import call_command
from django.test import TestCase

from maintained_fields import override_autoupdate
from tests.testapp.models import Lab, Sample, Study

pytestmark = pytest.mark.django_db


def test_fixture_rows_are_maintained_once_at_the_end(sql):
    with sql() as queries:
        call_command("loaddata", "survey", verbosity=0)
    soil, water = Study.objects.order_by("pk")
    assert (soil.sample_count, water.sample_count) == (2, 1)
    assert (soil.slug, soil.total_weight, soil.summary) == ("soil-survey", Decimal("3.75"), "Soil survey: 2 samples")
    assert water.aliquot_volume == 0.5
    assert Lab.objects.get().sample_total == 3
    assert list(Sample.objects.order_by("pk").values_list("code", "study_name", "lab_name")) == [
        ("A1", "Soil survey", "North"),
        ("A2", "Soil survey", "North"),
        ("B1", "Water survey", "North"),
    ]
    counts = [q for q in queries if 'COUNT(*) AS "__count" FROM "testapp_sample"' in q]
    assert len(counts) == 2  # once per study, not once per sample
    call_command("check_maintained_fields")


def test_reloading_a_fixture_that_moves_a_row_updates_the_old_parent():
    call_command("loaddata", "survey", verbosity=0)
    Sample.objects.filter(pk=3).update(study_id=1)
    call_command("loaddata", "survey", verbosity=0)
    assert list(Study.objects.order_by("pk").values_list("sample_count", flat=True)) == [2, 1]


def test_disabled_mode_loads_without_maintenance():
    with override_autoupdate(mode="disabled"):
        call_command("loaddata", "survey", verbosity=0)
    assert Study.objects.get(pk=1).sample_count == 0


class TestCaseFixtures(TestCase):
    fixtures = ["survey"]

    def test_test_case_fixtures_are_maintained(self):
        self.assertEqual(Study.objects.get(pk=1).sample_count, 2)


def test_inside_a_deferred_scope_the_load_joins_it():
    with override_autoupdate(mode="deferred"):
        call_command("loaddata", "survey", verbosity=0)
        assert Study.objects.get(pk=1).sample_count == 0
    assert Study.objects.get(pk=1).sample_count == 2

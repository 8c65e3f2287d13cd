"""Every write path keeps maintained fields right, in all three modes:
immediate updates at once, deferred at the end of its scope, disabled never."""

from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from maintained_fields import mark_changed, override_autoupdate
from tests.conftest import fresh
from tests.modelcheck.models import Order, OrderLine
from tests.testapp.models import Aliquot, Lab, Membership, Project, Sample, Study, Tag

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["immediate", "deferred", "disabled"])
def mode(request):
    return request.param


def expect(mode, actual, right, stale):
    assert actual == (stale if mode == "disabled" else right)


@pytest.fixture
def two_studies(lab):
    return Study.objects.create(name="first", lab=lab), Study.objects.create(name="second", lab=lab)


class TestUpdate:
    @pytest.mark.parametrize("how", ["move", "move and renumber"])
    def test_an_update_that_changes_a_composite_primary_key(self, how, mode):
        # The row is found again by its new key: the order it joins counts it
        # (the model check found the update counted for neither order).
        first, second = Order.objects.create(), Order.objects.create()
        OrderLine.objects.create(order=first, line_no=7)
        values = {"order": second, **({"line_no": 8} if how == "move and renumber" else {})}
        with override_autoupdate(mode=mode):
            OrderLine.objects.filter(pk__in=[(first.pk, 7)]).update(**values)
        expect(mode, [fresh(first).line_count, fresh(second).line_count], [0, 1], [1, 0])

    def test_own_row_fields_follow_an_update(self, mode, study):
        sample = Sample.objects.create(study=study, name="old")
        with override_autoupdate(mode=mode):
            Sample.objects.filter(pk=sample.pk).update(name="new")
        expect(mode, fresh(sample).code, "NEW", "OLD")

    def test_moving_rows_updates_old_and_new_parents(self, mode, two_studies, lab):
        first, second = two_studies
        for name in "abc":
            Sample.objects.create(study=first, name=name)
        with override_autoupdate(mode=mode):
            Sample.objects.filter(name__in="ab").update(study=second)
        expect(mode, (fresh(first).sample_count, fresh(second).sample_count), (1, 2), (3, 0))
        expect(mode, fresh(Sample.objects.get(name="a")).study_name, "second", "first")
        assert fresh(lab).sample_total == 3

    def test_f_expressions(self, mode, study):
        Sample.objects.create(study=study, name="a", weight=Decimal("1.5"))
        with override_autoupdate(mode=mode):
            Sample.objects.update(weight=F("weight") * 2)
        expect(mode, fresh(study).total_weight, Decimal("3.00"), Decimal("1.50"))

    def test_a_maintained_value_written_directly_is_put_right(self, study):
        Sample.objects.create(study=study, name="a")
        Study.objects.filter(pk=study.pk).update(sample_count=42)
        assert fresh(study).sample_count == 1

    def test_annotated_queryset(self, study):
        from django.db.models import Count

        Sample.objects.create(study=study, name="a")
        Study.objects.annotate(n=Count("samples")).filter(n__gt=0).update(name="Annotated")
        assert fresh(study).summary == "Annotated: 1 samples"
        assert Sample.objects.get().study_name == "Annotated"

    def test_update_reads_rows_in_bulk(self, two_studies):
        first, second = two_studies
        Sample.objects.bulk_create([Sample(study=first, name=str(i)) for i in range(50)])
        with override_autoupdate(mode="deferred"):
            with CaptureQueriesContext(connection) as queries:
                Sample.objects.update(study=second)
        # the rows before and the UPDATE, no query per row; the new key is the
        # value written (on MySQL and MariaDB, inside a transaction, one more
        # locks the old and new parents first)
        assert len(queries) == (3 if connection.vendor == "mysql" else 2)
        assert (fresh(first).sample_count, fresh(second).sample_count) == (0, 50)
        with override_autoupdate(mode="deferred"):
            with CaptureQueriesContext(connection) as queries:
                Sample.objects.update(study=F("study") - second.pk + first.pk)
        # an expression: the moved keys are read after the UPDATE
        assert len(queries) == (4 if connection.vendor == "mysql" else 3)
        assert (fresh(first).sample_count, fresh(second).sample_count) == (50, 0)
        with override_autoupdate(mode="deferred"):
            Sample.objects.update(study=second)
        assert (fresh(first).sample_count, fresh(second).sample_count) == (0, 50)


class TestBulkCreate:
    def test_own_row_fields_are_computed_before_the_insert(self, mode, study):
        with override_autoupdate(mode=mode):
            Sample.objects.bulk_create([Sample(study=study, name="x")])
        expect(mode, Sample.objects.get().code, "X", "")

    def test_parents_are_recomputed_once_for_a_thousand_rows(self, mode, two_studies, lab):
        first, second = two_studies
        rows = [Sample(study=first if i % 2 else second, name=str(i)) for i in range(1000)]
        with CaptureQueriesContext(connection) as queries:
            with override_autoupdate(mode=mode):
                Sample.objects.bulk_create(rows)
        counts = [q["sql"] for q in queries if "COUNT(*)" in q["sql"]]
        expect(mode, len(counts), 2, 0)  # one count per parent, not per row
        expect(mode, (fresh(first).sample_count, fresh(second).sample_count, fresh(lab).sample_total),
               (500, 500, 1000), (0, 0, 0))
        expect(mode, fresh(rows[0]).study_name, "second", "")

    def test_plain_model_with_the_manager(self, mode, study):
        sample = Sample.objects.create(study=study, name="a")
        with override_autoupdate(mode=mode):
            Aliquot.objects.bulk_create([Aliquot(sample=sample, volume=1.5), Aliquot(sample=sample, volume=2.0)])
        expect(mode, fresh(study).aliquot_volume, 3.5, 0.0)


class TestBulkUpdate:
    def test_moves_and_own_row_fields(self, mode, two_studies):
        first, second = two_studies
        samples = [Sample.objects.create(study=first, name=n) for n in "ab"]
        for sample in samples:
            sample.study = second
            sample.name = sample.name + "2"
        with override_autoupdate(mode=mode):
            Sample.objects.bulk_update(samples, ["study", "name"])
        expect(mode, (fresh(first).sample_count, fresh(second).sample_count), (0, 2), (2, 0))
        expect(mode, fresh(samples[0]).code, "A2", "A")

    def test_rows_that_no_longer_exist_are_skipped(self, study):
        keep, gone = Sample.objects.create(study=study, name="keep"), Sample.objects.create(study=study, name="gone")
        Sample.objects.filter(pk=gone.pk).delete()
        keep.weight = gone.weight = Decimal("5")
        assert Sample.objects.bulk_update([keep, gone], ["weight"]) == 1
        assert fresh(study).total_weight == Decimal("5.00")
        assert not Sample.objects.filter(pk=gone.pk).exists()

    def test_plain_model(self, study):
        sample = Sample.objects.create(study=study, name="a")
        aliquot = Aliquot.objects.create(sample=sample, volume=1.0)
        aliquot.volume = 4.0
        Aliquot.objects.bulk_update([aliquot], ["volume"])
        assert fresh(study).aliquot_volume == 4.0


class TestDeleteAndCreateHelpers:
    def test_queryset_delete(self, mode, study, lab):
        for name in "abc":
            Sample.objects.create(study=study, name=name)
        with override_autoupdate(mode=mode):
            Sample.objects.filter(name__in="ab").delete()
        expect(mode, (fresh(study).sample_count, fresh(lab).sample_total), (1, 1), (3, 3))

    def test_get_or_create_and_update_or_create(self, mode, two_studies):
        first, second = two_studies
        with override_autoupdate(mode=mode):
            sample, _ = Sample.objects.get_or_create(name="a", defaults={"study": first})
            Sample.objects.update_or_create(name="a", defaults={"study": second})
        expect(mode, (fresh(first).sample_count, fresh(second).sample_count), (0, 1), (0, 0))
        expect(mode, fresh(sample).code, "A", "")


class TestRelatedManagers:
    @pytest.mark.parametrize("bulk", [True, False])
    def test_reverse_foreign_key_add_remove_set_clear(self, mode, bulk, study):
        sample = Sample.objects.create(study=study, name="a")
        one, two = Aliquot.objects.create(volume=1.0), Aliquot.objects.create(volume=2.0)
        with override_autoupdate(mode=mode):
            sample.aliquots.add(one, two, bulk=bulk)
        expect(mode, fresh(study).aliquot_volume, 3.0, 0.0)
        with override_autoupdate(mode=mode):
            sample.aliquots.remove(one, bulk=bulk)
        expect(mode, fresh(study).aliquot_volume, 2.0, 0.0)
        with override_autoupdate(mode=mode):
            sample.aliquots.set([one], bulk=bulk)
        expect(mode, fresh(study).aliquot_volume, 1.0, 0.0)
        with override_autoupdate(mode=mode):
            sample.aliquots.clear(bulk=bulk)
        expect(mode, fresh(study).aliquot_volume, 0.0, 0.0)

    @pytest.mark.parametrize("bulk", [True, False])
    def test_reverse_foreign_key_add_moves_from_the_old_parent(self, bulk, two_studies):
        first, second = two_studies
        sample = Sample.objects.create(study=first, name="a")
        second.samples.add(sample, bulk=bulk)
        assert (fresh(first).sample_count, fresh(second).sample_count) == (0, 1)

    def test_custom_through_model_from_both_sides(self, mode, study):
        project = Project.objects.create(name="Atlas")
        with override_autoupdate(mode=mode):
            project.studies.add(study, through_defaults={"role": "lead"})
        expect(mode, (fresh(project).study_count, fresh(study).project_names), (1, "Atlas"), (0, ""))
        with override_autoupdate(mode=mode):
            study.projects.remove(project)
        expect(mode, (fresh(project).study_count, fresh(study).project_names), (0, ""), (0, ""))

    def test_custom_through_rows_saved_and_deleted_directly(self, mode, study):
        project = Project.objects.create(name="Atlas")
        other = Study.objects.create(name="other")
        with override_autoupdate(mode=mode):
            membership = Membership.objects.create(project=project, study=study)
        expect(mode, fresh(project).study_count, 1, 0)
        with override_autoupdate(mode=mode):
            membership.study = other
            membership.save()
        expect(mode, (fresh(study).project_names, fresh(other).project_names), ("", "Atlas"), ("", ""))
        with override_autoupdate(mode=mode):
            Membership.objects.filter(pk=membership.pk).update(study=study)
        expect(mode, (fresh(study).project_names, fresh(other).project_names), ("Atlas", ""), ("", ""))
        with override_autoupdate(mode=mode):
            Membership.objects.all().delete()
        expect(mode, (fresh(study).project_names, fresh(project).study_count), ("", 0), ("", 0))

    def test_renaming_across_a_custom_through(self, study):
        project = Project.objects.create(name="Atlas")
        Membership.objects.create(project=project, study=study)
        Project.objects.filter(pk=project.pk).update(name="Beacon")
        assert fresh(study).project_names == "Beacon"


class TestMarkChanged:
    def test_raw_sql_then_mark_changed(self, mode, study):
        Sample.objects.create(study=study, name="a")
        with connection.cursor() as cursor:
            cursor.execute("UPDATE testapp_sample SET name = 'raw', weight = 7")
        with override_autoupdate(mode=mode):
            mark_changed(Sample.objects.all())
        expect(mode, (Sample.objects.get().code, fresh(study).total_weight), ("RAW", Decimal("7.00")),
               ("A", Decimal("0.00")))

    def test_instances_and_moves_marked_before_and_after(self, two_studies):
        first, second = two_studies
        sample = Sample.objects.create(study=first, name="a")
        with override_autoupdate(mode="deferred"):
            mark_changed([sample])
            with connection.cursor() as cursor:
                cursor.execute("UPDATE testapp_sample SET study_id = %s", [second.pk])
            mark_changed(Sample.objects.all())
        assert (fresh(first).sample_count, fresh(second).sample_count) == (0, 1)

    def test_a_model_nothing_depends_on_is_a_clear_error(self):
        from django.contrib.auth.models import Group

        with pytest.raises(ValueError, match="auth.Group has no maintained fields"):
            mark_changed(Group.objects.all())


def test_lab_fixture_uses_all_models(lab):
    assert Lab.objects.count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["immediate", "deferred", "disabled"])
def test_select_for_update_then_update_outside_a_transaction(mode):
    # Plain Django ignores the lock here; so must every mode.
    from tests.drift.models import Box, Shelf

    shelf = Shelf.objects.create(name="a")
    box = Box.objects.create(shelf=shelf)
    with override_autoupdate(mode=mode):
        assert Box.objects.select_for_update().filter(pk=box.pk).update(shelf=None) == 1
    assert Shelf.objects.get(pk=shelf.pk).box_count == (1 if mode == "disabled" else 0)
    Box.objects.all().delete()
    Shelf.objects.all().delete()


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_mark_changed_takes_instances_of_several_models(mode, study):
    from tests.drift.models import Box, Shelf

    shelf = Shelf.objects.create(name="a")
    Box.objects.create(shelf=shelf)
    sample = Sample.objects.create(study=study, name="a")
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {Shelf._meta.db_table} SET box_count = 7")
        cursor.execute(f"UPDATE {Study._meta.db_table} SET sample_count = 7")
    with override_autoupdate(mode=mode):
        mark_changed([shelf, sample.study, sample])
    assert (Shelf.objects.get().box_count, Study.objects.get().sample_count) == (1, 1)
    with pytest.raises(TypeError, match="QuerySet or model instances, not 3"):
        mark_changed([shelf, 3])


@pytest.mark.parametrize("write", ["bulk_create", "update", "flush"])
def test_names_read_through_foreign_keys_cost_no_query_per_row(write, lab):
    # Sample.study_name and lab_name come from study__name and study__lab__name.
    studies = [Study.objects.create(name=f"s{n}", lab=lab) for n in range(5)]

    def queries(rows):
        Sample.objects.all().delete()
        samples = [Sample(study=studies[n % 5], name=f"x{n}") for n in range(rows)]
        if write != "bulk_create":
            with override_autoupdate(mode="disabled"):
                Sample.objects.bulk_create([Sample(study_id=s.study_id, name=s.name) for s in samples])
        with CaptureQueriesContext(connection) as captured, override_autoupdate(mode="deferred"):
            if write == "bulk_create":
                Sample.objects.bulk_create([Sample(study_id=s.study_id, name=s.name) for s in samples])
            elif write == "update":
                Sample.objects.update(study_id=studies[0].pk)
            else:
                mark_changed(Sample.objects.all())
        assert {(s.study_name, s.lab_name) for s in Sample.objects.all()} <= {(s.name, lab.name) for s in studies}
        assert all(s.study_name == s.study.name for s in Sample.objects.select_related("study"))
        return len(captured)

    assert queries(100) == queries(10)


def test_a_queryset_delete_finds_what_depends_on_its_rows_in_bulk(mode, lab):
    # Study.tag_names reads tags__name: deleting tags finds their studies first.
    studies = [Study.objects.create(name=f"s{n}", lab=lab) for n in range(3)]

    def delete(tags):
        created = Tag.objects.bulk_create([Tag(name=f"t{n:03}") for n in range(tags)])
        for study in studies:
            study.tags.add(*created)
        with CaptureQueriesContext(connection) as captured, override_autoupdate(mode=mode):
            Tag.objects.filter(name__startswith="t").delete()
        for study in studies:
            expect(mode, fresh(study).tag_names, "", ",".join(tag.name for tag in created))
        return len(captured)

    assert delete(40) == delete(4)

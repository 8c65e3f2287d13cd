"""Immediate mode: every write updates what depends on it, at once."""

from decimal import Decimal

import pytest
from django.db import transaction

from maintained_fields import override_autoupdate
from tests.conftest import fresh
from tests.testapp.models import Aliquot, Lab, Sample, Study, Tag

pytestmark = pytest.mark.django_db


class TestOwnRow:
    def test_computed_before_insert(self, study, sql):
        with sql() as queries:
            sample = Sample(study=study, name="abc")
            sample.save()
        inserts = [q for q in queries if q.startswith("INSERT")]
        assert len(inserts) == 1 and "'ABC'" in inserts[0]
        assert fresh(sample).code == "ABC"

    def test_update_fields_is_widened(self, study):
        sample = Sample.objects.create(study=study, name="abc")
        sample.name = "xyz"
        sample.save(update_fields=["name"])
        assert fresh(sample).code == "XYZ"

    def test_update_fields_without_the_dependency_leaves_the_field(self, study):
        sample = Sample.objects.create(study=study, name="abc")
        with override_autoupdate(mode="disabled"):
            Sample.objects.filter(pk=sample.pk).update(code="manual")
        sample.weight = Decimal("2")
        sample.save(update_fields=["weight"])
        assert fresh(sample).code == "manual"

    def test_method_without_depends_on_runs_on_every_save(self, study):
        # It may read any field: with update_fields, from the row as stored
        # (an outside tester's method read a field set in memory and left
        # out of update_fields, and stored what the row did not hold).
        with override_autoupdate(mode="disabled"):
            Study.objects.filter(pk=study.pk).update(name="Deep Soil")
        study.save(update_fields=["lab"])
        assert fresh(study).slug == "deep-soil"
        study.name = "Not Saved"
        study.save(update_fields=["lab"])
        assert (fresh(study).name, fresh(study).slug) == ("Deep Soil", "deep-soil")
        study.save()
        assert fresh(study).slug == "not-saved"

    def test_method_stays_callable_and_writes_nothing(self, study):
        sample = Sample.objects.create(study=study, name="abc")
        sample.name = "new"
        assert sample.compute_code() == "NEW"
        assert fresh(sample).code == "ABC"


class TestRelations:
    def test_reverse_fk_count_and_chain_to_the_lab(self, lab, study):
        Sample.objects.create(study=study, name="a")
        Sample.objects.create(study=study, name="b")
        assert fresh(study).sample_count == 2
        assert fresh(study).summary == "Soil survey: 2 samples"
        assert fresh(lab).sample_total == 2

    def test_saved_instance_gets_values_computed_after_the_write(self, lab, study):
        sample = Sample.objects.create(study=study, name="a")
        assert (sample.study_name, sample.lab_name) == ("Soil survey", "North")

    def test_forward_path_ending_in_a_field(self, lab, study):
        sample = Sample.objects.create(study=study, name="a")
        study.name = "Renamed"
        study.save()
        assert fresh(sample).study_name == "Renamed"
        lab.name = "South"
        lab.save()
        assert fresh(sample).lab_name == "South"

    def test_path_ending_in_a_field_ignores_other_fields(self, study):
        sample = Sample.objects.create(study=study, name="a", weight=Decimal("1.5"))
        with override_autoupdate(mode="disabled"):
            Study.objects.filter(pk=study.pk).update(total_weight=Decimal("99"))
        sample.name = "renamed"
        sample.save()
        assert fresh(study).total_weight == Decimal("99")
        sample.weight = Decimal("2")
        sample.save()
        assert fresh(study).total_weight == Decimal("2.00")

    def test_multi_hop_through_a_plain_model(self, study):
        sample = Sample.objects.create(study=study, name="a")
        aliquot = Aliquot.objects.create(sample=sample, volume=1.25)
        Aliquot.objects.create(sample=sample, volume=0.5)
        assert fresh(study).aliquot_volume == 1.75
        aliquot.volume = 2.0
        aliquot.save()
        assert fresh(study).aliquot_volume == 2.5
        aliquot.delete()
        assert fresh(study).aliquot_volume == 0.5

    def test_move_updates_old_and_new_parent_at_every_hop(self, lab):
        other_lab = Lab.objects.create(name="Other")
        first = Study.objects.create(name="first", lab=lab)
        second = Study.objects.create(name="second", lab=other_lab)
        sample = Sample.objects.create(study=first, name="a")
        Aliquot.objects.create(sample=sample, volume=3.0)
        sample.study = second
        sample.save()
        assert (fresh(first).sample_count, fresh(second).sample_count) == (0, 1)
        assert (fresh(lab).sample_total, fresh(other_lab).sample_total) == (0, 1)
        assert (fresh(first).aliquot_volume, fresh(second).aliquot_volume) == (0.0, 3.0)
        assert fresh(sample).study_name == "second"

    def test_old_parent_is_the_one_in_the_database_not_the_one_loaded(self, lab):
        first = Study.objects.create(name="first", lab=lab)
        second = Study.objects.create(name="second", lab=lab)
        third = Study.objects.create(name="third", lab=lab)
        sample = Sample.objects.create(study=first, name="a")
        stale = Sample.objects.get(pk=sample.pk)
        sample.study = second
        sample.save()
        stale.study = third
        stale.save()
        counts = [fresh(s).sample_count for s in (first, second, third)]
        assert counts == [0, 0, 1]

    def test_moving_a_study_between_labs(self, lab, study):
        other = Lab.objects.create(name="Other")
        Sample.objects.create(study=study, name="a")
        study.lab = other
        study.save()
        assert (fresh(lab).sample_total, fresh(other).sample_total) == (0, 1)
        assert Sample.objects.get().lab_name == "Other"

    def test_many_to_many_from_both_sides(self, study):
        red, blue = Tag.objects.create(name="red"), Tag.objects.create(name="blue")
        study.tags.add(red, blue)
        assert fresh(study).tag_names == "blue,red"
        assert fresh(red).study_count == 1
        red.studies.remove(study)
        assert fresh(study).tag_names == "blue"
        assert fresh(red).study_count == 0
        other = Study.objects.create(name="other")
        blue.studies.add(other)
        assert fresh(other).tag_names == "blue" and fresh(blue).study_count == 2
        blue.studies.clear()
        assert fresh(study).tag_names == "" and fresh(other).tag_names == ""
        study.tags.set([red])
        assert fresh(study).tag_names == "red"
        study.tags.clear()
        assert fresh(study).tag_names == "" and fresh(red).study_count == 0

    def test_renaming_a_related_row_over_many_to_many(self, study):
        tag = Tag.objects.create(name="red")
        study.tags.add(tag)
        tag.name = "green"
        tag.save()
        assert fresh(study).tag_names == "green"


class TestDeletes:
    def test_delete_recomputes_dependents(self, lab, study):
        a = Sample.objects.create(study=study, name="a")
        Sample.objects.create(study=study, name="b")
        a.delete()
        assert fresh(study).sample_count == 1
        assert fresh(lab).sample_total == 1

    def test_cascade_recomputes_and_does_not_recreate(self, lab, study):
        Sample.objects.create(study=study, name="a")
        kept = Study.objects.create(name="kept", lab=lab)
        Sample.objects.create(study=kept, name="b")
        study.delete()
        assert not Study.objects.filter(pk=study.pk).exists()
        assert Sample.objects.count() == 1
        assert fresh(lab).sample_total == 1

    def test_queryset_delete_recomputes_each_parent_once(self, lab, study, django_assert_max_num_queries):
        for name in "abcdefghij":
            Sample.objects.create(study=study, name=name)
        with django_assert_max_num_queries(30):
            Sample.objects.filter(study=study).delete()
        assert fresh(study).sample_count == 0
        assert fresh(lab).sample_total == 0

    def test_set_null_recomputes_dependents_of_the_nulled_rows(self, lab, study):
        sample = Sample.objects.create(study=study, name="a")
        lab.delete()
        assert fresh(study).lab_id is None
        assert fresh(sample).lab_name == ""

    def test_deleting_a_many_to_many_partner(self, study):
        tag = Tag.objects.create(name="red")
        study.tags.add(tag)
        tag.delete()
        assert fresh(study).tag_names == ""


class TestWrites:
    def test_stale_instance_does_not_write_old_maintained_values(self, study):
        stale = Study.objects.get(pk=study.pk)
        Sample.objects.create(study=study, name="a")
        stale.name = "Renamed"
        stale.save()
        assert fresh(study).sample_count == 1
        assert stale.sample_count == 1
        assert fresh(study).summary == "Renamed: 1 samples"

    def test_stale_instance_with_update_fields_naming_a_maintained_field(self, study):
        stale = Study.objects.get(pk=study.pk)
        Sample.objects.create(study=study, name="a")
        stale.save(update_fields=["sample_count"])
        assert fresh(study).sample_count == 1

    def test_unchanged_values_are_not_rewritten(self, study, sql):
        light = Sample.objects.create(study=study, name="a", weight=Decimal("1.00"))
        heavy = Sample.objects.create(study=study, name="b", weight=Decimal("2.00"))
        light.weight, heavy.weight = heavy.weight, Decimal("1.000")
        with sql() as queries:
            Sample.objects.bulk_update([light, heavy], ["weight"])
        assert [q for q in queries if q.startswith('UPDATE "testapp_study"')] == []
        assert fresh(study).total_weight == Decimal("3.00")

    def test_fields_of_a_model_that_do_not_read_each_other_are_written_together(self, study, sql):
        # A new sample changes sample_count, total_weight and summary, which
        # reads sample_count: the study is written twice, not once per field.
        with sql() as queries:
            Sample.objects.create(study=study, name="a", weight=Decimal("1.5"))
        updates = [q for q in queries if q.startswith('UPDATE "testapp_study"')]
        assert len(updates) == 2
        assert "sample_count" in updates[0] and "summary" in updates[1]
        assert (fresh(study).sample_count, fresh(study).total_weight) == (1, Decimal("1.5"))

    def test_decimal_values_are_stored_as_the_field_rounds_them(self, study):
        Sample.objects.create(study=study, name="a", weight=Decimal("0.10"))
        Sample.objects.create(study=study, name="b", weight=Decimal("0.20"))
        assert fresh(study).total_weight == Decimal("0.30")

    @pytest.mark.django_db(transaction=True)
    def test_failure_in_a_method_rolls_back_the_save(self, study, monkeypatch):
        def broken(self):
            raise RuntimeError("boom")

        monkeypatch.setattr(Study, "compute_sample_count", broken)
        with pytest.raises(RuntimeError, match="boom"):
            Sample.objects.create(study=study, name="a")
        assert not Sample.objects.exists()

    def test_a_value_the_field_cannot_store_is_a_clear_error(self, study, monkeypatch):
        monkeypatch.setattr(Study, "compute_sample_count", lambda self: "many")
        with pytest.raises(ValueError, match=r"compute_sample_count\(\) returned 'many'.*sample_count"):
            Sample.objects.create(study=study, name="a")

    def test_writes_stay_inside_the_callers_transaction(self, study):
        with pytest.raises(ZeroDivisionError):
            with transaction.atomic():
                Sample.objects.create(study=study, name="a")
                1 / 0
        assert fresh(study).sample_count == 0


class TestLabels:
    def test_only_labelled_fields_are_maintained(self, lab, study):
        with override_autoupdate(labels=["counts"]):
            Sample.objects.create(study=study, name="a", weight=Decimal("3"))
        assert fresh(study).sample_count == 1
        assert fresh(lab).sample_total == 1
        assert fresh(study).total_weight == Decimal("0")

    def test_unknown_label_is_rejected_on_entry(self):
        scope = override_autoupdate(labels=["cuonts"])
        with pytest.raises(ValueError, match="'cuonts'; the labels in use are: .*'counts'.*'weights'"):
            with scope:
                pass


class TestARecomputeThatMovesARow:
    """Each desk's hall is maintained from the halls asked for it (tests.chain):
    a request moves the desk, and the halls and wings that count it must
    follow, the hall it joins as well as the one it leaves."""

    def assert_right(self):
        from tests.chain.models import Desk, Hall, Request, Wing

        asked: dict[int, int] = {}
        for desk, hall in Request.objects.values_list("desk", "hall"):
            asked[desk] = max(asked.get(desk, hall), hall)
        sits = {pk: asked.get(pk) for pk in Desk.objects.values_list("pk", flat=True)}
        halls = {pk: list(sits.values()).count(pk) for pk in Hall.objects.values_list("pk", flat=True)}
        wings = {pk: 0 for pk in Wing.objects.values_list("pk", flat=True)}
        for hall, wing in Hall.objects.values_list("pk", "wing"):
            wings[wing] += halls[hall]
        assert dict(Desk.objects.values_list("pk", "hall")) == sits
        assert dict(Hall.objects.values_list("pk", "desk_count")) == halls
        assert dict(Wing.objects.values_list("pk", "desk_total")) == wings

    def test_the_hall_a_desk_joins_and_its_wing_are_recomputed(self):
        from tests.chain.models import Desk, Hall, Request, Wing

        east, west = Wing.objects.create(), Wing.objects.create()
        first, second, third = (Hall.objects.create(wing=wing) for wing in (east, east, west))
        desks = [Desk.objects.create() for _ in range(3)]
        for desk in desks:
            Request.objects.create(desk=desk, hall=first)
        self.assert_right()
        # Within one wing: the wing's total stays, though the work saw the
        # desk leave its hall before it saw the desk join the other.
        moving = Request.objects.create(desk=desks[0], hall=second)
        self.assert_right()
        assert Wing.objects.get(pk=east.pk).desk_total == 3
        Request.objects.create(desk=desks[1], hall=third)
        self.assert_right()
        moving.delete()
        self.assert_right()
        with transaction.atomic():
            Request.objects.filter(hall=first).update(hall=third)
            Request.objects.filter(desk=desks[2]).update(hall=second)
        self.assert_right()
        assert dict(Wing.objects.values_list("pk", "desk_total")) == {east.pk: 1, west.pk: 2}


class TestRoundTrips:
    """What an immediate save of a child costs in statements sent (tests.chain:
    Region > Store > Sale, counts and sums, nothing read through a foreign key)."""

    def totals_are_right(self):
        from tests.chain.models import Region, Sale, Store

        sales = list(Sale.objects.values_list("store", flat=True))
        stores = dict(Store.objects.values_list("pk", "region"))
        assert dict(Store.objects.values_list("pk", "sale_count")) == {pk: sales.count(pk) for pk in stores}
        regions = {pk: 0 for pk in Region.objects.values_list("pk", flat=True)}
        for store in sales:
            regions[stores[store]] += 1
        assert dict(Region.objects.values_list("pk", "sale_total")) == regions

    def test_an_insert_sends_two_messages_on_postgresql(self, sql):
        # The INSERT carries the lock of the store, which reads its region;
        # the next message locks the region and recomputes both.  SQLite:
        # the INSERT and a recompute a level.  MySQL and MariaDB: the store
        # locked before the INSERT and again with its region, the region
        # locked, and each level's values read, then written.
        from django.db import connection

        from tests.chain.models import Region, Sale, Store

        store = Store.objects.create(region=Region.objects.create())
        Sale.objects.create(store=store)
        with sql() as queries:
            Sale.objects.create(store=store)
        assert len(queries) == {"postgresql": 2, "mysql": 8}.get(connection.vendor, 3), queries
        self.totals_are_right()

    def test_a_move_sends_three_messages_on_postgresql(self, sql):
        # The row read and locked, to know where it was; the UPDATE, carrying
        # the locks of both stores, which read their regions; one message
        # locking the regions and recomputing all four rows.  SQLite: the
        # read, the UPDATE, a recompute a level (the stores in one).
        from django.db import connection

        from tests.chain.models import Region, Sale, Store

        stores = [Store.objects.create(region=Region.objects.create()) for _ in range(2)]
        sale = Sale.objects.create(store=stores[0])
        sale.store = stores[1]
        with sql() as queries:
            sale.save()
        assert len(queries) == {"postgresql": 3, "mysql": 9}.get(connection.vendor, 4), queries
        self.totals_are_right()

    def fleet_is_right(self):
        from tests.chain.models import Fleet, Sailor, Ship

        crew = list(Sailor.objects.values_list("ship", "wage"))
        ships = dict(Ship.objects.values_list("pk", "fleet"))
        expected = {pk: (sum(1 for s, _ in crew if s == pk), sum((w for s, w in crew if s == pk), Decimal(0)))
                    for pk in ships}
        assert {pk: (count, payroll) for pk, count, payroll in Ship.objects.values_list("pk", "crew_count", "payroll")
                } == expected
        fleets = {pk: 0 for pk in Fleet.objects.values_list("pk", flat=True)}
        for ship, (count, _) in expected.items():
            fleets[ships[ship]] += count
        assert dict(Fleet.objects.values_list("pk", "crew_total")) == fleets

    def test_a_parent_s_aggregates_are_written_by_one_statement_on_sqlite(self, sql):
        # The ship's count and payroll, set where either differs, in one
        # UPDATE ... RETURNING; then the fleet's.  PostgreSQL: as for a sale.
        from django.db import connection

        from tests.chain.models import Fleet, Sailor, Ship

        ship = Ship.objects.create(fleet=Fleet.objects.create())
        with sql() as queries:
            sailor = Sailor.objects.create(ship=ship, wage=Decimal("0.10"))
        assert len(queries) == {"postgresql": 2, "mysql": 8}.get(connection.vendor, 3), queries
        Sailor.objects.create(ship=ship, wage=Decimal("0.20"))
        # A raise changes the payroll alone: the fleet, which reads the count,
        # may be recomputed, and must stay right.
        sailor.wage = Decimal("1.15")
        sailor.save()
        Sailor.objects.create(ship=Ship.objects.create(fleet=ship.fleet), wage=Decimal("2.5"))
        self.fleet_is_right()

    def test_a_receiver_that_moves_the_parent_before_the_work_reads_it(self):
        # The store's region is read with the INSERT; a receiver of post_save
        # moves the store before the work runs, and the work must count the
        # sale in the region the store is in now.
        from django.db.models.signals import post_save

        from tests.chain.models import Region, Sale, Store

        first, second = Region.objects.create(), Region.objects.create()
        store = Store.objects.create(region=first)

        def move(sender, instance, created, **kwargs):
            Store.objects.filter(pk=instance.store_id).update(region=second)

        post_save.connect(move, sender=Sale)
        try:
            with transaction.atomic():
                Sale.objects.create(store=store)
        finally:
            post_save.disconnect(move, sender=Sale)
        self.totals_are_right()
        assert (Region.objects.get(pk=first.pk).sale_total, Region.objects.get(pk=second.pk).sale_total) == (0, 1)

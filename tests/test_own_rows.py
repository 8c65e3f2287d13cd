"""Own-row expression fields, by what they read of the row (tests/ownrow):
a condition, the primary key, fields save() sets, dates, rounded decimals,
a foreign key's column.  Each case was stored wrong, or failed, on at least
one database before; every value is checked against what this test computes
from the row itself."""

import datetime
import io
import json
import math
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from maintained_fields import maintained_values_written, override_autoupdate
from tests.ownrow.models import THIRD, Basket, BasketItem, Bin, Event, Line, Reading, Share, Slot, Tagged, Ticket

pytestmark = pytest.mark.django_db

MODES = ["immediate", "deferred"]


def stale():
    """What check_maintained_fields finds wrong (here: after every path, nothing)."""
    out = io.StringIO()
    call_command("check_maintained_fields", "ownrow", "--format", "json", stdout=out)
    return json.loads(out.getvalue())["drift"]


@pytest.mark.parametrize("mode", MODES)
def test_a_condition_on_the_row(mode):
    with override_autoupdate(mode=mode):
        made = Bin.objects.create(qty=20)
        Bin.objects.bulk_create([Bin(qty=30), Bin(qty=1)])
        made.qty = 2
        made.save()
        moved = Bin.objects.create(qty=3)
        Bin.objects.filter(pk=moved.pk).update(qty=40)
    assert {b.qty: b.size for b in Bin.objects.all()} == {
        b.qty: ("big" if b.qty > 10 else "small") for b in Bin.objects.all()
    }
    assert set(Bin.objects.values_list("size", flat=True)) == {"big", "small"}


@pytest.mark.parametrize("mode", MODES)
def test_the_primary_key_the_insert_gives(mode):
    with override_autoupdate(mode=mode):
        one = Ticket.objects.create()
        Ticket.objects.bulk_create([Ticket(), Ticket()])
    assert [(t.ref) for t in Ticket.objects.order_by("pk")] == [f"T-{t.pk}" for t in Ticket.objects.order_by("pk")]
    assert Ticket.objects.get(pk=one.pk).ref == f"T-{one.pk}"


@pytest.mark.parametrize("mode", MODES)
def test_fields_that_save_sets(mode):
    with override_autoupdate(mode=mode):
        event = Event.objects.create(name="a")
    row = Event.objects.get(pk=event.pk)
    assert (row.created_copy, row.updated_copy) == (row.created, row.updated)
    with override_autoupdate(mode=mode):
        row.name = "b"
        row.save()
    row = Event.objects.get(pk=event.pk)
    assert row.updated_copy == row.updated and row.created_copy == row.created


@pytest.mark.parametrize("mode", MODES)
def test_a_copy_of_a_date_and_time(mode):
    when = timezone.now().replace(microsecond=0)
    with override_autoupdate(mode=mode):
        slot = Slot.objects.create()
        slot.at = when
        slot.save()
        Slot.objects.bulk_create([Slot(at=when + datetime.timedelta(hours=1))])
    assert {s.at: s.at_copy for s in Slot.objects.all()} == {when: when, when + datetime.timedelta(hours=1): (
        when + datetime.timedelta(hours=1))}


def test_a_value_on_the_half_is_rounded_alike_by_every_write_path():
    # 1 x 0.005 lands on the half: each database rounds it its own way, but
    # every path must round it the way the column does, so that the check
    # and a rebuild agree with what the writes stored.
    half = Decimal("0.005")
    made = Line.objects.create(price=half)
    Line.objects.bulk_create([Line(price=half)])
    updated = Line.objects.create(price=0)
    Line.objects.filter(pk=updated.pk).update(price=half)
    with override_autoupdate(mode="deferred"):
        Line.objects.create(price=half)
    totals = set(Line.objects.values_list("total", flat=True))
    assert len(totals) == 1 and totals <= {Decimal("0.00"), Decimal("0.01")}
    assert all(line.text == f"total={line.total}" for line in Line.objects.all())
    basket = Basket.objects.create()
    BasketItem.objects.bulk_create([BasketItem(basket=basket, w=Decimal("3.01")), BasketItem(basket=basket, w=0)])
    assert Basket.objects.get().avg in {Decimal("1.50"), Decimal("1.51")}
    assert stale() == []
    call_command("rebuild_maintained_fields", "ownrow", verbosity=0)
    assert set(Line.objects.values_list("total", flat=True)) == totals
    assert stale() == []
    assert made.pk


def test_a_method_reading_an_own_row_expression_in_a_deferred_scope():
    # The method reads total as the flush computes it, even where the flush
    # finds total unchanged (0 is 0.00) and so has nothing to propagate.
    with override_autoupdate(mode="deferred"):
        line = Line.objects.create(qty=2, price=Decimal("1.5"))
        free = Line.objects.create(qty=0, price=0)
    assert [(r.total, r.text) for r in Line.objects.filter(pk__in=[line.pk, free.pk]).order_by("pk")] == [
        (Decimal("3.00"), "total=3.00"),
        (Decimal("0.00"), "total=0.00"),
    ]


def test_a_foreign_key_read_by_its_column():
    first, second = Basket.objects.create(), Basket.objects.create()
    item = BasketItem.objects.create(basket=first, w=1)
    assert BasketItem.objects.get(pk=item.pk).basket_ref == first.pk
    BasketItem.objects.filter(pk=item.pk).update(basket=second)
    assert BasketItem.objects.get(pk=item.pk).basket_ref == second.pk


@pytest.mark.parametrize("mode", MODES)
def test_booleans_floats_and_nulls(mode):
    with override_autoupdate(mode=mode):
        Reading.objects.bulk_create([Reading(ok=True, value=1.5), Reading(value=None, factor=3.0)])
        changed = Reading.objects.get(ok=True)
        changed.ok, changed.value = False, 4.25
        changed.save()
    for row in Reading.objects.all():
        assert row.scaled == (None if row.value is None else row.value * row.factor)
        assert row.state == ("yes" if row.ok else "no")


@pytest.mark.parametrize("mode", MODES)
def test_a_recompute_writes_and_reports_only_the_values_that_change(mode):
    first, second, third = Reading.objects.bulk_create([Reading(value=1.0), Reading(value=2.0), Reading(value=3.0)])
    with override_autoupdate(mode="disabled"):  # left stale: each row one field
        Reading.objects.filter(pk=first.pk).update(ok=True)
        Reading.objects.filter(pk=second.pk).update(value=5.0)
    reported = []

    def receiver(sender, pks, fields, **kwargs):
        reported.append((sender, sorted(pks), fields))

    maintained_values_written.connect(receiver)
    try:
        with override_autoupdate(mode=mode):
            for reading in Reading.objects.all():
                reading.save()
    finally:
        maintained_values_written.disconnect(receiver)
    rows = {row.pk: (row.state, row.scaled) for row in Reading.objects.all()}
    assert rows == {first.pk: ("yes", 2.0), second.pk: ("no", 10.0), third.pk: ("no", 6.0)}
    if mode == "deferred":  # immediate: save() computes own-row fields itself, and writes every row
        assert sorted(reported, key=lambda r: r[2]) == [
            (Reading, [second.pk], ["scaled"]),
            (Reading, [first.pk], ["state"]),
        ]


@pytest.mark.django_db
@pytest.mark.parametrize("mode", ["immediate", "deferred"])
@pytest.mark.parametrize("extra", [[], ["weight"]])
@pytest.mark.parametrize("form", ["method", "expression"])
def test_an_own_row_field_written_by_hand_in_update_fields_gets_its_maintained_value(form, extra, mode):
    # Found by an outside tester: save(update_fields=["code"]) kept the hand-written value for good.
    from tests.expressions.models import Part
    from tests.testapp.models import Lab, Sample, Study

    if form == "method":
        study = Study.objects.create(name="S", lab=Lab.objects.create(name="L"))
        row = Sample.objects.create(study=study, name="bolt")
    else:
        row = Part.objects.create(name="bolt")
    row.code = "junk"
    with override_autoupdate(mode=mode):
        row.save(update_fields=["code", *extra])
    assert type(row).objects.get(pk=row.pk).code == "BOLT"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["save", "bulk_update"])
def test_a_field_the_write_leaves_out_is_read_as_stored(how, mode):
    """Found by an outside tester: save(update_fields=["value"]) computed
    value * factor from a factor changed in memory only, which the write
    did not store."""
    reading = Reading.objects.create(value=None, factor=2.0)
    reading.value, reading.factor = 3.0, 5.0
    with override_autoupdate(mode=mode):
        if how == "save":
            reading.save(update_fields=["value"])
        else:
            Reading.objects.bulk_update([reading], ["value"])
    stored = Reading.objects.get(pk=reading.pk)
    assert (stored.value, stored.factor, stored.scaled, stored.formula) == (3.0, 2.0, 6.0, "3.0 x 2.0")
    assert stale() == []


@pytest.mark.parametrize("mode", MODES)
def test_every_write_path_computes_a_decimal_as_the_database_does_on_the_stored_row(mode):
    """Found by an outside tester: on SQLite, price / 3 was 3.33 when written
    with the row (the price bound as text) and 3.00 when recomputed from the
    column (10.00 stored as the integer 10)."""
    with override_autoupdate(mode=mode):
        Share.objects.create(price=Decimal("10.00"))
        Share.objects.bulk_create([Share(price=Decimal("10.50")), Share(price=Decimal("7.00"))])
        loaded = Share.objects.create(price=Decimal("1.00"))
        loaded = Share.objects.get(pk=loaded.pk)
        loaded.price = Decimal("20.00")
        loaded.save()
    computed = Share.objects.annotate(expected=THIRD).values_list("pk", "expected")
    expected = {pk: value.quantize(Decimal("0.01")) for pk, value in computed}  # to the column's places
    assert dict(Share.objects.values_list("pk", "third")) == expected
    assert stale() == []


def test_a_method_that_reads_a_relation_before_the_row_has_a_key_says_what_to_declare():
    # From an outside tester: create() failed with Django's bare "needs to
    # have a primary key value before this relationship can be used".
    from tests.ownrow.models import Pen

    with pytest.raises(ValueError, match=r"Pen\.compute_nib_count\(\) read a relation .*depends_on=\['kids'\]"):
        with transaction.atomic():
            Pen.objects.create()
    assert not Pen.objects.exists()


def expected_reading(row):
    """What a Reading's own-row fields must hold, from its stored value and factor."""
    return {
        "scaled": None if row["value"] is None else row["value"] * row["factor"],
        "state": "yes" if row["ok"] else "no",
        "formula": f"{row['value']} x {row['factor']}",
    }


@pytest.mark.parametrize("mode", MODES)
def test_values_written_as_query_expressions_are_read_from_the_row_once_written(mode):
    """``qty = F("qty") + 1``, ``create(title=Concat(...))``: Django has the
    database compute such a value and leaves the expression on the instance.
    The own-row fields that read it, expression and method alike, hold what
    the row holds: before, save() raised TypeError, and create() stored the
    expression's text (from an outside tester's report)."""
    from django.db.models import F, FloatField, Value
    from django.db.models.functions import Cast

    with override_autoupdate(mode=mode):
        incremented = Reading.objects.create(value=1.5, factor=2.0)
        incremented.value = F("value") + 1
        incremented.save()
        created = Reading.objects.create(value=Cast(Value("0.25"), FloatField()), factor=4.0)
        made, *_ = Reading.objects.bulk_create([Reading(value=Value(3.0), factor=2.0), Reading(value=5.0)])
        listed = list(Reading.objects.filter(pk__in=[incremented.pk, created.pk, made.pk]))
        for reading in listed:
            reading.value, reading.ok = F("value") * 2, True
        Reading.objects.bulk_update(listed, ["value", "ok"])
    rows = Reading.objects.values("pk", "ok", "value", "factor", "scaled", "state", "formula")
    assert {row["pk"]: row["value"] for row in rows if row["ok"]} == {
        incremented.pk: 5.0, created.pk: 0.5, made.pk: 6.0
    }
    for row in rows:
        assert {name: row[name] for name in ("scaled", "state", "formula")} == expected_reading(row)


@pytest.mark.parametrize("mode", MODES)
def test_a_row_created_with_a_query_expression_and_left_alone(mode):
    """The row's method field that reads a value the database computes is
    computed from the row once written, with nothing written after it to
    cover for it (the test above updates its rows again)."""
    from django.db.models import FloatField, Value
    from django.db.models.functions import Cast

    with override_autoupdate(mode=mode):
        created = Reading.objects.create(value=Cast(Value("0.25"), FloatField()), factor=4.0)
    row = Reading.objects.values("ok", "value", "factor", "scaled", "state", "formula").get(pk=created.pk)
    assert {name: row[name] for name in ("scaled", "state", "formula")} == expected_reading(row)
    assert row["formula"] == "0.25 x 4.0"


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite stores NaN as NULL, and MariaDB refuses it (Django's error)"
)
@pytest.mark.parametrize("mode", MODES)
def test_a_nan_stored_is_no_drift(mode):
    """NaN equals nothing in Python, so the check reported it as drift
    forever and every rebuild wrote it again (an outside tester's report)."""
    with override_autoupdate(mode=mode):
        reading = Reading.objects.create(value=float("nan"), factor=2.0)
    assert math.isnan(Reading.objects.values_list("scaled", flat=True).get(pk=reading.pk))
    assert stale() == []
    written = []

    def receiver(sender, pks, fields, **kwargs):
        written.append((sender, pks, fields))

    maintained_values_written.connect(receiver)
    try:
        call_command("rebuild_maintained_fields", "ownrow.Reading", "--verbosity", "0")
        Reading.objects.filter(pk=reading.pk).update(value=float("nan"))
    finally:
        maintained_values_written.disconnect(receiver)
    assert written == []


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite stores NaN as NULL, and MariaDB refuses it (Django's error)"
)
def test_the_json_report_of_a_stale_nan_is_strict_json():
    """``--format json`` printed a bare NaN, which strict JSON readers refuse
    (an outside tester's report)."""
    reading = Reading.objects.create(value=float("nan"), factor=2.0)
    with override_autoupdate(mode="disabled"):
        Reading.objects.filter(pk=reading.pk).update(value=1.5)
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("check_maintained_fields", "ownrow.Reading", "--format", "json", stdout=out)

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    report = json.loads(out.getvalue(), parse_constant=refuse)
    assert {(entry["field"], entry["stored"], entry["computed"]) for entry in report["drift"]} >= {
        ("scaled", "NaN", 3.0)
    }


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_a_transform_of_the_row_s_own_field(mode, db):
    # Found by an outside tester: every immediate create() failed with
    # "generator raised StopIteration" (the INSERT looked for a column
    # named "meta__color").
    with override_autoupdate(mode=mode):
        row = Tagged.objects.create(meta={"color": "red"}, day=datetime.date(2024, 5, 5))
    assert Tagged.objects.values_list("color", "year").get(pk=row.pk) == ("red", 2024)
    row.meta, row.day = {"color": "blue"}, datetime.date(2025, 1, 1)
    with override_autoupdate(mode=mode):
        row.save()
    assert Tagged.objects.values_list("color", "year").get(pk=row.pk) == ("blue", 2025)


@pytest.mark.parametrize("mode", MODES)
def test_a_pre_save_receiver_s_change_is_what_the_row_s_fields_read(mode):
    # From an outside tester: a pre_save receiver that changed the name left
    # the code computed from the name before it, on every database; Django
    # sends pre_save inside save(), after the package had computed them.
    from django.db.models.signals import pre_save

    def in_tens(sender, instance, **kwargs):
        instance.qty = instance.qty * 10 if instance.qty < 10 else instance.qty

    def right():
        for qty, price, total, text in Line.objects.values_list("qty", "price", "total", "text"):
            expected = (qty * price).quantize(Decimal("0.01"))
            assert (total, text) == (expected, f"total={expected}")
        return sorted(Line.objects.values_list("qty", flat=True))

    pre_save.connect(in_tens, sender=Line)
    try:
        with override_autoupdate(mode=mode):
            line = Line.objects.create(qty=2, price=Decimal("1.5"))
            Line(qty=3, price=Decimal("0.25")).save()
        assert right() == [20, 30]
        with override_autoupdate(mode=mode):
            line.qty = 4
            line.save()
            again = Line.objects.get(qty=30)
            again.qty = 5
            again.save(update_fields=["qty"])
        assert right() == [40, 50]
    finally:
        pre_save.disconnect(in_tens, sender=Line)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("heard", [False, True], ids=["", "pre_save heard"])
def test_an_instance_loaded_with_only_or_defer(mode, heard):
    # From an outside tester: Django saves such an instance with the loaded
    # fields as update_fields, decided before the own-row fields are computed
    # where pre_save has receivers, and those fields were left out of it.
    from django.db.models.signals import pre_save

    def nothing(sender, instance, **kwargs):
        pass

    line = Line.objects.create(qty=2, price=Decimal("1.5"))
    if heard:
        pre_save.connect(nothing, sender=Line)
    try:
        with override_autoupdate(mode=mode):
            partial = Line.objects.only("qty").get(pk=line.pk)
            partial.qty = 3
            partial.save()
            other = Line.objects.defer("qty", "total", "text").get(pk=line.pk)
            other.price = Decimal("2.25")
            other.save()
    finally:
        pre_save.disconnect(nothing, sender=Line)
    qty, price, total, text = Line.objects.values_list("qty", "price", "total", "text").get()
    expected = (qty * price).quantize(Decimal("0.01"))
    assert (qty, price, total, text) == (3, Decimal("2.25"), expected, f"total={expected}")


@pytest.mark.parametrize("mode", MODES)
def test_a_save_a_pre_save_receiver_refuses_leaves_the_instance_as_it_was(mode):
    # The package hooks the one save that needs it, on the instance; a
    # receiver that raises must not leave that hook behind, where it would
    # make the instance unpicklable (a cache, a report of rejected rows) or
    # compute fields in a later save that should compute none.  Nothing was
    # written, so the transaction stays usable, as plain Django leaves it.
    import pickle

    from django.db.models.signals import pre_save

    def refuse_odd(sender, instance, **kwargs):
        if instance.qty % 2:
            raise ValueError("odd")

    pre_save.connect(refuse_odd, sender=Line)
    try:
        with override_autoupdate(mode=mode):
            rejected = Line(qty=3, price=Decimal("1.5"))
            with pytest.raises(ValueError, match="odd"):
                rejected.save()
            Line.objects.create(qty=6, price=Decimal("0.5"))
        copy = pickle.loads(pickle.dumps(rejected))
        assert (copy.pk, copy.qty, copy.total) == (None, 3, 0)
        with override_autoupdate(mode="disabled"):
            rejected.qty = 8
            rejected.save()
    finally:
        pre_save.disconnect(refuse_odd, sender=Line)
    assert sorted(Line.objects.values_list("qty", "total")) == [(6, Decimal("3.00")), (8, Decimal("0.00"))]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", MODES)
def test_fields_read_through_a_generated_column_follow_every_write(mode):
    """A generated column changes when the fields it is computed from are
    written, and a write names only those: update_fields, update() and
    bulk_update() left what reads it stale (an outside tester's find)."""
    from django.db.models import F

    from tests.ownrow.models import Gauge, GaugeBox

    box, other = GaugeBox.objects.create(), GaugeBox.objects.create()
    gauge = Gauge.objects.create(box=box, reading=1)
    spare = Gauge.objects.create(box=other, reading=2)

    def assert_right():
        for row in Gauge.objects.values("reading", "doubled", "tenfold", "described"):
            assert row["doubled"] == 2 * row["reading"]
            assert row["tenfold"] == 10 * row["reading"]
            assert row["described"] == f"twice {row['reading']} is {row['doubled']}"
        for found in GaugeBox.objects.all():
            assert found.total == sum(2 * r for r in Gauge.objects.filter(box=found).values_list("reading", flat=True))

    with override_autoupdate(mode=mode):
        gauge.reading = 5
        gauge.save(update_fields=["reading"])
    assert_right()
    with override_autoupdate(mode=mode):
        Gauge.objects.filter(pk=gauge.pk).update(reading=7)
    assert_right()
    with override_autoupdate(mode=mode):
        Gauge.objects.update(reading=F("reading") + 3)
    assert_right()
    spare.reading = 20
    with override_autoupdate(mode=mode):
        Gauge.objects.bulk_update([spare], ["reading"])
    assert_right()

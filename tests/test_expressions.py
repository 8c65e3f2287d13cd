"""maintained(field, expression): the database computes the value.

Random sequences of writes through every kind of write, in immediate mode
and in one deferred scope, are checked against values this test computes in
Python from the rows themselves (tests/expressions/models.py has one model
per relation kind)."""

import os
from decimal import Decimal

import pytest
from django.core import checks
from django.db import DataError, IntegrityError, connection, models, transaction
from django.db.models import Case, Count, Exists, F, OuterRef, Q, Subquery, Sum, When, Window
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce, Now, Random, RowNumber
from django.test.utils import CaptureQueriesContext, isolate_apps
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from maintained_fields import MaintainedModel, maintained, maintained_values_written, override_autoupdate
from maintained_fields.graph import build
from tests.expressions.models import Crate, Depot, Part, Sticker

pytestmark = pytest.mark.django_db

# A fifth of the model check's examples (tests/test_model_check.py): a smaller
# schema, and two modes.
EXAMPLES = max(10, int(os.environ.get("MAINTAINED_FIELDS_MODEL_CHECK_EXAMPLES", "30")) // 5)


def expected():
    """Every maintained column as the rows say it must be, computed here."""
    parts = list(Part._base_manager.values("id", "crate_id", "name", "weight"))
    crates = {c["id"]: c for c in Crate._base_manager.values("id", "depot_id", "name")}
    depots = dict(Depot._base_manager.values_list("id", "name"))
    links = list(Crate.stickers.through.objects.values("crate_id", "sticker_id"))
    right = {}
    for part in parts:
        crate = crates.get(part["crate_id"])
        right[Part, part["id"]] = {
            "code": part["name"].upper(),
            "shout": part["name"].upper() + "!",
            "crate_name": crate["name"] if crate else "",
            "in_north": bool(crate and depots[crate["depot_id"]] == "north"),
        }
    for pk in crates:
        weights = [p["weight"] for p in parts if p["crate_id"] == pk]
        stickers = sum(link["crate_id"] == pk for link in links)
        right[Crate, pk] = {
            "part_count": len(weights),
            "total_weight": sum(weights),
            "max_weight": max(weights, default=None),
            "score": len(weights) * 100 + stickers,
        }
    for depot in Depot._base_manager.values("id", "name"):
        mine = [pk for pk, crate in crates.items() if crate["depot_id"] == depot["id"]]
        total = sum(right[Crate, pk]["part_count"] for pk in mine)
        heavy = sum(p["weight"] > 5 for p in parts if p["crate_id"] in mine)
        right[Depot, depot["id"]] = {
            "part_total": total,
            "heavy_parts": heavy,
            "summary": f"{depot['name']}: {total}",
        }
    for sticker in Sticker._base_manager.values("id"):
        right[Sticker, sticker["id"]] = {"crate_count": sum(link["sticker_id"] == sticker["id"] for link in links)}
    return right


def stored():
    found = {}
    for model, fields in right_fields().items():
        for row in model._base_manager.values("id", *fields):
            found[model, row.pop("id")] = row
    return found


def right_fields():
    return {
        Part: ["code", "shout", "crate_name", "in_north"],
        Crate: ["part_count", "total_weight", "max_weight", "score"],
        Depot: ["part_total", "heavy_parts", "summary"],
        Sticker: ["crate_count"],
    }


def pick(model, position):
    rows = list(model.objects.order_by("pk"))
    return rows[position % len(rows)] if rows else None


def apply(step):
    kind, a, b = step
    crate = pick(Crate, a)
    if kind == "create":
        Part.objects.create(crate=crate if b % 3 else None, name=f"p{a}{b}", weight=b % 9)
    elif kind == "move" and (part := pick(Part, b)):
        part.crate = crate
        part.save()
    elif kind == "reweigh" and (part := pick(Part, a)):
        part.weight = b % 9
        part.save(update_fields=["weight"])
    elif kind == "rename_part" and (part := pick(Part, a)):
        part.name = f"r{b}"
        part.save()
    elif kind == "rename" and crate:
        crate.name = f"c{b}"
        crate.save()
    elif kind == "rename_depot" and (depot := pick(Depot, a)):
        Depot.objects.filter(pk=depot.pk).update(name="north" if b % 2 else "south")
    elif kind == "delete" and (part := pick(Part, b)):
        part.delete()
    elif kind == "update":
        Part.objects.filter(weight__gte=b % 9).update(crate=crate, name=F("name"))
    elif kind == "bulk_create":
        Part.objects.bulk_create([Part(crate=crate, name=f"b{n}", weight=n + b % 4) for n in range(3)])
    elif kind == "stick" and crate and (sticker := pick(Sticker, b)):
        crate.stickers.add(sticker)
    elif kind == "unstick" and crate and (sticker := pick(Sticker, b)):
        sticker.crates.remove(crate)
    elif kind == "drop_crate" and crate and b % 4 == 0:
        crate.delete()  # its parts are set to no crate
    elif kind == "new_crate":
        Crate.objects.create(depot=pick(Depot, b), name=f"n{a}")
    elif kind == "delete_heavy":
        Part.objects.filter(weight__gt=b % 9).delete()


KINDS = ["create", "move", "reweigh", "rename_part", "rename", "rename_depot", "delete", "update", "bulk_create",
         "stick", "unstick", "drop_crate", "new_crate", "delete_heavy"]
steps = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 20), st.integers(0, 20)), max_size=15)


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=steps)
def test_expression_fields_hold_what_the_rows_say(mode, sequence):
    with override_autoupdate(mode="disabled"):
        for model in (Part, Crate, Sticker, Depot):
            model.objects.all().delete()
    depots = [Depot.objects.create(name=name) for name in ("north", "south")]
    for n in range(3):
        Crate.objects.create(depot=depots[n % 2], name=f"c{n}")
    for name in ("red", "blue"):
        Sticker.objects.create(name=name)
    with override_autoupdate(mode=mode):
        for step in sequence:
            note(step)
            apply(step)
    assert stored() == expected()


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_a_condition_across_a_foreign_key_is_recomputed_for_many_rows(mode):
    # Found by the TraceBase port: two rows changed at once were written with
    # one UPDATE setting the column to the expression, and Django refused its
    # join ("Joined field references are not permitted in this query").
    depot = Depot.objects.create(name="north")
    crate = Crate.objects.create(depot=depot, name="c0")
    Part.objects.create(crate=crate, name="a")
    Part.objects.create(crate=crate, name="b")
    with override_autoupdate(mode=mode):
        depot.name = "south"
        depot.save()
    assert list(Part.objects.values_list("in_north", flat=True)) == [False, False]
    assert stored() == expected()


def test_paths_are_read_from_the_expression():
    paths = {
        (spec.model.__name__, spec.field.name): spec.depends_on
        for spec in build([Depot, Crate, Part, Sticker]).nodes[Crate].related
    }
    assert paths[("Crate", "score")] == ("parts__pk", "stickers__pk")
    assert paths[("Crate", "total_weight")] == ("parts__weight",)


@isolate_apps("tests.expressions")
def test_a_path_the_expression_cannot_reach_is_a_check_error():
    class Shed(MaintainedModel):
        tool_count = maintained(models.IntegerField(default=0), Count("tools"))

        class Meta:
            app_label = "expressions"

    errors = build([Shed]).errors
    assert [error.id for error in errors] == ["maintained_fields.E002"]
    assert "Shed.tool_count" in errors[0].msg and "'tools'" in errors[0].msg
    assert isinstance(errors[0], checks.Error)


@isolate_apps("tests.expressions")
def test_an_aggregate_of_the_row_s_own_fields_is_a_check_error():
    # Found by an outside tester: check passed, and every create() failed
    # with the database's "misuse of aggregate function".
    class Bale(MaintainedModel):
        weight = models.IntegerField(default=0)
        total = maintained(models.IntegerField(default=0), Sum("weight"))
        rows = maintained(models.IntegerField(default=0), Count("pk"))
        fine = maintained(models.IntegerField(default=0), F("weight") + 1)

        class Meta:
            app_label = "expressions"

    errors = build([Bale]).errors
    assert [(error.id, error.msg.split(" aggregates ")[0]) for error in errors] == [
        ("maintained_fields.E011", "expressions.Bale.total's maintained() expression"),
        ("maintained_fields.E011", "expressions.Bale.rows's maintained() expression"),
    ]
    assert "Sum(F(weight))" in errors[0].msg and "Sum('samples__weight')" in errors[0].hint


@isolate_apps("tests.expressions")
def test_a_to_many_relation_read_outside_an_aggregate_is_a_check_error():
    # Found by an outside tester: F("kids__qty") passed the check and each
    # write stored whichever child the database gave, PostgreSQL's write
    # and its check each a different one.
    from django.db.models import Case, Max, Q, Value, When

    class Pen(MaintainedModel):
        copied = maintained(models.IntegerField(null=True), F("kids__qty"))
        tested = maintained(
            models.IntegerField(default=0), Case(When(kids__qty__gt=5, then=Value(1)), default=Value(0))
        )
        tagged = maintained(models.CharField(max_length=10, null=True), F("tags__name"))
        fine = maintained(models.IntegerField(null=True), Max("kids__qty"))
        counted = maintained(models.IntegerField(default=0), Count("kids", filter=Q(kids__qty__gt=5)))
        tags = models.ManyToManyField("Label")

        class Meta:
            app_label = "expressions"

    class Label(MaintainedModel):
        name = models.CharField(max_length=10)

        class Meta:
            app_label = "expressions"

    class Kid(MaintainedModel):
        pen = models.ForeignKey(Pen, related_name="kids", on_delete=models.CASCADE)
        qty = models.IntegerField(default=0)
        pen_name = maintained(models.IntegerField(null=True), F("pen__fine"))

        class Meta:
            app_label = "expressions"

    errors = build([Pen, Label, Kid]).errors
    assert [(error.id, error.msg.split(" reads ")[0]) for error in errors] == [
        ("maintained_fields.E013", "expressions.Pen.copied's maintained() expression"),
        ("maintained_fields.E013", "expressions.Pen.tested's maintained() expression"),
        ("maintained_fields.E013", "expressions.Pen.tagged's maintained() expression"),
    ]
    assert "'kids__qty__gt'" in errors[1].msg and "Max('kids__qty')" in errors[0].hint


@isolate_apps("tests.expressions")
def test_values_of_another_kind_than_the_column_s_are_a_check_error():
    # Found by an outside tester: Count("kids") into a CharField passed the
    # check, worked on SQLite and MariaDB, and every write failed on
    # PostgreSQL ("operator does not exist: character varying = bigint").
    import uuid

    from django.db.models import BooleanField, CharField, ExpressionWrapper, FloatField, Q, Value
    from django.db.models.functions import Cast, Coalesce, TruncDate, Upper

    class Tray(MaintainedModel):
        id = models.UUIDField(primary_key=True, default=uuid.uuid4)
        name = models.CharField(max_length=10, default="")
        size = models.IntegerField(default=0)
        counted = maintained(models.CharField(max_length=20, default=""), Count("cups"))
        copied = maintained(models.CharField(max_length=20, default=""), F("size"))
        named = maintained(models.IntegerField(default=0), Upper("name"))
        mixed = maintained(models.FloatField(default=0), Coalesce(F("size"), F("name")))
        widened = maintained(models.FloatField(default=0), F("size") + Value(1.5))
        cast = maintained(models.CharField(max_length=20, default=""), Cast(Count("cups"), output_field=CharField()))
        summed = maintained(models.FloatField(default=0), Sum("cups__size", default=0, output_field=FloatField()))

        class Meta:
            app_label = "expressions"

    class Cup(MaintainedModel):
        tray = models.ForeignKey(Tray, related_name="cups", on_delete=models.CASCADE)
        size = models.IntegerField(default=0)
        at = models.DateTimeField(null=True)
        tray_key = maintained(models.CharField(max_length=40, default=""), F("tray__id"))
        tray_name = maintained(models.CharField(max_length=10, default=""), F("tray__name"))
        # From a second tester: PostgreSQL refuses integer = boolean; SQLite stored NULL for the date.
        big = maintained(models.IntegerField(default=0), ExpressionWrapper(Q(size__gt=5), output_field=BooleanField()))
        day = maintained(models.DateField(null=True), F("at"))
        truncated = maintained(models.DateField(null=True), TruncDate("at"))
        tray_copy = maintained(models.ForeignKey(Tray, models.SET_NULL, null=True, related_name="+"), F("tray"))

        class Meta:
            app_label = "expressions"

    errors = build([Tray, Cup]).errors
    assert [(error.id, error.msg.split(" is typed ")[0].split(" has no ")[0]) for error in errors] == [
        ("maintained_fields.E014", "expressions.Tray.counted's maintained() expression"),
        ("maintained_fields.E014", "expressions.Tray.copied's maintained() expression"),
        ("maintained_fields.E014", "expressions.Tray.named's maintained() expression"),
        ("maintained_fields.E014", "expressions.Tray.mixed's maintained() expression"),
        ("maintained_fields.E014", "expressions.Cup.tray_key's maintained() expression"),
        ("maintained_fields.E014", "expressions.Cup.big's maintained() expression"),
        ("maintained_fields.E014", "expressions.Cup.day's maintained() expression"),
    ]
    assert "is typed IntegerField and expressions.Tray.counted is typed CharField" in errors[0].msg
    assert "Cast(..., output_field=CharField())" in errors[0].hint
    assert "mixed types" in errors[3].msg and "output_field=" in errors[3].hint


@isolate_apps("tests.expressions")
def test_a_fraction_into_an_integer_column_is_a_check_error():
    # From an outside tester: F("size") / 2.0 into an IntegerField stored 3.5
    # on SQLite and 4 on PostgreSQL, while the check computed 3 and reported
    # drift right after every write.
    from django.db.models import Avg, ExpressionWrapper, IntegerField
    from django.db.models.functions import Cast, Coalesce, Mod, Round

    class Bowl(MaintainedModel):
        size = models.IntegerField(default=0)
        half = maintained(models.IntegerField(default=0), F("size") / 2.0)
        mean = maintained(models.IntegerField(default=0), Avg("spoons__size", default=0))
        weight = maintained(models.BigIntegerField(default=0), Sum("spoons__weight", default=0))
        # Made integers in the expression, or fractions into fractional columns: fine.
        cast = maintained(models.IntegerField(default=0), Cast(F("size") / 2.0, output_field=IntegerField()))
        rounded = maintained(
            models.IntegerField(default=0), Cast(Round(Avg("spoons__size", default=0)), output_field=IntegerField())
        )
        ratio = maintained(models.FloatField(default=0), F("size") / 2.0)
        exact = maintained(
            models.DecimalField(max_digits=9, decimal_places=3, default=0), Sum("spoons__weight", default=0)
        )
        divided = maintained(models.IntegerField(default=0), F("size") / 2)
        counted = maintained(models.FloatField(default=0), Count("spoons"))
        remainder = maintained(models.IntegerField(default=0), Mod("size", 3))
        whole = maintained(models.IntegerField(default=0), F("places0"))
        places0 = models.DecimalField(max_digits=9, decimal_places=0, default=0)
        # output_field names a type and converts nothing (a third tester).
        typed = maintained(
            models.IntegerField(default=0), Coalesce(Sum("spoons__weight", output_field=IntegerField()), 0)
        )
        wrapped = maintained(
            models.IntegerField(default=0), ExpressionWrapper(F("ratio") * 2, output_field=IntegerField())
        )
        # A decimal with no places counts as an integer; a cast to it rounds (a fourth tester).
        whole_sum = maintained(models.DecimalField(max_digits=9, decimal_places=0, default=0), Sum("spoons__weight"))
        whole_cast = maintained(
            models.DecimalField(max_digits=9, decimal_places=0, default=0),
            Cast(Sum("spoons__weight", default=0), output_field=models.DecimalField(max_digits=9, decimal_places=0)),
        )

        class Meta:
            app_label = "expressions"

    class Spoon(MaintainedModel):
        bowl = models.ForeignKey(Bowl, related_name="spoons", on_delete=models.CASCADE)
        size = models.IntegerField(default=0)
        weight = models.DecimalField(max_digits=9, decimal_places=3, default=0)

        class Meta:
            app_label = "expressions"

    errors = build([Bowl, Spoon]).errors
    assert [(error.id, error.msg.split(" gives fractions")[0]) for error in errors] == [
        ("maintained_fields.E014", f"expressions.Bowl.{name}'s maintained() expression")
        for name in ("half", "mean", "weight", "typed", "wrapped", "whole_sum")
    ]
    assert "is typed integer by its output_field, which names a type and converts nothing" in errors[3].msg
    assert "(FloatField) and expressions.Bowl.half is an integer column (IntegerField)" in errors[0].msg
    assert "(DecimalField) and expressions.Bowl.weight is an integer column (BigIntegerField)" in errors[2].msg
    assert "Cast(Round(...), output_field=IntegerField())" in errors[0].hint
    assert "Cast(..., output_field=DecimalField(max_digits=9, decimal_places=0))" in errors[5].hint


@pytest.mark.django_db
def test_a_fraction_made_an_integer_is_stored_alike_by_every_write():
    # What the database makes of Cast(size / 2.0), asked of the database
    # with a plain query, is what every path must store.
    from django.db.models import IntegerField
    from django.db.models.functions import Cast

    from tests.expressions.models import Halved

    Halved.objects.create(size=7)
    Halved(size=9).save()
    with override_autoupdate(mode="deferred"):
        Halved.objects.create(size=5)
        Halved.objects.bulk_create([Halved(size=11), Halved(size=3)])
    Halved.objects.filter(size__gt=8).update(size=F("size") + 2)
    last = Halved.objects.order_by("pk").last()
    last.size = 1
    last.save()
    expected = Halved.objects.annotate(made=Cast(F("size") / 2.0, output_field=IntegerField()))
    assert sorted(Halved.objects.values_list("size", "half")) == sorted(expected.values_list("size", "made"))


@isolate_apps("tests.expressions")
def test_an_aggregate_that_is_null_over_no_rows_into_a_not_null_field_is_a_check_error():
    # From an outside tester: Max("kids__name") into a NOT NULL field made
    # every write of a row with no kids fail with the database's IntegrityError.
    from django.db.models import Max, Value
    from django.db.models.functions import Coalesce

    class Crate(MaintainedModel):
        top = maintained(models.CharField(max_length=10, default=""), Max("jars__name"))
        plus = maintained(models.IntegerField(default=0), Sum("jars__size") + 1)
        kept = maintained(models.CharField(max_length=10, default=""), Coalesce(Max("jars__name"), Value("")))
        given = maintained(models.IntegerField(default=0), Sum("jars__size", default=0))
        counted = maintained(models.IntegerField(default=0), Count("jars"))
        open_top = maintained(models.CharField(max_length=10, null=True), Max("jars__name"))

        class Meta:
            app_label = "expressions"

    class Jar(MaintainedModel):
        crate = models.ForeignKey(Crate, related_name="jars", on_delete=models.CASCADE)
        name = models.CharField(max_length=10)
        size = models.IntegerField(default=0)

        class Meta:
            app_label = "expressions"

    errors = build([Crate, Jar]).errors
    assert [(error.id, error.msg.split(" is NULL ")[0]) for error in errors] == [
        ("maintained_fields.E012", "expressions.Crate.top's maintained() expression"),
        ("maintained_fields.E012", "expressions.Crate.plus's maintained() expression"),
    ]
    assert "Coalesce(Max('samples__name'), Value(''))" in errors[0].hint


@isolate_apps("tests.expressions")
def test_a_copy_through_a_nullable_foreign_key_into_a_not_null_field_is_a_check_error():
    """Each write of a child without a parent failed with the database's
    IntegrityError, naming the column, not the expression (an outside
    tester's report)."""
    from django.db.models import Value
    from django.db.models.functions import Coalesce, Upper

    class Owner(MaintainedModel):
        name = models.CharField(max_length=10)
        nickname = models.CharField(max_length=10, null=True)

        class Meta:
            app_label = "expressions"

    class Pet(MaintainedModel):
        owner = models.ForeignKey(Owner, null=True, on_delete=models.SET_NULL)
        keeper = models.ForeignKey(Owner, related_name="kept", on_delete=models.CASCADE)
        owner_name = maintained(models.CharField(max_length=10, default=""), F("owner__name"))
        keeper_nickname = maintained(models.CharField(max_length=10, default=""), F("keeper__nickname"))
        keeper_name = maintained(models.CharField(max_length=10, default=""), F("keeper__name"))
        kept_owner_name = maintained(
            models.CharField(max_length=10, default=""), Coalesce(F("owner__name"), Value(""))
        )
        open_owner_name = maintained(models.CharField(max_length=10, null=True), F("owner__name"))
        shouted = maintained(models.CharField(max_length=10, default=""), Upper("keeper__name"))

        class Meta:
            app_label = "expressions"

    errors = build([Owner, Pet]).errors
    assert [(error.id, error.msg.split("'s maintained()")[0]) for error in errors] == [
        ("maintained_fields.E012", "expressions.Pet.owner_name"),
        ("maintained_fields.E012", "expressions.Pet.keeper_nickname"),
    ]
    assert "NULL where expressions.Pet.owner is" in errors[0].msg
    assert "NULL where expressions.Owner.nickname is" in errors[1].msg
    assert "Coalesce(F('owner__name'), Value(''))" in errors[0].hint


@isolate_apps("tests.expressions")
def test_a_value_null_over_no_rows_hides_no_other_error_of_the_field():
    """E012 on a field whose path is misspelled, or that closes a cycle, came
    alone: the other error showed only once it was mended (an outside
    tester's report).  One check now names them all."""
    class Pallet(MaintainedModel):
        total = maintained(models.IntegerField(default=0), Sum("cases__wieght"))
        copied = maintained(models.IntegerField(default=0), Sum("cases__copy"))

        class Meta:
            app_label = "expressions"

    class Case(MaintainedModel):
        pallet = models.ForeignKey(Pallet, related_name="cases", on_delete=models.CASCADE)
        weight = models.IntegerField(default=0)
        copy = maintained(models.IntegerField(default=0), F("pallet__copied"))

        class Meta:
            app_label = "expressions"

    errors = build([Pallet, Case]).errors
    assert sorted(error.id for error in errors) == [
        "maintained_fields.E002", "maintained_fields.E004", "maintained_fields.E012", "maintained_fields.E012"
    ]
    assert "Did you mean 'cases__weight'?" in next(e.msg for e in errors if e.id == "maintained_fields.E002")
    cycle = next(e.msg for e in errors if e.id == "maintained_fields.E004")
    assert "expressions.Case.copy" in cycle and "expressions.Pallet.copied" in cycle


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("sample_count", Count("samples")), "takes a model field first"),
        ((models.IntegerField(), "samples"), "takes a Django expression second"),
        # From an outside tester: check passed, and nothing was ever maintained.
        ((models.ManyToManyField("self"), Count("samples")), "cannot keep a many-to-many field"),
        # ... and create() failed with "misuse of window function"; bulk_create() stored 1, 2, ...
        ((models.IntegerField(), Window(RowNumber())), "cannot keep a window function"),
        ((models.IntegerField(), F("n") + Window(RowNumber())), "cannot keep a window function"),
        # ... and check_maintained_fields reported every row as drift, at once.
        ((models.DateTimeField(null=True), Now()), "reads the clock or chance"),
        ((models.BooleanField(default=False), Q(due__lt=Now())), "reads the clock or chance"),
        ((models.FloatField(default=0), F("n") * Random()), "reads the clock or chance"),
        # From an outside tester: check passed, and the first save raised "no such column".
        ((models.BooleanField(default=False), Exists(Part.objects.filter(name=OuterRef("name")))), "Subquery, Exists"),
        ((models.IntegerField(null=True), Coalesce(Subquery(Part.objects.values("pk")[:1]), 0)), "Subquery, Exists"),
        ((models.IntegerField(null=True), RawSQL("n + 1", [])), "Subquery, Exists, RawSQL"),
        # ... and a QuerySet as a lookup's value is a subquery too: the value went stale.
        (
            (models.IntegerField(default=0), Case(When(Q(name__in=Part.objects.values("name")), then=1), default=0)),
            "OuterRef or a QuerySet",
        ),
        ((models.IntegerField(default=0), Count("parts", filter=Q(parts__in=Part.objects.all()))), "a QuerySet"),
        ((models.IntegerField(null=True), OuterRef("pk")), "OuterRef or a QuerySet"),
        ((maintained(models.IntegerField(default=0), F("n") + 1), F("n") + 2), "maintained already, by"),
    ],
)
def test_bad_arguments_say_what_to_write(arguments, message):
    with pytest.raises(TypeError, match=message):
        maintained(*arguments)


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_a_value_the_column_cannot_hold_fails_the_write(mode):
    # SQLite stores a string of any length: there the package refuses it
    # itself, as PostgreSQL and MariaDB refuse the name already.
    with pytest.raises((ValueError, DataError)) as error, transaction.atomic():
        with override_autoupdate(mode=mode):
            Part.objects.create(name="x" * 60)
    if connection.vendor == "sqlite":
        assert "it has 60 characters, more than max_length=50" in str(error.value)
    assert not Part.objects.exists()


def test_own_row_expressions_are_computed_before_the_write():
    # By the database, on the values in memory: the instance holds the value
    # at once, and bulk_create() computes every row's in one query.
    part = Part(name="bolt")
    part.save()
    assert (part.code, part.shout) == ("BOLT", "BOLT!")
    assert Part.objects.values_list("code", "shout").get(pk=part.pk) == ("BOLT", "BOLT!")
    part.name = "screw"
    part.save()
    assert (part.code, part.shout) == ("SCREW", "SCREW!")
    assert Part.objects.values_list("code", "shout").get(pk=part.pk) == ("SCREW", "SCREW!")

    def bulk(rows):
        with CaptureQueriesContext(connection) as captured:
            Part.objects.bulk_create([Part(name=f"nut {n}") for n in range(rows)])
        return len(captured)

    assert bulk(40) == bulk(4)
    assert set(Part.objects.filter(name__startswith="nut").values_list("code", "shout")) == {
        (f"NUT {n}", f"NUT {n}!") for n in range(40)
    }


def test_creating_a_row_computes_its_own_expressions_in_the_insert():
    if not connection.features.can_return_columns_from_insert:
        pytest.skip("MySQL has no INSERT ... RETURNING")
    # The last own-row expressions (shout, which reads code) are the INSERT's
    # to compute and return; code, which shout reads, takes a query before it.
    with CaptureQueriesContext(connection) as captured:
        part = Part.objects.create(name="washer")
    assert (part.code, part.shout) == ("WASHER", "WASHER!")
    statements = [q["sql"].split()[0] for q in captured]
    # crate_name, read through a foreign key, is recomputed after the INSERT.
    assert statements[:2] == ["SELECT", "INSERT"] and "INSERT" not in statements[2:], statements


def test_a_failed_insert_leaves_the_instance_as_it_was():
    part = Part(name=None)  # NOT NULL: every database refuses the row
    part.shout = "before"
    with pytest.raises(IntegrityError), transaction.atomic():
        part.save()
    assert (part.pk, part.shout) == (None, "before")
    part.name = "pin"
    part.save()
    assert Part.objects.values_list("shout", flat=True).get(pk=part.pk) == "PIN!"


def test_an_average_of_floats_keeps_every_place():
    # docs/caveats.rst's advice for MySQL and MariaDB, whose Avg of integers has four places.
    crate = Crate.objects.create(depot=Depot.objects.create())
    for weight in (1, 1, 2):
        Part.objects.create(crate=crate, weight=weight)
    assert Crate.objects.get(pk=crate.pk).mean_float == pytest.approx(4 / 3, rel=1e-12)


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_a_decimal_is_stored_rounded_to_its_places(mode):
    # SQLite's decimal column keeps what it is given: an average of 1, 1 and
    # 2 was stored as 1.3333333333333333, which only Django's read rounded.
    # Two crates: a flush writes several rows with one statement.
    crates = [Crate.objects.create(depot=Depot.objects.create()) for _ in range(2)]
    with override_autoupdate(mode=mode):
        for crate in crates:
            for weight in (1, 1, 2):
                Part.objects.create(crate=crate, weight=weight)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT mean_weight FROM {Crate._meta.db_table}")
        stored = [Decimal(str(raw)) for (raw,) in cursor.fetchall()]
    assert stored == [round(Decimal(1 + 1 + 2) / 3, 2)] * 2


def test_a_rounded_value_is_neither_rewritten_nor_reported(sql):
    crate = Crate.objects.create(depot=Depot.objects.create())
    parts = [Part.objects.create(crate=crate, weight=weight) for weight in (1, 1, 2)]
    assert Crate.objects.get(pk=crate.pk).mean_weight == Decimal("1.33")
    reported = []

    def receiver(sender, pks, fields, **kwargs):
        reported.append((sender, fields))

    maintained_values_written.connect(receiver)
    try:
        with sql() as queries:
            parts[0].save()  # changes nothing: the crate is recomputed, and 1.333... is 1.33
    finally:
        maintained_values_written.disconnect(receiver)
    assert [q for q in queries if q.startswith('UPDATE "expressions_crate"')] == []
    assert [sender for sender, _ in reported] == []


def stored_raw(model, column, pk):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {model._meta.db_table} WHERE id = %s", [pk])
        [(raw,)] = cursor.fetchall()
    return Decimal(str(raw))


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
@pytest.mark.parametrize(
    "values",
    [
        ["2.5"], ["-2.5"], ["0.5"], ["0.125"], ["1.005"],
        # Exactly on the half, where SQLite's float sum lands just below it
        # (-999.4999999999999, 3.634999999999998): found by an outside tester.
        ["0.2", "-1000", "0.2", "0.1"], ["2.5199", "-19.4080", "20.5231"],
        # Terms that cancel, where the float sum's own digits are noise
        # (0.004999999999999893): found by another outside tester.
        ["1.005", "-1"], ["-1.005", "1"], ["1.005", "-0.5", "-0.5"], ["100.005", "-100"],
    ],
)
def test_a_sum_is_rounded_alike_by_a_method_and_an_expression(values, mode):
    from tests.expressions.models import Coin, Till

    till = Till.objects.create()
    with override_autoupdate(mode=mode):
        for value in values:
            Coin.objects.create(till=till, value=Decimal(value))
    total = sum(Decimal(value) for value in values)
    # Half away from zero, as PostgreSQL and MariaDB round a numeric column.
    expected = {places: total.quantize(Decimal(1).scaleb(-places), rounding="ROUND_HALF_UP") for places in (0, 2)}
    stored = Till.objects.values().get(pk=till.pk)
    assert {places: stored[f"by_method_{places}"] for places in (0, 2)} == expected
    assert {places: stored[f"by_expression_{places}"] for places in (0, 2)} == expected
    assert {places: stored_raw(Till, f"by_expression_{places}", till.pk) for places in (0, 2)} == expected


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_a_sum_past_max_digits_fails_the_write_and_stores_nothing(mode):
    # SQLite stored 1000.99 into max_digits=5, and reading the row raised a
    # bare InvalidOperation; PostgreSQL and MariaDB refuse it themselves.
    from tests.expressions.models import Penny, Purse

    purse = Purse.objects.create()
    Penny.objects.create(purse=purse, value=Decimal("999.99"))
    with pytest.raises((ValueError, DataError)):
        with transaction.atomic(), override_autoupdate(mode=mode):
            Penny.objects.create(purse=purse, value=Decimal("1"))
    assert Purse.objects.get(pk=purse.pk).small == Decimal("999.99")
    assert Penny.objects.count() == 1


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_a_copy_the_column_cannot_hold_fails_even_where_nothing_reads_it(mode):
    # A part's copy of its crate's name leads nowhere: its recompute only
    # counted the rows it wrote, and SQLite stored 60 characters into 50.
    crate = Crate.objects.create(depot=Depot.objects.create(), name="short")
    Part.objects.create(crate=crate)
    with pytest.raises((ValueError, DataError)) as error, transaction.atomic():
        with override_autoupdate(mode=mode):
            Crate.objects.filter(pk=crate.pk).update(name="y" * 60)
    if connection.vendor == "sqlite":
        assert "it has 60 characters, more than max_length=50" in str(error.value)
    assert Part.objects.get().crate_name == "short"


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_a_sum_with_a_filter_and_distinct_values(mode):
    from tests.expressions.models import Coin, Till

    till = Till.objects.create()
    values = ["1.005", "-1", "1.005", "0.3", "0.004"]
    with override_autoupdate(mode=mode):
        for value in values:
            Coin.objects.create(till=till, value=Decimal(value))
    positive = {Decimal(value) for value in values if Decimal(value) > 0}
    expected = sum(positive).quantize(Decimal("0.01"), "ROUND_HALF_UP")
    assert Till.objects.get(pk=till.pk).positive == expected == Decimal("1.31")

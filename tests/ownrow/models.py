"""Own-row expression fields: what they read of the row, one model per case.

From an outside tester's reports: each of these was stored wrong, or failed,
on at least one database."""

from django.db import models
from django.db.models import Avg, Case, ExpressionWrapper, F, Sum, Value, When
from django.db.models.functions import Cast, Coalesce, Concat

from maintained_fields import MaintainedModel, maintained, maintained_field


class Bin(MaintainedModel):
    """A condition on the row's own field."""

    qty = models.IntegerField(default=0)
    size = maintained(
        models.CharField(max_length=5, default=""), Case(When(qty__gt=10, then=Value("big")), default=Value("small"))
    )


class Ticket(MaintainedModel):
    """The primary key, which the INSERT gives."""

    ref = maintained(models.CharField(max_length=30, null=True), Concat(Value("T-"), Cast("id", models.CharField())))


class Event(MaintainedModel):
    """Fields that save() itself sets."""

    name = models.CharField(max_length=10, default="")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    created_copy = maintained(models.DateTimeField(null=True), F("created"))
    updated_copy = maintained(models.DateTimeField(null=True), F("updated"))


class Slot(MaintainedModel):
    """A copy of a date and time."""

    at = models.DateTimeField(null=True)
    at_copy = maintained(models.DateTimeField(null=True), F("at"))


class Line(MaintainedModel):
    """A product rounded to the column's places."""

    qty = models.IntegerField(default=1)
    price = models.DecimalField(max_digits=8, decimal_places=3, default=0)
    total = maintained(models.DecimalField(max_digits=10, decimal_places=2, default=0), F("qty") * F("price"))
    text = models.CharField(max_length=30, default="")

    @maintained_field("text", depends_on=["total"])
    def compute_text(self):
        return f"total={self.total}"


class Basket(MaintainedModel):
    avg = maintained(models.DecimalField(max_digits=10, decimal_places=2, null=True), Avg("items__w"))


class BasketItem(MaintainedModel):
    basket = models.ForeignKey(Basket, related_name="items", on_delete=models.CASCADE)
    w = models.DecimalField(max_digits=8, decimal_places=2)
    # The key the row holds, named by its column.
    basket_ref = maintained(models.IntegerField(null=True), F("basket_id"))


class Reading(MaintainedModel):
    """Booleans, floats and NULLs: types a database names its own way in a cast."""

    ok = models.BooleanField(default=False)
    value = models.FloatField(null=True)
    factor = models.FloatField(default=2.0)
    scaled = maintained(models.FloatField(null=True), F("value") * F("factor"))
    state = maintained(
        models.CharField(max_length=3, default=""), Case(When(ok=True, then=Value("yes")), default=Value("no"))
    )
    formula = models.CharField(max_length=60, default="")

    @maintained_field("formula", depends_on=["value", "factor"])
    def compute_formula(self):
        return f"{self.value} x {self.factor}"


THIRD = ExpressionWrapper(F("price") / 3, output_field=models.DecimalField(max_digits=10, decimal_places=2))


class Share(MaintainedModel):
    """A decimal divided: SQLite stores 10.00 as the integer 10, and divides
    it as one, where the value bound as a parameter would divide as text."""

    price = models.DecimalField(max_digits=8, decimal_places=2)
    third = maintained(models.DecimalField(max_digits=10, decimal_places=2, null=True), THIRD)


class Pen(MaintainedModel):
    """A method that reads a relation, declared as reading nothing but the
    row: computed before the INSERT, when the row has no key."""

    nib_count = models.IntegerField(default=0)

    @maintained_field("nib_count", depends_on=[])
    def compute_nib_count(self):
        return self.nibs.count()


class Nib(models.Model):
    pen = models.ForeignKey(Pen, related_name="nibs", on_delete=models.CASCADE)


class Tagged(MaintainedModel):
    """F() of a transform of the row's own fields: a JSON key, a date's year."""

    meta = models.JSONField(default=dict)
    day = models.DateField(null=True)
    color = maintained(models.JSONField(null=True), F("meta__color"))
    year = maintained(models.IntegerField(null=True), F("day__year"))


class GaugeBox(MaintainedModel):
    """Sums a generated column of its gauges."""

    total = maintained(models.IntegerField(default=0), Coalesce(Sum("gauges__doubled"), 0))


class Gauge(MaintainedModel):
    """Fields read through a generated column, which the database computes
    from ``reading`` (an outside tester's find: only a full save() was followed)."""

    box = models.ForeignKey(GaugeBox, related_name="gauges", null=True, on_delete=models.SET_NULL)
    reading = models.IntegerField(default=0)
    doubled = models.GeneratedField(expression=F("reading") * 2, output_field=models.IntegerField(), db_persist=True)
    tenfold = maintained(models.IntegerField(default=0), F("doubled") * 5)
    described = models.CharField(max_length=20, default="")

    @maintained_field("described", depends_on=["doubled"])
    def describe(self):
        return f"twice {self.reading} is {self.doubled}"

"""Fields the database computes, declared with maintained(): one model per
relation kind, as in tests/drift, so that no path covers for another."""

from decimal import Decimal

from django.db import models
from django.db.models import Avg, Case, Count, F, Max, Q, Sum, Value, When
from django.db.models.functions import Cast, Coalesce, Concat, Upper

from maintained_fields import MaintainedModel, maintained, maintained_field


class Depot(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    # Two levels down, through an expression field of the bins.
    part_total = maintained(models.IntegerField(default=0), Coalesce(Sum("bins__part_count"), 0))
    # Two hops at once.
    heavy_parts = maintained(models.IntegerField(default=0), Count("bins__parts", filter=Q(bins__parts__weight__gt=5)))
    summary = models.CharField(max_length=100, default="")

    @maintained_field("summary", depends_on=["name", "part_total"])
    def compute_summary(self):
        return f"{self.name}: {self.part_total}"


class Crate(MaintainedModel):
    depot = models.ForeignKey(Depot, models.CASCADE, related_name="bins")
    name = models.CharField(max_length=50, default="")
    part_count = maintained(models.IntegerField(default=0), Count("parts"))
    total_weight = maintained(models.IntegerField(default=0), Coalesce(Sum("parts__weight"), 0))
    max_weight = maintained(models.IntegerField(null=True), Max("parts__weight"), label="extremes")
    # Two aggregates over different joins: neither multiplies the other.
    score = maintained(models.IntegerField(default=0), Count("parts") * 100 + Count("stickers"))
    stickers = models.ManyToManyField("Sticker", related_name="crates", blank=True)
    # Rounded to the column's places when stored (not in the model check:
    # databases round a last 5 their own ways).
    mean_weight = maintained(
        models.DecimalField(max_digits=8, decimal_places=2, null=True),
        Avg("parts__weight", output_field=models.DecimalField(max_digits=20, decimal_places=10)),
    )
    # An average of floats: MySQL and MariaDB keep four places of an integer's
    # (and Django casts to a float as "+ 0.0", a decimal there).
    mean_float = maintained(models.FloatField(null=True), Avg(F("parts__weight") * 1.0))


class Part(MaintainedModel):
    crate = models.ForeignKey(Crate, models.SET_NULL, null=True, related_name="parts")
    name = models.CharField(max_length=50, default="")
    weight = models.IntegerField(default=1)
    code = maintained(models.CharField(max_length=50, default=""), Upper("name"))
    # Reads another own-row expression: computed after it, from its new value.
    shout = maintained(models.CharField(max_length=51, default=""), Concat("code", Value("!")))
    crate_name = maintained(models.CharField(max_length=50, default=""), Coalesce(F("crate__name"), Value("")))
    # A condition across foreign keys: an UPDATE cannot set it (it takes no join).
    in_north = maintained(
        models.BooleanField(default=False),
        Case(When(crate__depot__name="north", then=Value(True)), default=Value(False)),
    )


class Sticker(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    crate_count = maintained(models.IntegerField(default=0), Count("crates"))


class Halved(MaintainedModel):
    """An integer column maintained from a fraction, made an integer in the
    expression (check E014 refuses it otherwise): each database makes its own
    integer of 4.5, and every write path must store that one."""

    size = models.IntegerField(default=0)
    half = maintained(models.IntegerField(default=0), Cast(F("size") / 2.0, output_field=models.IntegerField()))


def places(digits, places):
    return models.DecimalField(max_digits=digits, decimal_places=places)


class Till(MaintainedModel):
    """The same sums as a method and as an expression, into 0 and 2 places."""

    by_expression_0 = maintained(
        models.DecimalField(max_digits=20, decimal_places=0, default=0),
        Coalesce(Sum("coins__value"), Value(Decimal(0)), output_field=places(20, 0)),
    )
    by_expression_2 = maintained(
        models.DecimalField(max_digits=20, decimal_places=2, default=0),
        Coalesce(Sum("coins__value"), Value(Decimal(0)), output_field=places(20, 2)),
    )
    # With filter= and distinct=True, which SQLite's exact sum must keep.
    positive = maintained(
        models.DecimalField(max_digits=20, decimal_places=2, default=0),
        Coalesce(Sum("coins__value", filter=Q(coins__value__gt=0), distinct=True), Value(Decimal(0))),
    )
    by_method_0 = models.DecimalField(max_digits=20, decimal_places=0, default=0)
    by_method_2 = models.DecimalField(max_digits=20, decimal_places=2, default=0)

    # Added in Python: SQLite's SUM adds floats.
    @maintained_field("by_method_0", depends_on=["coins__value"])
    def compute_by_method_0(self):
        return sum((coin.value for coin in self.coins.all()), Decimal(0))

    @maintained_field("by_method_2", depends_on=["coins__value"])
    def compute_by_method_2(self):
        return sum((coin.value for coin in self.coins.all()), Decimal(0))


class Coin(MaintainedModel):
    till = models.ForeignKey(Till, models.CASCADE, related_name="coins")
    value = models.DecimalField(max_digits=12, decimal_places=4)


class Purse(MaintainedModel):
    small = maintained(
        models.DecimalField(max_digits=5, decimal_places=2, default=0),
        Coalesce(Sum("pennies__value"), Value(Decimal(0)), output_field=places(5, 2)),
    )


class Penny(MaintainedModel):
    purse = models.ForeignKey(Purse, models.CASCADE, related_name="pennies")
    value = models.DecimalField(max_digits=12, decimal_places=4)

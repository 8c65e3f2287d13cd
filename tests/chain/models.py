"""A path through a maintained field of the parent: each sample copies its
study's label, itself maintained from the study's name, and each study counts
its samples.  From an outside tester's reports of deadlocks between single
writes (tests/test_concurrency.py)."""

from decimal import Decimal

from django.db import models
from django.db.models import Count, F, Max, Sum, Value
from django.db.models.functions import Coalesce

from maintained_fields import MaintainedModel, maintained, maintained_field


class Batch(MaintainedModel):
    name = models.CharField(max_length=100)
    label = models.CharField(max_length=100, default="")
    vial_count = maintained(models.IntegerField(default=0), Count("vials"))

    @maintained_field("label", depends_on=["name"])
    def compute_label(self):
        return self.name.upper()


class Vial(MaintainedModel):
    batch = models.ForeignKey(Batch, related_name="vials", on_delete=models.CASCADE)
    name = models.CharField(max_length=100, default="")
    batch_label = models.CharField(max_length=100, default="")

    @maintained_field("batch_label", depends_on=["batch__label"])
    def compute_batch_label(self):
        return self.batch.label


class Kit(MaintainedModel):
    """Batch and Vial without the count, whose locks on the parent would
    order a move and a rename on their own."""

    name = models.CharField(max_length=100)
    label = models.CharField(max_length=100, default="")

    @maintained_field("label", depends_on=["name"])
    def compute_label(self):
        return self.name.upper()


class Reagent(MaintainedModel):
    kit = models.ForeignKey(Kit, related_name="reagents", on_delete=models.CASCADE)
    kit_label = models.CharField(max_length=100, default="")

    @maintained_field("kit_label", depends_on=["kit__label"])
    def compute_kit_label(self):
        return self.kit.label


class Site(MaintainedModel):
    """Sites count the tubes of their racks, and each tube copies its rack's
    site's name: a rack moved to another site and a tube moved to another
    rack each reach a site the other may be changing."""

    name = models.CharField(max_length=100)
    tube_count = maintained(models.IntegerField(default=0), Count("racks__tubes"))


class Rack(MaintainedModel):
    site = models.ForeignKey(Site, related_name="racks", on_delete=models.CASCADE)


class Tube(MaintainedModel):
    rack = models.ForeignKey(Rack, related_name="tubes", on_delete=models.CASCADE)
    site_name = maintained(models.CharField(max_length=100, default=""), F("rack__site__name"))


class Region(MaintainedModel):
    """Three levels of counts and nothing read through a foreign key: the
    work of a write takes no lock with NOWAIT, and its last locks go with
    the statement after them (writes.Carrier)."""

    sale_total = maintained(models.IntegerField(default=0), Coalesce(Sum("stores__sale_count"), 0))


class Store(MaintainedModel):
    region = models.ForeignKey(Region, related_name="stores", on_delete=models.CASCADE)
    sale_count = maintained(models.IntegerField(default=0), Count("sales"))


class Sale(MaintainedModel):
    store = models.ForeignKey(Store, related_name="sales", on_delete=models.CASCADE)


class Wing(MaintainedModel):
    """A recompute that moves a row to another parent: each desk sits in the
    last hall asked for it, each hall counts its desks, each wing sums its
    halls' counts.  The work of a request finds the hall the desk joins only
    once the desk's move is written, after the rows it locked up front."""

    desk_total = maintained(models.IntegerField(default=0), Coalesce(Sum("halls__desk_count"), 0))


class Hall(MaintainedModel):
    wing = models.ForeignKey(Wing, related_name="halls", on_delete=models.CASCADE)
    desk_count = maintained(models.IntegerField(default=0), Count("desks"))


class Desk(MaintainedModel):
    hall = maintained(models.ForeignKey(Hall, models.SET_NULL, null=True, related_name="desks"), Max("requests__hall"))


class Request(MaintainedModel):
    desk = models.ForeignKey(Desk, related_name="requests", on_delete=models.CASCADE)
    hall = models.ForeignKey(Hall, related_name="+", on_delete=models.CASCADE)


class Fleet(MaintainedModel):
    """A parent with two aggregates, of which the grandparent reads one: on
    SQLite one statement may set both and say only which rows changed."""

    crew_total = maintained(models.IntegerField(default=0), Coalesce(Sum("ships__crew_count"), 0))


class Ship(MaintainedModel):
    fleet = models.ForeignKey(Fleet, related_name="ships", on_delete=models.CASCADE)
    crew_count = maintained(models.IntegerField(default=0), Count("crew"))
    payroll = maintained(
        models.DecimalField(max_digits=12, decimal_places=2, default=Decimal(0)),
        Coalesce(Sum("crew__wage"), Value(Decimal(0))),
    )


class Sailor(MaintainedModel):
    ship = models.ForeignKey(Ship, related_name="crew", on_delete=models.CASCADE)
    wage = models.DecimalField(max_digits=8, decimal_places=2)

"""Method fields of each column type, written many rows at a time: a shelf's
fields read its books, each a value the test computes itself."""

import datetime
from decimal import Decimal

from django.db import models
from django.db.models import F

from maintained_fields import MaintainedModel, maintained, maintained_field


class Shelf(MaintainedModel):
    label = models.CharField(max_length=20)
    first_published = models.DateField(null=True)
    any_signed = models.BooleanField(default=False)
    mean_price = models.DecimalField(max_digits=8, decimal_places=2, null=True)
    titles = models.CharField(max_length=200, default="")
    summary = models.JSONField(default=dict)
    weight = models.FloatField(default=0.0)

    @maintained_field("first_published", depends_on=["books__published"])
    def compute_first_published(self) -> datetime.date | None:
        return min(self.books.values_list("published", flat=True), default=None)

    @maintained_field("any_signed", depends_on=["books__signed"])
    def compute_any_signed(self) -> bool:
        return any(self.books.values_list("signed", flat=True))

    @maintained_field("mean_price", depends_on=["books__price"])
    def compute_mean_price(self) -> Decimal | None:
        prices = list(self.books.values_list("price", flat=True))
        return sum(prices, Decimal(0)) / len(prices) if prices else None

    @maintained_field("titles", depends_on=["books__title"])
    def compute_titles(self) -> str:
        return ", ".join(sorted(self.books.values_list("title", flat=True)))

    @maintained_field("summary", depends_on=["books"])
    def compute_summary(self) -> dict[str, object]:
        return {"books": self.books.count(), "label": self.label}

    @maintained_field("weight", depends_on=["books__pages"])
    def compute_weight(self) -> float:
        return sum(self.books.values_list("pages", flat=True)) * 0.25


class Book(MaintainedModel):
    shelf = models.ForeignKey(Shelf, related_name="books", on_delete=models.CASCADE)
    title = models.CharField(max_length=20)
    published = models.DateField()
    signed = models.BooleanField(default=False)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    pages = models.IntegerField(default=100)


class Crate(MaintainedModel):
    """JSON values, where Python's ``True == 1 == 1.0`` are three values of the column."""

    meta = models.JSONField(null=True)
    payloads = models.JSONField(default=list)
    first_keys = models.CharField(max_length=50, default="")

    @maintained_field("payloads", depends_on=["parcels__payload"])
    def compute_payloads(self) -> list[object]:
        return list(self.parcels.order_by("pk").values_list("payload", flat=True))

    @maintained_field("first_keys", depends_on=["parcels__payload"])
    def compute_first_keys(self) -> str:
        """What reads the order of an object's keys, as a JSON column stored as text keeps it."""
        payloads = self.parcels.order_by("pk").values_list("payload", flat=True)
        return ",".join(next(iter(payload)) for payload in payloads if isinstance(payload, dict) and payload)


class Parcel(MaintainedModel):
    crate = models.ForeignKey(Crate, related_name="parcels", on_delete=models.CASCADE)
    payload = models.JSONField(null=True)
    crate_meta = maintained(models.JSONField(null=True), F("crate__meta"))

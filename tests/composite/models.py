"""Children whose primary key is composite (it includes the foreign key), one
relation kind each: an aggregate over them, an own-row expression on them,
a method reading their parent through the key's foreign key, an expression
copying a parent keyed by a UUID (which SQLite and MariaDB store as text)."""

import uuid

from django.db import models
from django.db.models import Count, F, Sum
from django.db.models.functions import Coalesce, Upper

from maintained_fields import MaintainedModel, maintained, maintained_field


class Basket(MaintainedModel):
    name = models.CharField(max_length=20, default="")
    qty_total = maintained(models.IntegerField(default=0), Coalesce(Sum("items__qty"), 0))
    item_count = maintained(models.IntegerField(default=0), Count("items"))


class BasketItem(MaintainedModel):
    pk = models.CompositePrimaryKey("basket", "n")
    basket = models.ForeignKey(Basket, related_name="items", on_delete=models.CASCADE)
    n = models.IntegerField()
    sku = models.CharField(max_length=20, default="")
    qty = models.IntegerField(default=1)
    code = maintained(models.CharField(max_length=20, default=""), Upper("sku"))


class Cart(MaintainedModel):
    name = models.CharField(max_length=20, default="")


class CartItem(MaintainedModel):
    pk = models.CompositePrimaryKey("cart", "n")
    cart = models.ForeignKey(Cart, related_name="items", on_delete=models.CASCADE)
    n = models.IntegerField()
    cart_name = models.CharField(max_length=20, default="")

    @maintained_field("cart_name", depends_on=["cart__name"])
    def compute_cart_name(self):
        return self.cart.name


class Crate(MaintainedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    code = models.CharField(max_length=20, default="")
    slot_count = maintained(models.IntegerField(default=0), Count("slots"))


class Slot(MaintainedModel):
    pk = models.CompositePrimaryKey("crate", "pos")
    crate = models.ForeignKey(Crate, related_name="slots", on_delete=models.CASCADE)
    pos = models.IntegerField()
    crate_code = maintained(models.CharField(max_length=20, default=""), F("crate__code"))

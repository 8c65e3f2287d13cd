"""The example schema with every maintained column an expression the database computes."""

from decimal import Decimal

from django.db import models
from django.db.models import Count, Sum, Value
from django.db.models.functions import Coalesce, Replace, Upper

from maintained_fields import MaintainedModel, maintained

WEIGHT = models.DecimalField(max_digits=12, decimal_places=3)


class ExprLab(MaintainedModel):
    name = models.CharField(max_length=100)
    sample_count = maintained(models.IntegerField(default=0), Coalesce(Sum("studies__sample_count"), 0))

    class Meta:
        db_table = "exp_lab"


class ExprStudy(MaintainedModel):
    lab = models.ForeignKey(ExprLab, related_name="studies", on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    sample_count = maintained(models.IntegerField(default=0), Count("samples"))
    total_weight = maintained(
        models.DecimalField(max_digits=12, decimal_places=3, default=Decimal(0)),
        Coalesce(Sum("samples__weight"), Value(Decimal(0)), output_field=WEIGHT),
    )

    class Meta:
        db_table = "exp_study"


class ExprSample(MaintainedModel):
    study = models.ForeignKey(ExprStudy, related_name="samples", on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    weight = models.DecimalField(max_digits=9, decimal_places=3)
    code = maintained(models.CharField(max_length=100, default=""), Replace(Upper("name"), Value(" "), Value("-")))

    class Meta:
        db_table = "exp_sample"

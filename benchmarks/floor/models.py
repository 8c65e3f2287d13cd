"""The example schema as plain Django models: the floor that maintenance is measured against.

Each schema the benchmarks load names its tables alike in length (``lab_``,
``flr_``, ``exp_``, ``per_``): Django rewrites, and the driver reads, the
text of every statement, so a longer name costs every query.  With Django's
default names (``floor_plainsample``, ``expressions_exprsample``), the
expression schema's load counted about 1% more instructions than the floor's
for nothing the package does.
"""

from decimal import Decimal

from django.db import models


class PlainLab(models.Model):
    name = models.CharField(max_length=100)
    sample_count = models.IntegerField(default=0)

    class Meta:
        db_table = "flr_lab"


class PlainStudy(models.Model):
    lab = models.ForeignKey(PlainLab, related_name="studies", on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    sample_count = models.IntegerField(default=0)
    total_weight = models.DecimalField(max_digits=12, decimal_places=3, default=Decimal(0))

    class Meta:
        db_table = "flr_study"


class PlainSample(models.Model):
    study = models.ForeignKey(PlainStudy, related_name="samples", on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    weight = models.DecimalField(max_digits=9, decimal_places=3)
    code = models.CharField(max_length=100, default="")

    class Meta:
        db_table = "flr_sample"

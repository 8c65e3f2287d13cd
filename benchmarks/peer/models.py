"""The example schema in django-computedfields, the peer the benchmarks compare with."""

from decimal import Decimal

from computedfields.models import ComputedFieldsModel, computed
from django.db import models


class PeerLab(ComputedFieldsModel):
    name = models.CharField(max_length=100)

    @computed(models.IntegerField(default=0), depends=[("studies", ["sample_count"])])
    def sample_count(self):
        if self.pk is None:  # computed before the first INSERT too
            return 0
        return sum(self.studies.values_list("sample_count", flat=True))

    class Meta:
        db_table = "per_lab"


class PeerStudy(ComputedFieldsModel):
    lab = models.ForeignKey(PeerLab, related_name="studies", on_delete=models.CASCADE)
    name = models.CharField(max_length=100)

    @computed(models.IntegerField(default=0), depends=[("samples", ["study"])])
    def sample_count(self):
        return self.samples.count() if self.pk is not None else 0

    @computed(
        models.DecimalField(max_digits=12, decimal_places=3, default=Decimal(0)),
        depends=[("samples", ["study", "weight"])],
    )
    def total_weight(self):
        if self.pk is None:
            return 0
        return self.samples.aggregate(total=models.Sum("weight"))["total"] or 0

    class Meta:
        db_table = "per_study"


class PeerSample(ComputedFieldsModel):
    study = models.ForeignKey(PeerStudy, related_name="samples", on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    weight = models.DecimalField(max_digits=9, decimal_places=3)

    @computed(models.CharField(max_length=100, default=""), depends=[("self", ["name"])])
    def code(self):
        return self.name.upper().replace(" ", "-")

    class Meta:
        db_table = "per_sample"

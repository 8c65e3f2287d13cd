from decimal import Decimal

from django.db import models

from maintained_fields import MaintainedModel, maintained_field


class Lab(MaintainedModel):
    name = models.CharField(max_length=100)
    sample_count = models.IntegerField(default=0)

    @maintained_field("sample_count", depends_on=["studies__sample_count"])
    def compute_sample_count(self):
        return sum(self.studies.values_list("sample_count", flat=True))


class Study(MaintainedModel):
    lab = models.ForeignKey(Lab, related_name="studies", on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    sample_count = models.IntegerField(default=0)
    total_weight = models.DecimalField(max_digits=12, decimal_places=3, default=Decimal(0))

    @maintained_field("sample_count", depends_on=["samples"])
    def compute_sample_count(self):
        return self.samples.count()

    @maintained_field("total_weight", depends_on=["samples__weight"])
    def compute_total_weight(self):
        return self.samples.aggregate(total=models.Sum("weight"))["total"] or 0


class Sample(MaintainedModel):
    study = models.ForeignKey(Study, related_name="samples", on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    weight = models.DecimalField(max_digits=9, decimal_places=3)
    code = models.CharField(max_length=100, default="")

    @maintained_field("code", depends_on=["name"])
    def compute_code(self):
        return self.name.upper().replace(" ", "-")

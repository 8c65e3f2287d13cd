"""A laboratory schema that exercises every kind of path.

Lab <- Study <- Sample <- Aliquot (plain), Study <-> Tag (many-to-many).
"""

from decimal import Decimal

from django.db import models
from django.utils.text import slugify

from maintained_fields import MaintainedManager, MaintainedModel, maintained_field


class Lab(MaintainedModel):
    name = models.CharField(max_length=100)
    sample_total = models.IntegerField(default=0)

    @maintained_field("sample_total", depends_on=["studies__sample_count"], label="counts")
    def compute_sample_total(self):
        return sum(self.studies.values_list("sample_count", flat=True))


class Tag(MaintainedModel):
    name = models.CharField(max_length=100)
    study_count = models.IntegerField(default=0)

    @maintained_field("study_count", depends_on=["studies"], label="counts")
    def compute_study_count(self):
        return self.studies.count()


class Study(MaintainedModel):
    lab = models.ForeignKey(Lab, related_name="studies", null=True, blank=True, on_delete=models.SET_NULL)
    name = models.CharField(max_length=100)
    tags = models.ManyToManyField(Tag, related_name="studies", blank=True)
    slug = models.CharField(max_length=100, default="")
    sample_count = models.IntegerField(default=0)
    total_weight = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    aliquot_volume = models.FloatField(default=0.0)
    tag_names = models.CharField(max_length=200, default="")
    project_names = models.CharField(max_length=200, default="")
    summary = models.CharField(max_length=200, default="")

    @maintained_field("slug")
    def compute_slug(self):
        return slugify(self.name)

    @maintained_field("sample_count", depends_on=["samples"], label="counts")
    def compute_sample_count(self):
        return self.samples.count()

    @maintained_field("total_weight", depends_on=["samples__weight"], label="weights")
    def compute_total_weight(self):
        return sum(self.samples.values_list("weight", flat=True), Decimal("0")) / 3 * 3

    @maintained_field("aliquot_volume", depends_on=["samples__aliquots__volume"])
    def compute_aliquot_volume(self):
        return sum(Aliquot.objects.filter(sample__study=self).values_list("volume", flat=True))

    @maintained_field("tag_names", depends_on=["tags__name"])
    def compute_tag_names(self):
        return ",".join(sorted(self.tags.values_list("name", flat=True)))

    @maintained_field("project_names", depends_on=["projects__name"])
    def compute_project_names(self):
        return ",".join(sorted(self.projects.values_list("name", flat=True)))

    @maintained_field("summary", depends_on=["name", "sample_count"])
    def compute_summary(self):
        return f"{self.name}: {self.sample_count} samples"


class Sample(MaintainedModel):
    study = models.ForeignKey(Study, related_name="samples", on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    weight = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    code = models.CharField(max_length=100, default="")
    study_name = models.CharField(max_length=100, default="")
    lab_name = models.CharField(max_length=100, default="")

    @maintained_field("code", depends_on=["name"])
    def compute_code(self):
        return self.name.upper()

    @maintained_field("study_name", depends_on=["study__name"])
    def compute_study_name(self):
        return self.study.name

    @maintained_field("lab_name", depends_on=["study__lab__name"])
    def compute_lab_name(self):
        lab = self.study.lab
        return lab.name if lab else ""


class Aliquot(models.Model):
    """A plain model: maintained fields elsewhere depend on it."""

    sample = models.ForeignKey(Sample, related_name="aliquots", null=True, on_delete=models.CASCADE)
    volume = models.FloatField(default=0.0)
    note = models.CharField(max_length=100, default="")

    objects = MaintainedManager()

    class Meta:
        # Reverse foreign key add(bulk=True) updates rows through the base manager.
        base_manager_name = "objects"


class Project(MaintainedModel):
    name = models.CharField(max_length=100)
    studies = models.ManyToManyField(Study, through="Membership", related_name="projects")
    study_count = models.IntegerField(default=0)

    @maintained_field("study_count", depends_on=["studies"])
    def compute_study_count(self):
        return self.studies.count()


class Membership(models.Model):
    """A custom through model, plain, with the package's manager."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    study = models.ForeignKey(Study, on_delete=models.CASCADE)
    role = models.CharField(max_length=20, default="member")

    objects = MaintainedManager()

    class Meta:
        base_manager_name = "objects"

"""TraceBase's maintained schema, ported: the models that carry maintained
fields and the relations those fields read.

TraceBase (Princeton-LSI-ResearchComputing/tracebase) declares these fields
with its own ``MaintainedModel``: each method names a parent or child to
notify, and a field is only right while every write goes through a path that
notifies.  Here each field says what it reads (``depends_on``, or the paths
of a ``maintained()`` expression), and the package finds every write that
touches those paths, including writes to rows TraceBase does not maintain
(a tissue or a compound renamed).  docs/tracebase.rst lists where a value
differs from TraceBase's on purpose.

Field types are portable (SQLite, PostgreSQL, MariaDB): TraceBase's
``ArrayField`` of label positions is a comma-separated ``CharField`` here.
"""

from __future__ import annotations

import datetime

from django.db import models
from django.db.models import Case, Count, F, Value, When

from maintained_fields import MaintainedManager, MaintainedModel, maintained, maintained_field

# A tissue whose name starts with this (in any case) is serum.
SERUM_PREFIX = "serum"
# Delimiters of TraceBase's names.
LABELS_COMBO_DELIMITER = "+"  # between a tracer's labelled elements: "C+N"
INFUSATE_COMBO_DELIMITER = ", "  # between an infusate's tracers' combinations: "C, C+N"
TRACER_DELIMITER = ";"  # between an infusate's tracers
CONCENTRATION_SIGNIFICANT_FIGURES = 3
# What a missing collection time or sequence date sorts as: before any other.
NO_TIME = datetime.timedelta.min
NO_DATE = datetime.date.min


def positions_text(positions: list[int] | tuple[int, ...] | None) -> str:
    """Label positions as this schema stores them: sorted, comma-separated, "" for none."""
    return ",".join(str(p) for p in sorted(set(positions or ())))


class Study(models.Model):
    name = models.CharField(max_length=256, unique=True)
    description = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return self.name


class Compound(MaintainedModel):
    name = models.CharField(max_length=256, unique=True)
    formula = models.CharField(max_length=256)
    hmdb_id = models.CharField(max_length=32, blank=True, default="")
    # Distinct animals infused with a tracer of this compound, four hops away.
    animals_by_tracer = maintained(
        models.IntegerField(default=0),
        Count("tracers__infusate_links__infusate__animals", distinct=True),
        label="tracer_stat",
    )

    def __str__(self) -> str:
        return self.name


class CompoundSynonym(models.Model):
    name = models.CharField(max_length=256, unique=True)
    compound = models.ForeignKey(Compound, related_name="synonyms", on_delete=models.CASCADE)

    def __str__(self) -> str:
        return self.name


class Tracer(MaintainedModel):
    compound = models.ForeignKey(Compound, related_name="tracers", on_delete=models.RESTRICT)
    name = models.CharField(max_length=256, null=True, default=None, editable=False)
    label_combo = models.CharField(max_length=16, null=True, default=None, editable=False)

    @maintained_field("name", depends_on=["compound__name", "labels__name"], label="name")
    def compute_name(self) -> str:
        """``compound-[label,label]``, the labels in TraceBase's order (element,
        mass number, count, positions); the compound's name alone without labels."""
        labels = sorted(self.labels.all(), key=TracerLabel.sort_key)
        if not labels:
            return self.compound.name
        return f"{self.compound.name}-[{','.join(label.name or '' for label in labels)}]"

    @maintained_field("label_combo", depends_on=["labels__element"], label="label_combo")
    def compute_label_combo(self) -> str:
        """The labelled elements, in order: ``C+N``."""
        return LABELS_COMBO_DELIMITER.join(sorted(label.element for label in self.labels.all()))

    def __str__(self) -> str:
        return self.name or f"tracer {self.pk}"


class TracerLabel(MaintainedModel):
    tracer = models.ForeignKey(Tracer, related_name="labels", on_delete=models.CASCADE)
    element = models.CharField(max_length=2)
    count = models.PositiveSmallIntegerField()
    # TraceBase: ArrayField(PositiveSmallIntegerField); here sorted and comma-separated ("1,2"), "" for none.
    positions = models.CharField(max_length=256, blank=True, default="")
    mass_number = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=256, null=True, default=None, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tracer", "element", "mass_number", "count", "positions"], name="unique_tracerlabel"
            )
        ]

    @staticmethod
    def sort_key(label: TracerLabel) -> tuple[str, int, int, list[int]]:
        return (label.element, label.mass_number, label.count, label.position_list())

    def position_list(self) -> list[int]:
        return sorted(int(p) for p in self.positions.split(",") if p.strip())

    @maintained_field("name", depends_on=["positions", "mass_number", "element", "count"], label="name")
    def compute_name(self) -> str:
        """``1,2-13C2``: sorted positions and a dash (when known), mass number, element, count."""
        positions = positions_text(self.position_list())
        return f"{positions + '-' if positions else ''}{self.mass_number}{self.element}{self.count}"

    def __str__(self) -> str:
        return self.name or self.compute_name()


class Infusate(MaintainedModel):
    tracer_group_name = models.CharField(max_length=64, null=True, blank=True)
    tracers = models.ManyToManyField(Tracer, through="InfusateTracer", related_name="infusates")
    name = models.CharField(max_length=512, null=True, default=None, editable=False)
    label_combo = models.CharField(max_length=64, null=True, default=None, editable=False)

    @maintained_field(
        "name",
        depends_on=["tracer_group_name", "tracer_links__concentration", "tracer_links__tracer__name"],
        label="name",
    )
    def compute_name(self) -> str | None:
        """``group {tracer[conc];tracer[conc]}``, tracers sorted; without a group
        name, the tracers alone; without tracers, the group name."""
        parts = sorted(
            f"{link.tracer.name}[{link.concentration:.{CONCENTRATION_SIGNIFICANT_FIGURES}g}]"
            for link in self.tracer_links.select_related("tracer")
        )
        if not parts:
            return self.tracer_group_name
        tracers = TRACER_DELIMITER.join(parts)
        return f"{self.tracer_group_name} {{{tracers}}}" if self.tracer_group_name else tracers

    @maintained_field("label_combo", depends_on=["tracer_links__tracer__label_combo"], label="label_combo")
    def compute_label_combo(self) -> str:
        """Each distinct tracer combination once, sorted: ``C, C+N``."""
        combos = {link.tracer.label_combo or "" for link in self.tracer_links.select_related("tracer")}
        return INFUSATE_COMBO_DELIMITER.join(sorted(combos))

    def __str__(self) -> str:
        return self.name or self.tracer_group_name or f"infusate {self.pk}"


class InfusateTracer(models.Model):
    objects = MaintainedManager()  # its bulk writes are maintained too

    infusate = models.ForeignKey(Infusate, related_name="tracer_links", on_delete=models.CASCADE)
    tracer = models.ForeignKey(Tracer, related_name="infusate_links", on_delete=models.CASCADE)
    concentration = models.FloatField()

    class Meta:
        base_manager_name = "objects"
        constraints = [models.UniqueConstraint(fields=["infusate", "tracer"], name="unique_infusate_tracer")]


class Treatment(models.Model):
    name = models.CharField(max_length=256, unique=True)
    description = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return self.name


class Tissue(models.Model):
    objects = MaintainedManager()  # its bulk writes are maintained too

    name = models.CharField(max_length=256, unique=True)
    description = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return self.name


class Animal(MaintainedModel):
    name = models.CharField(max_length=256, unique=True)
    infusate = models.ForeignKey(Infusate, related_name="animals", null=True, blank=True, on_delete=models.RESTRICT)
    infusion_rate = models.FloatField(null=True, blank=True)
    genotype = models.CharField(max_length=256, blank=True, default="")
    body_weight = models.FloatField(null=True, blank=True)
    age = models.DurationField(null=True, blank=True)
    sex = models.CharField(max_length=1, null=True, blank=True)
    diet = models.CharField(max_length=256, null=True, blank=True)
    feeding_status = models.CharField(max_length=256, null=True, blank=True)
    treatment = models.ForeignKey(Treatment, related_name="animals", null=True, blank=True, on_delete=models.RESTRICT)
    studies = models.ManyToManyField(Study, related_name="animals")
    label_combo = maintained(
        models.CharField(max_length=64, null=True, default=None, editable=False),
        F("infusate__label_combo"),
        label="label_combo",
    )
    last_serum_sample = models.ForeignKey(
        "Sample", related_name="+", null=True, blank=True, on_delete=models.SET_NULL, editable=False
    )

    @maintained_field(
        "last_serum_sample",
        depends_on=["samples__is_serum_sample", "samples__time_collected", "samples__name"],
        label="fcirc_calcs",
    )
    def compute_last_serum_sample(self) -> Sample | None:
        """The serum sample collected last; one without a collection time counts
        as earliest, and equal times are settled by the greater name."""
        serum = [s for s in self.samples.all() if s.is_serum_sample]
        if not serum:
            return None
        return max(serum, key=lambda s: (s.time_collected is not None, s.time_collected or NO_TIME, s.name))

    def __str__(self) -> str:
        return self.name


class Sample(MaintainedModel):
    name = models.CharField(max_length=256, unique=True)
    date = models.DateField(null=True, blank=True)
    researcher = models.CharField(max_length=256, blank=True, default="")
    animal = models.ForeignKey(Animal, related_name="samples", on_delete=models.CASCADE)
    tissue = models.ForeignKey(Tissue, related_name="samples", on_delete=models.RESTRICT)
    time_collected = models.DurationField(null=True, blank=True)
    # "serum" in any case: TraceBase compares case-sensitively in one place and not in another (docs/tracebase.rst).
    is_serum_sample = maintained(
        models.BooleanField(default=False, editable=False),
        Case(When(tissue__name__istartswith=SERUM_PREFIX, then=Value(True)), default=Value(False)),
        label="fcirc_calcs",
    )

    def __str__(self) -> str:
        return self.name


class MSRunSequence(models.Model):
    objects = MaintainedManager()  # its bulk writes are maintained too

    name = models.CharField(max_length=256, unique=True)
    researcher = models.CharField(max_length=256, blank=True, default="")
    lc_protocol_name = models.CharField(max_length=256, blank=True, default="")
    instrument = models.CharField(max_length=256, blank=True, default="")
    date = models.DateField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name


class MSRunSample(models.Model):
    objects = MaintainedManager()  # its bulk writes are maintained too

    sample = models.ForeignKey(Sample, related_name="msrun_samples", on_delete=models.CASCADE)
    msrun_sequence = models.ForeignKey(MSRunSequence, related_name="msrun_samples", on_delete=models.CASCADE)

    class Meta:
        base_manager_name = "objects"
        constraints = [models.UniqueConstraint(fields=["sample", "msrun_sequence"], name="unique_msrun_sample")]


class PeakGroup(models.Model):
    objects = MaintainedManager()  # its bulk writes are maintained too

    name = models.CharField(max_length=256)
    formula = models.CharField(max_length=256, blank=True, default="")
    msrun_sample = models.ForeignKey(MSRunSample, related_name="peak_groups", on_delete=models.CASCADE)
    compounds = models.ManyToManyField(Compound, related_name="peak_groups")
    peak_annotation_file = models.CharField(max_length=256)

    class Meta:
        base_manager_name = "objects"
        constraints = [models.UniqueConstraint(fields=["msrun_sample", "name"], name="unique_peak_group")]

    def __str__(self) -> str:
        return self.name


class FCirc(MaintainedModel):
    serum_sample = models.ForeignKey(Sample, related_name="fcircs", on_delete=models.CASCADE)
    tracer = models.ForeignKey(Tracer, related_name="fcircs", on_delete=models.CASCADE)
    element = models.CharField(max_length=2)
    is_last = models.BooleanField(default=False, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["serum_sample", "tracer", "element"], name="unique_fcirc")]

    @maintained_field(
        "is_last",
        depends_on=[
            "tracer__compound_id",
            "serum_sample__animal_id",
            "serum_sample__animal__samples__is_serum_sample",
            "serum_sample__animal__samples__time_collected",
            "serum_sample__animal__samples__name",
            "serum_sample__animal__samples__msrun_samples__msrun_sequence__date",
            "serum_sample__animal__samples__msrun_samples__peak_groups__compounds__pk",
        ],
        label="fcirc_calcs",
    )
    def compute_is_last(self) -> bool:
        """Whether this serum sample's last peak group of the tracer's compound
        (by sequence date) is the animal's last serum peak group of that compound
        (by the sample's collection time, then sequence date; ties settled by
        sample name, then by the peak group's key)."""
        groups = list(
            PeakGroup.objects.filter(
                compounds=self.tracer.compound_id,
                msrun_sample__sample__animal=self.serum_sample.animal_id,
                msrun_sample__sample__is_serum_sample=True,
            ).values_list(
                "pk",
                "msrun_sample__sample_id",
                "msrun_sample__sample__time_collected",
                "msrun_sample__sample__name",
                "msrun_sample__msrun_sequence__date",
            )
        )
        in_sample = [g for g in groups if g[1] == self.serum_sample_id]
        if not in_sample:
            return False
        last_in_sample = max(in_sample, key=lambda g: (g[4] is not None, g[4] or NO_DATE, g[0]))
        last_in_animal = max(
            groups, key=lambda g: (g[2] is not None, g[2] or NO_TIME, g[4] is not None, g[4] or NO_DATE, g[3], g[0])
        )
        return last_in_sample[0] == last_in_animal[0]

"""The example loader on plain models, keeping the maintained columns by hand.

Each loader does what a developer without the package would write, with the
queries the example's methods run (example/lab/models.py), on the instances
the loader already holds, so nothing is read back:

- ``load_at_once``: after each save, the sample's code from its name, then
  its study's count and total weight, then its lab's count;
- ``load_then_update``: each sample's code before its save, and once the
  load has committed, each study's and each lab's columns, in a
  transaction of their own.

They are about the least that keeping these columns right costs in plain
Django, whoever writes the code: the baselines for the package's immediate
and deferred modes with method fields.
"""

from decimal import Decimal

from django.db import models, transaction


def _rows(lab_model, study_model, sample_model, labs, studies, samples, after_each=None):
    """Create what ``lab.loading.load()`` creates, calling ``after_each(sample)``
    after each sample's save; the studies and labs created."""
    all_labs, all_studies = [], []
    with transaction.atomic():
        for lab_index in range(labs):
            lab = lab_model(name=f"Lab {lab_index}")
            lab.save()
            all_labs.append(lab)
            for study_index in range(studies):
                study = study_model(lab=lab, name=f"Study {lab_index}.{study_index}")
                study.save()
                all_studies.append(study)
                for sample_index in range(samples):
                    weight = Decimal(sample_index % 97) / 8
                    sample = sample_model(study=study, name=f"sample {sample_index}", weight=weight)
                    sample.code = sample.name.upper().replace(" ", "-")
                    sample.save()
                    if after_each is not None:
                        after_each(sample)
    return all_labs, all_studies


def _count_and_weigh(study):
    study.sample_count = study.samples.count()
    study.total_weight = study.samples.aggregate(total=models.Sum("weight"))["total"] or 0


def _count_over_studies(lab):
    lab.sample_count = sum(lab.studies.values_list("sample_count", flat=True))


def load_at_once(lab_model, study_model, sample_model, labs=3, studies=10, samples=100):
    """The load, each column right after every save."""

    def after_each(sample):
        study = sample.study
        _count_and_weigh(study)
        study.save(update_fields=["sample_count", "total_weight"])
        _count_over_studies(study.lab)
        study.lab.save(update_fields=["sample_count"])

    _rows(lab_model, study_model, sample_model, labs, studies, samples, after_each)
    return labs * studies * samples


def load_then_update(lab_model, study_model, sample_model, labs=3, studies=10, samples=100):
    """The load, then the studies' and labs' columns in one pass."""
    all_labs, all_studies = _rows(lab_model, study_model, sample_model, labs, studies, samples)
    with transaction.atomic():
        # A save() a row: bulk_update() builds a CASE of every row, and took longer.
        for study in all_studies:
            _count_and_weigh(study)
            study.save(update_fields=["sample_count", "total_weight"])
        for lab in all_labs:
            _count_over_studies(lab)
            lab.save(update_fields=["sample_count"])
    return labs * studies * samples

"""A spreadsheet-style loader: one save() per row, as real loaders do."""

from decimal import Decimal

from django.db import transaction


def load(lab_model, study_model, sample_model, labs=3, studies=10, samples=100):
    """Create ``labs`` labs, each with ``studies`` studies of ``samples`` samples."""
    with transaction.atomic():
        for lab_index in range(labs):
            lab = lab_model(name=f"Lab {lab_index}")
            lab.save()
            for study_index in range(studies):
                study = study_model(lab=lab, name=f"Study {lab_index}.{study_index}")
                study.save()
                for sample_index in range(samples):
                    weight = Decimal(sample_index % 97) / 8
                    sample_model(study=study, name=f"sample {sample_index}", weight=weight).save()
    return labs * studies * samples

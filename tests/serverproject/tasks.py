"""Celery tasks decorated with override_autoupdate, reporting what they saw."""

import os
import threading

from maintained_fields import get_autoupdate_mode, override_autoupdate
from tests.testapp.models import Sample

from .celery import app


def _worker():
    return f"{os.getpid()}:{threading.get_ident()}"


@app.task
@override_autoupdate(mode="deferred")
def load(study, rows=3):
    for index in range(rows):
        Sample.objects.create(study_id=study, name=f"task-{index}")
    return {"seen": get_autoupdate_mode(), "worker": _worker()}


@app.task
@override_autoupdate(mode="disabled")
def validate(fail=False):
    seen = get_autoupdate_mode()
    if fail:
        raise ValueError("validation failed, as asked")
    return {"seen": seen, "worker": _worker()}


@app.task
def mode():
    return {"seen": get_autoupdate_mode(), "worker": _worker()}

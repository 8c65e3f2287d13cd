"""Views that set a mode, hold it across a pause (so that concurrent requests
overlap inside their scopes) and report what they saw.

Each response is JSON: ``seen``, the mode inside the view's own scope;
``after``, the mode once its scope ended; ``worker``, the process and thread.
"""

import asyncio
import os
import threading
import time

from django.db import DatabaseError, transaction
from django.http import JsonResponse

from maintained_fields import get_autoupdate_mode, override_autoupdate
from tests.testapp.models import Sample

PAUSE = 0.002


class Rollback(Exception):
    pass


def _worker_id():
    return f"{os.getpid()}:{threading.get_ident()}"


def _report(seen):
    return JsonResponse({"seen": seen, "after": get_autoupdate_mode(), "worker": _worker_id()})


def _load(request):
    study = int(request.GET["study"])
    for index in range(int(request.GET.get("rows", 3))):
        Sample.objects.create(study_id=study, name=f"load-{index}")
    time.sleep(PAUSE)
    return get_autoupdate_mode()


@override_autoupdate(mode="deferred")
def _load_deferred(request):
    return _load(request)


def load(request):
    """(a) A mass load in a deferred scope."""
    return _report(_load_deferred(request))


@override_autoupdate(mode="disabled")
def _validate(request):
    """A dry run: write, look, roll back; fail when asked."""
    seen = get_autoupdate_mode()
    try:
        with transaction.atomic():
            Sample.objects.create(study_id=int(request.GET["study"]), name="dry run")
            time.sleep(PAUSE)
            raise Rollback
    except Rollback:
        pass
    if request.GET.get("fail"):
        raise ValueError("validation failed, as asked")
    return seen


def validate(request):
    """(b) Validation in a disabled scope, raising half of the time."""
    return _report(_validate(request))


def mode(request):
    """(c) The mode in force for a request that sets none."""
    time.sleep(PAUSE)
    return _report(get_autoupdate_mode())


async def load_async(request):
    study = int(request.GET["study"])
    async with override_autoupdate(mode="deferred"):
        for index in range(int(request.GET.get("rows", 3))):
            await Sample.objects.acreate(study_id=study, name=f"aload-{index}")
        await asyncio.sleep(PAUSE)
        seen = get_autoupdate_mode()
    return _report(seen)


async def validate_async(request):
    async with override_autoupdate(mode="disabled"):
        seen = get_autoupdate_mode()
        await asyncio.sleep(PAUSE)
        if request.GET.get("fail"):
            raise ValueError("validation failed, as asked")
    return _report(seen)


async def mode_async(request):
    await asyncio.sleep(PAUSE)
    return _report(get_autoupdate_mode())


def write(request):
    """A write in the default mode (the background test sets it): create a
    sample, move one to another study, or delete one."""
    action, study = request.GET["action"], int(request.GET["study"])
    if action == "create":
        Sample.objects.create(study_id=study, name="written")
    else:
        sample = Sample.objects.filter(pk=int(request.GET["sample"])).first()
        if sample is not None and action == "move":
            sample.study_id = study
            try:
                # A plain save() of a row that another request deleted meanwhile inserts it again.
                sample.save(update_fields=["study"])
            except DatabaseError as error:
                if "did not affect any rows" not in str(error):
                    raise
        elif sample is not None:
            sample.delete()
    return _report(get_autoupdate_mode())


def server_error(request):
    """Django's 500 handler runs after the exception left the view, on the same
    worker: what it reports is what the failed request left behind."""
    return JsonResponse({"failed": True, "after": get_autoupdate_mode(), "worker": _worker_id()}, status=500)

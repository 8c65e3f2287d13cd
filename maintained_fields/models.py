"""The model base classes whose ``save()`` keeps maintained fields right."""

from __future__ import annotations

from typing import Any, cast

from django.db import models, router

from . import checks, tracking  # noqa: F401  (checks: E008 must run where the app is not installed)
from .managers import MaintainedManager

_SAVE_ARGUMENTS = ("force_insert", "force_update", "using", "update_fields")


class MaintainedModelMixin:
    """Keeps a model's ``@maintained_field`` methods' fields right on save.

    For a model that already has another base: put the mixin first,
    ``class Study(MaintainedModelMixin, TimeStampedModel)``.

    ``save()`` computes the fields that read only the row itself before the
    write (widening ``update_fields`` when given), never writes back a stale
    copy of a field maintained from other rows, and then updates what depends
    on the row, as the autoupdate mode in force says.
    """

    _maintained_fields_mixin = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if args:
            kwargs.update(zip(_SAVE_ARGUMENTS, args))
        tracking.save_instance(self, super().save, kwargs)  # type: ignore[misc,arg-type]  # mixed into a Model

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        using = kwargs.get("using") or (args[0] if args else None) or router.db_for_write(
            type(self), instance=self  # type: ignore[arg-type]  # mixed into a Model
        )
        delete = super().delete  # type: ignore[misc]  # mixed into a Model
        instance = cast(models.Model, self)
        pk = instance.pk

        def write() -> tuple[int, dict[str, int]]:
            if instance.pk is None:  # a retry: Django's delete sets the key to None as it ends
                instance.pk = pk
            with tracking.deleting(using):
                return delete(*args, **kwargs)  # type: ignore[no-any-return]

        return tracking.delete_retried(using, f"A delete() of {self._meta.label}", write)  # type: ignore[attr-defined]

    delete.alters_data = True  # type: ignore[attr-defined]


class MaintainedModel(MaintainedModelMixin, models.Model):
    """Abstract base for models with ``@maintained_field`` methods.

    Its ``objects`` manager is a :class:`MaintainedManager`, and is also the
    base manager, which Django uses for reverse foreign key
    ``add(bulk=True)``: keep it unfiltered.
    """

    objects = MaintainedManager()

    class Meta:
        abstract = True


# Not in Meta, which subclasses without a Meta of their own would inherit into
# their migrations: Django looks the name up on the first parent model.
MaintainedModel._meta.base_manager_name = "objects"

"""Keep columns derived from other rows right, on every write.

The public API is what ``__all__`` lists; every other module is private.
"""

from typing import Any

from .declarations import maintained, maintained_field
from .managers import MaintainedManager, MaintainedQuerySet
from .modes import get_autoupdate_mode, override_autoupdate
from .signals import maintained_values_written
from .tracking import mark_changed

__version__ = "0.1.0.dev0"  # the one version source: setup.cfg and docs/conf.py read it

__all__ = [
    "__version__",
    "MaintainedManager",
    "MaintainedModel",
    "MaintainedModelAdminMixin",
    "MaintainedModelMixin",
    "MaintainedQuerySet",
    "RecomputeMaintainedFields",
    "get_autoupdate_mode",
    "maintained",
    "maintained_field",
    "maintained_values_written",
    "mark_changed",
    "override_autoupdate",
]


def __getattr__(name: str) -> Any:
    # The model base classes can only be defined once the app registry is
    # loading; the admin and migration support only matter to who uses them.
    if name in ("MaintainedModel", "MaintainedModelMixin"):
        from . import models

        return getattr(models, name)
    if name == "RecomputeMaintainedFields":
        from .operations import RecomputeMaintainedFields

        return RecomputeMaintainedFields
    if name == "MaintainedModelAdminMixin":
        from .admin import MaintainedModelAdminMixin

        return MaintainedModelAdminMixin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

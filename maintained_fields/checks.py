"""System checks, with stable ids.

========  ===============================================================
E001      the maintained field is not a writable column of the model
E002      a ``depends_on`` path does not resolve
E003      two methods maintain one field
E004      maintained fields depend on each other in a cycle
E005      the model's save() does not run MaintainedModelMixin's
E006      a model in the graph uses multi-table inheritance
E007      a model in the graph has a foreign key with a database-level on_delete
E008      ``maintained_fields`` is not in INSTALLED_APPS
E009      maintained fields are declared on a proxy model
E010      the background mode's tasks backend, queue or priority is not usable
E011      a ``maintained()`` expression aggregates the row's own fields
E012      a ``maintained()`` expression can be NULL (over no rows, through a nullable key), into a NOT NULL field
E013      a ``maintained()`` expression reads a to-many relation outside an aggregate
E014      a ``maintained()`` expression's values are of another kind than its column's
          (fractions into an integer column among them)
W001      bulk writes through the default manager are not seen
W002      reverse foreign key ``add(bulk=True)`` is not seen
========  ===============================================================
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .conf import get_config
from .graph import NOT_INSTALLED, get_graph
from .managers import MaintainedQuerySet


def _in(app_configs: Any, messages: list[checks.CheckMessage]) -> list[checks.CheckMessage]:
    if app_configs is None:
        return list(messages)
    return [m for m in messages if m.obj._meta.app_config in app_configs]


@checks.register(checks.Tags.models)
def check_installed(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if apps.is_installed("maintained_fields"):
        return []
    return [checks.Error(NOT_INSTALLED, id="maintained_fields.E008")]


@checks.register(checks.Tags.models)
def check_declarations(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if not apps.is_installed("maintained_fields"):
        return []
    return _in(app_configs, get_graph().errors)


@checks.register(checks.Tags.models)
def check_managers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if not apps.is_installed("maintained_fields"):
        return []
    warnings: list[checks.CheckMessage] = []
    for model, node in get_graph().nodes.items():
        if model._meta.auto_created:
            continue
        label = model._meta.label
        if not isinstance(model._default_manager.get_queryset(), MaintainedQuerySet):
            warnings.append(
                checks.Warning(
                    f"{label}'s default manager does not return a MaintainedQuerySet, so "
                    "update(), bulk_create() and bulk_update() on it leave maintained fields stale.",
                    hint="Add objects = MaintainedManager() to the model, or build its manager "
                    "from MaintainedQuerySet.",
                    obj=model,
                    id="maintained_fields.W001",
                )
            )
        elif node.up_links and not isinstance(model._base_manager.get_queryset(), MaintainedQuerySet):
            warnings.append(
                checks.Warning(
                    f"{label}'s base manager is not a MaintainedManager, so a reverse foreign key "
                    "add(bulk=True), which updates rows through it, leaves maintained fields stale.",
                    hint=f"Set base_manager_name = {model._default_manager.name!r} in {label}'s Meta.",
                    obj=model,
                    id="maintained_fields.W002",
                )
            )
    return _in(app_configs, warnings)


@checks.register()
def check_tasks(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The background mode's TASKS_BACKEND, TASKS_QUEUE and TASKS_PRIORITY,
    tried on the task itself, which the framework validates as it would at
    enqueue time: a mistake there would otherwise show only as a WARNING on
    each write, and the writers would do the work themselves."""
    config = get_config()
    options = {"backend": "TASKS_BACKEND", "queue_name": "TASKS_QUEUE", "priority": "TASKS_PRIORITY"}
    if config["DEFAULT_MODE"] != "background" and all(config[key] is None for key in options.values()):
        return []
    try:
        from .tasks import recompute_recorded
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), id="maintained_fields.E010")]
    chosen = {}
    for option, key in options.items():
        if config[key] is None:
            continue
        chosen[option] = config[key]
        try:
            recompute_recorded.using(**chosen)
        except Exception as error:
            return [
                checks.Error(
                    f"MAINTAINED_FIELDS[{key!r}] is {config[key]!r}, which the tasks backend refuses: {error}",
                    hint="Name an alias of the TASKS setting, a queue in that backend's QUEUES, and a "
                    "priority it supports; or None for the framework's defaults.",
                    id="maintained_fields.E010",
                )
            ]
    return []

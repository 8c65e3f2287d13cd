"""The ``MAINTAINED_FIELDS`` setting: defaults, validation and a live read.

django-appconf fills in the defaults and validates the setting once, at
start-up.  Its value is fixed at import, so :func:`get_config` reads
``settings.MAINTAINED_FIELDS`` again at each call and merges it with the
defaults: ``override_settings(MAINTAINED_FIELDS={...})`` in a test takes
effect, and a partial dict keeps the other defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from appconf import AppConf
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

MODES = ("immediate", "deferred", "disabled", "background")

DEFAULTS: dict[str, Any] = {
    # The mode in force outside any override_autoupdate() scope.
    "DEFAULT_MODE": "immediate",
    # Rows loaded, recomputed and written per query.
    "BATCH_SIZE": 500,
    # Lock each row before recomputing it, so that concurrent writers cannot
    # both compute from a state that misses the other's rows.
    "LOCK_ROWS": True,
    # The background mode: the alias in Django's TASKS setting its tasks go
    # to, their queue and their priority (None: the framework's default).
    "TASKS_BACKEND": None,
    "TASKS_QUEUE": None,
    "TASKS_PRIORITY": None,
}


def tasks_framework() -> ModuleType:
    """``django.tasks`` (Django 6.0 and later) or its backport ``django_tasks``;
    ImproperlyConfigured, saying what to install, where there is neither."""
    global _tasks
    if _tasks is not None:
        return _tasks  # a failed import costs microseconds on every background write
    try:
        from django import tasks
    except ImportError:
        try:
            import django_tasks as tasks  # type: ignore[no-redef]  # the backport stands in for it
        except ImportError:
            raise ImproperlyConfigured(
                "The 'background' mode hands maintenance to Django's tasks framework, which "
                "Django 6.0 and later include. On this Django, install its backport: "
                "pip install django-tasks, and add 'django_tasks' to INSTALLED_APPS."
            ) from None
    _tasks = tasks
    return tasks


_tasks: ModuleType | None = None


_UNSET = object()  # no MAINTAINED_FIELDS setting at all


def validate(value: Any) -> dict[str, Any]:
    """Return ``value`` merged over the defaults, or raise ImproperlyConfigured.

    ``_UNSET`` (no setting at all) stands for ``{}``; ``None`` is an error, as
    it may mean "off" to its writer, and the defaults maintain every field."""
    if value is _UNSET:
        value = {}
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f"MAINTAINED_FIELDS must be a dict, not {'None' if value is None else type(value).__name__}. To keep every "
            "default, leave the setting out or set it to {}; to turn maintenance off, "
            "set {'DEFAULT_MODE': 'disabled'}."
        )
    unknown = sorted(set(value) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(
            f"MAINTAINED_FIELDS has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"the known keys are {', '.join(map(repr, DEFAULTS))}."
        )
    config = {**DEFAULTS, **value}
    mode = config["DEFAULT_MODE"]
    if mode == "deferred":
        raise ImproperlyConfigured(
            "MAINTAINED_FIELDS['DEFAULT_MODE'] cannot be 'deferred': deferred work "
            "is flushed when its scope ends, and the default has no end. Use "
            "override_autoupdate(mode='deferred') around the code that loads data."
        )
    if mode not in MODES:
        raise ImproperlyConfigured(
            f"MAINTAINED_FIELDS['DEFAULT_MODE'] is {mode!r}; "
            "use 'immediate', 'background' or 'disabled'."
        )
    for key, where in (("TASKS_BACKEND", "an alias of the TASKS setting"), ("TASKS_QUEUE", "a queue name")):
        if config[key] is not None and not (isinstance(config[key], str) and config[key]):
            raise ImproperlyConfigured(
                f"MAINTAINED_FIELDS[{key!r}] is {config[key]!r}; use {where}, "
                "or None for the tasks framework's default."
            )
    priority = config["TASKS_PRIORITY"]
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                 or not -100 <= priority <= 100):
        raise ImproperlyConfigured(
            f"MAINTAINED_FIELDS['TASKS_PRIORITY'] is {priority!r}; use an integer from -100 "
            "to 100 (the tasks framework's range), or None for its default."
        )
    if mode == "background":
        tasks_framework()
    size = config["BATCH_SIZE"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ImproperlyConfigured(
            f"MAINTAINED_FIELDS['BATCH_SIZE'] is {size!r}; use a positive integer."
        )
    if not isinstance(config["LOCK_ROWS"], bool):
        raise ImproperlyConfigured(
            f"MAINTAINED_FIELDS['LOCK_ROWS'] is {config['LOCK_ROWS']!r}; use True or False."
        )
    return config


class MaintainedFieldsConf(AppConf):  # type: ignore[misc]  # django-appconf has no type hints
    FIELDS: dict[str, Any] = {}

    class Meta:
        prefix = "maintained"

    def configure_fields(self, value: Any) -> dict[str, Any]:
        return validate(value)


_cache: tuple[Any, Any, dict[str, Any]] | None = None  # (the setting, a copy of it, its validated form)


def get_config() -> dict[str, Any]:
    """The ``MAINTAINED_FIELDS`` setting as it is now, merged over the defaults."""
    global _cache
    raw = getattr(settings, "MAINTAINED_FIELDS", _UNSET)
    cache = _cache
    if cache is not None and cache[0] is raw and cache[1] == raw:
        return cache[2]
    config = validate(raw)
    _cache = (raw, dict(raw) if isinstance(raw, Mapping) else raw, config)
    return config

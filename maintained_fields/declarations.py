"""Declaring a maintained field: the ``@maintained_field`` decorator.

The decorator only records what the method maintains and what it reads.  The
records are resolved against the models when the app registry is ready (see
:mod:`maintained_fields.graph`), where a mistake becomes a system check error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

Method = TypeVar("Method", bound=Callable[..., Any])

ATTRIBUTE = "_maintained_field"


@dataclass(frozen=True)
class Declaration:
    """What one decorated method said: the field, the paths it reads, its label."""

    field_name: str
    depends_on: tuple[str, ...]
    label: str | None


def maintained_field(
    field_name: str, *, depends_on: Iterable[str] = (), label: str | None = None
) -> Callable[[Method], Method]:
    """Mark a model method as the one that computes ``field_name``.

    The method takes no argument but ``self`` and returns the field's value; it
    stays an ordinary method.  It runs synchronously, inside the write that
    triggers it, so it must be a plain ``def`` (not ``async def``) and free of
    side effects: it may read, never write.  ``depends_on`` lists what the
    method reads, as lookup paths from this model: a field of the row itself
    (``"name"``), a relation (``"samples"``, ``"study__lab"``) or a relation
    ending in a field (``"samples__weight"``).  ``label`` names a group of
    maintained fields that ``override_autoupdate(labels=...)`` can select.
    """
    if not isinstance(field_name, str) or not field_name:
        raise TypeError(
            "maintained_field() takes the name of the field it maintains first, "
            "e.g. @maintained_field('sample_count', depends_on=['samples'])."
        )
    if isinstance(depends_on, str) or not isinstance(depends_on, Iterable):
        raise TypeError(
            f"maintained_field({field_name!r}) needs depends_on as a list of lookup "
            f"paths, e.g. depends_on=[{depends_on!r}], not {depends_on!r}."
        )
    paths = tuple(depends_on)
    for path in paths:
        if not isinstance(path, str) or not path or path.startswith("__") or path.endswith("__"):
            raise TypeError(
                f"maintained_field({field_name!r}) has depends_on entry {path!r}; "
                "each entry is a lookup path such as 'samples' or 'study__name'."
            )
    if label is not None and (not isinstance(label, str) or not label):
        raise TypeError(f"maintained_field({field_name!r}) label must be a non-empty string or None.")
    declaration = Declaration(field_name, paths, label)

    def decorator(method: Method) -> Method:
        if not inspect.isfunction(method):
            raise TypeError(
                f"@maintained_field({field_name!r}) decorates a plain method, "
                f"not {method!r}."
            )
        if inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method) or inspect.isgeneratorfunction(
            method
        ):
            raise TypeError(
                f"@maintained_field({field_name!r}) method {method.__qualname__}() is not a plain function: "
                "compute methods run synchronously, inside the write, and return the value. "
                "Define it with 'def' and return the value."
            )
        required = [
            p.name
            for p in list(inspect.signature(method).parameters.values())[1:]
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            raise TypeError(
                f"@maintained_field({field_name!r}) method {method.__qualname__}() "
                f"must take only self, but requires {', '.join(required)}."
            )
        setattr(method, ATTRIBUTE, declaration)
        return method

    return decorator


def declarations_of(model: type) -> dict[str, Declaration]:
    """The decorated methods of ``model`` and its bases, by method name.

    A subclass that redefines a method replaces its base's declaration.
    """
    found: dict[str, Declaration] = {}
    for klass in reversed(model.__mro__):
        for name, value in vars(klass).items():
            declaration = getattr(value, ATTRIBUTE, None)
            if isinstance(declaration, Declaration):
                found[name] = declaration
            elif name in found:
                del found[name]
    return found

"""Declaring a maintained field: the ``@maintained_field`` decorator, for a
value a method computes, and ``maintained()``, for one a database expression
computes.

Both only record what is maintained and what it reads.  The records are
resolved against the models when the app registry is ready (see
:mod:`maintained_fields.graph`), where a mistake becomes a system check error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import FieldDoesNotExist
from django.db.models import F, Field, Model, OuterRef, Q, QuerySet, Subquery, Window
from django.db.models.expressions import RawSQL
from django.db.models.functions import Now, Random
from django.db.models.sql import Query

Method = TypeVar("Method", bound=Callable[..., Any])

ATTRIBUTE = "_maintained_field"
EXPRESSION = "_maintained_expression"


@dataclass(frozen=True)
class Declaration:
    """What one decorated method said: the field, the paths it reads, its label."""

    field_name: str
    depends_on: tuple[str, ...]
    label: str | None
    expression: Any = None  # maintained(): the expression; its paths are depends_on


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
        _declared_as.setdefault((method.__module__, method.__qualname__), set()).add(field_name)
        return method

    return decorator


# {(module, qualified name): the fields declared under it}: every method
# decorated under a name, so that one that a later ``def`` of that name
# replaced in its class body is not lost without a word (see
# dropped_declarations()).
_declared_as: dict[tuple[str, str], set[str]] = {}


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


def dropped_declarations(model: type) -> list[tuple[str, type, str]]:
    """The ``@maintained_field`` methods of ``model`` and its bases that a
    later ``def`` of the same name replaced without the decorator, in a
    subclass or in the same class body: their fields would never be
    maintained.  Each as (method name, the class it was declared in, field)."""
    dropped: dict[tuple[str, str], tuple[str, type, str]] = {}
    declared: dict[str, tuple[type, Declaration]] = {}
    for klass in reversed(model.__mro__):
        for name, value in vars(klass).items():
            declaration = getattr(value, ATTRIBUTE, None)
            if name in declared and declared[name][1] is not declaration:
                base, lost = declared.pop(name)
                dropped[name, lost.field_name] = (name, base, lost.field_name)
            if isinstance(declaration, Declaration):
                declared[name] = (klass, declaration)
            # Declared in this class body, then replaced there by a later definition.
            for field_name in _declared_as.get((klass.__module__, f"{klass.__qualname__}.{name}"), ()):
                if not isinstance(declaration, Declaration) or field_name != declaration.field_name:
                    dropped[name, field_name] = (name, klass, field_name)
    # A subclass that declares the field again, under any name, keeps it maintained.
    kept = {declaration.field_name for _, declaration in declared.values()}
    return [entry for entry in dropped.values() if entry[2] not in kept]


def hidden_declarations(model: type[Model]) -> list[tuple[str, Any]]:
    """The attributes of ``model`` and its bases that wrap a
    ``@maintained_field`` method in a descriptor (``@property``,
    ``@cached_property``, ``@classmethod``): the method is not found there,
    and its field would never be maintained.  By name, with the descriptor."""
    hidden = []
    for klass in model.__mro__:
        if not issubclass(klass, Model) or klass is Model:
            continue
        for name, value in vars(klass).items():
            if isinstance(getattr(value, ATTRIBUTE, None), Declaration):
                continue
            for attribute in ("fget", "func", "__func__"):
                if isinstance(getattr(getattr(value, attribute, None), ATTRIBUTE, None), Declaration):
                    hidden.append((name, value))
                    break
    return hidden


# Field without type arguments: the docs evaluate this hint at run time, where Field[...] fails.
def maintained(field: Field, expression: Any, *, label: str | None = None) -> Field:  # type: ignore[type-arg]
    """Declare that the database computes ``field`` from ``expression``; return ``field``.

    ``expression`` is a Django expression over the row and its relations:
    an aggregate (``Count("samples")``, ``Sum("samples__weight",
    filter=Q(...))``), a function of the row's own fields (``Upper("name")``)
    or of rows it points at (``F("study__name")``), or any combination.  What
    it depends on is read from the paths it names.  Each aggregate is computed
    in a subquery of its own, so two aggregates over different relations never
    multiply each other's rows.  ``label`` is as for ``@maintained_field``.
    The field is returned unchanged, so its migrations are the plain field's::

        sample_count = maintained(models.IntegerField(default=0), Count("samples"))

    A many-to-many field, or an expression with a window function, raises
    TypeError at once; an aggregate that reads no relation (``Sum("weight")``
    of the row's own column) is system check error E011.
    """
    if not isinstance(field, Field):
        raise TypeError(
            f"maintained() takes a model field first, e.g. maintained(models.IntegerField(default=0), "
            f"Count('samples')), not {field!r}."
        )
    if isinstance(expression, str) or not hasattr(expression, "resolve_expression"):
        raise TypeError(
            f"maintained() takes a Django expression second, such as Count('samples'), "
            f"Sum('samples__weight') or Upper('name'), not {expression!r}; "
            "write F('name') for a field of the row."
        )
    if label is not None and (not isinstance(label, str) or not label):
        raise TypeError("maintained() label must be a non-empty string or None.")
    if field.many_to_many:
        raise TypeError(
            "maintained() cannot keep a many-to-many field: it is a table of links, not a column. "
            "Keep a column derived from it instead, e.g. maintained(models.IntegerField(default=0), Count('tags'))."
        )
    if _contains(expression, Window):
        raise TypeError(
            f"maintained() cannot keep a window function ({expression!r}): its value depends on the other "
            "rows of a query, and a maintained value is computed for one row. Use an aggregate over a "
            "relation, e.g. Count('samples'), or compute it when you read the rows."
        )
    if _contains(expression, (Subquery, RawSQL, OuterRef, QuerySet, Query)):
        raise TypeError(
            "maintained() cannot keep an expression holding a Subquery, Exists, RawSQL, OuterRef or a "
            "QuerySet (as in Q(name__in=Tag.objects.values('name'))): the rows they read are not among the "
            "paths the expression names, so no write to them would be followed. Name them as a "
            "relation, e.g. Count('items', filter=Q(items__qty__gt=0)) for an Exists, or Max('items__qty') "
            "for a Subquery of one value; or write a @maintained_field method whose depends_on lists them."
        )
    if getattr(field, EXPRESSION, None) is not None:
        raise TypeError(
            f"maintained() was given a field that is maintained already, by {getattr(field, EXPRESSION).expression!r}:"
            " a column keeps one value. Call maintained() once, with the expression it should hold."
        )
    if _contains(expression, (Now, Random)):
        raise TypeError(
            f"maintained() cannot keep {expression!r}: it reads the clock or chance, which change with no "
            "write for the package to follow, so the stored value would be stale at once and every check "
            "would report it. Use auto_now=True or a default for the time of a write, or compute it when "
            "you read the rows."
        )
    setattr(field, EXPRESSION, Declaration("", (), label, expression))
    return field


def _contains(expression: Any, kinds: type | tuple[type, ...]) -> bool:
    """Whether ``expression`` is, or holds anywhere, an expression of ``kinds``."""
    if isinstance(expression, kinds):
        return True
    if isinstance(expression, Q):  # children: conditions (lookup, value) and other Qs
        sources = [child[1] if isinstance(child, tuple) else child for child in expression.children]
    else:
        sources = expression.get_source_expressions() if hasattr(expression, "get_source_expressions") else []
    return any(_contains(source, kinds) for source in sources if source is not None)


def expressions_of(model: type[Model]) -> dict[str, Declaration]:
    """The fields of ``model`` declared with maintained(), by field name,
    each with the paths its expression reads as depends_on."""
    found: dict[str, Declaration] = {}
    for field in model._meta.concrete_fields:
        declaration = getattr(field, EXPRESSION, None)
        if isinstance(declaration, Declaration):
            paths = tuple(sorted({_path(model, name) for name in references(declaration.expression)}))
            found[field.name] = Declaration(field.name, paths, declaration.label, declaration.expression)
    return found


def references(expression: Any) -> set[str]:
    """The lookups an unresolved expression names: F() names, aggregate
    sources, and the lookups of filter= and When() conditions."""
    found: set[str] = set()
    if expression is None:
        return found
    if isinstance(expression, F):
        found.add(expression.name)  # type: ignore[attr-defined]  # set by F.__init__; the stubs omit it
    elif isinstance(expression, Q):
        for child in expression.children:
            if isinstance(child, Q):
                found |= references(child)
            else:
                lookup, value = child  # type: ignore[misc]  # a Q's other children are (lookup, value)
                found.add(lookup)
                if hasattr(value, "resolve_expression"):
                    found |= references(value)
    elif hasattr(expression, "get_source_expressions"):
        for source in expression.get_source_expressions():
            found |= references(source)
    return found


def _path(model: type[Model], lookup: str) -> str:
    """``lookup`` as a depends_on path: its relations and the field they end
    in, without lookups or transforms (``samples__weight__gt`` is
    ``samples__weight``); a path ending in a relation reads its keys
    (``samples`` is ``samples__pk``).  A name that matches nothing is kept,
    for the system check to report."""
    names = lookup.split("__")
    current = model
    relation: Any = None
    for position, name in enumerate(names):
        if name == "pk":
            return "__".join(names[: position + 1])
        try:
            found = current._meta.get_field(name)
        except FieldDoesNotExist:
            if relation is None or not (relation.get_lookup(name) or relation.get_transform(name)):
                return lookup  # a misspelt field ("product__nam"): the system check reports it
            return "__".join([*names[:position], "pk"])
        if not found.is_relation or found.related_model is None:
            return "__".join(names[: position + 1])
        if name == getattr(found, "attname", name) != found.name:  # "study_id": the key the row holds
            return "__".join([*names[:position], found.name, "pk"])
        current, relation = found.related_model, found
    return f"{lookup}__pk"

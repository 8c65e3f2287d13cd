"""The dependency graph: which rows' changes mark which maintained fields.

Every ``depends_on`` path becomes a :class:`Dependency`: a chain of hops from
the maintained model (hop 0) to the rows the path reaches.  A change to a row
at hop *k* marks the maintained rows ``Model.objects.filter(<path to k>=row)``.
The graph is built once, when the app registry is ready; declarations that do
not resolve are left out of it and reported by the system checks.
"""

from __future__ import annotations

import difflib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

from django.apps import apps
from django.core import checks
from django.core.exceptions import FieldDoesNotExist, FieldError, ImproperlyConfigured
from django.db import models
from django.db.models import Aggregate, Count, ExpressionWrapper, ForeignObjectRel
from django.db.models.expressions import Col, CombinedExpression
from django.db.models.functions import Cast, Ceil, Coalesce, Floor, Mod, Round
from django.db.models.sql import Query

from .declarations import (
    ATTRIBUTE,
    Declaration,
    declarations_of,
    dropped_declarations,
    expressions_of,
    hidden_declarations,
    references,
)

OWN, FORWARD, REVERSE, M2M = "own", "forward", "reverse", "m2m"


@dataclass(frozen=True, eq=False)
class Hop:
    """One step of a path: the rows it reaches and which of their changes count."""

    index: int
    model: type[models.Model]  # concrete model of the rows at this hop
    lookup: str  # ORM lookup from the maintained model to these rows ("" at hop 0)
    kind: str  # OWN, FORWARD, REVERSE or M2M: how the previous hop reaches these rows
    up_link: str | None  # REVERSE: attname on these rows pointing at the previous hop's row
    m2m_field: models.ManyToManyField[Any, Any] | None  # M2M: the field that declares the relation
    m2m_forward: bool  # M2M: the previous hop's model declares m2m_field
    triggers: frozenset[str] | None  # attnames whose change counts; None: any change
    # FORWARD, REVERSE: the foreign key followed from the previous hop, or back to it.
    foreign_key: models.ForeignKey[Any, Any] | None = None
    # REVERSE: the field of the previous hop's rows that up_link holds, where it
    # is not their primary key (ForeignKey(to_field=...)).
    parent_key: str | None = None

    @property
    def record_index(self) -> int:
        """REVERSE: where the values of up_link are recorded.  The previous hop's
        index when they are its primary keys; minus this hop's index when they
        are values of ``parent_key``."""
        return -self.index if self.parent_key else self.index - 1


@dataclass(frozen=True, eq=False)
class Dependency:
    spec: Spec
    path: str
    hops: tuple[Hop, ...]

    @cached_property
    def record_indexes(self) -> tuple[int, ...]:
        """Every index that records of this dependency are kept under."""
        return tuple(hop.index for hop in self.hops) + tuple(
            -hop.index for hop in self.hops if hop.kind == REVERSE and hop.parent_key
        )


@dataclass(eq=False)
class Spec:
    """A resolved maintained field: the model, the field and the method computing it."""

    model: type[models.Model]
    field: models.Field[Any, Any]
    method_name: str
    label: str | None
    depends_on: tuple[str, ...]
    deps: tuple[Dependency, ...] = ()
    # A dependency on nothing: records under it name rows to recompute outright.
    itself: Dependency = None  # type: ignore[assignment]
    # Computed in save() before the write: every path is a field of the row itself.
    own_row: bool = False
    # The attnames an own-row spec reads; empty: recomputed on every save.
    own_triggers: frozenset[str] = frozenset()
    # An own-row spec that reads what the write itself sets (the primary
    # key, auto_now fields, database defaults): computed after the write.
    after_write: bool = False
    # maintained(): the expression the database computes the value with.
    expression: Any = None

    @cached_property
    def forward_paths(self) -> tuple[str, ...]:
        """The lookups of the rows this spec reads through foreign keys alone
        (``study``, ``study__lab``), which can be read for a batch of rows at once."""
        paths = set()
        for dep in self.deps:
            forward = [hop.lookup for hop in dep.hops[1:] if hop.kind == FORWARD]
            if forward and len(forward) == len(dep.hops) - 1:
                paths.add(forward[-1])
        return tuple(sorted(paths))

    @cached_property
    def forward_hops(self) -> frozenset[tuple[type[models.Model], str]]:
        """(model, lookup) of each row this spec reads through foreign keys
        from its own row, before any other kind of hop (``study``, then
        ``study__lab``)."""
        return frozenset(
            (hop.model, hop.lookup)
            for dep in self.deps
            for hop in itertools.takewhile(lambda hop: hop.kind == FORWARD, dep.hops[1:])
        )

    @property
    def source(self) -> str:
        """What computes the value, for messages."""
        if self.expression is not None:
            return f"the maintained() expression of {self}"
        return f"{self.model.__name__}.{self.method_name}()"

    def settable(self, vendor: str) -> bool:
        """Whether an UPDATE can set the column to the expression itself: no
        join outside its aggregates (UPDATE takes none), and no aggregate on
        MySQL and MariaDB (a subquery may not read the table being updated)."""
        names, aggregates = self._outer_references
        return self.expression is not None and all("__" not in name for name in names) and not (
            aggregates and vendor == "mysql"
        )

    @cached_property
    def _outer_references(self) -> tuple[set[str], bool]:
        return _outer_references(self.expression)

    @cached_property
    def _annotation(self) -> Any:
        return stored_as(self, _isolate(self.expression, self.model))

    def annotation(self) -> Any:
        """The expression, each aggregate in it a subquery of its own over the
        row (``OuterRef("pk")``), ready to annotate a query of this model.
        Built once: a query resolves a copy of it."""
        return self._annotation

    def compute(self, instance: models.Model) -> Any:
        if self.expression is not None:
            rows: models.QuerySet[Any] = models.QuerySet(self.model, using=instance._state.db).filter(pk=instance.pk)
            rows = rows.annotate(_maintained_value=self.annotation())
            return rows.values_list("_maintained_value", flat=True).first()
        # A migration's historical instance has no methods: lend it the model's.
        method = getattr(type(instance), self.method_name, None) or getattr(self.model, self.method_name)
        try:
            return method(instance)
        except ValueError as error:
            if instance.pk is not None or "primary key value" not in str(error):
                raise
            # Django's "needs to have a primary key value before this relationship can be used"
            raise ValueError(
                f"{self.source} read a relation of a row that has no key yet ({str(error).rstrip('.')}). A method is "
                "computed before the INSERT when its depends_on names only the row's own fields; name "
                "the relation it reads (depends_on=['kids']) and it is computed after the write."
            ) from error

    def __str__(self) -> str:
        return f"{self.model._meta.label}.{self.field.name}"


def stored_as(spec: Spec, expression: Any) -> Any:
    """``expression`` as ``spec``'s column stores it: a DecimalField's value
    rounded to its places by the database, as the column rounds it, so that
    what is computed compares equal to what is stored."""
    if isinstance(spec.field, models.DecimalField):
        return _StoredDecimal(expression, output_field=spec.field)
    return expression


class _StoredDecimal(Cast):
    """A cast to a DecimalField, which SQLite's column does not round (a sum
    of 0.1 and 0.2 stays 0.30000000000000004): rounded there to the field's
    places by the function writes.sqlite_decimal(), as the package rounds a
    method's value and PostgreSQL and MariaDB round the column's."""

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        sql, params = super().as_sqlite(compiler, connection, **extra_context)
        return f"maintained_decimal({sql}, {self._places})", params

    def as_mysql(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        # MySQL and MariaDB clamp a value too large for the type (999.99 for
        # 1000.99 into DECIMAL(5, 2)): rounded in the widest type, so that
        # the value the column cannot hold is the one the package sees.
        sql, params = compiler.compile(self.source_expressions[0])
        return f"CAST({sql} AS DECIMAL(65, {self._places}))", params

    @property
    def _places(self) -> int:
        return int(cast(models.DecimalField, self.output_field).decimal_places)  # type: ignore[type-arg]


class _ExactSum(models.Sum):
    """A Sum, which SQLite adds in floats (1.005 and -1.000 make
    0.004999999999999893): of a decimal column, added there as whole
    numbers of its smallest place, then divided (0.005, as a method adding
    the values Django reads would)."""

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        source = self.get_source_expressions()[0]
        field = getattr(source, "target", None) if isinstance(source, Col) else None
        if not isinstance(field, models.DecimalField) or field.decimal_places is None:
            return super().as_sqlite(compiler, connection, **extra_context)
        scale = 10 ** int(field.decimal_places)
        # On a copy, of the class's own template: a template given as an
        # argument would clash with the one a filter makes (Django 5.2), and
        # Django 6.0's holds the filter and ordering clauses.
        scaled = self.copy()
        scaled.template = self.template.replace("%(expressions)s", f"ROUND(%(expressions)s * {scale})", 1)
        sql, params = scaled.as_sql(compiler, connection, **extra_context)
        return f"CAST(({sql}) / {scale}.0 AS NUMERIC)", params


def _isolate(expression: Any, model: type[models.Model]) -> Any:
    def subquery(node: Any) -> Any:
        if type(node) is models.Sum:
            node = node.copy()
            node.__class__ = _ExactSum
        if isinstance(node, models.Aggregate):
            over_children = _over_children(node, model)
            if over_children is not None:
                return over_children
            rows: models.QuerySet[Any] = models.QuerySet(model).filter(pk=models.OuterRef("pk")).order_by()
            # Grouped by the key alone: SQLite sorts by every column of a group otherwise.
            return models.Subquery(rows.values("pk").annotate(_maintained_value=node).values("_maintained_value"))
        return None

    return rewrite(expression, subquery)


# Aggregates that ignore NULL inputs and give NULL over no rows (Count: 0).
_PLAIN_AGGREGATES = (
    models.Count, models.Sum, _ExactSum, models.Avg, models.Max, models.Min, models.StdDev, models.Variance
)


def _over_children(aggregate: Any, model: type[models.Model]) -> Any:
    """``aggregate``, whose every reference goes through one reverse foreign
    key onto ``model``'s key (``Count("samples", filter=Q(samples__weight__gt=5))``),
    as a subquery of the children's table alone: ``SELECT COUNT(...) FROM
    sample WHERE study_id = <the row>``.  Without the join to ``model``'s
    table that the general form takes, PostgreSQL plans it in two thirds
    of the time, and every immediate write plans it once per parent.  None
    where the aggregate is not of that shape."""
    if type(aggregate) not in _PLAIN_AGGREGATES or getattr(aggregate, "default", None) is not None:
        return None
    names = references(aggregate)
    relations = {name.split("__", 1)[0] for name in names}
    if len(relations) != 1 or _has_outer_parts(aggregate):
        return None
    [relation] = relations
    try:
        reverse = model._meta.get_field(relation)
    except FieldDoesNotExist:
        return None
    if not (isinstance(reverse, models.ManyToOneRel) and reverse.one_to_many):
        return None
    foreign_key = reverse.field
    if not isinstance(foreign_key, models.ForeignKey) or foreign_key.target_field != model._meta.pk:
        return None
    child = reverse.related_model
    meta = child._meta

    def rest(name: str) -> str | None:
        """``name`` from the child: ``samples__weight`` is ``weight``, ``samples`` is ``pk``."""
        tail = name[len(relation) + 2 :] if name != relation else "pk"
        head = tail.split("__", 1)[0]
        if head != "pk":
            try:
                meta.get_field(head)
            except FieldDoesNotExist:
                return None  # a lookup such as samples__isnull
        return tail

    found_tails = {name: rest(name) for name in names}
    if None in found_tails.values():
        return None
    tails = cast(dict[str, str], found_tails)

    def moved(node: Any) -> Any:
        if isinstance(node, models.F):
            return models.F(tails[node.name])  # type: ignore[attr-defined]  # set by F.__init__
        if isinstance(node, models.Q):
            copy = node.copy()
            parts: list[Any] = list(node.children)
            copy.children = [
                moved(part) if isinstance(part, models.Q) else (tails[part[0]], _moved_value(part[1], moved))
                for part in parts
            ]
            return copy
        return None

    rows: models.QuerySet[Any] = models.QuerySet(child).filter(**{foreign_key.name: models.OuterRef("pk")})
    value = rows.order_by().values(foreign_key.attname).annotate(_maintained_value=rewrite(aggregate, moved))
    found = models.Subquery(value.values("_maintained_value"))
    # No children, no group, no row: NULL, where Count over the join gives 0.
    return Coalesce(found, 0) if isinstance(aggregate, models.Count) else found


def _moved_value(value: Any, moved: Callable[[Any], Any]) -> Any:
    return rewrite(value, moved) if hasattr(value, "resolve_expression") else value


def _has_outer_parts(expression: Any) -> bool:
    """Whether ``expression`` holds a subquery or a reference to an outer query."""
    found = False

    def visit(node: Any) -> Any:
        nonlocal found
        if isinstance(node, (models.OuterRef, models.Subquery, models.Exists)):
            found = True
            return node
        if isinstance(node, models.Q):
            parts: list[Any] = list(node.children)
            for part in parts:
                if isinstance(part, models.Q):
                    visit(part)
                elif hasattr(part[1], "resolve_expression"):
                    rewrite(part[1], visit)
            return node
        return None

    rewrite(expression, visit)
    return found


def _kind_mismatch(model: type[models.Model], target: Any, expression: Any) -> tuple[str, str] | None:
    """What is wrong, and the hint, where ``expression`` gives values of
    another kind (:data:`_KINDS`) than ``target``'s column, or where its type
    cannot be told; None where its type fits or the check leaves it alone."""
    try:
        rows: models.QuerySet[Any] = models.QuerySet(model).annotate(
            _maintained_value=_isolate(expression, model)
        )
        resolved = rows.query.annotations["_maintained_value"]
        output = resolved.output_field
    except FieldError as error:
        if "mixed types" not in str(error) and "output_field" not in str(error):
            return None  # a path that does not resolve: E002 reports it
        return (
            f"has no single type ({error})",
            "Give its parts one type (Coalesce(Sum('kids__qty'), 0) beside integers, not Value(0.0); "
            "or Cast(...) a part), or set output_field= to the type the database computes, e.g. "
            "F('qty') * F('price') with output_field=DecimalField(...).",
        )
    given, wanted = _kind(output), _kind(target)
    if given == wanted == "number" and not _fractional(_target_of(target)):
        hidden = _typed_integer_over_fractions(resolved)
        if _fractional_values(resolved) or hidden is not None:
            what = (
                f"gives fractions ({type(output).__name__})"
                if hidden is None
                else f"gives fractions: {hidden!r} is typed integer by its output_field, which names a "
                "type and converts nothing,"
            )
            return (
                f"{what} and {target.model._meta.label}.{target.name} is an integer column "
                f"({type(target).__name__}): each database makes an integer of a fraction its own way "
                "(SQLite keeps the fraction, PostgreSQL and MariaDB round it), and the package's writes "
                "and its check would not agree on the value.",
                (
                    f"Make it a whole number in the expression, e.g. Cast(..., output_field=DecimalField("
                    f"max_digits={target.max_digits}, decimal_places=0)), which is rounded as the column is; "
                    "or give the column decimal places."
                    if isinstance(target, models.DecimalField)
                    else "Make it an integer in the expression, e.g. Cast(Round(...), output_field=IntegerField()), "
                    "or make the column a FloatField or DecimalField."
                ),
            )
    if given is None or wanted is None or given == wanted:
        return None
    return (
        f"is typed {type(output).__name__} and {target.model._meta.label}.{target.name} is typed "
        f"{type(target).__name__}: each database compares, converts and stores values of one kind "
        "in a column of another its own way (PostgreSQL refuses most such comparisons, and every "
        "write there would fail; SQLite may store NULL or another value).",
        f"Convert the value, e.g. Cast(..., output_field={type(_target_of(target)).__name__}()), "
        "or TruncDate('...') for the date of a date and time.",
    )


# Kinds of column that PostgreSQL does not compare with one another.
_KINDS = (
    ((models.CharField, models.TextField), "text"),
    ((models.BooleanField,), "boolean"),
    ((models.UUIDField,), "uuid"),
    ((models.JSONField,), "json"),
    ((models.DateTimeField,), "datetime"),  # before DateField, its base class
    ((models.DateField,), "date"),
    ((models.TimeField,), "time"),
    ((models.DurationField,), "duration"),
    ((models.BinaryField,), "binary"),
    ((models.IntegerField, models.FloatField, models.DecimalField), "number"),
)


def _target_of(field: Any) -> Any:
    while field.is_relation and getattr(field, "target_field", None) is not None:
        field = field.target_field
    return field


def _fractional(field: Any) -> bool:
    if isinstance(field, models.DecimalField):
        return field.decimal_places != 0
    return isinstance(field, models.FloatField)


def _fractional_values(node: Any) -> bool:
    """Whether the resolved expression ``node`` may give fractions: its type
    is a float or a decimal with places, but for the remainder of integers
    (``Mod``, which Django types as a float)."""
    if isinstance(node, Mod):
        return any(_fractional_values(source) for source in node.get_source_expressions())
    try:
        return _fractional(node.output_field)
    except (AttributeError, FieldError):
        return False


def _typed_integer_over_fractions(node: Any) -> Any:
    """An aggregate (but a count), wrapper or arithmetic within the resolved
    ``node`` typed integer by its ``output_field`` over parts that give
    fractions, or None.  Cast and the functions that make integers of
    fractions (Round, Floor, Ceil) are what convert."""
    if isinstance(node, (Cast, Round, Floor, Ceil)) or not hasattr(node, "get_source_expressions"):
        return None
    sources = [source for source in node.get_source_expressions() if source is not None]
    if isinstance(node, Query):  # a subquery's: the aggregate over a relation is in it
        sources += [*node.annotations.values(), *node.select]
    if isinstance(node, (Aggregate, ExpressionWrapper, CombinedExpression)) and not isinstance(node, Count):
        try:
            integer = not _fractional_values(node) and _kind(node.output_field) == "number"
        except FieldError:
            integer = False
        if integer and any(_fractional_values(source) for source in sources):
            return node
    return next((found for found in map(_typed_integer_over_fractions, sources) if found is not None), None)


def _kind(field: Any) -> str | None:
    """The kind of a column (a foreign key's, that of its target), or None
    for a type the check leaves alone (a custom field, an array)."""
    field = _target_of(field)
    return next((kind for types, kind in _KINDS if isinstance(field, types)), None)


def _to_many_outside_aggregates(model: type[models.Model], expression: Any) -> list[str]:
    """The references of ``expression`` outside its aggregates whose path goes
    through a reverse foreign key or a many-to-many relation."""
    found = []
    for name in sorted(_outer_references(expression)[0]):
        current = model
        for part in name.split("__"):
            try:
                field = current._meta.get_field(part)
            except FieldDoesNotExist:
                break  # a lookup or a transform; E002 reports a path that does not resolve
            if field.one_to_many or field.many_to_many:
                found.append(name)
                break
            if not field.is_relation or field.related_model is None:
                break
            current = field.related_model
    return found


def _outer_references(expression: Any) -> tuple[set[str], bool]:
    """The F() names and the lookups of conditions (``When(crate__name=...)``)
    of ``expression`` outside its aggregates, and whether it has any."""
    names: set[str] = set()
    aggregates = False

    def visit(node: Any) -> Any:
        nonlocal aggregates
        if isinstance(node, models.Aggregate):
            aggregates = True
            return node
        if isinstance(node, models.F):
            names.add(node.name)  # type: ignore[attr-defined]  # set by F.__init__; the stubs omit it
            return node
        if isinstance(node, models.Q):
            names.update(references(node))
            return node
        return None

    rewrite(expression, visit)
    return names, aggregates


def rewrite(expression: Any, replace: Callable[[Any], Any]) -> Any:
    """A copy of ``expression`` with each node for which ``replace`` returns
    something other than None replaced by that (and not looked into)."""
    replaced = replace(expression)
    if replaced is not None:
        return replaced
    sources = expression.get_source_expressions() if hasattr(expression, "get_source_expressions") else []
    if not sources:
        return expression
    copy = expression.copy()
    copy.set_source_expressions([rewrite(source, replace) for source in sources])
    return copy


@dataclass(eq=False)
class ModelNode:
    """What the graph knows of one concrete model."""

    model: type[models.Model]
    own_row: tuple[Spec, ...] = ()
    related: tuple[Spec, ...] = ()
    edges: tuple[tuple[Dependency, Hop], ...] = ()
    # The edges left once save() has computed the own-row fields itself.
    saved_edges: tuple[tuple[Dependency, Hop], ...] = ()
    # Attnames read before an update, to tell what the write changes.
    tracked: frozenset[str] = frozenset()
    # Attnames of fields maintained from other rows: only the library writes them.
    related_attnames: frozenset[str] = frozenset()
    # Attnames of foreign keys on this model that paths follow up to a parent.
    up_links: frozenset[str] = frozenset()
    # Attnames whose change reaches rows that come before the row's own in
    # lock order (its children, other rows of its model): an immediate write
    # of them locks that reach before its own row (propagation.lock_first).
    locks_first: frozenset[str] = frozenset()
    # {label filter: what the insert of a row does} (tracking.insert_plan).
    on_insert: dict[frozenset[str] | None, Any] = field(default_factory=dict)
    # {(attnames changed, label filter): whether the change leads to a recompute} (propagation.leads_on).
    leads: dict[tuple[frozenset[str], frozenset[str] | None], bool] = field(default_factory=dict)

    @cached_property
    def own_reads(self) -> tuple[str, ...]:
        """The attnames the own-row fields read: every concrete field's, if
        one of them reads the whole row."""
        if any(not spec.own_triggers for spec in self.own_row):
            return tuple(f.attname for f in self.model._meta.concrete_fields)
        return tuple(sorted(set().union(*(spec.own_triggers for spec in self.own_row))))


@dataclass(eq=False)
class Graph:
    specs: tuple[Spec, ...] = ()
    nodes: dict[type[models.Model], ModelNode] = field(default_factory=dict)
    m2m: dict[type[models.Model], tuple[tuple[Dependency, Hop], ...]] = field(default_factory=dict)
    # Groups of specs of one model, children before parents.
    order: tuple[tuple[type[models.Model], tuple[Spec, ...]], ...] = ()
    labels: frozenset[str] = frozenset()
    errors: list[checks.CheckMessage] = field(default_factory=list)
    # The order in which every writer locks rows, model by model (see _lock_order).
    model_order: dict[type[models.Model], int] = field(default_factory=dict)
    # The layer of each group of ``order``: groups in one layer do not depend on each other.
    layers: tuple[int, ...] = ()
    # Each spec's group: its position in ``order``.
    group_of: dict[Spec, int] = field(default_factory=dict)
    # The models whose rows a flush locks as it reads their links (see _walk_locks).
    walk_locks: frozenset[type[models.Model]] = frozenset()
    # The specs whose recompute may lead to one of a field that reads rows
    # through foreign keys from its own row (``study__lab__name``): such a
    # recompute locks those rows as it finds them.
    reads_forward: frozenset[Spec] = frozenset()
    # Per model, the foreign keys onto it that a path follows and whose
    # on_delete moves the children to another row (SET, SET_DEFAULT, custom).
    moved_on_delete: dict[type[models.Model], tuple[models.ForeignKey[Any, Any], ...]] = field(default_factory=dict)

    def node(self, model: type[models.Model]) -> ModelNode | None:
        return self.nodes.get(model._meta.concrete_model)  # type: ignore[arg-type]  # a model's, never None

    def select(self, targets: Iterable[str] = (), labels: Iterable[str] | None = None) -> list[Spec]:
        """The specs of the models named ``app_label`` or ``app_label.Model``, in order.

        Raises ValueError naming a target or label that matches nothing.
        """
        targets = list(targets)
        chosen = [spec for _, group in self.order for spec in group]
        for target in targets:
            if not any(_matches(spec, target) for spec in chosen):
                raise ValueError(
                    f"{target!r} names no model with maintained fields; use app_label "
                    "or app_label.ModelName."
                )
        if targets:
            chosen = [s for s in chosen if any(_matches(s, t) for t in targets)]
        if labels is not None:
            labels = set(labels)
            check_labels(labels, self)
            labelled = [s for s in chosen if s.label in labels]
            if targets and not labelled:
                raise ValueError(
                    f"No maintained field of {', '.join(targets)} has the label "
                    f"{' or '.join(map(repr, sorted(labels)))}: leave out --labels, or name the models "
                    "whose fields have it."
                )
            chosen = labelled
        return chosen


def _matches(spec: Spec, target: str) -> bool:
    meta = spec.model._meta
    if "." in target:
        return target.lower() == meta.label_lower
    return target == meta.app_label


def check_labels(labels: Iterable[str], graph: Graph | None = None) -> None:
    """Raise ValueError if a label is used by no maintained field."""
    graph = graph or get_graph()
    unknown = sorted(set(labels) - graph.labels)
    if unknown:
        known = ", ".join(map(repr, sorted(graph.labels))) or "none"
        raise ValueError(
            f"No maintained field has the label(s) {', '.join(map(repr, unknown))}; "
            f"the labels in use are: {known}."
        )


class _PathError(Exception):
    def __init__(self, message: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.suggestion = suggestion  # the path likely meant


def _likely(name: str, names: Iterable[str]) -> str | None:
    """The one of ``names`` that ``name`` is most likely a misspelling of, if any."""
    found = difflib.get_close_matches(name, list(names), n=1)
    return found[0] if found else None


def _did_you_mean(suggestion: str | None) -> str:
    return f" Did you mean {suggestion!r}?" if suggestion else ""


def _resolve(model: type[models.Model], path: str) -> tuple[Hop, ...]:
    """The hops of ``path`` from ``model``, or _PathError saying what is wrong."""
    names = path.split("__")
    steps: list[tuple[str, Any, type[models.Model], bool]] = []
    terminal: set[str] | None = None  # the attnames of the field the path ends in
    current = model
    for position, name in enumerate(names):
        if name == "pk":  # as in filter(): the primary key
            name = current._meta.pk.name
        try:
            found = current._meta.get_field(name)
        except FieldDoesNotExist:
            likely = _likely(name, (f.name for f in current._meta.get_fields()))
            raise _PathError(
                f"{current._meta.label} has no field or relation {name!r}",
                "__".join([*names[:position], likely, *names[position + 1:]]) if likely else None,
            ) from None
        by_attname = name != found.name and name == getattr(found, "attname", None)
        if found.is_relation and not by_attname:
            related = found.related_model
            if related is None or not isinstance(found, (models.Field, ForeignObjectRel)):
                raise _PathError(f"{name!r} is a generic relation, which depends_on cannot follow")
            if isinstance(found, models.ManyToManyField):
                steps.append((M2M, found, related, True))
            elif isinstance(found, models.ManyToManyRel):
                steps.append((M2M, found.field, related, False))
            elif isinstance(found, ForeignObjectRel):
                steps.append((REVERSE, found.field, related, False))
            elif isinstance(found, models.ForeignKey):
                steps.append((FORWARD, found, related, True))
            else:
                raise _PathError(f"{name!r} is a generic relation, which depends_on cannot follow")
            current = cast(type[models.Model], related._meta.concrete_model)
        else:
            if position != len(names) - 1:
                raise _PathError(
                    f"{name!r} is a field of {current._meta.label}, not a relation; "
                    "only the last part of a path can be a field",
                    "__".join(names[: position + 1]),
                )
            # a composite key: the columns it is made of (found is a Field: relations took the branch above)
            if found.primary_key and hasattr(found, "fields"):  # type: ignore[union-attr]
                terminal = {field.attname for field in found.fields}
            elif not found.concrete:
                raise _PathError(f"{name!r} of {current._meta.label} is not a database column")
            else:
                terminal = {found.attname, *_generated_from(found)}

    def next_forward_link(position: int) -> set[str]:
        if position < len(steps) and steps[position][0] == FORWARD:
            return {steps[position][1].attname}
        return set()

    own = set(terminal) if terminal is not None and not steps else next_forward_link(0)
    hops = [Hop(0, model, "", OWN, None, None, False, frozenset(own))]
    for index, (kind, relation, related, forward) in enumerate(steps, start=1):
        last = index == len(steps)
        triggers: set[str] | None
        if terminal is None:
            triggers = None
        else:
            triggers = set(terminal) if last else set()
            if kind == REVERSE:
                triggers.add(relation.attname)
            triggers |= next_forward_link(index)
        hops.append(
            Hop(
                index=index,
                model=cast(type[models.Model], related._meta.concrete_model),
                lookup="__".join(names[:index]),
                kind=kind,
                up_link=relation.attname if kind == REVERSE else None,
                m2m_field=relation if kind == M2M else None,
                m2m_forward=kind == M2M and forward,
                triggers=None if triggers is None else frozenset(triggers),
                foreign_key=relation if kind in (FORWARD, REVERSE) else None,
                parent_key=_parent_key(relation) if kind == REVERSE else None,
            )
        )
    return tuple(hops)


def _parent_key(foreign_key: models.ForeignKey[Any, Any]) -> str | None:
    """The name of the field a foreign key points at, None for the primary key."""
    target = foreign_key.target_field
    return None if target.primary_key else target.name


def _error(id: int, msg: str, obj: Any, hint: str | None = None) -> checks.Error:
    return checks.Error(msg, hint=hint, obj=obj, id=f"maintained_fields.E{id:03d}")


def mixin_problem(model: type[models.Model]) -> str | None:
    """None if the model's save() runs the mixin's; else what is wrong."""
    mro = model.__mro__
    mixins = [k for k in mro if vars(k).get("_maintained_fields_mixin")]
    if not mixins:
        return "does not inherit from MaintainedModel or MaintainedModelMixin"
    if mro.index(mixins[0]) > mro.index(models.Model):
        return "lists MaintainedModelMixin after models.Model in its bases, so save() never reaches it"
    return None


def build(model_list: Iterable[type[models.Model]]) -> Graph:
    """Resolve the declarations of ``model_list`` into a graph.

    Declarations with an error are left out of the graph and their errors are
    collected in ``Graph.errors`` for the system checks.
    """
    graph = Graph()
    specs: list[Spec] = []
    flawed: list[Spec] = []
    seen: dict[tuple[type[models.Model], str], str] = {}
    for model in model_list:
        meta = model._meta
        if meta.proxy and any(getattr(v, ATTRIBUTE, None) for v in vars(model).values()):
            graph.errors.append(
                _error(
                    9,
                    f"{meta.label} declares maintained fields, but it is a proxy model: maintained "
                    "fields belong to the concrete model, "
                    f"{cast(type[models.Model], meta.concrete_model)._meta.label}.",
                    model,
                    "Move the @maintained_field methods to "
                    f"{cast(type[models.Model], meta.concrete_model)._meta.label}.",
                )
            )
        if meta.proxy:
            concrete = cast(type[models.Model], meta.concrete_model)._meta.label
            for name, _, field_name in dropped_declarations(model):
                graph.errors.append(
                    _error(
                        16,
                        f"{meta.label}.{name} replaces {concrete}.{name}(), which maintains {concrete}.{field_name}: "
                        f"a save through the proxy would compute the field otherwise than one through {concrete}.",
                        model,
                        "Remove the proxy's definition, or give it another name.",
                    )
                )
        if meta.abstract or meta.proxy:
            continue
        for name, descriptor in hidden_declarations(model):
            graph.errors.append(
                _error(
                    15,
                    f"{meta.label}.{name} is a @maintained_field method wrapped in "
                    f"{type(descriptor).__name__}, which hides it: its field would never be maintained.",
                    model,
                    "Make @maintained_field the outermost decorator, on a plain method: the "
                    "package calls the method, and code reads the field.",
                )
            )
        for name, base, field_name in dropped_declarations(model):
            where = base._meta.label if issubclass(base, models.Model) else base.__qualname__
            graph.errors.append(
                _error(
                    16,
                    f"{where}.{name}() is declared to maintain {meta.label}.{field_name}, but a later "
                    f"definition of {name} replaces it: the field would never be maintained.",
                    model,
                    f"Decorate the method that replaces it with @maintained_field({field_name!r}, depends_on=[...]), "
                    "or give the two methods different names.",
                )
            )
        declared = declarations_of(model)
        declared.update(expressions_of(model))
        if not declared:
            continue
        problem = mixin_problem(model)
        if problem:
            graph.errors.append(
                _error(
                    5,
                    f"{meta.label} has maintained fields but {problem}.",
                    model,
                    "Inherit from maintained_fields.MaintainedModel, or put "
                    "MaintainedModelMixin first in the bases.",
                )
            )
            continue
        for method_name, declaration in declared.items():
            spec = _spec(model, method_name, declaration, seen, graph.errors, flawed)
            if spec is not None:
                specs.append(spec)
    _order(graph, specs)
    if flawed:
        # Left out for an error of their own, they still close cycles: report those in the same check.
        probe = Graph()
        _order(probe, specs + flawed)
        reported = {error.msg for error in graph.errors}
        graph.errors += [error for error in probe.errors if error.msg not in reported]
    _index(graph)
    graph.errors += _unseen_writes(graph, model_list)
    return graph


_DATABASE_ON_DELETE = tuple(
    action for action in (getattr(models, name, None) for name in ("DB_CASCADE", "DB_SET_NULL", "DB_SET_DEFAULT"))
    if action is not None
)


def _unseen_writes(graph: Graph, model_list: Iterable[type[models.Model]]) -> list[checks.CheckMessage]:
    """Errors for models in the graph whose rows can change where no signal is sent:
    multi-table inheritance and database-level ``on_delete``."""
    errors: list[checks.CheckMessage] = []
    concrete_children: dict[type[models.Model], list[type[models.Model]]] = defaultdict(list)
    for model in model_list:
        if not model._meta.proxy:
            for parent in model._meta.parents:
                concrete_children[cast(type[models.Model], parent._meta.concrete_model)].append(model)
    for model in graph.nodes:
        meta = model._meta
        if meta.auto_created:
            continue
        if meta.parents or concrete_children.get(model):
            child, parent = (model, next(iter(meta.parents))) if meta.parents else (concrete_children[model][0], model)
            errors.append(
                _error(
                    6,
                    f"{meta.label} has or depends on maintained fields, but {child._meta.label} inherits "
                    f"from {parent._meta.label} through multi-table inheritance, which maintained fields do "
                    "not support: a write through one of the two tables is not seen on the other.",
                    model,
                    "Make the parent abstract (Meta.abstract = True), or replace the inheritance with a "
                    "OneToOneField and follow it in depends_on.",
                )
            )
        for foreign_key in meta.concrete_fields:
            # many_to_one: a ForeignKey, whose remote_field is set
            if foreign_key.many_to_one and foreign_key.remote_field.on_delete in _DATABASE_ON_DELETE:  # type: ignore[union-attr]
                action = foreign_key.remote_field.on_delete.__name__  # type: ignore[union-attr]
                errors.append(
                    _error(
                        7,
                        f"{meta.label}.{foreign_key.name} has on_delete={action}: the database changes "
                        f"{meta.label} rows without signals, so the maintained fields that read them "
                        "would go stale.",
                        model,
                        f"Use on_delete=models.{action.removeprefix('DB_')}, which Django carries out "
                        "with signals.",
                    )
                )
    return errors


def _spec(
    model: type[models.Model],
    method_name: str,
    declaration: Declaration,
    seen: dict[tuple[type[models.Model], str], str],
    errors: list[checks.CheckMessage],
    flawed: list[Spec],
) -> Spec | None:
    """The spec of a declaration, or None, with its errors added to ``errors``;
    one whose only fault is its value (E012) is added to ``flawed``."""
    meta = model._meta
    where = f"{meta.label}.{method_name}()"
    if declaration.expression is not None:
        method_name = ""
        where = f"{meta.label}.{declaration.field_name}'s maintained() expression"
    try:
        target = meta.get_field(declaration.field_name)
    except FieldDoesNotExist:
        likely = _likely(declaration.field_name, (f.name for f in meta.concrete_fields if not f.primary_key))
        errors.append(
            _error(
                1,
                f"{where} maintains {declaration.field_name!r}, which is not a field of {meta.label}."
                + _did_you_mean(likely),
                model,
                "Name a concrete field of the model in @maintained_field(...).",
            )
        )
        return None
    if not target.concrete or target.many_to_many or target.primary_key or getattr(target, "generated", False):
        errors.append(
            _error(
                1,
                f"{where} maintains {declaration.field_name!r}, which is not a column "
                f"that can be written (a primary key, generated field, many-to-many or reverse relation).",
                model,
                "Maintain a concrete, non-primary-key field of the model.",
            )
        )
        return None
    key = (model, target.name)
    by = f"{method_name}()" if method_name else "maintained()"
    if key in seen:
        errors.append(
            _error(
                3,
                f"{meta.label}.{target.name} is maintained twice: by {seen[key]} and by {by}.",
                model,
                "Keep one @maintained_field method or maintained() per field.",
            )
        )
        return None
    seen[key] = by
    if declaration.expression is not None:
        own = _aggregates_of_the_row(model, declaration.expression)
        if own:
            errors.append(
                _error(
                    11,
                    f"{where} aggregates the row's own fields ({', '.join(own)}): an aggregate reads the "
                    "rows of a relation, and a row has one value of its own fields.",
                    model,
                    "Aggregate through a relation, e.g. Sum('samples__weight'), or write F('name') "
                    "for the row's own value.",
                )
            )
            return None
        to_many = _to_many_outside_aggregates(model, declaration.expression)
        if to_many:
            errors.append(
                _error(
                    13,
                    f"{where} reads {', '.join(repr(name) for name in to_many)} outside an aggregate: "
                    "the path goes through a relation to many rows (a reverse foreign key or a "
                    "many-to-many), so a row has no single such value, and which one the database "
                    "gives is arbitrary.",
                    model,
                    "Aggregate it, e.g. Max('kids__qty'), Count('kids', filter=Q(kids__qty__gt=5)), "
                    "or read it through foreign keys only.",
                )
            )
            return None
        mismatch = _kind_mismatch(model, target, declaration.expression)
        if mismatch is not None:
            errors.append(_error(14, f"{where} {mismatch[0]}", model, mismatch[1]))
            return None
    null_error = None
    if declaration.expression is not None and not target.null:
        nullable = _copied_null(model, declaration.expression)
        if nullable is not None:
            default = target.default if target.has_default() and not callable(target.default) else "..."
            null_error = _error(
                12,
                f"{where} is NULL where {nullable[0]} is ({declaration.expression!r}), and "
                f"{meta.label}.{target.name} is NOT NULL: writing such a row would fail.",
                model,
                f"Give that case a value, e.g. Coalesce(F({nullable[1]!r}), Value({default!r})), "
                "or make the field null=True.",
            )
        elif _may_be_null(declaration.expression):
            null_error = _error(
                12,
                f"{where} is NULL for a row with no related rows ({declaration.expression!r}), "
                f"and {meta.label}.{target.name} is NOT NULL: writing such a row would fail.",
                model,
                "Give the empty case a value, e.g. Coalesce(Max('samples__name'), Value('')) or "
                "Coalesce(Sum('samples__weight'), 0.0), or make the field null=True.",
            )
    spec = Spec(
        model, target, method_name, declaration.label, declaration.depends_on, expression=declaration.expression
    )
    spec.itself = Dependency(spec, "", (Hop(0, model, "", OWN, None, None, False, frozenset()),))
    deps = []
    for path in declaration.depends_on:
        try:
            deps.append(Dependency(spec, path, _resolve(model, path)))
        except _PathError as exc:
            errors.append(
                _error(
                    2,
                    f"{where} depends on {path!r}, which does not resolve: {exc}.{_did_you_mean(exc.suggestion)}",
                    model,
                    "Write depends_on paths in lookup syntax from this model, "
                    "e.g. 'samples', 'study__lab' or 'samples__weight'.",
                )
            )
            if null_error is not None:
                errors.append(null_error)
            return None
    spec.deps = tuple(deps)
    spec.own_row = all(len(dep.hops) == 1 for dep in deps)
    if spec.own_row:
        spec.own_triggers = frozenset().union(*(cast(frozenset[str], dep.hops[0].triggers) for dep in deps))
        spec.after_write = bool(spec.own_triggers & _set_by_the_write(model))
    if null_error is not None:
        errors.append(null_error)
        flawed.append(spec)
        return None
    return spec


def _aggregates_of_the_row(model: type[models.Model], expression: Any) -> list[str]:
    """The aggregates of ``expression`` that read no relation (``Sum("n")``,
    ``Count("*")``), as written."""
    found: list[str] = []

    def visit(node: Any) -> Any:
        if isinstance(node, models.Aggregate):
            names = set().union(*(references(source) for source in node.get_source_expressions()[:1]))
            if not any(_is_relation(model, name.split("__")[0]) for name in names):
                found.append(repr(node))
            return node
        return None

    rewrite(expression, visit)
    return found


def _may_be_null(expression: Any) -> bool:
    """Whether ``expression`` is NULL over no rows: an aggregate other than
    a count, not given a value for that case (``Coalesce``, ``default=``)."""
    if isinstance(expression, models.Aggregate):
        return not isinstance(expression, models.Count) and getattr(expression, "default", None) is None
    if isinstance(expression, Coalesce):
        return all(_may_be_null(source) for source in expression.get_source_expressions())
    if isinstance(expression, (models.Case, models.When)):
        return False  # its conditions choose; left to the database
    sources = expression.get_source_expressions() if hasattr(expression, "get_source_expressions") else []
    return any(_may_be_null(source) for source in sources if source is not None)


def _copied_null(model: type[models.Model], expression: Any) -> tuple[str, str] | None:
    """Where ``expression``, a copy of one value (``F("parent__name")``), can
    be NULL: the nullable foreign key or column on its path, and the path;
    else None.  Expressions of several values are left to the database."""
    while isinstance(expression, (models.ExpressionWrapper, Cast)):
        expression = expression.get_source_expressions()[0]
    if not isinstance(expression, models.F):
        return None
    current = model
    parts = expression.name.split("__")  # type: ignore[attr-defined]  # F.name: the stubs omit it
    for index, part in enumerate(parts):
        try:
            field = current._meta.pk if part == "pk" else current._meta.get_field(part)
        except FieldDoesNotExist:
            return None  # E002 reports the path
        if getattr(field, "null", False):
            return f"{current._meta.label}.{field.name}", expression.name  # type: ignore[attr-defined]
        if index < len(parts) - 1:
            if not (field.many_to_one or field.one_to_one) or not field.concrete:
                return None  # not a copy of one value
            current = cast(type[models.Model], field.related_model)
    return None


def _is_relation(model: type[models.Model], name: str) -> bool:
    if name == "pk":
        return False
    try:
        return bool(model._meta.get_field(name).is_relation)
    except FieldDoesNotExist:
        return True  # not a field: E002 reports the path


def _generated_from(field: Any) -> set[str]:
    """The attnames a generated field is computed from, through other
    generated fields too: the database changes its value when any of them is
    written, and a write names only them (``update_fields``, ``update()``)."""
    if not getattr(field, "generated", False):
        return set()
    meta = field.model._meta
    found = set()
    for lookup in references(field.expression):
        try:
            source = meta.get_field(lookup.split("__")[0])
        except FieldDoesNotExist:
            continue  # Django's own check reports it
        found |= {source.attname, *_generated_from(source)}
    return found


def _set_by_the_write(model: type[models.Model]) -> frozenset[str]:
    """The attnames whose value a save() or INSERT sets: the primary key, auto_now
    and auto_now_add fields, fields with a database default, generated fields."""
    meta = model._meta
    return frozenset(
        field.attname
        for field in meta.concrete_fields
        if field.primary_key
        or getattr(field, "auto_now", False)
        or getattr(field, "auto_now_add", False)
        or getattr(field, "db_default", models.NOT_PROVIDED) is not models.NOT_PROVIDED
        or getattr(field, "generated", False)
    )


def _order(graph: Graph, specs: list[Spec]) -> None:
    """Put specs in dependency order, children first; report cycles."""
    by_model: dict[type[models.Model], list[Spec]] = defaultdict(list)
    for spec in specs:
        by_model[spec.model].append(spec)
    feeds: dict[Spec, set[Spec]] = {spec: set() for spec in specs}
    for spec in specs:
        for dep in spec.deps:
            for hop in dep.hops:
                for source in by_model.get(hop.model, ()):
                    if hop.triggers is None or source.field.attname in hop.triggers:
                        feeds[source].add(spec)
    waiting = {spec: 0 for spec in specs}
    for targets in feeds.values():
        for target in targets:
            waiting[target] += 1
    # Kahn's algorithm: each spec's layer is the earliest after everything it reads.
    # Each layer keeps the declaration order (``feeds`` are sets of objects
    # hashed by identity): the lock order derives from it, and must be the
    # same in every process.
    position = {spec: index for index, spec in enumerate(specs)}
    layer_of: dict[Spec, int] = {}
    layer, depth = [spec for spec in specs if waiting[spec] == 0], 0
    while layer:
        following = []
        for spec in layer:
            layer_of[spec] = depth
            for target in feeds[spec]:
                waiting[target] -= 1
                if waiting[target] == 0:
                    following.append(target)
        layer, depth = sorted(following, key=position.__getitem__), depth + 1
    # Fewer groups: a spec joins a later group of its model if it still comes
    # before everything that reads it (specs only ever move later, so what
    # reads a spec stays after it).
    for model_specs in by_model.values():
        for spec in sorted((s for s in model_specs if s in layer_of), key=layer_of.__getitem__):
            # A spec in a cycle has no layer (check E004 reports the cycle).
            free = range(layer_of[spec], min((layer_of.get(target, depth) for target in feeds[spec]), default=depth))
            layer_of[spec] = max((layer_of[o] for o in model_specs if layer_of.get(o, -1) in free), default=free.start)
    grouped: dict[tuple[int, type[models.Model]], list[Spec]] = {}
    for spec in sorted(layer_of, key=layer_of.__getitem__):
        grouped.setdefault((layer_of[spec], spec.model), []).append(spec)
    order = [(model, tuple(group)) for (_, model), group in grouped.items()]
    layers = [depth for depth, _ in grouped]
    ordered = {spec for _, group in order for spec in group}
    cyclic = [spec for spec in specs if spec not in ordered]
    for cycle in _find_cycles(cyclic, feeds):
        graph.errors.append(
            _error(
                4,
                "Maintained fields depend on each other in a cycle: "
                + " -> ".join(map(str, cycle))
                + ".",
                cycle[0].model,
                "Break the cycle. A path ending in a relation (depends_on=['study']) "
                "counts every change to the related rows, including the maintained "
                "values written there; end it with the field the method reads "
                "(depends_on=['study__name']).",
            )
        )
    graph.specs = tuple(spec for _, group in order for spec in group)
    graph.order = tuple(order)
    graph.layers = tuple(layers)
    graph.labels = frozenset(s.label for s in graph.specs if s.label is not None)


def _find_cycles(left: list[Spec], feeds: dict[Spec, set[Spec]]) -> list[list[Spec]]:
    """One cycle in each group of specs that depend on each other (each strongly
    connected component), among those the topological sort left over."""
    remaining = set(left)
    cycles = []
    while remaining:
        # The specs reachable from the first one that also reach it form its group.
        start = min(remaining, key=str)
        reached = _reachable(start, feeds, remaining)
        group = {spec for spec in reached if start in _reachable(spec, feeds, remaining)}
        if start in reached:
            cycles.append(_cycle_in(group | {start}, feeds, start))
            remaining -= group | {start}
        else:
            remaining.discard(start)
    return cycles


def _reachable(start: Spec, feeds: dict[Spec, set[Spec]], within: set[Spec]) -> set[Spec]:
    seen: set[Spec] = set()
    todo = [start]
    while todo:
        for following in feeds[todo.pop()] & within:
            if following not in seen:
                seen.add(following)
                todo.append(following)
    return seen


def _cycle_in(remaining: set[Spec], feeds: dict[Spec, set[Spec]], start: Spec) -> list[Spec]:
    """A cycle through ``start`` within ``remaining``, where every spec reaches every other."""
    path = [start]
    seen = {path[0]: 0}
    while True:
        following = min(feeds[path[-1]] & remaining, key=str)
        if following in seen:
            return path[seen[following]:] + [following]
        seen[following] = len(path)
        path.append(following)


def _index(graph: Graph) -> None:
    nodes: dict[type[models.Model], ModelNode] = {}
    edges: dict[type[models.Model], list[tuple[Dependency, Hop]]] = defaultdict(list)
    m2m: dict[type[models.Model], list[tuple[Dependency, Hop]]] = defaultdict(list)
    for spec in graph.specs:
        node = nodes.setdefault(spec.model, ModelNode(spec.model))
        if spec.own_row:
            node.own_row += (spec,)
        else:
            node.related += (spec,)
            node.related_attnames |= {spec.field.attname}
        for dep in spec.deps:
            for hop in dep.hops:
                edges[hop.model].append((dep, hop))
                if hop.kind == M2M:
                    # an M2M hop has its m2m_field
                    through: type[models.Model] = hop.m2m_field.remote_field.through._meta.concrete_model  # type: ignore[union-attr,assignment]
                    m2m[through].append((dep, hop))
                    if not through._meta.auto_created:
                        edges[through].append((dep, _through_hop(hop, through)))
    for model, model_edges in edges.items():
        node = nodes.setdefault(model, ModelNode(model))
        node.edges = tuple(model_edges)
        node.saved_edges = tuple((dep, hop) for dep, hop in model_edges if not (hop.index == 0 and dep.spec.own_row))
        node.up_links = frozenset(cast(str, hop.up_link) for _, hop in model_edges if hop.kind == REVERSE)
        # A write that moves a row off a parent must say which parent it left,
        # whether or not the path ends in a field.
        node.tracked = node.up_links.union(
            *(
                hop.triggers
                for dep, hop in model_edges
                if hop.triggers is not None and not (hop.index == 0 and dep.spec.own_row)
            )
        )
    graph.nodes = nodes
    graph.m2m = {through: tuple(found) for through, found in m2m.items()}
    first_group: dict[type[models.Model], int] = {}
    for position, (model, _) in enumerate(graph.order):
        first_group.setdefault(model, position)
    graph.model_order = _lock_order(nodes, first_group)
    # The groups of one layer do not depend on each other: recompute them in
    # lock order, children first (it keeps the order of the models no
    # foreign key orders, so model_order stays as it is).
    walk = sorted(range(len(graph.order)), key=lambda i: (graph.layers[i], graph.model_order[graph.order[i][0]]))
    graph.order = tuple(graph.order[i] for i in walk)
    graph.specs = tuple(spec for _, group in graph.order for spec in group)
    graph.group_of = {spec: position for position, (_, group) in enumerate(graph.order) for spec in group}
    graph.walk_locks = _walk_locks(graph)
    reach = _downstream(graph)
    graph.reads_forward = _leading_to_forward_reads(graph, reach)
    _mark_locks_first(graph, reach)
    moved: dict[type[models.Model], list[models.ForeignKey[Any, Any]]] = defaultdict(list)
    for model, node in nodes.items():
        for foreign_key in model._meta.concrete_fields:
            if foreign_key.many_to_one and foreign_key.attname in node.up_links:
                # many_to_one: a ForeignKey, with its remote_field and related_model
                if foreign_key.remote_field.on_delete not in _KEEPS_OR_CLEARS:  # type: ignore[union-attr,operator]
                    moved[foreign_key.related_model._meta.concrete_model].append(foreign_key)  # type: ignore[union-attr,index,arg-type]
    graph.moved_on_delete = {model: tuple(found) for model, found in moved.items()}


# What a change of (model, attname) reaches: see _downstream.
_Reach = Callable[[type[models.Model], str], set[tuple[Spec, bool]]]


def _downstream(graph: Graph) -> _Reach:
    """What a change of a model's attname reaches, from field to maintained
    field, at any remove: each maintained field's spec, and whether one hop
    reaching it goes from the row to other rows (an index)."""
    reached: dict[tuple[type[models.Model], str], set[tuple[Spec, bool]]] = {}

    def reach(model: type[models.Model], attname: str) -> set[tuple[Spec, bool]]:
        key = (model, attname)
        if key not in reached:
            reached[key] = found = set()  # a cycle back here adds nothing new
            node = graph.nodes.get(model)
            for dep, hop in node.edges if node else ():
                if hop.triggers is None or attname in hop.triggers:
                    found.add((dep.spec, bool(hop.index)))
                    found |= reach(dep.spec.model, dep.spec.field.attname)
        return reached[key]

    return reach


def _mark_locks_first(graph: Graph, reach: _Reach) -> None:
    """Set each node's ``locks_first``: the tracked attnames, and those its
    own-row fields read, whose change reaches, from field to maintained
    field, a row of a model placed no later than the node's own in
    ``graph.model_order``, other than the row itself (a lab's name copied by
    its samples; a sample's weight summed by its study and copied back by
    the study's other samples)."""
    for model, node in graph.nodes.items():
        place = graph.model_order[model]
        # What the row's own maintained fields read counts too: a study's
        # name, whose label its samples copy.
        own = frozenset().union(*(spec.own_triggers for spec in node.own_row))
        node.locks_first = frozenset(
            attname
            for attname in node.tracked | own
            if any(indexed and graph.model_order.get(spec.model, place + 1) <= place
                   for spec, indexed in reach(model, attname))
        )
        # Its old value is read, to tell whether a write changes it.
        node.tracked |= node.locks_first


def _leading_to_forward_reads(graph: Graph, reach: _Reach) -> frozenset[Spec]:
    """The specs that read rows through foreign keys from their own row, and
    those whose value such a spec reads, at any remove."""
    return frozenset(
        spec for spec in graph.specs
        if spec.forward_hops or any(other.forward_hops for other, _ in reach(spec.model, spec.field.attname))
    )


def _walk_locks(graph: Graph) -> frozenset[type[models.Model]]:
    """The models whose rows a flush may lock as it walks ``graph.order``:
    those of each set of models that paths and foreign keys connect, if
    the walk meets each of its models once and in ``graph.model_order``.

    Every flush then locks their rows in one sequence, the walk's, which
    agrees with the order in which a save locks its row and then its parents.
    """
    component: dict[type[models.Model], type[models.Model]] = {}

    def find(model: type[models.Model]) -> type[models.Model]:
        while component.setdefault(model, model) is not model:
            model = component[model]
        return model

    for spec in graph.specs:
        for dep in spec.deps:
            for hop in dep.hops:
                component[find(hop.model)] = find(spec.model)
    for model in graph.nodes:
        for foreign_key in model._meta.concrete_fields:
            # many_to_one: a ForeignKey, with its related_model
            if foreign_key.many_to_one and foreign_key.related_model._meta.concrete_model in graph.nodes:  # type: ignore[union-attr,operator]
                component[find(foreign_key.related_model._meta.concrete_model)] = find(model)  # type: ignore[union-attr]
    last: dict[type[models.Model], int] = {}
    out_of_order = set()
    for model, _ in graph.order:
        root, place = find(model), graph.model_order[model]
        if last.get(root, -1) >= place:
            out_of_order.add(root)
        last[root] = place
    return frozenset(model for model, _ in graph.order if find(model) not in out_of_order)


# on_delete actions that leave no child pointing at another row.
_KEEPS_OR_CLEARS = (models.CASCADE, models.PROTECT, models.RESTRICT, models.DO_NOTHING, models.SET_NULL)


def _lock_order(
    nodes: dict[type[models.Model], ModelNode], first_group: dict[type[models.Model], int]
) -> dict[type[models.Model], int]:
    """Each model's place in the one order in which rows are locked: a model
    with a foreign key to another comes before it, children before parents.

    A user's write locks its own row first and then leads to its parents: a
    save of a sample locks the sample, then its studies, then their lab.
    Locking in that order everywhere, flushes included, leaves no two writers
    each holding a row the other wants next.  Between models that no foreign
    key orders, the one recomputed first comes first (models with nothing
    maintained, such as through models, before all); then the label.
    """

    def key(model: type[models.Model]) -> tuple[int, str]:
        return first_group.get(model, -1), model._meta.label

    parents: dict[type[models.Model], set[type[models.Model]]] = {}
    for model in nodes:
        parents[model] = {
            # many_to_one: a ForeignKey, with its related_model
            f.related_model._meta.concrete_model  # type: ignore[union-attr]
            for f in model._meta.concrete_fields
            if f.many_to_one and f.related_model._meta.concrete_model in nodes  # type: ignore[union-attr,operator]
        } - {model}
    children: dict[type[models.Model], list[type[models.Model]]] = defaultdict(list)
    for model, found in parents.items():
        for parent in found:
            children[parent].append(model)
    # Kahn's algorithm from the leaves: a model is placed once all its children are.
    pending_children = {model: len(children[model]) for model in nodes}
    ready = sorted((m for m in nodes if pending_children[m] == 0), key=key)
    placed: list[type[models.Model]] = []
    while ready:
        model = ready.pop(0)
        placed.append(model)
        for parent in parents[model]:
            pending_children[parent] -= 1
            if pending_children[parent] == 0:
                ready.append(parent)
        ready.sort(key=key)
    placed += sorted((m for m in nodes if m not in placed), key=key)
    return {model: position for position, model in enumerate(placed)}


def _through_hop(hop: Hop, through: type[models.Model]) -> Hop:
    """A row of a custom ``through`` model, saved or deleted on its own, links
    the previous hop's row (through one of its foreign keys) to this hop's."""
    field = cast("models.ManyToManyField[Any, Any]", hop.m2m_field)  # an M2M hop's
    mine, theirs = field.m2m_field_name(), field.m2m_reverse_field_name()
    if not hop.m2m_forward:
        mine, theirs = theirs, mine
    # the through model's foreign keys
    up_link = through._meta.get_field(mine).attname  # type: ignore[union-attr]
    other = through._meta.get_field(theirs).attname  # type: ignore[union-attr]
    foreign_key = cast("models.ForeignKey[Any, Any]", through._meta.get_field(mine))
    return Hop(
        index=hop.index,
        model=through,
        lookup="",
        kind=REVERSE,
        up_link=up_link,
        m2m_field=None,
        m2m_forward=False,
        triggers=None if hop.triggers is None else frozenset({up_link, other}),
        foreign_key=foreign_key,
        parent_key=_parent_key(foreign_key),
    )


_graph: Graph | None = None


def load() -> Graph:
    """Build the graph from every installed model and make it the current one."""
    global _graph
    _graph = build(apps.get_models())
    return _graph


def get_graph() -> Graph:
    """The graph of the installed models, built on first use.

    Raises ImproperlyConfigured when ``maintained_fields`` is not installed:
    without its ``ready()`` deletes and many-to-many changes go unseen.
    """
    if _graph is None:
        if not apps.is_installed("maintained_fields"):
            raise ImproperlyConfigured(NOT_INSTALLED)
        return load()
    return _graph


NOT_INSTALLED = (
    "Models use maintained fields, but 'maintained_fields' is not in INSTALLED_APPS, so "
    "deletes and many-to-many changes would go unseen. Add \"maintained_fields\" to INSTALLED_APPS."
)

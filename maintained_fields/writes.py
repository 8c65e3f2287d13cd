"""Recompute maintained values and write the ones that changed, in batches.

Values are written with ``UPDATE`` statements on a plain QuerySet, never
through ``save()``, and only where the computed value, converted as the field
converts it, differs from the stored one.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from functools import partial
from types import SimpleNamespace
from typing import Any, TypeVar, cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, models, transaction
from django.db.models.expressions import BaseExpression
from django.db.models.functions import Cast
from django.db.models.sql import Query, UpdateQuery
from django.utils import timezone

from .conf import get_config
from .declarations import references
from .graph import Dependency, Spec, get_graph, rewrite, stored_as
from .signals import maintained_values_written

T = TypeVar("T")


def feature(db: str, name: str) -> Any:
    """A feature flag of the database ``db``'s backend, or with ``"vendor"``
    its vendor, looked up once: an alias's backend is fixed, and getting its
    connection costs a microsecond, a dozen times a save."""
    try:
        return _features[db, name]
    except KeyError:
        connection = connections[db]
        value = connection.vendor if name == "vendor" else getattr(connection.features, name)
        _features[db, name] = value
        return value


_features: dict[tuple[str, str], Any] = {}


def composite(model: type[models.Model]) -> bool:
    """Whether the model's primary key is several columns (CompositePrimaryKey)."""
    return hasattr(model._meta.pk, "fields")


def keys(model: type[models.Model], read: Iterable[Any]) -> Iterable[Any]:
    """Primary keys ``read`` with ``values_list("pk", flat=True)``, as the
    model's instances hold them.  Django (5.2, 6.0) leaves the columns of a
    composite key unconverted where one is a foreign key: a UUID stays
    text on SQLite and MariaDB."""
    convert = key_of(model)
    return read if convert is None else [convert(key) for key in read]


def key_of(model: type[models.Model]) -> Callable[[Any], Any] | None:
    """What :func:`keys` does to one key, or None where nothing need be done."""
    if not composite(model):
        return None
    fields = model._meta.pk.fields  # type: ignore[attr-defined]  # a CompositePrimaryKey's
    return lambda key: tuple(field.to_python(value) for field, value in zip(fields, key))


def keyed_values(rows: models.QuerySet[Any], columns: Iterable[str]) -> Iterable[dict[str, Any]]:
    """``rows.values(*columns)``, ``columns`` led by "pk", each key as the
    model's instances hold it (see :func:`keys`)."""
    found = rows.values(*columns)
    convert = key_of(rows.model)
    if convert is None:
        return found
    return [{**row, "pk": convert(row["pk"])} for row in found]


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    if isinstance(items, list):  # most are: a list is sliced at C speed
        for start in range(0, len(items), size):
            yield items[start:start + size]
        return
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# How a decimal is rounded to its field's places: half away from zero, as
# PostgreSQL and MariaDB round a value into a numeric column.
ROUNDING = decimal.ROUND_HALF_UP
# SQLite keeps a decimal as a float: 15 significant digits of it are the
# number, as Django reads it (a sum of 2.5199, -19.408 and 20.5231 is
# 3.634999999999998 there, and 3.635 here).
_SQLITE_DIGITS = decimal.Context(prec=15)


def sqlite_decimal(value: Any, places: int) -> Any:
    """SQLite's ``maintained_decimal(value, places)``: ``value`` rounded to
    ``places`` as :func:`normalize` rounds a Decimal; NULL stays NULL."""
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return value
    number = _SQLITE_DIGITS.create_decimal_from_float(value) if isinstance(value, float) else decimal.Decimal(value)
    rounded = number.quantize(decimal.Decimal(1).scaleb(-places), rounding=ROUNDING, context=_WIDE)
    return int(rounded) if places <= 0 else float(rounded)


_WIDE = decimal.Context(prec=100)


def add_sqlite_functions(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Give a new SQLite connection the functions the package's SQL calls
    (a receiver of ``connection_created``)."""
    if connection.vendor == "sqlite":
        connection.connection.create_function("maintained_decimal", 2, sqlite_decimal, deterministic=True)


def normalize(spec: Spec, value: Any) -> Any:
    """``value`` as the field stores it, so that it compares equal to what the
    database gives back (a pk for a relation, a quantized Decimal, an aware
    datetime under USE_TZ)."""
    field = spec.field
    if isinstance(value, models.Model) and field.is_relation:
        return value.pk
    if value is None:
        return None
    try:
        converted = field.to_python(value)
        if isinstance(field, models.DecimalField) and converted.is_finite():
            context = decimal.Context(prec=field.max_digits, traps=[decimal.InvalidOperation])
            places = decimal.Decimal(1).scaleb(-field.decimal_places)
            converted = converted.quantize(places, rounding=ROUNDING, context=context)
    except (ValidationError, decimal.InvalidOperation) as exc:
        reason = "; ".join(exc.messages) if isinstance(exc, ValidationError) else (
            f"it has more than {field.max_digits} digits"  # type: ignore[attr-defined]  # only a DecimalField's quantize raises it
        )
        raise ValueError(
            f"{spec.source} returned {value!r}, which "
            f"{spec} ({type(field).__name__}) cannot store: {reason}."
        ) from None
    value = converted
    if isinstance(value, str) and field.max_length is not None and len(value) > field.max_length:
        raise ValueError(
            f"{spec.source} returned {value!r}, which {spec} "
            f"({type(field).__name__}) cannot store: it has {len(value)} characters, more than "
            f"max_length={field.max_length}. Shorten the value in the "
            f"{'method' if spec.expression is None else 'expression (Left(...) cuts it)'} or widen the field."
        )
    if isinstance(field, models.DateTimeField) and settings.USE_TZ and timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return value


def same(stored: Any, computed: Any, ordered: bool = False) -> bool:
    """Whether a column holding ``stored`` already holds ``computed``: equal,
    and, for numbers, of one kind (bool, int or float), at any depth of a
    JSON value, since Python's ``True == 1 == 1.0`` are three values in a
    JSON column; NaN is NaN.  With ``ordered``, a JSON object's keys also in
    the same order, as a JSON column stored as text keeps them (a write that
    only reorders them changes what reads the text)."""
    if stored is computed:
        return True
    if isinstance(stored, dict):
        return (
            isinstance(computed, dict)
            and (list(stored) == list(computed) if ordered else stored.keys() == computed.keys())
            and all(same(value, computed[key], ordered) for key, value in stored.items())
        )
    if isinstance(stored, (list, tuple)):
        return (
            isinstance(computed, (list, tuple))
            and len(stored) == len(computed)
            and all(same(a, b, ordered) for a, b in zip(stored, computed))
        )
    if isinstance(stored, _NUMBERS) and isinstance(computed, _NUMBERS):
        if type(stored) is not type(computed):
            return False
        if stored != stored:  # NaN, which equals nothing
            return bool(computed != computed)
    return bool(stored == computed)


_NUMBERS = (bool, int, float)


def compute(
    instance: models.Model, specs: Iterable[Spec], evaluated: dict[str, Any] | None = None
) -> dict[str, tuple[Any, Any]]:
    """{attname: (stored, computed)} for the specs whose value differs.

    ``evaluated`` holds the values of expression specs the database already
    computed for this row, by attname.
    """
    differences = {}
    for spec in specs:
        attname = spec.field.attname
        stored = getattr(instance, attname)
        if evaluated is not None and attname in evaluated:
            computed = normalize(spec, evaluated[attname])
        else:
            computed = normalize(spec, spec.compute(instance))
        if not same(stored, computed):
            differences[attname] = (stored, computed)
    return differences


# {(model, pk, attname): [stored, computed]}: what the writes of a dry run change.
Changes = dict[tuple[type[models.Model], Any, str], list[Any]]

_dry_run: ContextVar[Changes | None] = ContextVar("maintained_fields_dry_run", default=None)


@contextmanager
def dry_run(db: str) -> Iterator[Changes]:
    """Run the block in a transaction on ``db`` that is rolled back when it ends.

    Yields what :func:`recompute` changes in the block, by row and column: the
    value stored before the block and the last one written, in the order
    first written.  ``maintained_values_written`` is not sent for these
    writes, since none of them is kept.  The rows written stay locked until
    the block ends.
    """
    changes: Changes = {}
    token = _dry_run.set(changes)
    try:
        with transaction.atomic(using=db):
            yield changes
            transaction.set_rollback(True, using=db)
    finally:
        _dry_run.reset(token)
    for key in [key for key, (stored, computed) in changes.items() if same(stored, computed)]:
        del changes[key]  # changed, then changed back


def resolve(dep: Dependency, index: int, pks: Collection[Any], db: str, size: int | None = None) -> set[Any]:
    """The primary keys of the maintained rows that reach ``pks`` at hop ``index``.

    A negative ``index`` names a reverse hop whose foreign key points at another
    field than the primary key: ``pks`` are values of that field of the rows
    one hop before it (see ``Hop.record_index``).
    """
    if index < 0:
        hop, parent = dep.hops[-index], dep.hops[-index - 1]
        lookup = f"{parent.lookup}__{hop.parent_key}__in" if parent.lookup else f"{hop.parent_key}__in"
    elif index == 0:
        return set(pks)
    else:
        lookup = f"{dep.hops[index].lookup}__pk__in"
    found: set[Any] = set()
    for batch in chunks(pks, size or get_config()["BATCH_SIZE"]):
        found.update(
            keys(dep.spec.model, models.QuerySet(dep.spec.model, using=db).filter(**{lookup: batch}).values_list(
                "pk", flat=True
            ))
        )
    return found


# {pk: the specs to recompute on the row}; rows with the same specs may share one frozenset.
Targets = dict[Any, frozenset[Spec]]


def recompute(
    model: type[models.Model],
    targets: Targets,
    db: str,
    size: int | None = None,
    *,
    locked: bool = False,
    quiet: bool = False,
) -> Changed:
    """Recompute the given specs of the given rows and write what changed.

    Returns each changed row with its previous values, by attname; with
    ``quiet`` (the caller wants only how many changed), rows that a statement
    wrote without reading them back may be only counted.  Rows that no
    longer exist are skipped.  Unless the caller has ``locked`` them, the
    rows are locked first, in a statement of their own: a recompute that
    waited for a lock in the statement that reads would read what the rows
    held before the wait.
    """
    config = get_config()
    size = size or config["BATCH_SIZE"]
    lock_first = config["LOCK_ROWS"] and not locked and feature(db, "has_select_for_update")
    vendor = feature(db, "vendor")
    quiet = _counted_only(model, quiet)
    changed = Changed()
    # Sorted, so that concurrent writers lock rows in one order and cannot deadlock.
    for batch in chunks(sorted(targets), size):
        if lock_first:
            lock_rows(model, db, batch, size)
        specs = {spec for pk in batch for spec in targets[pk]}
        if vendor == "postgresql" and not composite(model) and all(spec.expression is not None for spec in specs):
            if quiet:
                changed.unlisted += update_from_select(model, db, batch, specs, returning=False)
            else:
                changed += update_from_select(model, db, batch, specs)
            continue
        how = _updates_returning(model, specs, db) if vendor == "sqlite" else None
        if how is not None:
            together = how == "together"
            if quiet:
                changed.unlisted += update_returning(model, db, batch, specs, returning=False, together=together)
            else:
                changed += update_returning(model, db, batch, specs, together=together)
            continue
        if all(spec.settable(vendor) for spec in specs):
            changed += update_set_wise(model, db, batch, specs, size)
            continue
        expressions = {spec for spec in specs if spec.expression is not None}
        rows, evaluated = read(model, db, batch, expressions)
        changed += update_rows(model, db, rows, lambda row: targets[row.pk], size, evaluated)
    _note_dry_run(model, changed)
    return changed


def recompute_in_one_message(
    jobs: list[tuple[type[models.Model], Targets, bool]], db: str
) -> list[Changed]:
    """PostgreSQL, parameters bound client-side: :func:`recompute` each job,
    (model, targets, quiet), in turn, every row locked already, with one
    statement a job sent in one message: PostgreSQL runs them in order,
    each with a snapshot of its own, so that each reads what those before it
    wrote.  Every job must be one batch of one model whose specs are all
    expressions (:func:`recompute` would write it with one
    :func:`update_from_select`).  Returns what :func:`recompute` returns, a job each.
    """
    connection = connections[db]
    made = []
    for model, targets, quiet in jobs:
        quiet = _counted_only(model, quiet)
        specs = {spec for found in set(targets.values()) for spec in found}
        made.append((model, quiet, *_update_from_select(model, db, sorted(targets), specs, not quiet)))
    results = []
    with connection.cursor() as cursor:
        cursor.execute("; ".join(sql for _, _, sql, _, _ in made), [p for _, _, _, params, _ in made for p in params])
        for position, (model, quiet, _, _, read) in enumerate(made):
            if position:
                cursor.nextset()
            changed = Changed()
            if quiet:
                changed.unlisted = read(cursor)
            else:
                changed += read(cursor)
            _note_dry_run(model, changed)
            results.append(changed)
    return results


def _counted_only(model: type[models.Model], quiet: bool) -> bool:
    """Whether the rows of ``model`` a recompute changes may be only counted,
    where the caller wants no more (``quiet``): what a dry run reports, and
    the signal's receivers, need each row."""
    return quiet and _dry_run.get() is None and not maintained_values_written.has_listeners(model)


def _note_dry_run(model: type[models.Model], changed: list[tuple[Any, dict[str, Any]]]) -> None:
    """In a dry run, add what ``changed`` holds to its report."""
    changes = _dry_run.get()
    if changes is not None:
        for row, old in changed:
            for attname, stored in old.items():
                changes.setdefault((model, row.pk, attname), [stored, None])[1] = getattr(row, attname)


class Changed(list[tuple[Any, dict[str, Any]]]):
    """The rows a recompute changed, each with its previous values, by
    attname; and how many more it changed without reading them back."""

    unlisted = 0

    @property
    def total(self) -> int:
        return len(self) + self.unlisted


def update_from_select(
    model: type[models.Model], db: str, pks: list[Any], specs: Iterable[Spec], returning: bool = True
) -> Any:
    """PostgreSQL: recompute the expression ``specs`` on the rows ``pks`` and
    write the values that changed, in one statement, compiled once per shape:
    ``WITH (SELECT the values) UPDATE ... RETURNING`` the changed rows'
    keys, links and new values, with their previous values.  Returns what
    :func:`recompute` returns, each row a namespace; without ``returning``,
    only how many rows changed.

    The rows must be locked already: the SELECT reads as the statement
    starts, and a wait for a row lock inside it would not read again.
    """
    sql, params, read = _update_from_select(model, db, pks, specs, returning)
    with connections[db].cursor() as cursor:
        cursor.execute(sql, params)
        return read(cursor)


def _update_from_select(
    model: type[models.Model], db: str, pks: list[Any], specs: Iterable[Spec], returning: bool
) -> tuple[str, list[Any], Callable[[Any], Any]]:
    """The statement of :func:`update_from_select`, its parameters, and what
    reads its result from a cursor that has run it."""
    specs = tuple(sorted(specs, key=lambda spec: spec.field.attname))
    connection = connections[db]
    meta = model._meta
    links = _link_fields(model)
    names = {f"_maintained_{spec.field.attname}": spec for spec in specs}

    def query(pks: list[Any]) -> models.QuerySet[Any]:
        values = {name: spec.annotation() for name, spec in names.items()}
        rows: models.QuerySet[Any] = models.QuerySet(model, using=db).filter(pk__in=pks).annotate(**values)
        return rows.values_list("pk", *(spec.field.attname for spec in specs), *names)

    def statement(sql: str) -> tuple[str, list[Any]]:
        quote: Callable[[Any], str] = connection.ops.quote_name  # of concrete columns: set
        row, new = quote("_maintained_row"), quote("_maintained_new")
        olds = [f"old_{n}" for n in range(len(specs))]
        news = [f"new_{n}" for n in range(len(specs))]
        columns = [quote(spec.field.column) for spec in specs]
        sets = ", ".join(f"{column} = {new}.{name}" for column, name in zip(columns, news))
        differs = " OR ".join(f"{row}.{column} IS DISTINCT FROM {new}.{name}" for column, name in zip(columns, news))
        returned = [meta.pk, *links, *(spec.field for spec in specs)]
        back = ", ".join([*(f"{row}.{quote(field.column)}" for field in returned), *(f"{new}.{o}" for o in olds)])
        # Materialized, the values are computed once: a subquery in FROM is
        # pulled up, each aggregate planned and run in SET and in WHERE.
        update = (
            f"WITH {new} (pk, {', '.join(olds + news)}) AS MATERIALIZED ({sql}) "
            f"UPDATE {quote(meta.db_table)} AS {row} SET {sets} FROM {new} "
            f"WHERE {row}.{quote(meta.pk.column)} = {new}.pk AND ({differs})"
        )
        if not returning:
            return update, []
        return (
            f"{update} RETURNING {back}",
            [field.get_col(meta.db_table) for field in [*returned, *(spec.field for spec in specs)]],
        )

    key = ("update", model, specs) if returning else ("update, counted", model, specs)
    sql, params, converters = _keyed(key, model, db, pks, partial(_select, query, statement, db))

    def read(cursor: Any) -> Any:
        if not returning:
            return int(cursor.rowcount)
        found = _converted([list(row) for row in cursor.fetchall()], converters, connection)
        width, count = 1 + len(links), len(specs)
        changed, groups = _changes(
            ((v[0], v[1:width], v[width + count :], v[width : width + count]) for v in found),
            [field.attname for field in links],
            specs,
        )
        for written, rows in groups.items():
            _announce(model, db, rows, sorted(written))
        return changed

    return sql, params, read


def _link_fields(model: type[models.Model]) -> list[models.Field[Any, Any]]:
    """The model's foreign keys that paths follow up to a parent, by attname."""
    meta = model._meta
    return [cast("models.Field[Any, Any]", meta.get_field(a)) for a in sorted(get_graph().nodes[model].up_links)]


def _updates_returning(model: type[models.Model], specs: Collection[Spec], db: str) -> str | None:
    """How :func:`update_returning` can write ``specs``, on SQLite with
    RETURNING (3.35), where the previous values are not wanted (no dry run,
    no foreign key among the fields), into columns whose stored values
    SQLite compares as Django does (text, numbers; not a date Django
    formats): ``"each"``, a statement per spec, for own-row expressions or
    one expression the UPDATE can compute (an aggregate of a relation: the
    statement computes it twice, where a read and a write would take two
    statements); ``"together"``, one statement for several such
    expressions, where no receiver of ``maintained_values_written`` hears
    of the model: the statement tells which rows changed, not which of
    their columns, and each is taken as changed.  None where it cannot."""
    if not (
        all(
            spec.settable("sqlite")
            and spec.expression is not None
            and not spec.field.is_relation
            and _compared_alike(spec.field)
            for spec in specs
        )
        and feature(db, "can_return_columns_from_insert")  # the same version brings UPDATE ... RETURNING
        and not composite(model)
        and _dry_run.get() is None
    ):
        return None
    if len(specs) == 1 or all(spec.own_row for spec in specs):
        return "each"
    return None if maintained_values_written.has_listeners(model) else "together"


def _checked_when_read(spec: Spec) -> bool:
    """Whether SQLite may store a value of ``spec`` that its column cannot
    hold (a string past ``max_length``, a decimal past ``max_digits``): the
    package reads each such value back to check it."""
    return isinstance(spec.field, models.DecimalField) or spec.field.max_length is not None


def _compared_alike(field: models.Field[Any, Any]) -> bool:
    """Whether SQLite compares what the column stores with what an expression
    computes as Django compares the values: a decimal is rounded to its
    places on both sides (see :func:`graph.stored_as`), and a double holds
    its every digit up to 15."""
    if isinstance(field, models.DecimalField):
        return field.max_digits is not None and field.max_digits <= 15
    return isinstance(field, _COMPARED_ALIKE)


_COMPARED_ALIKE = (models.CharField, models.TextField, models.IntegerField, models.BooleanField, models.FloatField)


def update_returning(
    model: type[models.Model], db: str, pks: list[Any], specs: Iterable[Spec], returning: bool = True,
    together: bool = False,
) -> Any:
    """Set the expression ``specs`` on the rows ``pks`` where they differ from
    the stored values, with one ``UPDATE ... RETURNING`` per spec, or with
    ``together`` one for them all: nothing is read first, and only the
    changed rows come back, with their links and new values.  Returns what
    :func:`recompute` returns, except that the previous values are not
    known: each is None, and ``together``, every spec's column of a changed
    row counts as changed; without ``returning``, only how many rows changed
    (a row for each statement)."""
    connection = connections[db]
    meta = model._meta
    links = _link_fields(model)
    names = [link.attname for link in links]
    rows: dict[Any, tuple[SimpleNamespace, dict[str, Any]]] = {}
    written = 0
    ordered = sorted(specs, key=lambda spec: spec.field.attname)
    for group in [tuple(ordered)] if together else [(spec,) for spec in ordered]:
        if not returning:
            checked = tuple(spec for spec in group if _checked_when_read(spec))
            statement = partial(_update_returning_sql, model, db, group, [], checked)
            sql, params, _ = _keyed(("counted", model, group), model, db, pks, statement)
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                if not checked:
                    written += cursor.rowcount
                    continue
                found = cursor.fetchall()
            written += len(found)
            if any(map(any, found)):  # a value past its column: never 0 nor empty
                for row in found:
                    for spec, value in zip(checked, row):
                        if value is not None:
                            normalize(spec, value)  # raises: the column cannot hold it
            continue
        returned = [meta.pk, *links, *(spec.field for spec in group)]
        statement = partial(_update_returning_sql, model, db, group, returned, ())
        sql, params, converters = _keyed(("returning", model, group), model, db, pks, statement)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            found = _converted([list(row) for row in cursor.fetchall()], converters, connection)
        width = 1 + len(links)
        for row in found:
            pk = row[0]
            entry = rows.get(pk)
            if entry is None:
                entry = rows[pk] = (SimpleNamespace(pk=pk, **dict(zip(names, row[1:width]))), {})
            for spec, value in zip(group, row[width:]):
                # A value the column cannot store raises, as on every path.
                setattr(entry[0], spec.field.attname, normalize(spec, value))
                entry[1][spec.field.attname] = None
    announced: dict[frozenset[str], list[Any]] = {}
    for written_row, old in rows.values():
        announced.setdefault(frozenset(old), []).append(written_row)
    for attnames, changed in announced.items():
        _announce(model, db, changed, sorted(attnames))
    return list(rows.values()) if returning else written


def _update_returning_sql(
    model: type[models.Model], db: str, specs: tuple[Spec, ...], returned: list[Any], checked: tuple[Spec, ...],
    pks: list[Any],
) -> tuple[str, list[Any], dict[int, Any]]:
    """``UPDATE`` the rows ``pks`` where a column of ``specs`` differs from
    its expression, setting each, ``RETURNING`` the columns of ``returned``,
    or for each of the ``checked`` specs, its new value where the column
    cannot hold it (:func:`_checked_when_read`), else NULL: SQL, parameters
    (the keys last) and the converters of what comes back."""
    query = cast(UpdateQuery, models.QuerySet(model, using=db).filter(pk__in=pks).query.chain(UpdateQuery))
    compiler = query.get_compiler(using=db)
    quote: Callable[[Any], str] = connections[db].ops.quote_name
    table = quote(model._meta.db_table)
    sets, differ, values = [], [], []
    for spec in specs:
        value, params = compiler.compile(spec.annotation().resolve_expression(query, allow_joins=False))
        sets.append(f"{quote(spec.field.column)} = {value}")
        differ.append(f"{table}.{quote(spec.field.column)} IS NOT ({value})")
        values += params
    where, keys = compiler.compile(query.where)
    sql = f"UPDATE {table} SET {', '.join(sets)} WHERE ({' OR '.join(differ)}) AND {where}"
    if returned:
        sql += f" RETURNING {', '.join(quote(field.column) for field in returned)}"
    elif checked:
        sql += f" RETURNING {', '.join(_past_its_column(spec.field, quote) for spec in checked)}"
    converters = compiler.get_converters([field.get_col(model._meta.db_table) for field in returned])
    return sql, [*values, *values, *keys], converters


def _past_its_column(field: models.Field[Any, Any], quote: Callable[[Any], str]) -> str:
    """SQL of the value of ``field``'s column where the column cannot hold it, else NULL."""
    column = quote(field.column)
    if isinstance(field, models.DecimalField):
        limit = 10 ** (int(field.max_digits or 0) - int(field.decimal_places or 0))
        return f"CASE WHEN abs({column}) >= {limit} THEN {column} END"
    return f"CASE WHEN length({column}) > {int(field.max_length or 0)} THEN {column} END"


def _changes(
    found: Iterable[tuple[Any, Any, Any, Any]], links: list[str], specs: tuple[Spec, ...]
) -> tuple[list[tuple[Any, dict[str, Any]]], dict[frozenset[str], list[Any]]]:
    """From (key, link values, stored values, computed values) per row: each
    changed row, a namespace of its key, links and new values, with its
    previous values; and the changed rows grouped by the columns that changed."""
    changed = []
    groups: dict[frozenset[str], list[Any]] = {}
    for pk, linked, stored, computed in found:
        old, new = {}, {}
        for spec, before, after in zip(specs, stored, computed):
            after = normalize(spec, after)
            if not same(before, after):
                old[spec.field.attname], new[spec.field.attname] = before, after
        if old:
            row = SimpleNamespace(pk=pk, **{**dict(zip(links, linked)), **new})  # a link may be maintained
            changed.append((row, old))
            groups.setdefault(frozenset(old), []).append(row)
    return changed, groups


def update_set_wise(
    model: type[models.Model], db: str, pks: list[Any], specs: Iterable[Spec], size: int
) -> list[tuple[Any, dict[str, Any]]]:
    """Recompute the expression ``specs`` on the rows ``pks`` and write the
    values that changed: one query reads the stored and the computed values
    (and the row's links, for what follows), and the changed rows are set to
    their expressions, no model instance made.  Returns what :func:`recompute`
    returns, each row a namespace of its key, links and new values."""
    specs = tuple(sorted(specs, key=lambda spec: spec.field.attname))
    links = tuple(sorted(get_graph().nodes[model].up_links))
    names = {f"_maintained_{spec.field.attname}": spec for spec in specs}
    attnames = [spec.field.attname for spec in specs]

    def query(pks: list[Any]) -> models.QuerySet[Any]:
        rows: models.QuerySet[Any] = models.QuerySet(model, using=db).filter(pk__in=pks).order_by("pk")
        rows = rows.annotate(**{name: spec.annotation() for name, spec in names.items()})
        return rows.values_list("pk", *links, *attnames, *names)

    found = fetch(("set-wise", model, specs, links), model, db, pks, query)
    width, count = 1 + len(links), len(specs)
    changed, groups = _changes(
        ((v[0], v[1:width], v[width : width + count], v[width + count :]) for v in found), list(links), specs
    )
    for written, rows in groups.items():
        # One row: its values are known and an UPDATE of values compiles faster.
        if len(rows) == 1:
            write(model, db, rows, sorted(written), size)
        else:
            set_to_expressions(model, db, rows, [spec for spec in specs if spec.field.attname in written], size)
    return changed


def read(
    model: type[models.Model], db: str, pks: list[Any], specs: Iterable[Spec]
) -> tuple[list[models.Model], dict[Any, dict[str, Any]]]:
    """The rows ``pks`` of ``model`` in primary-key order, whole, and the values
    the database computes for the expression ``specs`` on each
    ({pk: {attname: value}}), in one query."""
    specs = tuple(sorted(specs, key=lambda spec: spec.field.attname))
    attnames = [field.attname for field in model._meta.concrete_fields]
    names = {f"_maintained_{spec.field.attname}": spec for spec in specs}

    def query(pks: list[Any]) -> models.QuerySet[Any]:
        return (
            models.QuerySet(model, using=db)
            .filter(pk__in=pks)
            .order_by("pk")
            .annotate(**{name: spec.annotation() for name, spec in names.items()})
            .values_list(*attnames, *names)
        )

    found = fetch(("read", model, specs), model, db, pks, query)
    width = len(attnames)
    rows = [model.from_db(db, attnames, values[:width]) for values in found]
    evaluated = {
        row.pk: {spec.field.attname: value for spec, value in zip(specs, values[width:])}
        for row, values in zip(rows, found)
    }
    return rows, evaluated


def lock_rows(
    model: type[models.Model],
    db: str,
    pks: Iterable[Any],
    size: int,
    field: str = "pk",
    nowait: bool = False,
    exclusive: bool = False,
    carried: Carrier | None = None,
) -> None:
    """Lock the rows of ``model`` whose ``field`` is in ``pks``, in
    primary-key order, ``size`` at a time: now, or with ``carried``, in front
    of the next statement run on ``db``.  With ``nowait``, a row locked by
    another transaction raises DatabaseError at once; see :func:`lock` for
    ``exclusive``."""
    def query(batch: list[Any]) -> models.QuerySet[Any]:
        rows: models.QuerySet[Any] = models.QuerySet(model, using=db).filter(**{f"{field}__in": batch}).order_by("pk")
        return lock(rows, nowait, exclusive).values_list("pk")

    for batch in chunks(sorted(pks), size):
        if field != "pk" or composite(model):
            list(query(batch))
            continue
        sql, params, _ = _keyed(("lock", model, nowait, exclusive), model, db, batch, partial(_select, query, None, db))
        if carried is None:
            with connections[db].cursor() as cursor:
                cursor.execute(sql, params)
        else:
            carried.add(sql, params)


class Carrier:
    """Statements sent with the next statement run on the connection, in one
    round trip and in the order they were made: PostgreSQL runs the
    statements of one message in turn, each with a snapshot of its own.

    Most are locks whose results nothing reads (the last rows of a reach).
    One may be a read whose result is kept (:meth:`kept`) for the same
    statement made next: the first read of the work of an insert, sent
    with the INSERT.  Any other statement run first drops it.

    Used as an execute wrapper (:meth:`carrying`), on psycopg 3 with
    parameters bound client-side, Django's default: server-side binding
    takes one statement per message.  A statement run without parameters,
    or with ``executemany()``, goes alone, after the carried ones.
    """

    def __init__(self, db: str) -> None:
        self.db = db
        self.pending: list[tuple[str, list[Any], bool]] = []
        self.result: tuple[str, list[Any], list[list[Any]]] | None = None

    def add(self, sql: str, params: Any, keep: bool = False) -> None:
        """Carry the statement; with ``keep``, keep its rows for :meth:`kept`."""
        self.pending.append((sql, list(params), keep))

    def kept(self, sql: str, params: list[Any]) -> list[list[Any]] | None:
        """The rows of the carried statement ``sql`` with ``params``, if it
        was kept and no statement has run since; each is given once."""
        result, self.result = self.result, None
        if result is not None and result[0] == sql and result[1] == params:
            return result[2]
        return None

    def _taken(self) -> tuple[list[tuple[str, list[Any], bool]], str, list[Any]]:
        """Empty the carried statements: them, their SQL as one, their parameters."""
        pending, self.pending = self.pending, []
        return pending, "; ".join(sql for sql, _, _ in pending), [p for _, params, _ in pending for p in params]

    def _read(self, cursor: Any, carried: list[tuple[str, list[Any], bool]]) -> None:
        """Past each carried statement's result, keeping those to keep."""
        for sql, params, keep in carried:
            if keep:
                self.result = (sql, params, [list(row) for row in cursor.fetchall()])
            cursor.nextset()

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        self.result = None
        if not self.pending:
            return execute(sql, params, many, context)
        carried, joined, carried_params = self._taken()
        if many or params is None:
            execute(joined, carried_params, False, context)
            self._read(context["cursor"], carried)
            self.result = None  # the caller's statement runs after it
            return execute(sql, params, many, context)
        result = execute(f"{joined}; {sql}", [*carried_params, *params], False, context)
        self._read(context["cursor"], carried)  # to the caller's result
        return result

    def send(self) -> None:
        """Run what is still carried, now."""
        carried, joined, carried_params = self._taken()
        if carried:
            with connections[self.db].cursor() as cursor:
                cursor.execute(joined, carried_params)

    @classmethod
    def carrying(cls, db: str) -> AbstractContextManager[Carrier | None]:
        """A carrier for the block's statements on ``db`` (the one already
        carrying there, if any), where the connection can send several
        statements in one message; None where it cannot.  What is still
        carried when the block ends without an error is sent then."""
        carries = _features.get((db, "carries"))
        if carries is None:
            connection = connections[db]
            carries = _features[db, "carries"] = connection.vendor == "postgresql" and _binds_client_side(connection)
        return cls._carrying(db) if carries else _NO_CARRIER

    @classmethod
    @contextmanager
    def _carrying(cls, db: str) -> Iterator[Carrier]:
        connection = connections[db]
        carrier = next((w for w in connection.execute_wrappers if isinstance(w, Carrier)), None)
        if carrier is not None:
            yield carrier
            carrier.send()
            return
        carrier = cls(db)
        with connection.execute_wrapper(carrier):
            yield carrier
            carrier.send()


_NO_CARRIER: AbstractContextManager[None] = nullcontext()


def _binds_client_side(connection: Any) -> bool:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return bool(is_psycopg3) and connection.settings_dict["OPTIONS"].get("server_side_binding") is not True


def share_lock_read(
    model: type[models.Model],
    db: str,
    pks: list[Any],
    specs: Iterable[Spec],
    held: dict[type[models.Model], set[Any]],
    nowait: bool = False,
) -> None:
    """PostgreSQL: share-lock the rows that ``specs`` read through foreign
    keys alone from the rows ``pks`` (a sample's study, its lab), but those
    in ``held``, locked already, before they are read, model by model in
    lock order; with ``nowait``, a row another transaction holds raises
    DatabaseError.

    A row that has just joined a parent reads the parent's fields, while a
    writer of those fields recomputes the parent's rows without it (its
    move is not committed): the lock makes one wait for the other.  The
    foreign key's own check does not: Django makes PostgreSQL's constraints
    deferred, checked at the commit.  On MySQL and MariaDB the check is
    immediate and takes a shared lock on the parent, and a shared lock of
    ours would deadlock with the exclusive ones that writers there take
    first (:func:`tracking.lock_before_write`)."""
    connection = connections[db]
    if connection.vendor != "postgresql":
        return
    share = " FOR SHARE NOWAIT" if nowait else " FOR SHARE"
    for parent, rows in _forward_rows(model, db, pks, specs):
        if held.get(parent):
            rows = rows.exclude(pk__in=held[parent])
        sql, params = rows.order_by("pk").values_list("pk").query.get_compiler(using=db).as_sql()
        with connection.cursor() as cursor:
            cursor.execute(sql + share, params)


def forward_reads(
    model: type[models.Model], db: str, pks: list[Any], specs: Iterable[Spec]
) -> dict[type[models.Model], set[Any]]:
    """The rows that ``specs`` read through foreign keys alone from the rows
    ``pks`` of ``model``, by model, read now without locks."""
    found: dict[type[models.Model], set[Any]] = {}
    for parent, rows in _forward_rows(model, db, pks, specs):
        found.setdefault(parent, set()).update(keys(parent, rows.values_list("pk", flat=True)))
    return found


def _forward_rows(
    model: type[models.Model], db: str, pks: list[Any], specs: Iterable[Spec]
) -> Iterator[tuple[type[models.Model], models.QuerySet[Any]]]:
    """Per model in lock order and batch of ``pks``, the rows of it that
    ``specs`` read through foreign keys alone from the rows ``pks``."""
    hops = frozenset().union(*(spec.forward_hops for spec in specs))
    order = get_graph().model_order
    for parent, lookup in sorted(hops, key=lambda hop: (order.get(hop[0], len(order)), hop[1])):
        for batch in chunks(pks, get_config()["BATCH_SIZE"]):
            reached: models.QuerySet[Any] = models.QuerySet(model, using=db).filter(pk__in=batch).values(
                f"{lookup}__pk"
            )
            yield parent, models.QuerySet(parent, using=db).filter(pk__in=reached)


def in_users_transaction(db: str) -> bool:
    """Whether a write on ``db`` runs in a transaction of the user's: an
    atomic block, or manual transaction management (``set_autocommit(False)``).
    There the package begins no transaction of its own and retries nothing:
    what the user's transaction did before cannot be done again."""
    connection = connections[db]
    return connection.in_atomic_block or not connection.get_autocommit()


def locking(db: str) -> bool:
    """Whether rows are locked before they are written, here and now: with
    LOCK_ROWS, on a database that can, inside a transaction."""
    connection = connections[db]
    return connection.features.has_select_for_update and connection.in_atomic_block and get_config()["LOCK_ROWS"]


def lock(rows: models.QuerySet[Any], nowait: bool = False, exclusive: bool = False) -> models.QuerySet[Any]:
    """``rows`` locked for the rest of the transaction, as the database can.

    PostgreSQL takes ``FOR NO KEY UPDATE``, which does not conflict with the
    key-share locks that inserting a child row takes on its parent; with
    ``exclusive``, ``FOR UPDATE``, which does: no child can be added to
    the rows until the transaction ends.
    """
    features = connections[rows.db].features
    nowait = nowait and features.has_select_for_update_nowait
    return rows.select_for_update(no_key=features.has_select_for_no_key_update and not exclusive, nowait=nowait)


def update_rows(
    model: type[models.Model],
    db: str,
    rows: Iterable[models.Model],
    specs_of: Callable[[models.Model], Iterable[Spec]],
    size: int,
    evaluated: dict[Any, dict[str, Any]] | None = None,
) -> list[tuple[models.Model, dict[str, Any]]]:
    """Recompute ``specs_of(row)`` on each of ``rows``, then write the changed values.

    The rows the specs read through foreign keys alone are read first, in
    one query per relation, not one per row.  ``evaluated`` holds the values
    of the expression specs if they were read with the rows (see :func:`read`).
    """
    changed = []
    groups: dict[frozenset[str], list[models.Model]] = {}
    work = [(row, specs_of(row)) for row in rows]
    paths = {path for _, specs in work for spec in specs if spec.expression is None for path in spec.forward_paths}
    if paths:
        models.prefetch_related_objects([row for row, _ in work], *sorted(paths))
    expressions = {spec for _, specs in work for spec in specs if spec.expression is not None}
    if evaluated is None:
        evaluated = evaluate(model, db, [row.pk for row, _ in work], expressions) if expressions else {}
    for row, specs in work:
        differences = compute(row, specs, evaluated.get(row.pk))
        if not differences:
            continue
        for attname, (_, value) in differences.items():
            setattr(row, attname, value)
        groups.setdefault(frozenset(differences), []).append(row)
        changed.append((row, {a: stored for a, (stored, _) in differences.items()}))
    settable = {spec.field.attname: spec for spec in expressions if spec.settable(connections[db].vendor)}
    for attnames, instances in groups.items():
        # One row: its values are known and an UPDATE of values compiles faster.
        if len(instances) > 1 and attnames <= settable.keys():
            set_to_expressions(model, db, instances, [settable[a] for a in sorted(attnames)], size)
        else:
            write(model, db, instances, sorted(attnames), size)
    return changed


def set_to_expressions(
    model: type[models.Model], db: str, instances: list[models.Model], specs: list[Spec], size: int
) -> None:
    """Set the columns of ``specs`` on the rows of ``instances`` to their
    expressions, in one UPDATE per batch: no value travels, and no CASE per row
    as bulk_update() builds."""
    attnames = tuple(spec.field.attname for spec in specs)
    connection = connections[db]

    def update(pks: list[Any]) -> tuple[str, Any, dict[int, Any]]:
        query = cast(UpdateQuery, models.QuerySet(model, using=db).filter(pk__in=pks).query.chain(UpdateQuery))
        query.add_update_values({spec.field.name: spec.annotation() for spec in specs})
        return (*query.get_compiler(using=db).as_sql(), {})

    for batch in chunks([instance.pk for instance in instances], size):
        if composite(model):
            expressions = {spec.field.name: spec.annotation() for spec in specs}
            models.QuerySet(model, using=db).filter(pk__in=batch).update(**expressions)
            continue
        sql, params, _ = _keyed(("set", model, attnames), model, db, batch, update)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    _announce(model, db, instances, list(attnames))


def evaluate(model: type[models.Model], db: str, pks: list[Any], specs: Iterable[Spec]) -> dict[Any, dict[str, Any]]:
    """The values the database computes for the expression ``specs`` on the
    rows ``pks``, in one query: {pk: {attname: value}}."""
    specs = tuple(sorted(specs, key=lambda spec: spec.field.attname))
    names = {f"_maintained_{spec.field.attname}": spec for spec in specs}

    def query(pks: list[Any]) -> models.QuerySet[Any]:
        return (
            models.QuerySet(model, using=db)
            .filter(pk__in=pks)
            .annotate(**{name: spec.annotation() for name, spec in names.items()})
            .values_list("pk", *names)
        )

    found = fetch(("evaluate", model, specs), model, db, pks, query)
    return {pk: {spec.field.attname: value for spec, value in zip(specs, values)} for pk, *values in found}


def fetch(
    key: tuple[Any, ...],
    model: type[models.Model],
    db: str,
    pks: list[Any],
    query: Callable[[list[Any]], models.QuerySet[Any]],
    statement: Callable[[str], tuple[str, list[Any]]] | None = None,
    carrier: Carrier | None = None,
) -> list[list[Any]]:
    """The rows ``query(pks)`` selects, converted as the ORM converts them;
    with ``statement``, the rows of the statement it makes of the query's
    SQL, and the expressions that say how to convert each column.  Rows
    that the ``carrier`` kept of the same statement, sent ahead, are not
    read again (:func:`fetch_ahead`).

    Compiling a query with a subquery per aggregate costs more than running
    it, so its SQL is compiled once per ``key``, database and number of keys,
    and run again with other keys (the last parameters of ``pk__in``).
    """
    if composite(model):  # the key is several columns: the ORM gives it back as one tuple
        selected = query(pks)
        rows = [list(row) for row in selected]
        convert = key_of(model)
        if convert is not None and selected.query.values_select[:1] == ("pk",):
            for row in rows:
                row[0] = convert(row[0])
        return rows
    connection = connections[db]
    sql, params, converters = _keyed(key, model, db, pks, partial(_select, query, statement, db))
    kept = carrier.kept(sql, params) if carrier is not None else None
    if kept is not None:
        return _converted(kept, converters, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = [list(row) for row in cursor.fetchall()]
    return _converted(rows, converters, connection)


def fetch_ahead(
    key: tuple[Any, ...],
    model: type[models.Model],
    db: str,
    pks: list[Any],
    query: Callable[[list[Any]], models.QuerySet[Any]],
    carrier: Carrier,
) -> None:
    """Have the ``carrier`` send what :func:`fetch` would, with the next
    statement, and keep its rows for that :func:`fetch` if it comes next."""
    if not composite(model):
        carrier.add(*_keyed(key, model, db, pks, partial(_select, query, None, db))[:2], keep=True)


def _select(
    query: Callable[[list[Any]], models.QuerySet[Any]],
    statement: Callable[[str], tuple[str, list[Any]]] | None,
    db: str,
    pks: list[Any],
) -> tuple[str, Any, dict[int, Any]]:
    """The SQL and parameters of ``query(pks)``, or of the ``statement`` made
    of it, and the converters of the columns it returns."""
    compiler = query(pks).query.get_compiler(using=db)
    sql, params = compiler.as_sql()
    columns = [column for column, _, _ in compiler.select]
    if statement is not None:
        sql, columns = statement(sql)
    return sql, params, compiler.get_converters(columns)


def _keyed(
    key: tuple[Any, ...],
    model: type[models.Model],
    db: str,
    pks: list[Any],
    compile: Callable[[list[Any]], tuple[str, Any, dict[int, Any]]],
) -> tuple[str, list[Any], dict[int, Any]]:
    """The SQL, parameters and converters to run the statement ``compile(pks)``
    makes (its keys the last parameters, from ``pk__in``), compiled once per
    ``key`` and database, for one key, and run again with any number of keys:
    compiling a key costs as much as running the statement with it."""
    key = (*key, db)
    pk_field = model._meta.pk
    if isinstance(pk_field, models.IntegerField) and set(map(type, pks)) <= {int}:
        keys = list(pks)  # what get_db_prep_value() would give, at a tenth of the cost
    else:
        keys = [pk_field.get_db_prep_value(pk, connections[db]) for pk in pks]
    compiled = _compiled.get(key)
    if compiled is None:
        sql, params, converters = compile(pks[:1])
        compiled = _keep_compiled(key, sql, list(params), keys[:1], converters, connections[db])
    if not compiled:  # the backend put the keys elsewhere: run it as compiled
        sql, params, converters = compile(pks)
        return sql, list(params), converters
    before, after, params, converters, array = compiled
    if array:
        return f"{before}= ANY(%s){after}", [*params, keys], converters
    return f"{before}IN ({', '.join(['%s'] * len(keys))}){after}", [*params, *keys], converters


def _keep_compiled(
    key: tuple[Any, ...],
    sql: str,
    params: list[Any],
    keys: list[Any],
    converters: dict[int, Any],
    connection: Any,
) -> _Kept | None:
    """Keep SQL compiled for one key, whose last parameter it is, to run again
    with other keys: (the SQL before and after its ``IN (%s)``, the parameters
    before the key, converters, whether the keys go in as one array).  An
    empty tuple if the key is elsewhere (the backend put it there).

    On PostgreSQL the keys go in as one array, ``= ANY(%s)``: psycopg parses
    a long statement again on every run, about a millisecond for 500 keys.
    """
    listed = "IN (%s)"
    at = sql.rfind(listed)
    if params[len(params) - len(keys) :] != keys or at < 0 or "%s" in sql[at + len(listed) :]:
        compiled: _Kept | tuple[()] = ()
    else:
        array = connection.vendor == "postgresql" and not any(isinstance(k, (tuple, list)) for k in keys)
        compiled = (sql[:at], sql[at + len(listed) :], params[: len(params) - len(keys)], converters, array)
    if len(_compiled) > 500:
        _compiled.clear()
    _compiled[key] = compiled
    return compiled or None


def _converted(rows: list[list[Any]], converters: dict[int, Any], connection: Any) -> list[list[Any]]:
    """``rows`` with each column's database converters applied, as the ORM applies them."""
    for row in rows:
        for position, (functions, expression) in converters.items():
            for convert in functions:
                try:
                    row[position] = convert(row[position], expression, connection)
                except decimal.InvalidOperation:
                    raise ValueError(_past_max_digits(expression, row[position])) from None
    return rows


def _past_max_digits(expression: Any, value: Any) -> str:
    """What to say of a decimal ``value`` computed for a column that cannot
    hold it (SQLite stores it all the same, and Django cannot read it back)."""
    field = getattr(expression, "target", None) or expression.output_field
    name = f"{field.model._meta.label}.{field.name}" if getattr(field, "model", None) else repr(field)
    return (
        f"{name} cannot store {value!r}, the value computed for it: it has more than "
        f"max_digits={field.max_digits} digits. Widen the field, or keep the value smaller in its expression."
    )


# (SQL before the keys' IN (%s), SQL after it, parameters before the keys,
#  converters, whether the keys go in as one array)
_Kept = tuple[str, str, list[Any], dict[int, Any], bool]
# {(purpose, model, specs, database): what _keep_compiled() keeps, () if it keeps nothing}
_compiled: dict[tuple[Any, ...], _Kept | tuple[()]] = {}


def evaluate_in_memory(instances: list[models.Model], specs: list[Spec], db: str) -> list[dict[str, Any]]:
    """The values of own-row expression ``specs`` for ``instances`` as they
    are in memory (saved or not), one {attname: value} per instance.

    The database computes them over a table made of the instances' values
    (``SELECT ... FROM (SELECT %s AS "name" UNION ALL ...) AS "app_model"``),
    in one query per batch, compiled once per model and specs.
    """
    connection = connections[db]
    head, params, fields, slots, converters = _in_memory_sql(type(instances[0]), tuple(specs), db)
    quote: Callable[[Any], str] = connection.ops.quote_name  # of concrete columns: set
    named = (f"{sql} AS {quote(field.column)}" for field, (sql, _) in zip(fields, slots))
    first = ", ".join([f"%s AS {quote('_maintained_n')}", *named])
    other = ", ".join(["%s", *(sql for sql, _ in slots)])
    results: list[dict[str, Any]] = []
    for batch in chunks(instances, max(1, min(get_config()["BATCH_SIZE"], 900 // (len(fields) + 1)))):
        values: list[Any] = []
        for position, instance in enumerate(batch):
            values.append(position)
            for _, template in slots:
                values += _filled(template, instance, connection)
        rows = [first, *[other] * (len(batch) - 1)]
        table = quote(instances[0]._meta.db_table)
        sql = f"{head} FROM (SELECT {' UNION ALL SELECT '.join(rows)}) AS {table}"
        with connection.cursor() as cursor:
            cursor.execute(sql, params + values)
            found = [list(row[1:]) for row in sorted(cursor.fetchall(), key=lambda row: row[0])]
        for computed in _converted(found, converters, connection):
            results.append({spec.field.attname: value for spec, value in zip(specs, computed)})
    return results


def _in_memory_sql(
    model: type[models.Model], specs: tuple[Spec, ...], db: str
) -> tuple[str, list[Any], list[models.Field[Any, Any]], list[Any], dict[int, Any]]:
    """For :func:`evaluate_in_memory`: the SELECT list of the expressions over
    the model's table (its FROM is the caller's), its parameters, the fields
    the expressions read, and the converters of the values."""
    key = (model, specs, db)
    found = _in_memory.get(key)
    if found is None:
        names = {f"_maintained_{spec.field.attname}": stored_as(spec, spec.expression) for spec in specs}
        rows: models.QuerySet[Any] = models.QuerySet(model, using=db).order_by().annotate(**names).values_list(*names)
        compiler = rows.query.get_compiler(using=db)
        sql, params = compiler.as_sql()
        quote = connections[db].ops.quote_name
        tail = f" FROM {quote(model._meta.db_table)}"
        if not sql.endswith(tail):
            raise ValueError(f"Cannot compute {', '.join(map(str, specs))} before the write: {sql}")
        head = f"SELECT {quote(model._meta.db_table)}.{quote('_maintained_n')}, {sql[len('SELECT '):-len(tail)]}"
        read = set().union(*(spec.own_triggers for spec in specs))
        fields = [field for field in model._meta.concrete_fields if field.attname in read]
        converters = compiler.get_converters([column for column, _, _ in compiler.select])
        found = _in_memory[key] = (head, list(params), fields, [_typed(f, compiler) for f in fields], converters)
    return found


# {(model, specs, database): what _in_memory_sql() returns}
_in_memory: dict[tuple[Any, ...], tuple[str, list[Any], list[models.Field[Any, Any]], list[Any], dict[int, Any]]] = {}


def _typed(field: models.Field[Any, Any], compiler: Any) -> tuple[str, list[Any]]:
    """The SQL of a parameter that holds a value of ``field``, typed as the
    column where the database would not know its type: on PostgreSQL every
    value (a NULL would be text), on MySQL and MariaDB dates and times (they
    would come back as text).  SQLite takes values as they are, decimals as
    their column stores them (see :class:`_RowValue`)."""
    vendor = compiler.connection.vendor
    dates = isinstance(field, (models.DateField, models.TimeField))
    if vendor == "postgresql" or (vendor == "mysql" and dates):
        return cast("tuple[str, list[Any]]", compiler.compile(Cast(_RowValue(field), output_field=field)))
    return cast("tuple[str, list[Any]]", compiler.compile(_RowValue(field)))


def _filled(template: list[Any], instance: models.Model, connection: Any) -> list[Any]:
    """Parameters with each slot filled with the instance's value."""
    return [
        p.field.get_db_prep_value(getattr(instance, p.field.attname), connection) if isinstance(p, _Slot) else p
        for p in template
    ]


def own_row_sql(spec: Spec, db: str) -> tuple[str, list[Any]] | None:
    """An own-row expression compiled once per database for an INSERT to
    compute: its SQL and its parameters, with a slot for each value of the
    row it reads (see :func:`row_expression`).  None if it reads the row
    otherwise than through F() (a condition, ``When(qty__gt=10)``)."""
    key = (spec, db)
    if key not in _own_row:
        query = Query(spec.model)
        meta = spec.model._meta

        def slot(node: Any) -> Any:
            if not isinstance(node, models.F):
                return None
            names = (meta.pk.name, meta.pk.attname) if node.name == "pk" else (node.name,)  # type: ignore[attr-defined]  # F.name: the stubs omit it
            field = next((f for f in meta.concrete_fields if f.name in names or f.attname in names), None)
            return node if field is None else _RowValue(field)  # F("meta__color"): a transform of a field

        rewritten = rewrite(spec.expression, slot)
        # A condition names the row's fields, or an F() a transform of one: only a FROM can give them.
        if references(rewritten):
            _own_row[key] = None
        else:
            expression = stored_as(spec, rewritten).resolve_expression(query, allow_joins=False)
            sql, params = query.get_compiler(using=db).compile(expression)
            _own_row[key] = (sql, list(params))
    return _own_row[key]


# {(spec, database): what own_row_sql() returns}
_own_row: dict[tuple[Spec, str], tuple[str, list[Any]] | None] = {}


class _Slot:
    """A parameter of compiled SQL that stands for a value of the row."""

    __slots__ = ("field",)

    def __init__(self, field: models.Field[Any, Any]) -> None:
        self.field = field


class _RowValue(models.Expression):
    """A value of the row, left as a parameter slot when compiled."""

    def __init__(self, field: models.Field[Any, Any]) -> None:
        super().__init__(output_field=field)
        self.column = field

    # Its parameter is a _Slot, which _filled() replaces with the row's value.
    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:  # type: ignore[override]
        if connection.vendor == "sqlite" and self.column.get_internal_type() == "DecimalField":
            # As the column stores it (10.00 as the integer 10), so that the
            # expression computes alike on the value and on the column: 10 / 3 is 3.
            return "CAST(%s AS NUMERIC)", [_Slot(self.column)]
        return "%s", [_Slot(self.column)]


def row_expression(spec: Spec, instance: models.Model, db: str) -> _Compiled:
    """The own-row expression of ``spec`` on the instance's values, compiled
    already (see :func:`own_row_sql`): an INSERT can take it as a value."""
    sql, params = own_row_sql(spec, db)  # type: ignore[misc]
    return _Compiled(sql, _filled(params, instance, connections[db]), spec.field)


class _Compiled(BaseExpression):
    """SQL compiled already: an INSERT takes it as a value with no resolving,
    copying or compiling of its own (RawSQL's cost a save tens of microseconds)."""

    contains_aggregate = False
    contains_over_clause = False
    contains_column_references = False

    def __init__(self, sql: str, params: list[Any], field: models.Field[Any, Any]) -> None:
        super().__init__(output_field=field)
        self.sql, self.params = sql, params

    def resolve_expression(self, *args: Any, **kwargs: Any) -> _Compiled:
        return self

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:  # type: ignore[override]
        return self.sql, self.params


def write(
    model: type[models.Model], db: str, instances: list[models.Model], attnames: list[str], size: int
) -> None:
    if len(instances) == 1:
        _update_one(model, db, instances[0], attnames)
    else:
        _update_many(model, db, instances, attnames, size)
    _announce(model, db, instances, attnames)


def _update_many(
    model: type[models.Model], db: str, instances: list[models.Model], attnames: list[str], size: int
) -> None:
    """``UPDATE`` the columns ``attnames`` of the instances' rows to their
    values, ``size`` rows a statement: what ``bulk_update()`` writes (each
    column a ``CASE`` on the key), with SQL built as text, not as an
    expression per row and column, which cost a third of a deferred flush."""
    connection = connections[db]
    fields = [cast("models.Field[Any, Any]", model._meta.get_field(attname)) for attname in attnames]
    if composite(model) or any(hasattr(field, "get_placeholder") for field in fields):
        cast("models.QuerySet[models.Model]", models.QuerySet(model, using=db)).bulk_update(
            instances, attnames, batch_size=size
        )
        return
    quote: Callable[[Any], str] = connection.ops.quote_name  # of concrete columns: set
    pk = model._meta.pk
    key, table = quote(pk.column), quote(model._meta.db_table)
    typed = connection.features.requires_casted_case_in_updates
    limit = connection.features.max_query_params  # SQLite's: a row takes two per column and one for the key
    if limit:
        size = min(size, limit // (2 * len(fields) + 1))
    for batch in chunks(instances, size):
        keys = [pk.get_db_prep_value(instance.pk, connection) for instance in batch]
        whens = " ".join(["WHEN %s THEN %s"] * len(batch))
        sets: list[str] = []
        params: list[Any] = []
        for field in fields:
            case = f"CASE {key} {whens} END"
            if typed:
                case = f"CAST({case} AS {field.cast_db_type(connection)})"
            sets.append(f"{quote(field.column)} = {case}")
            for instance, value in zip(batch, keys):
                params += (value, field.get_db_prep_save(getattr(instance, field.attname), connection))
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET {', '.join(sets)} WHERE {key} IN ({', '.join(['%s'] * len(keys))})",
                [*params, *keys],
            )


def _update_one(model: type[models.Model], db: str, instance: models.Model, attnames: list[str]) -> None:
    """``UPDATE`` the columns ``attnames`` of one row to the instance's values,
    with SQL built once per model, database and columns."""
    connection = connections[db]
    fields = [cast("models.Field[Any, Any]", model._meta.get_field(attname)) for attname in attnames]
    if any(hasattr(field, "get_placeholder") for field in fields):  # a column written through SQL of its own
        models.QuerySet(model, using=db).filter(pk=instance.pk).update(**{a: getattr(instance, a) for a in attnames})
        return
    # A composite primary key is its fields' columns, each compared to its value.
    keys = model._meta.pk.fields if composite(model) else (model._meta.pk,)  # type: ignore[attr-defined]  # a CompositePrimaryKey's
    key = (model, db, tuple(attnames))
    sql = _updates.get(key)
    if sql is None:
        quote: Callable[[Any], str] = connection.ops.quote_name  # of concrete columns: set
        columns = ", ".join(f"{quote(field.column)} = %s" for field in fields)
        where = " AND ".join(f"{quote(field.column)} = %s" for field in keys)
        sql = _updates[key] = f"UPDATE {quote(model._meta.db_table)} SET {columns} WHERE {where}"
    params = [field.get_db_prep_save(getattr(instance, field.attname), connection) for field in fields]
    pk = instance.pk if len(keys) > 1 else (instance.pk,)
    params += [field.get_db_prep_value(value, connection) for field, value in zip(keys, pk)]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


# {(model, database, attnames): UPDATE statement}
_updates: dict[tuple[Any, ...], str] = {}


# The announcements held back by announced_at_the_end(), in the order made.
_held_back: ContextVar[list[tuple[Any, ...]] | None] = ContextVar("maintained_fields_held_back", default=None)


@contextmanager
def announced_at_the_end() -> Iterator[None]:
    """Send ``maintained_values_written`` for the writes of the block when it
    ends without an error, and not at all when it fails: the block's writes
    are then rolled back and done again.  What a dry run reports of the
    block's writes is likewise forgotten when it fails."""
    held: list[tuple[Any, ...]] = []
    token = _held_back.set(held)
    changes = _dry_run.get()
    before = None if changes is None else {key: list(values) for key, values in changes.items()}
    try:
        yield
    except BaseException:
        if changes is not None and before is not None:
            changes.clear()
            changes.update(before)
        raise
    finally:
        _held_back.reset(token)
    for announcement in held:
        _announce(*announcement)


def _announce(model: type[models.Model], db: str, instances: list[models.Model], attnames: list[str]) -> None:
    if _dry_run.get() is not None:
        return
    held = _held_back.get()
    if held is not None:
        held.append((model, db, instances, attnames))
        return
    maintained_values_written.send(
        sender=model,
        pks=[instance.pk for instance in instances],
        fields=[model._meta.get_field(a).name for a in attnames],
        using=db,
    )


def batches(queryset: models.QuerySet[Any], size: int) -> Iterator[list[Any]]:
    """The rows of ``queryset`` in primary-key order, ``size`` at a time.

    Each batch is its own query (keyset pagination), so writing between
    batches is safe and memory stays bounded.
    """
    last = None
    queryset = queryset.order_by("pk")
    while True:
        page = queryset if last is None else queryset.filter(pk__gt=last)
        batch = list(page[:size])
        if not batch:
            return
        yield batch
        last = batch[-1].pk if isinstance(batch[-1], models.Model) else batch[-1]

"""Where writes are caught: save(), the signals of plain models, deletes,
many-to-many changes, fixture loads and mark_changed().

Each turns what it sees into records (see :mod:`maintained_fields.propagation`)
and dispatches them as the mode in force says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from datetime import date, time, timedelta
from decimal import Decimal
from functools import partial
from types import SimpleNamespace
from typing import Any, NamedTuple, TypeVar, cast
from uuid import UUID

from django.db import DatabaseError, connections, models, router, transaction
from django.db.models import signals

from . import modes
from .background import with_its_task
from .conf import get_config
from .graph import REVERSE, Dependency, Graph, Hop, ModelNode, Spec, get_graph, mixin_problem
from .propagation import (
    Records,
    dispatch,
    lock_first,
    lock_reach,
    merge,
    reading_ahead,
    recompute_records,
    records_for,
    retrying,
    rows_with_links,
)
from .writes import (
    announced_at_the_end,
    chunks,
    evaluate_in_memory,
    feature,
    in_users_transaction,
    keyed_values,
    keys,
    lock_rows,
    locking,
    normalize,
    own_row_sql,
    resolve,
    row_expression,
    same,
)
from .writes import lock as lock_rows_of

T = TypeVar("T")

_OLD = "_maintained_fields_old"
_RESOLVED = "_maintained_fields_resolved"
_CLEARED = "_maintained_fields_cleared"
_DELETING = "_maintained_fields_deleting"


def save_instance(instance: models.Model, save: Callable[..., None], kwargs: dict[str, Any]) -> None:
    """``MaintainedModelMixin.save()``: compute own-row fields, write, propagate."""
    scope = modes.current_scope()
    if scope.mode == modes.DISABLED:
        return save(**kwargs)
    node = get_graph().node(type(instance))
    update_fields = kwargs.get("update_fields")
    if node is None or (update_fields is not None and not update_fields):
        return save(**kwargs)
    if scope.buffer is not None and instance.pk is None and update_fields is None:
        using = kwargs["using"] = kwargs.get("using") or router.db_for_write(type(instance), instance=instance)
        return _insert_recorded(instance, save, kwargs, node, scope, using)
    if update_fields is None:
        update_fields = kwargs["update_fields"] = _loaded_fields(instance, kwargs)
    written = attnames_of(instance, update_fields)
    own_row = own_row_specs(node, scope, written)
    if written is not None:
        added = [spec.field.name for spec in own_row if spec.field.attname not in written]
        if added:
            kwargs["update_fields"] = [*update_fields, *added]  # type: ignore[misc]  # set, as written is
            written |= {spec.field.attname for spec in own_row}
    using = kwargs["using"] = kwargs.get("using") or router.db_for_write(type(instance), instance=instance)
    # A write of an existing row that may move it, or that writes back fields
    # maintained from other rows, reads the row first and writes in one
    # transaction, with the row locked: a concurrent write between the two
    # would otherwise leave the parent it came from unknown, or have the
    # value it wrote overwritten with the one read before it.
    read = node.up_links | node.related_attnames
    read_first = instance.pk is not None and bool(read if written is None else read & written)
    if scope.mode == modes.BACKGROUND and scope.buffer is None:
        with with_its_task(using), (transaction.atomic(using=using, savepoint=False) if read_first else nullcontext()):
            _save_and_record(instance, save, kwargs, node, scope, using, written, own_row)
    else:
        write = partial(_save_and_record, instance, save, kwargs, node, scope, using, written, own_row)
        what, needed = f"A save() of {instance._meta.label}", scope.mode == modes.IMMEDIATE or read_first
        # Django inserts a new row last thing before post_save; until then an
        # error (a pre_save receiver's, an own-row method's) has written nothing.
        inserted = (lambda: not instance._state.adding) if instance._state.adding else None
        in_transaction(using, what, write, needed, partial(snapshot, instance, kwargs), inserted)


def _loaded_fields(instance: models.Model, kwargs: dict[str, Any]) -> list[str] | None:
    """The fields Django's save() writes, as ``update_fields``, of an
    instance loaded with ``only()`` or ``defer()``: the loaded ones (where
    it saves the row to the database it came from); None for the others.
    Given explicitly, they are widened by the own-row fields they lead to."""
    if instance._state.adding or kwargs.get("force_insert"):
        return None
    deferred = instance.get_deferred_fields()
    if not deferred:
        return None
    using = kwargs.get("using") or router.db_for_write(type(instance), instance=instance)
    if using != instance._state.db:
        return None
    meta = instance._meta
    pks = set(getattr(meta, "pk_fields", [meta.pk]))
    loaded = [
        field.name
        for field in meta.concrete_fields
        if field not in pks and field.attname not in deferred and not getattr(field, "generated", False)
    ]
    return loaded or None


def in_transaction(using: str, what: str, write: Callable[[], T], needed: bool = True,
                   snapshot: Callable[[], Callable[[], object]] | None = None,
                   wrote: Callable[[], bool] | None = None) -> T:
    """``write()``, in a transaction where ``needed``: the user's, if one is
    open on ``using``; else one of the package's own, which a deadlock or
    serialization failure rolls back and :func:`propagation.retrying` retries,
    after calling the undo that ``snapshot()`` returned before the first
    attempt. The values written are announced once, by the attempt that
    succeeds.

    An error marks the user's transaction for rollback, as an error in
    Django's own writes does: the write may be half done.  Where ``wrote()``
    tells that nothing was written yet, an error other than the database's
    leaves the transaction usable, as Django leaves it when a ``pre_save``
    receiver raises."""
    if not needed:
        return write()
    if wrote is not None and connections[using].in_atomic_block:
        try:
            return write()
        except BaseException as error:
            if isinstance(error, DatabaseError) or wrote():
                transaction.set_rollback(True, using=using)
            raise
    if in_users_transaction(using):
        with transaction.atomic(using=using, savepoint=False):
            return write()

    def attempt() -> T:
        with transaction.atomic(using=using), announced_at_the_end():
            return write()

    return retrying(using, what, attempt, snapshot() if snapshot is not None else None)


def snapshot(instance: models.Model, kwargs: dict[str, Any]) -> Callable[[], None]:
    """What puts ``instance`` and the save()'s ``kwargs`` back as they are now."""
    values, state, cache, arguments = dict(instance.__dict__), dict(vars(instance._state)), None, dict(kwargs)
    if "fields_cache" in state:
        cache = dict(state["fields_cache"])

    def restore() -> None:
        instance.__dict__.clear()
        instance.__dict__.update(values)
        vars(instance._state).clear()
        vars(instance._state).update(state)
        if cache is not None:
            instance._state.fields_cache = dict(cache)
        kwargs.clear()
        kwargs.update(arguments)

    return restore


def _insert_recorded(
    instance: models.Model, save: Callable[..., None], kwargs: dict[str, Any], node: ModelNode,
    scope: modes.Scope, using: str,
) -> None:
    """The save() of a new row in a deferred or background scope, the write a
    loader makes thousands of times: what :func:`_save_and_record` does for
    it, with what depends only on the model and the labels planned once."""
    plan = insert_plan(node, scope.labels)
    now, later = plan.now, plan.later
    waits = False
    if now:
        held = expressions_held([instance], node)
        if held:
            later = after_the_write([s for s in node.own_row if s in now or s in later], deferred=True, held=held)
            now = [spec for spec in now if spec not in later]
        waits = _pre_save_heard(instance)
        if waits:
            _intercept(instance, "_save_table", partial(_after_pre_save, instance, now, [], using))
        else:
            compute_own_rows([instance], now, using)
    if _locks_parents_first(using):
        lock_before_write(node, [(instance, None)], using)
    try:
        save(**kwargs)
    finally:
        if waits:
            _release(instance)
        # Recorded once the row is written: when save() returns, and also when
        # a post_save receiver raised after the INSERT, since the row stays.
        if not instance._state.adding:
            if not scope.buffer.fill(using, scope.labels, created_records, plan.where, instance, later):  # type: ignore[union-attr]  # the caller checked
                dispatch(scope, using, created_records(plan.where, instance, later), (instance,))


class InsertPlan(NamedTuple):
    """What the insert of a row does, planned once per model and label filter."""

    # In a deferred or background scope: the own-row fields computed before
    # the INSERT, and those left to the flush (see after_the_write()).
    now: list[Spec]
    later: list[Spec]
    # Where the new row's values are recorded: each foreign key whose value
    # is recorded (None: the row's own key), with the keys of its records.
    where: tuple[tuple[str | None, tuple[tuple[Dependency, int], ...]], ...]


def insert_plan(node: ModelNode, labels: frozenset[str] | None) -> InsertPlan:
    plan = node.on_insert.get(labels)
    if plan is None:
        own_row = [spec for spec in node.own_row if labels is None or spec.label in labels]
        later = after_the_write(own_row, deferred=True)
        where: dict[str | None, list[tuple[Dependency, int]]] = {}
        for dep, hop in node.saved_edges:
            if labels is None or dep.spec.label in labels:
                if hop.kind == REVERSE:
                    where.setdefault(hop.up_link, []).append((dep, hop.record_index))
                else:
                    where.setdefault(None, []).append((dep, hop.index))
        plan = node.on_insert[labels] = InsertPlan(
            [s for s in own_row if s not in later], later, tuple((link, tuple(keyed)) for link, keyed in where.items())
        )
    return plan


def own_row_specs(node: ModelNode, scope: modes.Scope, written: frozenset[str] | None) -> list[Spec]:
    """The own-row fields a write of ``written`` (None: every field) recomputes,
    with the ones that read those (``node.own_row`` is in dependency order)."""
    chosen = []
    for spec in node.own_row:
        if (scope.labels is None or spec.label in scope.labels) and (
            not spec.own_triggers
            or written is None
            or spec.own_triggers & written
            or spec.field.attname in written  # a value written by hand is replaced by the maintained one
        ):
            chosen.append(spec)
            if written is not None:
                written = written | {spec.field.attname}
    return chosen


def compute_own_rows(instances: list[models.Model], specs: list[Spec], using: str) -> None:
    """Set the own-row fields ``specs`` (in dependency order) on ``instances``
    before they are written: methods row by row, each run of expressions in
    one query for all the rows."""
    for expressions, run in _runs(specs):
        if expressions:
            for instance, values in zip(instances, evaluate_in_memory(instances, run, using)):
                for spec in run:
                    setattr(instance, spec.field.attname, normalize(spec, values[spec.field.attname]))
            continue
        for spec in run:
            for instance in instances:
                setattr(instance, spec.field.attname, normalize(spec, spec.compute(instance)))


def _runs(specs: list[Spec]) -> Iterator[tuple[bool, list[Spec]]]:
    """``specs`` in runs of methods and of expressions, in order; an
    expression that reads a field computed earlier in its run starts a new
    one, since a run's expressions are computed from the values before it."""
    run: list[Spec] = []
    for spec in specs:
        if run and (
            (spec.expression is None) != (run[0].expression is None)
            or spec.own_triggers & {earlier.field.attname for earlier in run}
        ):
            yield run[0].expression is not None, run
            run = []
        run.append(spec)
    if run:
        yield run[0].expression is not None, run


def left_to_insert(instance: models.Model, specs: list[Spec], using: str, kwargs: dict[str, Any]) -> list[Spec]:
    """The trailing run of own-row expression ``specs`` that the INSERT of a
    new ``instance`` can compute itself and return (``RETURNING``), at no
    query of its own (see :func:`insert`)."""
    if instance.pk is not None or kwargs.get("raw") or not specs or specs[-1].expression is None:
        return []
    *_, (_, last) = _runs(specs)
    if not feature(using, "can_return_columns_from_insert") or any(own_row_sql(s, using) is None for s in last):
        return []
    return last


def after_the_write(own_row: list[Spec], deferred: bool, written: frozenset[str] | None = None,
                    held: frozenset[str] = frozenset()) -> list[Spec]:
    """The own-row ``own_row`` (in dependency order) computed after the write,
    by a recompute of the row: those that read what the write sets (the
    key, auto_now fields), expressions in a deferred scope (the flush
    computes them in batches), those that read fields a write of only
    ``written`` leaves as stored (the instance's values of those may never
    have been saved), those that read the ``held`` fields (see
    :func:`expressions_held`), and those that read any of these."""
    later: list[Spec] = []
    fields: set[str] = set(held)
    for spec in own_row:
        if (
            spec.after_write
            or (deferred and spec.expression is not None)
            or spec.own_triggers & fields
            or (fields and not spec.own_triggers)
            or (written is not None and not spec.own_triggers <= written)
            or (written is not None and not spec.own_triggers)  # reads what it likes, maybe unsaved
        ):
            later.append(spec)
            fields.add(spec.field.attname)
    return later


# Values that are never query expressions: most values, told apart without a failed attribute lookup.
_PLAIN = (str, int, float, Decimal, date, time, timedelta, UUID, bytes, dict, list, type(None))


def expressions_held(instances: Iterable[models.Model], node: ModelNode) -> frozenset[str]:
    """The attnames read by ``node``'s own-row fields that hold a query
    expression (``qty = F("qty") + 1``, ``title = Concat(...)``) on any of
    ``instances``.  The database computes such a value as it writes the row,
    and the instance keeps the expression, so the fields that read it are
    computed from the row once written."""
    held = set()
    for instance in instances:
        values = instance.__dict__
        for attname in node.own_reads:
            value = values.get(attname)
            if not isinstance(value, _PLAIN) and hasattr(value, "resolve_expression"):
                held.add(attname)
    return frozenset(held)


def _intercept(instance: models.Model, name: str, call: Callable[..., Any]) -> None:
    """Have Django's next call of the model's method ``name`` on ``instance``
    (``_save_table``, ``_do_insert``) go through ``call(method, *args)``,
    ``method`` being the model's own, bound.  An attribute of the instance
    shadows the method for that one call: the saves that need nothing of
    the kind, nearly all, pay nothing for it."""
    method = partial(getattr(type(instance), name), instance)

    def once(*args: Any, **kwargs: Any) -> Any:
        del instance.__dict__[name]
        return call(method, *args, **kwargs)

    instance.__dict__[name] = once


def _release(instance: models.Model) -> None:
    """Drop what :func:`_intercept` left on ``instance`` where the save did
    not reach it (it raised first)."""
    instance.__dict__.pop("_save_table", None)
    instance.__dict__.pop("_do_insert", None)


def _insert(instance: models.Model, specs: list[Spec], do_insert: Callable[..., Any], manager: Any, using: str,
            fields: Any, returning_fields: list[Any], raw: bool) -> Any:
    """``Model._do_insert()``, also returning the fields of ``specs``
    (:func:`left_to_insert`), and setting them on the instance."""
    # By position: hashing and comparing fields costs microseconds a save.
    count = len(returning_fields)
    row = do_insert(manager, using, fields, [*returning_fields, *(spec.field for spec in specs)], raw)[0]
    for spec, value in zip(specs, row[count:]):
        setattr(instance, spec.field.attname, normalize(spec, value))  # raises if the column cannot store it
    return [tuple(row[:count])]


def attnames_of(instance: models.Model, update_fields: Any) -> frozenset[str] | None:
    if update_fields is None:
        return None
    return frozenset(cast("models.Field[Any, Any]", instance._meta.get_field(name)).attname for name in update_fields)


def _save_and_record(
    instance: models.Model,
    save: Callable[..., None],
    kwargs: dict[str, Any],
    node: ModelNode,
    scope: modes.Scope,
    using: str,
    written: frozenset[str] | None,
    own_row: list[Spec],
) -> None:
    adding = instance._state.adding
    if not adding and reaches_first(node, scope, written, using):
        _lock_reach_of_instance(instance, node, scope, written, using)
    old = _read_before(instance, node, using, written, refresh=True, lock=True)
    lock_parents(instance, node, old, using)
    later = after_the_write(own_row, scope.mode in modes.RECORDING, written, expressions_held([instance], node))
    now = [s for s in own_row if s not in later]
    in_insert = left_to_insert(instance, now, using, kwargs) if now else []
    before_insert = now[: len(now) - len(in_insert)]
    waits = bool(now) and _pre_save_heard(instance)
    if before_insert and not waits:
        compute_own_rows([instance], before_insert, using)
    with _reading_ahead(instance, node, scope, using, written, old, later, adding):
        before = {spec.field.attname: instance.__dict__.get(spec.field.attname) for spec in in_insert}
        if waits:
            _intercept(instance, "_save_table", partial(_after_pre_save, instance, before_insert, in_insert, using))
        else:
            _own_rows_in_insert(instance, in_insert, using)
        try:
            save(**kwargs)
        except BaseException:
            if in_insert or waits:
                _release(instance)
                instance.__dict__.update(before)
            # A post_save receiver raised after the write (for an existing row
            # maybe a pre_save one, before it: recording it then costs only a
            # recompute).  Where the write is kept, the work it leads to is
            # recorded all the same; elsewhere the transaction undoes it.
            if scope.mode in modes.RECORDING and not instance._state.adding:
                records = _records_of_save(instance, node, scope, written, old, later, adding)
                dispatch(scope, using, records, (instance,))
            raise
        dispatch(scope, using, _records_of_save(instance, node, scope, written, old, later, adding), (instance,))


def _records_of_save(
    instance: models.Model,
    node: ModelNode,
    scope: modes.Scope,
    written: frozenset[str] | None,
    old: dict[str, Any] | None,
    later: list[Spec],
    adding: bool,
) -> Records:
    """The records of a save() of ``instance`` (``old``: the values the row
    held, None if nothing was read, {} if it was not there)."""
    if not old and (adding or old == {}):
        return created_records(insert_plan(node, scope.labels).where, instance, later)
    records = records_for(
        node,
        instance,
        labels=scope.labels,
        created=adding,
        changed=changed_attnames(instance, node, written, old),
        old=old,
        own_row_done=True,
    )
    if later:
        merge(records, recompute_records(later, [instance.pk]))
    if not adding and node.related and _pre_save_heard(instance):
        # The fields maintained from other rows were read for the write
        # before Django sent pre_save, whose receivers may have changed what
        # they read: recompute the ones written, from the rows as they are now.
        stale = [
            spec
            for spec in node.related
            if (scope.labels is None or spec.label in scope.labels)
            and (written is None or spec.field.attname in written)
        ]
        merge(records, recompute_records(stale, [instance.pk]))
    return records


def _reading_ahead(
    instance: models.Model,
    node: ModelNode,
    scope: modes.Scope,
    using: str,
    written: frozenset[str] | None,
    old: dict[str, Any] | None,
    later: list[Spec],
    adding: bool,
) -> AbstractContextManager[None]:
    """Where an immediate save leads only to parents, a block whose INSERT
    or UPDATE carries the first read of their work (:func:`reading_ahead`):
    the records the save will make, made before it, of a new row (``old``
    None) or of an existing row whose previous values were read (``old``)."""
    if later or scope.mode != modes.IMMEDIATE or not feature(using, "has_select_for_no_key_update"):  # PostgreSQL
        return _NOTHING
    if not (old or (old is None and adding)):
        return _NOTHING
    if not old and any(up_link is None for up_link, _ in insert_plan(node, scope.labels).where):
        return _NOTHING  # the new row's own key, not known before the INSERT
    records = _records_of_save(instance, node, scope, written, old, later, adding)
    return reading_ahead(using, scope.labels, records) if records else _NOTHING


_NOTHING = nullcontext()


def _pre_save_heard(instance: models.Model) -> bool:
    """Whether receivers of ``pre_save`` may change ``instance`` before it is written."""
    return bool(signals.pre_save.receivers) and signals.pre_save.has_listeners(type(instance))


def _own_rows_in_insert(instance: models.Model, specs: list[Spec], using: str) -> None:
    """Have the INSERT compute the own-row expression ``specs``: each field
    holds its expression on the instance's values until insert() swaps it
    for the row's."""
    if specs:
        for spec in specs:
            setattr(instance, spec.field.attname, row_expression(spec, instance, using))
        _intercept(instance, "_do_insert", partial(_insert, instance, specs))


def _after_pre_save(instance: models.Model, now: list[Spec], in_insert: list[Spec], using: str,
                    save_table: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``Model._save_table()`` of a model with receivers of its ``pre_save``,
    which may change what own-row fields read: Django calls it once it has
    sent the signal and before it reads the values to write, so the own-row
    fields left until then are computed here."""
    if now:
        compute_own_rows([instance], now, using)
    _own_rows_in_insert(instance, in_insert, using)
    return save_table(*args, **kwargs)


def created_records(where: tuple[tuple[str | None, tuple[tuple[Dependency, int], ...]], ...],
                    instance: models.Model, later: list[Spec], records: Records | None = None) -> Records:
    """The records for the insert of ``instance``, whose own-row fields save()
    computed, but for ``later``: what :func:`records_for` gives a created row,
    from the plan of where each value goes (``InsertPlan.where``; a loader
    inserts many rows of one model).  Added to ``records`` where given."""
    records = {} if records is None else records
    # A new instance holds its values in __dict__; a loader inserts thousands.
    values = instance.__dict__
    for up_link, keyed in where:
        if up_link is None:
            value = instance.pk
        else:
            value = values[up_link] if up_link in values else getattr(instance, up_link)
        if value is not None:
            for key in keyed:
                found = records.get(key)
                if found is None:
                    records[key] = {value}
                else:
                    found.add(value)
    if later:
        pk = instance.pk
        for spec in later:
            records.setdefault((spec.itself, 0), set()).add(pk)
    return records


def _read_before(
    instance: models.Model,
    node: ModelNode,
    using: str,
    written: frozenset[str] | None,
    refresh: bool,
    lock: bool = False,
) -> dict[str, Any] | None:
    """The tracked values the row holds before an update: {} if there is no row,
    None if nothing needed reading.

    With ``refresh``, the instance's copies of fields maintained from other
    rows are replaced by the database's, so that a stale instance never writes
    an old value back.  With ``lock``, inside a transaction, the row is
    locked: it is the first row a write locks, before its parents.
    """
    if instance.pk is None:
        return None
    pk_field = instance._meta.pk
    if instance._state.adding and (pk_field.has_default() or pk_field.db_default is not models.NOT_PROVIDED):
        return None  # Django inserts without trying an UPDATE first
    columns = tracked_before(node, written)
    if refresh:
        columns |= node.related_attnames if written is None else node.related_attnames & written
    if not columns:
        return None
    rows: models.QuerySet[Any] = models.QuerySet(node.model, using=using).filter(pk=instance.pk)
    if lock and locking(using):
        rows = lock_rows_of(rows)
    row = rows.values(*columns).first()
    if row is None:
        return {}
    if refresh:
        for attname in node.related_attnames & columns:
            setattr(instance, attname, row[attname])
    return row


def tracked_before(node: ModelNode, written: frozenset[str] | None) -> frozenset[str]:
    """The columns to read before a write of ``written`` (None: every field):
    the tracked ones it writes, and with them the row's foreign keys on the
    paths, since the parents the write leads to are where the row is,
    whatever the instance says of the keys it does not write."""
    if written is None:
        return node.tracked
    columns = node.tracked & written
    return columns | node.up_links if columns else columns


def reaches_first(node: ModelNode, scope: modes.Scope, written: frozenset[str] | None, using: str) -> bool:
    """Whether an immediate write of ``written`` (None: every field) may
    change fields whose reach must be locked before the row itself
    (``node.locks_first``); :func:`lock_reach_first` tells for sure."""
    return (
        scope.mode == modes.IMMEDIATE
        and bool(node.locks_first if written is None else node.locks_first & written)
        and locking(using)
    )


def _lock_reach_of_instance(
    instance: models.Model, node: ModelNode, scope: modes.Scope, written: frozenset[str] | None, using: str
) -> None:
    """:func:`lock_reach_first` for a save() of ``instance``."""

    def read() -> list[tuple[Any, dict[str, Any]]]:
        before = _read_before(instance, node, using, written, refresh=False)
        return [(instance, before)] if before else []

    lock_reach_first(node, scope, read(), written, using, reread=read)


def lock_reach_first(
    node: ModelNode,
    scope: modes.Scope,
    rows: list[tuple[Any, dict[str, Any]]],
    written: frozenset[str] | None,
    using: str,
    changed: frozenset[str] | None = None,
    reread: Callable[[], list[tuple[Any, dict[str, Any]]]] | None = None,
) -> None:
    """Before an immediate write of ``rows`` (each an instance or row with
    the values it holds, read unlocked), lock the rows and the reach of
    their change in lock order, if the change reaches rows that come before
    them (see :func:`propagation.lock_first`).  ``changed``: what the write
    changes in every row, where the rows cannot tell (an update()).
    ``reread``: ``rows`` read again, once they are locked; where the
    database gives locks back, the rows are locked this way even when what
    they held unlocked changes nothing that reaches back, since another
    writer may have changed them in between."""

    def records_of(rows: list[tuple[Any, dict[str, Any]]]) -> Records:
        records: Records = {}
        for row, old in rows:
            row_changed = changed_attnames(row, node, written, old) if changed is None else changed
            if row_changed & node.locks_first:
                merge(records, records_for(node, row, labels=scope.labels, changed=row_changed, old=old))
        return records

    records = records_of(rows)
    if reread is not None and rows and feature(using, "has_select_for_no_key_update"):  # PostgreSQL
        lock_first(using, scope.labels, node.model, [old.get("pk", row.pk) for row, old in rows], records,
                   reread=lambda: records_of(reread()))
    elif records:
        lock_first(using, scope.labels, node.model, [old.get("pk", row.pk) for row, old in rows], records)


def lock_parents(instance: Any, node: ModelNode, old: dict[str, Any] | None, using: str) -> None:
    """Lock, before a write, the parents it leads to recompute."""
    lock_before_write(node, [(instance, old)], using)


def lock_before_write(node: ModelNode, rows: list[tuple[Any, dict[str, Any] | None]], using: str) -> None:
    """Lock, before a write of ``rows`` (each an instance or row with its old
    values, None for a new row), the parents they leave and join.  The rows
    themselves were locked when their old values were read.

    On MySQL and MariaDB inserting or moving a child takes a shared lock on
    its parent, which conflicts with the exclusive lock taken to recompute
    the parent: two writers holding the first would wait for each other's
    second.  Taking the exclusive locks first makes them queue instead.  The
    parents come before what process() locks after them (their parents, the
    rows they reach), children before parents, so the order holds.
    PostgreSQL's FOR NO KEY UPDATE does not conflict with the child's
    key-share lock: nothing to do there.
    """
    if not _locks_parents_first(using):
        return
    locks: dict[tuple[type[models.Model], str], set[Any]] = {}
    for dep, hop in node.saved_edges:
        if hop.kind == REVERSE and hop.index == 1:
            key = (dep.spec.model, hop.parent_key or "pk")
            for row, old in rows:
                for value in (getattr(row, cast(str, hop.up_link)), old.get(cast(str, hop.up_link)) if old else None):
                    if value is not None:
                        locks.setdefault(key, set()).add(value)
    order = get_graph().model_order
    for model, field in sorted(locks, key=lambda key: (order[key[0]], key[1])):
        lock_rows(model, using, locks[model, field], get_config()["BATCH_SIZE"], field)


def _locks_parents_first(using: str) -> bool:
    """Whether a write here must lock the rows it leads to recompute before it
    writes: on MySQL and MariaDB, inside a transaction, with LOCK_ROWS."""
    has_select_for_update = feature(using, "has_select_for_update")
    return has_select_for_update and not feature(using, "has_select_for_no_key_update") and locking(using)




def changed_attnames(
    instance: models.Model,
    node: ModelNode,
    written: frozenset[str] | None,
    old: dict[str, Any] | None,
) -> frozenset[str]:
    candidates = node.tracked if written is None else node.tracked & written
    if not old:
        return candidates
    return frozenset(a for a in candidates if a not in old or not same(old[a], getattr(instance, a), ordered=True))


_loading_fixtures: ContextVar[bool] = ContextVar("maintained_fields_loading_fixtures", default=False)


_loads_lock = threading.Lock()
_loads_running = 0


@contextmanager
def loading_fixtures() -> Iterator[None]:
    """Record the rows that ``loaddata`` saves raw, into the deferred scope in force.

    Models whose save() runs the mixin's hear of raw saves only while a load
    runs, so that their ordinary saves pay for no signal receiver.
    """
    global _loads_running
    with _loads_lock:
        _loads_running += 1
        if _loads_running == 1:
            for sender in _saved_by_mixin:
                signals.pre_save.connect(_pre_save_raw, sender=sender, dispatch_uid=_uid(sender))
                signals.post_save.connect(_post_save_raw, sender=sender, dispatch_uid=_uid(sender))
    token = _loading_fixtures.set(True)
    try:
        yield
    finally:
        _loading_fixtures.reset(token)
        with _loads_lock:
            _loads_running -= 1
            if _loads_running == 0:
                for sender in _saved_by_mixin:
                    signals.pre_save.disconnect(sender=sender, dispatch_uid=_uid(sender))
                    signals.post_save.disconnect(sender=sender, dispatch_uid=_uid(sender))


def _pre_save_raw(sender: type[models.Model], instance: models.Model, raw: bool, using: str, **kwargs: Any) -> None:
    if not (raw and _loading_fixtures.get()):
        return
    # The row is written as it stands: where it pointed before must be read now.
    old = _read_before(instance, cast(ModelNode, get_graph().node(sender)), using, None, refresh=False)
    instance.__dict__[_OLD] = old


def _post_save_raw(sender: type[models.Model], instance: models.Model, raw: bool, using: str, **kwargs: Any) -> None:
    # After the write: a fixture row without a primary key has one only now.
    if not raw or _OLD not in instance.__dict__:
        return
    old = instance.__dict__.pop(_OLD)
    scope = modes.current_scope()
    node = cast(ModelNode, get_graph().node(sender))  # connected for the models of the graph
    records = records_for(node, instance, labels=scope.labels, created=True, old=old)
    specs = [s for s in (*node.own_row, *node.related) if scope.labels is None or s.label in scope.labels]
    merge(records, recompute_records(specs, [instance.pk]))
    dispatch(scope, using, records)


def _pre_save(
    sender: type[models.Model],
    instance: models.Model,
    raw: bool,
    using: str,
    update_fields: Iterable[str] | None,
    **kwargs: Any,
) -> None:
    if raw:
        return _pre_save_raw(sender, instance, raw, using)
    scope = modes.current_scope()
    if scope.mode == modes.DISABLED:
        return
    node = cast(ModelNode, get_graph().node(sender))  # connected for the models of the graph
    written = attnames_of(instance, update_fields)
    if not instance._state.adding and reaches_first(node, scope, written, using):
        _lock_reach_of_instance(instance, node, scope, written, using)
    old = _read_before(instance, node, using, written, refresh=False)
    lock_parents(instance, node, old, using)
    instance.__dict__[_OLD] = (instance._state.adding, written, old)


def _post_save(
    sender: type[models.Model], instance: models.Model, created: bool, raw: bool, using: str, **kwargs: Any
) -> None:
    if raw:
        return _post_save_raw(sender, instance, raw, using)
    state = instance.__dict__.pop(_OLD, None)
    if state is None:
        return
    scope = modes.current_scope()
    node = cast(ModelNode, get_graph().node(sender))  # connected for the models of the graph
    adding, written, old = state
    records = records_for(
        node,
        instance,
        labels=scope.labels,
        created=created or adding,
        changed=changed_attnames(instance, node, written, old),
        old=old,
    )
    dispatch(scope, using, records)


# Deletes: the rows that depend on a deleted row are found before the delete,
# and recomputed after the last row of the same delete() call is gone.


class _PendingDelete:
    """The rows one delete() call is deleting, and what depends on them."""

    def __init__(self, scope: modes.Scope) -> None:
        self.scope = scope
        self.seen: set[tuple[type[models.Model], Any]] = set()
        self.waiting: set[tuple[type[models.Model], Any]] = set()
        self.records: Records = {}
        # Children that on_delete=SET(...)/SET_DEFAULT moves to another parent.
        self.moved: dict[type[models.Model], set[Any]] = {}


def _pre_delete(
    sender: type[models.Model], instance: models.Model, using: str, origin: Any = None, **kwargs: Any
) -> None:
    scope = modes.current_scope()
    if scope.mode == modes.DISABLED:
        return
    graph = get_graph()
    node = cast(ModelNode, graph.node(sender))  # connected for the models of the graph
    holder = origin if origin is not None else instance
    key = (node.model, instance.pk)
    pending = holder.__dict__.get(_DELETING)
    if pending is None or key in pending.seen:
        # One delete() announces each row once: a row announced again is a
        # new attempt after one that failed before its post_delete.
        pending = holder.__dict__[_DELETING] = _PendingDelete(scope)
        resolved = holder.__dict__.get(_RESOLVED)
        if resolved is not None:
            merge(pending.records, resolved[2])
    pending.seen.add(key)
    pending.waiting.add(key)
    fresh: dict[str, Any] | None = None
    if holder is instance and node.up_links:
        # Locked: a move that commits while this delete waits is read where it went.
        rows: models.QuerySet[Any] = models.QuerySet(node.model, using=using).filter(pk=instance.pk)
        fresh = (lock_rows_of(rows) if locking(using) else rows).values(*node.up_links).first()
    resolved = holder.__dict__.get(_RESOLVED)
    done = resolved is not None and resolved[0] is node.model and instance.pk in resolved[1]
    records: Records = {}
    for dep, hop in node.edges:
        if hop.index == 0 or (scope.labels is not None and dep.spec.label not in scope.labels):
            continue
        if hop.kind == REVERSE:
            # The row this one points at is not changed by deleting this one: it
            # can be resolved after the delete.
            value = fresh[cast(str, hop.up_link)] if fresh else getattr(instance, cast(str, hop.up_link))
            if value is not None:
                records.setdefault((dep, hop.record_index), set()).add(value)
        elif not done:
            targets = resolve(dep, hop.index, {instance.pk}, using)
            if targets:
                records.setdefault((dep, 0), set()).update(targets)
    merge(pending.records, records)
    for foreign_key in graph.moved_on_delete.get(node.model, ()):
        children: models.QuerySet[Any] = models.QuerySet(foreign_key.model, using=using).filter(
            **{foreign_key.attname: getattr(instance, foreign_key.target_field.attname)}
        )
        pending.moved.setdefault(cast(type[models.Model], foreign_key.model._meta.concrete_model), set()).update(
            keys(children.model, children.values_list("pk", flat=True))
        )


# Work of update() calls that Django's delete makes itself (on_delete=SET_NULL,
# SET_DEFAULT, SET()): held until the delete ends, when what they recompute
# can no longer point at a row being deleted.
_held_in_delete: ContextVar[list[tuple[modes.Scope, str, Records]] | None] = ContextVar(
    "maintained_fields_held_in_delete", default=None
)


def delete_retried(db: str, what: str, delete: Callable[[], T]) -> T:
    """``delete()``, a delete whose immediate work runs in the transaction the
    delete opens: outside any transaction of the user's, in one of the
    package's own, retried after a deadlock (:func:`in_transaction`); Django
    sends ``pre_delete`` and ``post_delete`` again for the retry."""
    return in_transaction(db, what, delete, needed=modes.current_scope().mode == modes.IMMEDIATE)


@contextmanager
def deleting(db: str) -> Iterator[None]:
    """Around a delete() on ``db``: immediate work of the updates it makes
    is done when it ends; in the background mode, outside a scope, the
    delete and the enqueue of its work commit together where they can
    (see :func:`background.with_its_task`)."""
    if _held_in_delete.get() is not None:
        yield
        return
    scope = modes.current_scope()
    if scope.mode == modes.BACKGROUND and scope.buffer is None:
        with with_its_task(db):
            yield
        return
    held: list[tuple[modes.Scope, str, Records]] = []
    token = _held_in_delete.set(held)
    try:
        yield
    finally:
        _held_in_delete.reset(token)
    for scope, db, records in held:
        dispatch(scope, db, records)


def hold_in_delete(scope: modes.Scope, db: str, records: Records) -> bool:
    """Hold the immediate work of an update() that a delete() makes; False outside one."""
    held = _held_in_delete.get()
    if held is None or scope.mode != modes.IMMEDIATE:
        return False
    held.append((scope, db, records))
    return True


def delete_queryset(
    queryset: models.QuerySet[Any], delete: Callable[[], tuple[int, dict[str, int]]]
) -> tuple[int, dict[str, int]]:
    """``MaintainedQuerySet.delete()``: the rows that depend on the deleted
    ones through many-to-many or forward hops are found for all of them at
    once, in one query per path and batch, not one per deleted row."""
    scope = modes.current_scope()
    node = get_graph().node(queryset.model)
    if scope.mode == modes.DISABLED or node is None:
        with deleting(queryset.db):
            return delete()
    db = queryset.db
    with deleting(db), transaction.atomic(using=db, savepoint=False):
        pks: set[Any] | None = None
        if node.up_links and locking(db):
            # Django reads the rows before it deletes them: a row moved by a
            # writer that commits meanwhile would be read where it was.  Locked
            # first, the rows are read where they are.
            pks = set(keys(node.model, queryset.values_list("pk", flat=True)))
            lock_rows(node.model, db, pks, get_config()["BATCH_SIZE"])
        edges = _far_edges(node, scope.labels)
        if not edges:
            return delete()
        if pks is None:
            pks = set(keys(node.model, queryset.values_list("pk", flat=True)))
        queryset.__dict__[_RESOLVED] = (node.model, pks, _resolved_now(edges, pks, db))
        try:
            return delete()
        finally:
            del queryset.__dict__[_RESOLVED]


def _far_edges(node: ModelNode, labels: frozenset[str] | None) -> list[tuple[Dependency, Hop]]:
    """The edges of ``node`` that reach rows through a many-to-many table or
    forward from the row: a write that deletes or unlinks the row hides
    them, so they are resolved before it (:func:`_resolved_now`)."""
    return [
        (dep, hop)
        for dep, hop in node.edges
        if hop.index and hop.kind != REVERSE and (labels is None or dep.spec.label in labels)
    ]


def _resolved_now(edges: list[tuple[Dependency, Hop]], pks: Collection[Any], db: str) -> Records:
    """Records of the rows that ``edges`` reach from the rows ``pks`` now."""
    records: Records = {}
    for dep, hop in edges:
        targets = resolve(dep, hop.index, pks, db)
        if targets:
            records.setdefault((dep, 0), set()).update(targets)
    return records


def _post_delete(
    sender: type[models.Model], instance: models.Model, using: str, origin: Any = None, **kwargs: Any
) -> None:
    holder = origin if origin is not None else instance
    pending = holder.__dict__.get(_DELETING)
    if pending is None:
        return
    pending.waiting.discard((sender._meta.concrete_model, instance.pk))
    if not pending.waiting:
        del holder.__dict__[_DELETING]
        for model, pks in pending.moved.items():
            # Where the children went is known now that Django has moved them.
            node = get_graph().nodes[model]
            for row in rows_with_links(model, using, pks, node.up_links):
                merge(pending.records, records_for(node, row, labels=pending.scope.labels, created=True))
        # The delete() may go on to rows this one's work would recompute (its
        # origin, where no receiver announces it): held until it ends.
        if not hold_in_delete(pending.scope, using, pending.records):
            dispatch(pending.scope, using, pending.records)


# Many-to-many changes: the rows on the previous hop's side of the relation
# gained or lost related rows.


def _m2m_changed(
    sender: type[models.Model],
    instance: models.Model,
    action: str,
    reverse: bool,
    model: type[models.Model],
    pk_set: set[Any] | None,
    using: str,
    **kwargs: Any,
) -> None:
    if action not in ("pre_add", "post_add", "post_remove", "pre_clear", "post_clear"):
        return
    scope = modes.current_scope()
    if scope.mode == modes.DISABLED:
        return
    edges = get_graph().m2m.get(cast(type[models.Model], sender._meta.concrete_model), ())
    if action == "pre_add":
        # Inserting links takes shared locks on both ends on MySQL and MariaDB:
        # take the exclusive ones of the recompute first, as lock_before_write,
        # and all the rows the recompute reaches with them, in process()'s
        # order: the ends are of two models, with others in between.
        if pk_set and _locks_parents_first(using):
            records: Records = {}
            for dep, hop in edges:
                records.setdefault((dep, hop.index - 1), set()).update(_m2m_rows(hop, instance, reverse, pk_set))
            lock_reach(using, scope.labels, records)
        return
    if action == "pre_clear":
        field = cast("models.ManyToManyField[Any, Any]", edges[0][1].m2m_field)  # an M2M hop's
        mine, theirs = field.m2m_field_name(), field.m2m_reverse_field_name()
        if reverse:
            mine, theirs = theirs, mine
        instance.__dict__[_CLEARED] = set(
            models.QuerySet(sender, using=using).filter(**{mine: instance.pk}).values_list(theirs, flat=True)
        )
        return
    if action == "post_clear":
        pk_set = instance.__dict__.pop(_CLEARED, set())
    if action == "post_add" and scope.mode == modes.IMMEDIATE and pk_set and sender._meta.auto_created:
        _add_mirror_links(
            sender, cast("models.ManyToManyField[Any, Any]", edges[0][1].m2m_field), instance.pk, pk_set, using
        )
    records = {}
    for dep, hop in edges:
        if scope.labels is not None and dep.spec.label not in scope.labels:
            continue
        rows = _m2m_rows(hop, instance, reverse, pk_set)
        if rows:
            records.setdefault((dep, hop.index - 1), set()).update(rows)
    dispatch(scope, using, records)


def _m2m_rows(hop: Any, instance: models.Model, reverse: bool, pk_set: set[Any] | None) -> set[Any]:
    """The rows on the previous hop's side of ``hop`` that a change of links touches."""
    if hop.m2m_field.remote_field.symmetrical:
        # Django writes both directions of a symmetrical link: both ends changed.
        return {instance.pk, *(pk_set or ())}
    # The instance is on the declaring side when the signal is not reversed.
    return {instance.pk} if hop.m2m_forward != reverse else set(pk_set or ())


def _add_mirror_links(
    through: type[models.Model], field: models.ManyToManyField[Any, Any], pk: Any, others: set[Any], using: str
) -> None:
    """Insert now the reverse links of a symmetrical ``add()``, which Django
    inserts only after the signal, so that the other ends recompute with them.
    Django then finds them present and inserts nothing."""
    if not field.remote_field.symmetrical:
        return
    source, target = field.m2m_field_name(), field.m2m_reverse_field_name()
    # the through model's foreign keys
    source_attname = through._meta.get_field(source).attname  # type: ignore[union-attr]
    target_attname = through._meta.get_field(target).attname  # type: ignore[union-attr]
    present = set(
        models.QuerySet(through, using=using)
        .filter(**{target_attname: pk, f"{source_attname}__in": others})
        .values_list(source_attname, flat=True)
    )
    missing = [through(**{source_attname: other, target_attname: pk}) for other in others - present]
    cast("models.QuerySet[models.Model]", models.QuerySet(through, using=using)).bulk_create(missing)


def connect(graph: Graph, all_models: list[type[models.Model]]) -> None:
    """Connect the signal receivers that the graph needs, to each model and its proxies.

    A model whose save() runs MaintainedModelMixin's is handled there (and its
    raw saves in loading_fixtures()); the others (plain models that maintained
    fields depend on) through signals.
    """
    _saved_by_mixin.clear()
    for model, node in graph.nodes.items():
        for sender in [m for m in all_models if m._meta.concrete_model is model]:
            uid = _uid(sender)
            if mixin_problem(model) is not None:
                signals.pre_save.connect(_pre_save, sender=sender, dispatch_uid=uid)
                signals.post_save.connect(_post_save, sender=sender, dispatch_uid=uid)
            else:
                _saved_by_mixin.append(sender)
            if any(hop.index > 0 for _, hop in node.edges) or model in graph.moved_on_delete:
                signals.pre_delete.connect(_pre_delete, sender=sender, dispatch_uid=uid)
                signals.post_delete.connect(_post_delete, sender=sender, dispatch_uid=uid)
    for through in graph.m2m:
        signals.m2m_changed.connect(_m2m_changed, sender=through, dispatch_uid=_uid(through))


_saved_by_mixin: list[type[models.Model]] = []


def _uid(sender: type[models.Model]) -> str:
    return f"maintained_fields:{sender._meta.label}"


def mark_changed(
    objects: models.QuerySet[Any] | Iterable[models.Model] | models.Model, *, using: str | None = None
) -> None:
    """Tell the library that rows changed where it could not see (raw SQL, other programs).

    ``objects`` is a QuerySet, a model instance, or model instances of one
    model or several.
    The rows' maintained fields and everything that depends on them are
    recomputed as the mode in force says (at once, at the end of a deferred
    scope, or not at all).  Where a row leads (its parents) is read from the
    database, for instances too; a row no longer there leads where its
    instance says.  Rows the hidden write moves to another parent, or
    unlinks from rows of a many-to-many relation: mark them before and after
    it, inside ``override_autoupdate(mode="deferred")``, so that the rows
    they leave are recomputed as well as those they reach.
    """
    if isinstance(objects, models.Manager) or (isinstance(objects, type) and issubclass(objects, models.Model)):
        raise TypeError(
            f"mark_changed() takes a QuerySet or model instances, not {objects!r}: "
            "pass Model.objects.all() or a filtered QuerySet."
        )
    if isinstance(objects, models.Model):
        objects = [objects]
    if not isinstance(objects, (models.QuerySet, Iterable)) or isinstance(objects, (str, bytes)):
        raise TypeError(f"mark_changed() takes a QuerySet or model instances, not {objects!r}.")
    scope = modes.current_scope()
    if scope.mode == modes.DISABLED:
        return
    if isinstance(objects, models.QuerySet):
        node = _node_for_marking(objects.model)
        rows: list[Any] = [SimpleNamespace(**row) for row in keyed_values(objects, _marked_columns(node))]
        _mark(scope, node, using or objects.db, rows)
        return
    groups: dict[tuple[type[models.Model], str], list[models.Model]] = {}
    for obj in objects:
        if not isinstance(obj, models.Model):
            raise TypeError(f"mark_changed() takes a QuerySet or model instances, not {obj!r}.")
        if obj.pk is None:
            raise ValueError(f"mark_changed() got {obj!r}, which is not saved: save it first.")
        db = using or obj._state.db or router.db_for_write(type(obj), instance=obj)
        groups.setdefault((cast(type[models.Model], obj._meta.concrete_model), db), []).append(obj)
    for (model, db), instances in groups.items():
        node = _node_for_marking(model)
        _mark(scope, node, db, _as_stored(node, db, instances))


def _marked_columns(node: ModelNode) -> tuple[str, ...]:
    """The key and the links of a marked row: what says where its change leads."""
    return ("pk", *node.up_links) if node.model in get_graph().nodes else ("pk", *_link_columns(node))


def _as_stored(node: ModelNode, db: str, instances: list[models.Model]) -> list[Any]:
    """The rows of ``instances`` with the links the database holds now, which
    the write the library did not see may have changed (a row moved by raw
    SQL); a row no longer there, as its instance holds it."""
    stored: dict[Any, Any] = {}
    for batch in chunks([instance.pk for instance in instances], get_config()["BATCH_SIZE"]):
        found = keyed_values(models.QuerySet(node.model, using=db).filter(pk__in=batch), _marked_columns(node))
        stored.update((row["pk"], SimpleNamespace(**row)) for row in found)
    return [stored.get(instance.pk, instance) for instance in instances]


def _mark(scope: modes.Scope, node: ModelNode, db: str, rows: list[Any]) -> None:
    records: Records = {}
    if node.model not in get_graph().nodes:
        # Links of an auto-created many-to-many table: both ends gained or lost one.
        for dep, hop in get_graph().m2m[node.model]:
            if scope.labels is None or dep.spec.label in scope.labels:
                attname = _link_columns(node)[0 if hop.m2m_forward else 1]
                records.setdefault((dep, hop.index - 1), set()).update(getattr(row, attname) for row in rows)
        dispatch(scope, db, records)
        return
    for row in rows:
        merge(records, records_for(node, row, labels=scope.labels, created=True))
    pks = [row.pk for row in rows]
    if scope.mode != modes.IMMEDIATE and pks:
        # Found when the work is done, these rows would be found after the
        # hidden write: found now, a mark made before it reaches the rows it unlinks.
        merge(records, _resolved_now(_far_edges(node, scope.labels), pks, db))
    specs = [s for s in (*node.own_row, *node.related) if scope.labels is None or s.label in scope.labels]
    merge(records, recompute_records(specs, pks))
    dispatch(scope, db, records)


def _link_columns(node: ModelNode) -> tuple[str, str]:
    """The attnames of an auto-created through model's two foreign keys: the
    declaring model's side, then the other."""
    field = cast("models.ManyToManyField[Any, Any]", get_graph().m2m[node.model][0][1].m2m_field)  # an M2M hop's
    meta = node.model._meta
    # the through model's foreign keys
    return meta.get_field(field.m2m_field_name()).attname, meta.get_field(field.m2m_reverse_field_name()).attname  # type: ignore[union-attr]


def _node_for_marking(model: type[models.Model]) -> ModelNode:
    graph = get_graph()
    node = graph.node(model)
    if node is None and model._meta.concrete_model in graph.m2m:
        return ModelNode(model._meta.concrete_model)
    if node is None:
        raise ValueError(
            f"mark_changed() got {model._meta.label} rows, but {model._meta.label} has no "
            "maintained fields and no maintained field depends on it."
        )
    return node

"""A QuerySet and Manager whose bulk writes keep maintained fields right.

``MaintainedModel`` uses them as its default and base manager.  Put
``objects = MaintainedManager()`` on a plain model that maintained fields
depend on, to get the same for its bulk writes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any, TypeVar, cast

from django.db import models, transaction
from django.db.models import Q

from . import modes
from .conf import get_config
from .graph import ModelNode, Spec, get_graph
from .propagation import Records, dispatch, merge, recompute_records, records_for
from .tracking import (
    after_the_write,
    changed_attnames,
    compute_own_rows,
    delete_queryset,
    delete_retried,
    expressions_held,
    hold_in_delete,
    in_transaction,
    lock_before_write,
    lock_reach_first,
    own_row_specs,
    reaches_first,
    snapshot,
    tracked_before,
)
from .writes import chunks, in_users_transaction, locking
from .writes import keyed_values as _values
from .writes import lock as _lock

T = TypeVar("T")


class MaintainedQuerySet(models.QuerySet[Any]):
    """A QuerySet whose ``update()``, ``bulk_create()`` and ``bulk_update()``
    keep maintained fields right, in the mode in force.

    ``delete()`` finds what depends on the rows it deletes before it deletes
    them; ``get_or_create()`` and ``update_or_create()`` go through ``save()``,
    and are retried after a deadlock as it is.  Rows are read in bulk before
    and after a write where needed: never one query per row.
    """

    def _maintenance(self) -> tuple[modes.Scope, ModelNode | None]:
        scope = modes.current_scope()
        if scope.mode == modes.DISABLED:
            return scope, None
        return scope, get_graph().node(self.model)

    def delete(self) -> tuple[int, dict[str, int]]:
        delete = super().delete
        return delete_retried(self.db, f"A delete() of {self.model._meta.label} rows",
                              lambda: delete_queryset(self, delete))

    # Django's flags on QuerySet methods, which the stubs do not declare on functions
    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]

    def get_or_create(self, defaults: Any = None, **kwargs: Any) -> tuple[models.Model, bool]:
        get_or_create = super().get_or_create
        return self._retried("get_or_create", lambda: get_or_create(defaults, **kwargs))

    def update_or_create(self, *args: Any, **kwargs: Any) -> tuple[models.Model, bool]:
        update_or_create = super().update_or_create
        return self._retried("update_or_create", lambda: update_or_create(*args, **kwargs))

    def _retried(self, name: str, write: Callable[[], T]) -> T:
        """``write()``, a call that Django runs in a transaction of its own,
        where its save() cannot retry itself: outside any transaction of
        yours, in immediate mode, retried whole after a deadlock, as a
        save() is (:func:`tracking.in_transaction`)."""
        scope, node = self._maintenance()
        self._for_write = True
        what = f"A {name}() of {self.model._meta.label}"
        # Inside your transaction nothing is retried, and Django's own atomic
        # block (a savepoint there) undoes a failed write: as in plain Django,
        # an error leaves your transaction usable.
        retried = node is not None and scope.mode == modes.IMMEDIATE and not in_users_transaction(self.db)
        return in_transaction(self.db, what, write, retried)

    def update(self, **kwargs: Any) -> int:
        scope, node = self._maintenance()
        if node is None or not kwargs:
            return super().update(**kwargs)
        written = frozenset(self.model._meta.get_field(name).attname for name in kwargs)

        def write() -> int:
            reading: models.QuerySet[Any] = self
            if self.query.select_for_update and not transaction.get_connection(self.db).in_atomic_block:
                # Plain Django ignores the lock in an update() outside a transaction; so does the read.
                reading = self._chain()  # type: ignore[attr-defined]  # private: the stubs omit it
                reading.query.select_for_update = False
            columns = ("pk", *((node.tracked & written) | node.up_links))
            new = _plain(node, kwargs)
            if reaches_first(node, scope, written, self.db):
                rows = [(SimpleNamespace(**{**old, **new}), old) for old in _values(reading, columns)]
                found: models.QuerySet[Any] = models.QuerySet(self.model, using=self.db).filter(
                    pk__in=[old["pk"] for _, old in rows]
                )

                def reread() -> list[tuple[Any, dict[str, Any]]]:
                    return [(SimpleNamespace(**{**old, **new}), old) for old in _values(found, columns)]

                lock_reach_first(node, scope, rows, written, self.db, changed=written, reread=reread)
            if locking(self.db) and not reading.query.select_for_update:
                # The rows first, in key order (the UPDATE would lock them in
                # scan order), with the values they hold under the lock.
                reading = _lock(models.QuerySet(self.model, using=self.db).filter(pk__in=reading.values("pk")))
                reading = reading.order_by("pk")
            before = {row["pk"]: row for row in _values(reading, columns)}
            lock_before_write(node, [(SimpleNamespace(**{**old, **new}), old) for old in before.values()], self.db)
            if locking(self.db) and not self.query.is_sliced:
                # Only the rows locked and read: one that met the filter since
                # (moved here by a writer who committed meanwhile) would be
                # written with no record of where it was, and waited for out
                # of lock order.
                size = get_config()["BATCH_SIZE"]
                count = sum(
                    super(MaintainedQuerySet, self.filter(pk__in=batch)).update(**kwargs)
                    for batch in chunks(list(before), size)
                )
            else:
                count = super(MaintainedQuerySet, self).update(**kwargs)
            # The keys written as values are known; the ones written as
            # expressions are read back (by primary key, which they leave alone).
            after: dict[Any, dict[str, Any]] = {}
            if (node.up_links & written) - new.keys():
                after = _rows(self.model, self.db, before, (node.up_links & written) - new.keys())
            records: Records = {}
            moved, rekeyed = {}, []
            for pk, old in before.items():
                row = SimpleNamespace(**{**old, **new, **after.get(pk, {})})
                row.pk = moved[pk] = _new_pk(self.model, pk, new)
                merge(records, records_for(node, row, labels=scope.labels, changed=written, old=old))
                if row.pk != pk:
                    # Work recorded for the old key (pending in a deferred or
                    # background scope) finds no row: at the new key, the row
                    # counts as created, and each of its own fields is recomputed.
                    merge(records, records_for(node, row, labels=scope.labels, created=True))
                    rekeyed.append(row.pk)
            merge(records, recompute_records(_overwritten(node, scope, written), moved.values()))
            if rekeyed:
                mine = [s for s in (*node.own_row, *node.related) if scope.labels is None or s.label in scope.labels]
                merge(records, recompute_records(mine, rekeyed))
            if not hold_in_delete(scope, self.db, records):
                dispatch(scope, self.db, records)
            return count

        return in_transaction(self.db, f"An update() of {self.model._meta.label}", write,
                              needed=scope.mode == modes.IMMEDIATE or bool(node.up_links & written))

    update.alters_data = True  # type: ignore[attr-defined]

    def bulk_create(
        self,
        objs: Iterable[models.Model],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        update_fields: Collection[str] | None = None,
        unique_fields: Collection[str] | None = None,
    ) -> list[models.Model]:
        options: dict[str, Any] = {
            "batch_size": batch_size,
            "ignore_conflicts": ignore_conflicts,
            "update_conflicts": update_conflicts,
            "update_fields": update_fields,
            "unique_fields": unique_fields,
        }
        scope, node = self._maintenance()
        if node is None:
            return super().bulk_create(objs, **options)
        objs = list(objs)
        own_row = own_row_specs(node, scope, None)
        later = after_the_write(own_row, deferred=False, held=expressions_held(objs, node))
        if own_row and objs:
            compute_own_rows(objs, [spec for spec in own_row if spec not in later], self.db)
        if ignore_conflicts:
            self._check_findable(objs, node, scope, later)
        written: frozenset[str] = frozenset()
        if update_conflicts and update_fields:
            # A conflicting row takes only update_fields: the own-row fields
            # computed from them must go with them.
            written = frozenset(self.model._meta.get_field(name).attname for name in update_fields)
            following = own_row_specs(node, scope, written)
            options["update_fields"] = [
                *update_fields,
                *(spec.field.name for spec in following if spec.field.attname not in written),
            ]
            written |= {spec.field.attname for spec in following}

        def write() -> list[models.Model]:
            return self._bulk_create(objs, options, node, scope, later, written, unique_fields)

        def put_back() -> Callable[[], object]:
            # A retry begins with each object as it was: a failed attempt gave it a key.
            restores = [snapshot(obj, {}) for obj in objs]
            return lambda: [restore() for restore in restores]

        what = f"A bulk_create() of {self.model._meta.label}"
        return in_transaction(self.db, what, write, scope.mode == modes.IMMEDIATE, put_back)

    def _bulk_create(
        self, objs: list[models.Model], options: dict[str, Any], node: ModelNode, scope: modes.Scope,
        later: list[Spec], written: frozenset[str], unique_fields: Collection[str] | None,
    ) -> list[models.Model]:
        with _atomic(scope, self.db, moving=bool(node.up_links & written)):
            before = self._conflicting(objs, unique_fields, node) if written else {}
            lock_before_write(node, [(obj, before.get(obj.pk)) for obj in objs], self.db)
            created = super().bulk_create(objs, **options)
            records: Records = {}
            for obj in created:
                if obj.pk is None or obj.pk not in before:
                    new = records_for(node, obj, labels=scope.labels, created=True, own_row_done=True)
                    merge(records, new)
            merge(records, recompute_records(later, [obj.pk for obj in created if obj.pk is not None]))
            unnamed = [obj for obj in created if obj.pk is None]
            row: dict[str, Any] | SimpleNamespace  # a row's values, then a row
            if unnamed and options["ignore_conflicts"]:
                # The database did not say which keys it gave: find the rows by
                # their unique fields, to compute what they read through relations.
                for row in self._conflicting(unnamed, None, node).values():
                    merge(records, records_for(node, SimpleNamespace(**row), labels=scope.labels, created=True))
            after = _rows(self.model, self.db, before, node.up_links & written) if before else {}
            for pk, old in before.items():
                row = SimpleNamespace(**{**old, **after.get(pk, {})})
                merge(records, records_for(node, row, labels=scope.labels, changed=written, old=old))
            merge(records, recompute_records(_overwritten(node, scope, written), before))
            dispatch(scope, self.db, records)
        return created

    def _check_findable(self, objs: list[models.Model], node: ModelNode, scope: modes.Scope,
                        later: list[Spec]) -> None:
        """Before a bulk_create(ignore_conflicts=True): the database does not
        say which keys it gave the rows, so the rows whose own maintained
        fields read other rows (or are computed after the write) must be
        found again by a unique field; raise if one cannot be."""
        needs = [*later, *(dep.spec for dep, hop in node.saved_edges if hop.index == 0)]
        needs = [spec for spec in needs if scope.labels is None or spec.label in scope.labels]
        if not needs:
            return
        meta = self.model._meta
        sets = [[cast("models.Field[Any, Any]", meta.get_field(name)).attname for name in names]
                for names in _unique_sets(self.model)]
        for obj in objs:
            if obj.pk is None and not any(all(getattr(obj, a) is not None for a in names) for names in sets):
                raise ValueError(
                    f"{meta.label}.objects.bulk_create(ignore_conflicts=True) cannot keep "
                    f"{', '.join(sorted({str(spec) for spec in needs}))} on the rows it inserts: the "
                    f"database does not say which keys it gave them, and {obj!r} has no primary key "
                    "or unique value to find it by. Set the objects' primary keys or a unique field, "
                    "or call bulk_create() without ignore_conflicts. Nothing was written."
                )

    def _conflicting(
        self, objs: list[models.Model], unique_fields: Collection[str] | None, node: ModelNode
    ) -> dict[Any, dict[str, Any]]:
        """The rows that ``objs`` would conflict with, by pk, with their tracked values.

        With no ``unique_fields`` (MySQL, MariaDB), every unique field and
        unique constraint of the model can be the one that conflicts.
        """
        meta = self.model._meta
        key_sets = [list(unique_fields)] if unique_fields else _unique_sets(self.model)
        rows: dict[Any, dict[str, Any]] = {}
        for names in key_sets:
            attnames = [meta.get_field(name).attname for name in names]
            keys: Iterable[tuple[Any, ...]] = {tuple(getattr(obj, a) for a in attnames) for obj in objs}
            keys = [key for key in keys if None not in key]
            for batch in chunks(keys, get_config()["BATCH_SIZE"]):
                condition = Q()
                for key in batch:
                    condition |= Q(**dict(zip(attnames, key)))
                found: models.QuerySet[Any] = models.QuerySet(self.model, using=self.db).filter(condition)
                rows.update((row["pk"], row) for row in _values(found, ("pk", *node.tracked)))
        return rows

    bulk_create.alters_data = True  # type: ignore[attr-defined]

    def bulk_update(self, objs: Iterable[models.Model], fields: Iterable[str], batch_size: int | None = None) -> int:
        scope, node = self._maintenance()
        if node is None:
            return super().bulk_update(objs, fields, batch_size=batch_size)
        objs = list(objs)
        fields = list(fields)
        written = frozenset(self.model._meta.get_field(name).attname for name in fields)
        own_row = own_row_specs(node, scope, written)
        later = after_the_write(own_row, deferred=False, held=expressions_held(objs, node)) if own_row else []
        own_row = [spec for spec in own_row if spec not in later]
        if own_row and objs:
            compute_own_rows(objs, own_row, self.db)
        fields += [spec.field.name for spec in own_row if spec.field.attname not in written]
        written |= {spec.field.attname for spec in own_row}
        def write() -> int:
            columns = tracked_before(node, written)
            if reaches_first(node, scope, written, self.db):
                unlocked = _rows(self.model, self.db, [obj.pk for obj in objs], columns)
                rows = [(obj, unlocked[obj.pk]) for obj in objs if obj.pk in unlocked]
                lock_reach_first(node, scope, rows, written, self.db)
            before = _rows(self.model, self.db, [obj.pk for obj in objs], columns, lock=True)
            lock_before_write(node, [(obj, before.get(obj.pk)) for obj in objs], self.db)
            # A plain QuerySet: bulk_update() calls update(), which must not record again.
            count = cast("models.QuerySet[models.Model]", models.QuerySet(self.model, using=self.db)).bulk_update(
                objs, fields, batch_size=batch_size
            )
            records: Records = {}
            for obj in objs:
                old = before.get(obj.pk)
                if old is None:
                    continue  # no such row: nothing was written
                changed = changed_attnames(obj, node, written, old)
                merge(records, records_for(node, obj, labels=scope.labels, changed=changed, old=old))
            merge(records, recompute_records([*_overwritten(node, scope, written), *later], before))
            dispatch(scope, self.db, records)
            return count

        return in_transaction(self.db, f"A bulk_update() of {self.model._meta.label}", write,
                              needed=scope.mode == modes.IMMEDIATE or bool(node.up_links & written))

    bulk_update.alters_data = True  # type: ignore[attr-defined]


class MaintainedManager(models.Manager.from_queryset(MaintainedQuerySet)):  # type: ignore[misc]
    """The manager of :class:`MaintainedQuerySet`."""


def _atomic(scope: modes.Scope, db: str, moving: bool = False) -> Any:
    """The transaction a bulk write runs in: the write and its recompute in
    immediate mode; a write that may move rows and the read of where they
    were, in any mode."""
    if scope.mode == modes.IMMEDIATE or moving:
        return transaction.atomic(using=db, savepoint=False)
    return nullcontext()


def _plain(node: ModelNode, values: dict[str, Any]) -> dict[str, Any]:
    """The foreign keys and primary key fields among an update()'s ``values``
    whose new value is known before the write (not an expression)."""
    found = {}
    keys = {field.attname for field in node.model._meta.pk_fields}
    for name, value in values.items():
        field = cast("models.Field[Any, Any]", node.model._meta.get_field(name))  # update() takes fields
        if field.attname in node.up_links | keys and not hasattr(value, "resolve_expression"):
            # The column holds the field the key points at, the primary key or a to_field.
            if isinstance(value, models.Model):
                value = getattr(value, field.target_field.attname)  # type: ignore[attr-defined]  # a ForeignKey's
            found[field.attname] = value
    return found


def _new_pk(model: type[models.Model], pk: Any, new: dict[str, Any]) -> Any:
    """The primary key of the row ``pk`` once an update() wrote the values ``new``
    (a composite key changes with the fields in it)."""
    fields = model._meta.pk_fields
    if not any(field.attname in new for field in fields):
        return pk
    if len(fields) == 1:
        return new[fields[0].attname]
    return tuple(new.get(field.attname, part) for field, part in zip(fields, pk))


def _unique_sets(model: type[models.Model]) -> list[list[str]]:
    """The field names of each unique field, unique_together and unconditional
    UniqueConstraint of ``model``."""
    meta = model._meta
    sets = [[field.name] for field in meta.concrete_fields if field.unique]
    sets += [list(names) for names in meta.unique_together]
    sets += [
        list(constraint.fields)
        for constraint in meta.total_unique_constraints
        if constraint.fields
    ]
    return sets


def _rows(
    model: type[models.Model], db: str, pks: Iterable[Any], attnames: Iterable[str], lock: bool = False
) -> dict[Any, dict[str, Any]]:
    """{pk: {"pk": pk, attname: value}} for the rows ``pks`` that exist, in batches.

    With ``lock``, where rows are locked before a write, they are locked too.
    """
    rows = {}
    locked = lock and locking(db)
    for batch in chunks(sorted(pks) if locked else pks, get_config()["BATCH_SIZE"]):
        found: models.QuerySet[Any] = models.QuerySet(model, using=db).filter(pk__in=batch)
        if locked:
            found = _lock(found.order_by("pk"))
        for row in _values(found, ("pk", *attnames)):
            rows[row["pk"]] = row
    return rows


def _overwritten(node: ModelNode, scope: modes.Scope, written: frozenset[str]) -> list[Spec]:
    """Maintained fields a bulk write sets directly (the library puts them right
    again), and own-row fields declared without depends_on (run on every write)."""
    specs = [*node.own_row, *node.related]
    return [
        spec
        for spec in specs
        if (scope.labels is None or spec.label in scope.labels)
        and (spec.field.attname in written or (spec.own_row and not spec.deps))
    ]

"""What to recompute when a row changes, and when.

A write (caught in :mod:`maintained_fields.tracking`) is turned into
*records*: ``{(dependency, hop index): {primary keys}}``, the rows at that
hop whose dependents must be recomputed.  In immediate mode the records are
processed at once; in deferred mode they go into the scope's :class:`Buffer`
and are processed when the scope ends.  Recording reads only the row in hand
(and, for an update, its previous values), so it costs the same for the
first row of a load as for the ten-thousandth.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from types import SimpleNamespace
from typing import Any, TypeVar, cast

from django.db import DatabaseError, connections, models, transaction

from . import modes
from .conf import get_config
from .graph import REVERSE, Dependency, Graph, ModelNode, Spec, get_graph
from .writes import (
    Carrier,
    Changed,
    Targets,
    announced_at_the_end,
    chunks,
    composite,
    feature,
    fetch,
    fetch_ahead,
    forward_reads,
    in_users_transaction,
    lock_rows,
    recompute,
    recompute_in_one_message,
    resolve,
    share_lock_read,
)
from .writes import lock as lock_rows_of

logger = logging.getLogger("maintained_fields")

Records = dict[tuple[Dependency, int], set[Any]]
T = TypeVar("T")

def merge(into: Records, records: Records) -> None:
    for key, pks in records.items():
        existing = into.get(key)
        if existing is None:
            into[key] = set(pks)
        else:
            existing |= pks


def process(
    db: str,
    labels: frozenset[str] | None,
    records: Records,
    *,
    instances: tuple[models.Model, ...] = (),
    batch_size: int | None = None,
    level: int = logging.DEBUG,
    own_transaction: bool = False,
) -> None:
    """Recompute every maintained value that ``records`` reach, in one transaction.

    Groups of maintained fields are processed in dependency order, so a row
    whose value feeds another's is written before the other is computed, and
    each affected row is recomputed once.  ``instances`` are in-memory
    objects to update with the values written to their rows.  A summary is
    logged at ``level``.  With ``own_transaction`` the transaction is the
    package's alone (a flush outside the user's), and it reads committed
    rows whatever isolation level the connection uses: the locks taken here
    are what keeps concurrent flushes apart, and a REPEATABLE READ or
    SERIALIZABLE snapshot would only make them fail to serialize.
    """
    graph = get_graph()
    started = time.perf_counter()
    # In the user's transaction on PostgreSQL, where the work may lead to a
    # field that reads rows through foreign keys, the rows a recompute finds
    # late (those rows, a row linked meanwhile) are taken without waiting,
    # under a savepoint: a row another writer holds makes the work give back
    # its locks and begin again with that row locked up front, in order.  The
    # package's own flush needs none of this: it fails at once and is retried whole.
    gives_back = (
        not own_transaction
        and feature(db, "vendor") == "postgresql"
        and get_config()["LOCK_ROWS"]
        and any(dep.spec in graph.reads_forward for dep, _ in records)
    )
    attempts = 10 if gives_back else 1
    up_front: dict[type[models.Model], set[Any]] = {}
    with transaction.atomic(using=db, savepoint=False):
        if own_transaction:
            _read_committed(db)
        for attempt in range(attempts):
            savepoint = connections[db].savepoint() if gives_back else None
            try:
                # Nothing is announced of an attempt that is rolled back.
                nowait = own_transaction or (gives_back and attempt < attempts - 1)
                # Where a lock may be refused, the statement that fails must be the lock.
                carrying = nullcontext() if nowait else Carrier.carrying(db)
                held = announced_at_the_end() if gives_back or own_transaction else nullcontext()
                with held, carrying as carrier:
                    recomputed, written = _recompute_all(
                        graph, db, labels, records, instances, batch_size, up_front,
                        nowait=nowait, gives_back=gives_back, carrier=carrier,
                    )
            except _LateRows as late:
                connections[db].savepoint_rollback(cast(str, savepoint))
                for model, rows in late.rows.items():
                    up_front.setdefault(model, set()).update(rows)
                if late.model is not None:
                    for model, rows in forward_reads(late.model, db, late.pks, late.specs).items():
                        up_front.setdefault(model, set()).update(rows)
                continue
            if savepoint is not None:
                connections[db].savepoint_commit(savepoint)
            break
    if recomputed and logger.isEnabledFor(level):
        logger.log(
            level,
            "Maintained fields on %r: recomputed %d row(s) (%s), %d changed, in %.3fs.",
            db,
            sum(len(rows) for rows in recomputed.values()),
            ", ".join(f"{label} {len(rows)}" for label, rows in recomputed.items()),
            written,
            time.perf_counter() - started,
        )


class _LateRows(Exception):
    """A row to lock out of order was held by another writer.  ``rows``: the
    rows wanted, by model; and where the rows that the recompute of the rows
    ``pks`` of ``model`` for ``specs`` reads through foreign keys were
    wanted, those three."""

    def __init__(
        self,
        rows: dict[type[models.Model], set[Any]],
        model: type[models.Model] | None = None,
        pks: list[Any] | None = None,
        specs: set[Spec] | None = None,
    ) -> None:
        self.rows, self.model, self.pks, self.specs = rows, model, pks or [], specs or set()


def _recompute_all(
    graph: Graph,
    db: str,
    labels: frozenset[str] | None,
    records: Records,
    instances: tuple[models.Model, ...],
    batch_size: int | None,
    up_front: dict[type[models.Model], set[Any]],
    nowait: bool,
    gives_back: bool,
    carrier: Carrier | None = None,
) -> tuple[dict[str, set[Any]], int]:
    """The work of :func:`process`, in its transaction: lock ``up_front``,
    then the reach, then recompute group by group.  Returns the rows
    recomputed, by model label, and how many rows changed.

    With ``nowait``, a row locked late that another transaction holds
    raises DatabaseError, or with ``gives_back`` :class:`_LateRows` (the
    caller gives the locks back and calls again).  A ``carrier`` takes the
    reach's last locks, whose results nothing reads, to the statement after them.
    """
    pending: Records = {}
    merge(pending, records)
    in_memory = {(type(i)._meta.concrete_model, i.pk): i for i in instances}
    models_in_memory = {model for model, _ in in_memory}
    recomputed: dict[str, set[Any]] = {}  # label: rows recomputed
    written = 0
    size = batch_size or get_config()["BATCH_SIZE"]

    def take(model: type[models.Model], node: ModelNode, targets: Targets, changed: Changed) -> None:
        """Follow what a recompute of ``targets`` of ``model`` ``changed``."""
        nonlocal written
        for instance, old in changed:
            columns = frozenset(old)
            if _leads_on(node, columns, labels):
                merge(pending, records_for(node, instance, labels=labels, changed=columns, old=old))
            mine = in_memory.get((model, instance.pk))
            if mine is not None:
                for attname in old:
                    setattr(mine, attname, getattr(instance, attname))
        recomputed.setdefault(model._meta.label, set()).update(targets)
        written += changed.total
        due.update(_groups(graph, pending))

    # Lock every row the work may reach before recomputing any, model by
    # model in one order for every writer: rows locked as they are found
    # would let two writers each hold a row the other wants next.  Once the
    # rows of an attempt that gave them back are locked up front, no lock
    # is waited for: a row missing from them is added, and the work begun again.
    _lock_in_order(graph, up_front, db, size)
    resolved: dict[tuple[Dependency, int, frozenset[Any]], set[Any]] = {}
    due = _groups(graph, pending)
    known = [
        _targets(specs, pending, labels, db, batch_size, resolved) if position in due else {}
        for position, (_, specs) in enumerate(graph.order)
    ]
    locked: dict[type[models.Model], set[Any]] | None = None
    # Groups recomputed ahead of their turn, with the rows and specs recomputed.
    ahead: dict[int, Targets] = {}
    if get_config()["LOCK_ROWS"] and feature(db, "has_select_for_update"):
        locked, reach = _lock_reach(
            graph, known, labels, db, batch_size, resolved, nowait=bool(up_front) and nowait, carrier=carrier
        )
        for model, rows in up_front.items():
            locked.setdefault(model, set()).update(rows)
        if carrier is not None:
            ahead = _recompute_ahead(graph, reach, size, db, labels, models_in_memory, take)
    # A row recomputed ahead is found again in its turn, and recomputed again
    # only if a recompute in its turn changed something since.
    anew = False
    for position, ((model, specs), targets) in enumerate(zip(graph.order, known)):
        if position in due and pending:
            _merge_targets(targets, _targets(specs, pending, labels, db, batch_size, resolved))
        if position in ahead and not anew:
            done = ahead[position]
            targets = {pk: found for pk, found in targets.items() if not found <= done.get(pk, frozenset())}
        if not targets:
            continue
        if locked is not None:
            pks, read = list(targets), {s for found in targets.values() for s in found}
            try:
                _lock_late(model, targets, locked, db, size, nowait)
                share_lock_read(model, db, pks, read, locked, nowait=nowait)
            except DatabaseError:
                if not (nowait and gives_back):
                    raise
                raise _LateRows({**locked, model: locked.get(model, set()) | set(pks)}, model, pks, read) from None
        node = graph.nodes[model]
        changed = recompute(
            model, targets, db, batch_size, locked=True, quiet=_quiet(node, specs, labels, models_in_memory)
        )
        take(model, node, targets, changed)
        anew = anew or bool(changed.total)
    return recomputed, written


def _quiet(
    node: ModelNode, specs: tuple[Spec, ...], labels: frozenset[str] | None, in_memory: set[Any]
) -> bool:
    """Whether a recompute of the group ``specs`` of ``node`` need only count
    the rows it changes: where a change leads nowhere and no object in memory
    is the row, the rows need not be read back."""
    return node.model not in in_memory and not _leads_on(node, frozenset(spec.field.attname for spec in specs), labels)


def _recompute_ahead(
    graph: Graph,
    reach: list[Targets],
    size: int,
    db: str,
    labels: frozenset[str] | None,
    in_memory: set[Any],
    take: Callable[[type[models.Model], ModelNode, Targets, Changed], None],
) -> dict[int, Targets]:
    """Recompute every row of the locked ``reach`` at once, group after
    group, in one message (:func:`recompute_in_one_message`), where each
    group is one statement, and hand each result to ``take``; return the
    groups recomputed, by position in ``graph.order``, none where they
    cannot all be.

    A row is recomputed as if what it reads had changed; where it had not,
    the statement finds the stored value right and writes nothing.  One
    round trip where, group by group, a write would wait for each result
    before sending the next statement.
    """
    groups = [(position, targets) for position, targets in enumerate(reach) if targets]
    if len(groups) < 2:
        return {}
    jobs = []
    for position, targets in groups:
        model, specs = graph.order[position]
        if (
            len(targets) > size
            or composite(model)
            or any(spec.expression is None or spec in graph.reads_forward for spec in specs)
        ):
            return {}
        jobs.append((model, targets, _quiet(graph.nodes[model], specs, labels, in_memory)))
    for (position, targets), changed in zip(groups, recompute_in_one_message(jobs, db)):
        model = graph.order[position][0]
        take(model, graph.nodes[model], targets, changed)
    return dict(groups)


def _leads_on(node: ModelNode, changed: frozenset[str], labels: frozenset[str] | None) -> bool:
    """Whether a change of the columns ``changed`` of a row of ``node`` can
    lead to a recompute (what :func:`records_for` asks of each edge)."""
    try:
        return node.leads[changed, labels]
    except KeyError:
        leads = node.leads[changed, labels] = any(
            (labels is None or dep.spec.label in labels) and (hop.triggers is None or bool(hop.triggers & changed))
            for dep, hop in node.edges
        )
        return leads


def lock_reach(db: str, labels: frozenset[str] | None, records: Records) -> None:
    """Lock now every row that processing ``records`` may recompute, in the
    order process() locks them (see :func:`_lock_reach`)."""
    graph = get_graph()
    known, resolved = _known(graph, records, labels, db)
    _lock_reach(graph, known, labels, db, None, resolved)


def lock_first(
    db: str,
    labels: frozenset[str] | None,
    model: type[models.Model],
    own: Iterable[Any],
    records: Records,
    reread: Callable[[], Records] | None = None,
) -> None:
    """Lock, before an immediate write changes the rows ``own`` of ``model``,
    those rows and every row that processing the write's ``records`` may
    recompute, all in lock order.

    For a write whose change reaches rows that come before its own in that
    order (a lab renamed, and the samples that copy its name): locking its
    own row first, as other writes do, would let it hold the lab while
    waiting for a sample whose writer holds the sample and waits for the lab.
    The locks are exclusive (``FOR UPDATE``), so that no row can join the
    reach under them (inserting or moving a child locks its parent's key)
    until the write commits.  The reach is read again under the locks: rows
    linked into it meanwhile (committed, so visible under READ COMMITTED)
    are taken too, at once or not at all (NOWAIT).  Where the database
    gives row locks back with a savepoint (PostgreSQL), a row another writer
    holds makes the write give back its locks and take them again with the
    new rows, in order.  ``reread``: the write's records made again from
    its rows once they are locked (their values read unlocked may be stale).
    """
    graph = get_graph()
    size = get_config()["BATCH_SIZE"]
    wanted: dict[type[models.Model], set[Any]] = {model: set(own)}
    late = _reach_by_model(graph, records, labels, db)
    connection = connections[db]
    # The connection's savepoint methods: transaction.savepoint() is deprecated in Django 6.1.
    gives_back = connection.vendor == "postgresql"
    savepoint = None
    attempts = 10
    for attempt in range(attempts):
        for other, rows in late.items():
            wanted.setdefault(other, set()).update(rows)
        savepoint = connection.savepoint() if gives_back else None
        _lock_in_order(graph, wanted, db, size, exclusive=True)
        if reread is not None:
            records = reread()
        late = _late(_reach_by_model(graph, records, labels, db), wanted)
        # The last attempt waits for the rows it finds late: a write never
        # goes on without its reach locked (at worst, the database reports
        # a deadlock and the write fails).
        nowait = gives_back and attempt < attempts - 1
        try:
            while late:
                _lock_in_order(graph, late, db, size, nowait=nowait, exclusive=True)
                for other, rows in late.items():
                    wanted[other] |= rows
                late = _late(_reach_by_model(graph, records, labels, db), wanted)
            break
        except DatabaseError:
            if savepoint is None or not nowait:
                raise
            connection.savepoint_rollback(savepoint)
    if savepoint is not None:
        connection.savepoint_commit(savepoint)


def _late(
    found: dict[type[models.Model], set[Any]], wanted: dict[type[models.Model], set[Any]]
) -> dict[type[models.Model], set[Any]]:
    """The rows of ``found`` not in ``wanted``, by model."""
    late = {model: rows - wanted.get(model, set()) for model, rows in found.items()}
    return {model: rows for model, rows in late.items() if rows}


def _reach_by_model(
    graph: Graph, records: Records, labels: frozenset[str] | None, db: str
) -> dict[type[models.Model], set[Any]]:
    """The rows processing ``records`` may recompute, by model, read without locks."""
    known, resolved = _known(graph, records, labels, db)
    by_model: dict[type[models.Model], set[Any]] = {}
    for (model, _), targets in zip(graph.order, _walk_reach(graph, known, labels, db, None, resolved, lock=False)):
        by_model.setdefault(model, set()).update(targets)
    return by_model


def _known(
    graph: Graph, records: Records, labels: frozenset[str] | None, db: str
) -> tuple[list[Targets], dict[tuple[Dependency, int, frozenset[Any]], set[Any]]]:
    """The rows ``records`` name, per group of ``graph.order`` (:func:`_targets`),
    and what each record resolved to."""
    pending: Records = {}
    merge(pending, records)
    resolved: dict[tuple[Dependency, int, frozenset[Any]], set[Any]] = {}
    due = _groups(graph, pending)
    known = [
        _targets(specs, pending, labels, db, None, resolved) if position in due else {}
        for position, (_, specs) in enumerate(graph.order)
    ]
    return known, resolved


def _groups(graph: Graph, records: Records) -> set[int]:
    """The groups, by position in ``graph.order``, that ``records`` name rows
    of: those that :func:`_targets` can find any rows of (a graph has
    many groups, and a write's records name two or three)."""
    group_of = graph.group_of
    return {group_of[dep.spec] for dep, _ in records}


def _read_committed(db: str) -> None:
    connection = connections[db]
    if connection.vendor in ("postgresql", "mysql"):
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")


def _targets(
    specs: tuple[Spec, ...],
    pending: Records,
    labels: frozenset[str] | None,
    db: str,
    size: int | None,
    resolved: dict[tuple[Dependency, int, frozenset[Any]], set[Any]],
) -> Targets:
    """Take the pending records of ``specs`` out of ``pending``, as {pk: specs to recompute}.

    ``resolved`` keeps what each record resolved to, for the next time.
    """
    targets: Targets = {}
    for spec in specs:
        if labels is not None and spec.label not in labels:
            continue
        one = frozenset((spec,))
        for dep in (spec.itself, *spec.deps):
            for index in dep.record_indexes:
                pks = pending.pop((dep, index), None)
                if pks:
                    key = (dep, index, frozenset(pks))
                    if key not in resolved:
                        resolved[key] = resolve(dep, index, pks, db, size)
                    _add_targets(targets, resolved[key], one)
    return targets


def _add_targets(targets: Targets, pks: Iterable[Any], specs: frozenset[Spec]) -> None:
    """Add ``specs`` to what ``targets`` recomputes on each of the rows ``pks``.

    Rows that recompute the same specs share one frozenset: a set a row, in a
    flush of 100,000 rows, made the garbage collector walk the heap twice
    over while they were built.
    """
    unions: dict[frozenset[Spec], frozenset[Spec]] = {}
    for pk in pks:
        found = targets.get(pk)
        if found is None:
            targets[pk] = specs
        elif not specs <= found:
            union = unions.get(found)
            if union is None:
                union = unions[found] = found | specs
            targets[pk] = union


def _merge_targets(targets: Targets, more: Targets) -> None:
    """Add ``more`` to ``targets``."""
    rows_of: dict[frozenset[Spec], list[Any]] = {}
    for pk, specs in more.items():
        rows_of.setdefault(specs, []).append(pk)
    for specs, pks in rows_of.items():
        _add_targets(targets, pks, specs)


def _lock_reach(
    graph: Graph,
    known: list[Targets],
    labels: frozenset[str] | None,
    db: str,
    size: int | None,
    resolved: dict[tuple[Dependency, int, frozenset[Any]], set[Any]],
    nowait: bool = False,
    carrier: Carrier | None = None,
) -> tuple[dict[type[models.Model], set[Any]], list[Targets]]:
    """Lock the rows the work may recompute (:func:`_walk_reach`); return
    them by model, and what the walk found.

    The rows of ``graph.walk_locks`` are locked by the query that reads
    their links, as the walk meets them; the others after it, model by
    model in ``graph.model_order``, by statements that a ``carrier`` sends
    with the next one.  With ``nowait``, a row another transaction holds
    raises :class:`_LateRows`, which must come from the lock itself: no
    carrier is given then (:func:`process`).
    """
    reach = _walk_reach(graph, known, labels, db, size, resolved, lock=True, nowait=nowait, carrier=carrier)
    locked: dict[type[models.Model], set[Any]] = {}
    by_model: dict[type[models.Model], set[Any]] = {}
    for (model, _), targets in zip(graph.order, reach):
        if targets:
            (locked if model in graph.walk_locks else by_model).setdefault(model, set()).update(targets)
    try:
        _lock_in_order(graph, by_model, db, size or get_config()["BATCH_SIZE"], nowait=nowait, carried=carrier)
    except DatabaseError:
        if not nowait:
            raise
        raise _LateRows(rows=by_model) from None
    locked.update(by_model)
    return locked, reach


def _walk_reach(
    graph: Graph,
    known: list[Targets],
    labels: frozenset[str] | None,
    db: str,
    size: int | None,
    resolved: dict[tuple[Dependency, int, frozenset[Any]], set[Any]],
    lock: bool,
    nowait: bool = False,
    carrier: Carrier | None = None,
    ahead: bool = False,
) -> list[Targets]:
    """Per group of ``graph.order``, the rows ``known`` and the rows
    downstream of them, each with the specs it would be recomputed for, as
    if every value the work recomputes changed; with
    ``lock``, the rows of ``graph.walk_locks`` locked as they are read (by
    a statement the ``carrier`` takes to the next, where nothing is read).
    With ``ahead``, the walk stops at its first statement: a read goes to
    the carrier, which keeps its rows for the walk made again.

    A row counts as changing the fields it is recomputed for, not every
    field of its group, as :func:`process` recomputes it: a study reached
    for its count does not reach what reads its label, and the lock order
    that ``locks_first`` plans for holds."""
    reach = [dict(targets) for targets in known]
    downstream: Records = {}
    due: set[int] = set()
    for position, ((model, specs), targets) in enumerate(zip(graph.order, reach)):
        if position in due and downstream:
            _merge_targets(targets, _targets(specs, downstream, labels, db, size, resolved))
        if not targets:
            continue
        rows = set(targets)
        node = graph.nodes[model]
        written = {found: frozenset(spec.field.attname for spec in found) for found in set(targets.values())}
        every = frozenset().union(*written.values())
        locks = lock and model in graph.walk_locks
        if not locks and not _leads_on(node, every, labels):
            continue
        links = [
            cast(str, hop.up_link)  # a REVERSE hop's
            for _, hop in node.edges
            if hop.kind == REVERSE and (hop.triggers is None or hop.triggers & every)
        ]
        if locks and carrier is not None and not links and not _leads_on(node, every, labels):
            if ahead:
                break
            lock_rows(model, db, rows, size or get_config()["BATCH_SIZE"], carried=carrier)
            continue
        if ahead:
            if locks:
                rows_with_links(model, db, rows, links, size, lock=True, carrier=carrier, ahead=True)
            break
        try:
            linked = rows_with_links(model, db, rows, links, size, lock=locks, nowait=nowait, carrier=carrier)
        except DatabaseError:
            if not nowait:
                raise
            raise _LateRows(rows={model: rows}) from None
        for row in linked:
            found = targets.get(row.pk)
            merge(downstream, records_for(node, row, labels=labels, changed=every if found is None else written[found]))
        due.update(_groups(graph, downstream))
    return reach


@contextmanager
def reading_ahead(db: str, labels: frozenset[str] | None, records: Records) -> Iterator[None]:
    """A block whose first statement carries the first read that processing
    ``records`` makes (it locks the rows the work reaches first and reads
    their links), and whose processing finds that read's rows kept: an
    insert sends it with its INSERT, one round trip fewer.  Nothing is read
    ahead where that read needs a query first (a record to resolve), or
    where the work locks otherwise (rows read through foreign keys)."""
    graph = get_graph()
    if (
        not get_config()["LOCK_ROWS"]
        or any(index for _, index in records)
        or any(dep.spec in graph.reads_forward for dep, _ in records)
    ):
        yield
        return
    with Carrier.carrying(db) as carrier:
        if carrier is not None:
            known, resolved = _known(graph, records, labels, db)
            _walk_reach(graph, known, labels, db, None, resolved, lock=True, carrier=carrier, ahead=True)
        yield


def rows_with_links(
    model: type[models.Model],
    db: str,
    pks: set[Any],
    links: Iterable[str],
    size: int | None = None,
    lock: bool = False,
    nowait: bool = False,
    carrier: Carrier | None = None,
    ahead: bool = False,
) -> list[Any]:
    """The rows ``pks`` with the values of the foreign keys ``links``: the rows
    that exist, read in batches (locked in primary-key order with ``lock``,
    not waited for with ``nowait``); with no links and no lock, every pk,
    nothing read.  A batch the ``carrier`` read ahead is not read again;
    with ``ahead``, the carrier reads each batch with the next statement,
    and nothing is returned."""
    links = tuple(links)
    if not links and not lock:
        return [SimpleNamespace(pk=pk) for pk in pks]

    def query(batch: list[Any]) -> models.QuerySet[Any]:
        rows: models.QuerySet[Any] = models.QuerySet(model, using=db).filter(pk__in=batch)
        return (lock_rows_of(rows.order_by("pk"), nowait) if lock else rows).values_list("pk", *links)

    found = []
    key = ("links", model, links, lock, nowait)
    for batch in chunks(sorted(pks) if lock else pks, size or get_config()["BATCH_SIZE"]):
        if ahead:
            fetch_ahead(key, model, db, batch, query, cast(Carrier, carrier))
            continue
        rows = fetch(key, model, db, batch, query, carrier=carrier)
        found += [SimpleNamespace(**dict(zip(("pk", *links), row))) for row in rows]
    return found


def _lock_in_order(graph: Graph, by_model: dict[type[models.Model], set[Any]], db: str, size: int,
                   nowait: bool = False, exclusive: bool = False, carried: Carrier | None = None) -> None:
    """Lock the rows ``by_model``, model by model in ``graph.model_order``."""
    for model in sorted(by_model, key=graph.model_order.__getitem__):
        lock_rows(model, db, by_model[model], size, nowait=nowait, exclusive=exclusive, carried=carried)


def _lock_late(
    model: type[models.Model],
    targets: Targets,
    locked: dict[type[models.Model], set[Any]],
    db: str,
    size: int,
    nowait: bool,
) -> None:
    """Lock the ``targets`` that the locks taken up front missed.

    They are rows that another writer linked to the work after its reach was
    read (under READ COMMITTED a committed link shows at once), and are
    locked out of order, so with ``nowait`` not waited for: the work fails
    at once and is done again with them in its reach.
    """
    mine = locked.setdefault(model, set())
    late = targets.keys() - mine
    if late:
        lock_rows(model, db, late, size, nowait=nowait)
        mine |= late


def recompute_records(specs: Any, pks: Any) -> Records:
    """Records that recompute ``specs`` on the rows ``pks``, whatever they depend on."""
    return {(spec.itself, 0): set(pks) for spec in specs}


class Buffer:
    """The changes recorded in a deferred scope, by database and label filter.

    Thread-safe: code run through ``sync_to_async`` records into the buffer of
    the scope it was called from.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._work: dict[tuple[str, frozenset[str] | None], Records] = {}
        self._closed = False

    def add(self, db: str, labels: frozenset[str] | None, records: Records) -> bool:
        """Record ``records``; False if the scope has already ended."""
        return self.fill(db, labels, lambda work: merge(work, records))

    def fill(self, db: str, labels: frozenset[str] | None, add: Callable[..., object], *args: Any) -> bool:
        """Have ``add(*args, work)`` add to the records kept for ``db`` and
        ``labels``; False, without calling it, if the scope has already ended."""
        with self._lock:
            if self._closed:
                return False
            work = self._work.get((db, labels))
            add(*args, self._work.setdefault((db, labels), {}) if work is None else work)
        return True

    def take(self) -> dict[tuple[str, frozenset[str] | None], Records]:
        """Empty and close the buffer, returning what it held."""
        with self._lock:
            work, self._work, self._closed = self._work, {}, True
        return work

    @property
    def closed(self) -> bool:
        """Whether the scope has ended: what is recorded now is refused."""
        return self._closed

    def __len__(self) -> int:
        with self._lock:
            return sum(len(pks) for records in self._work.values() for pks in records.values())


def finish(buffer: Buffer, exc: BaseException | None) -> None:
    """Flush a deferred scope's buffer as it ends.

    On a normal exit the work is processed now, and an error in it is raised.
    While ``exc`` propagates, the work is processed now outside a transaction,
    or on commit inside one (so that a rollback discards it), and an error in
    it is logged, never raised over ``exc``.
    """
    first_error: BaseException | None = None
    for (db, labels), records in buffer.take().items():
        if exc is None and first_error is None:
            try:
                process_retrying(db, labels, records)
            except BaseException as error:
                first_error = error
        elif exc is not None and connections[db].in_atomic_block:
            transaction.on_commit(partial(_process_logged, db, labels, records), using=db)
        else:  # outside a transaction, or in one the user manages (set_autocommit(False)), whose fate it shares
            _process_logged(db, labels, records)
    if first_error is not None:
        first_error.add_note(
            "No maintained value recorded in this deferred scope was written (the rows it wrote "
            "are kept); run rebuild_maintained_fields to repair them once the cause is fixed."
        )
        raise first_error


RETRIES = 5
# A flush of the package's own: it waits for no user, and what a flush that
# fails for good leaves behind (rows written, the values they lead to stale)
# is worth seconds more of trying.
FLUSH_RETRIES = 8


def process_retrying(
    db: str, labels: frozenset[str] | None, records: Records, batch_size: int | None = None
) -> None:
    """process() a flush; in a transaction of the package's own when outside
    any of the user's (an atomic block, or ``set_autocommit(False)``).

    There the work is idempotent (it recomputes from the rows as they are), so
    a deadlock or serialization failure is retried (:func:`retrying`).
    Inside the user's transaction nothing is retried.
    """
    if in_users_transaction(db):
        return process(db, labels, records, batch_size=batch_size, level=logging.INFO)
    work = partial(process, db, labels, records, batch_size=batch_size, level=logging.INFO, own_transaction=True)
    retrying(db, "Maintained-field updates", work, attempts=FLUSH_RETRIES)


def retrying(
    db: str, what: str, work: Callable[[], T], undo: Callable[[], object] | None = None, attempts: int = RETRIES
) -> T:
    """``work()``, a transaction of the package's own on ``db``: a deadlock or
    serialization failure, which rolls it back, is retried, up to
    ``attempts`` in all, after a jittered, doubling pause and ``undo()``;
    each retry is logged at WARNING, naming ``what`` failed."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except DatabaseError as error:
            if attempt == attempts or not _transient(error):
                raise
            if undo is not None:
                undo()
            pause = random.uniform(0.5, 1.5) * 0.02 * 2**attempt
            logger.warning(
                "%s on %r failed with %s; retry %d of %d in %.3fs.",
                what,
                db,
                str(error).splitlines()[0],
                attempt,
                attempts - 1,
                pause,
            )
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


# SQLSTATE classes of PostgreSQL, error numbers of MySQL and MariaDB.
# serialization failure, deadlock detected, lock not available (NOWAIT)
_POSTGRESQL_TRANSIENT = {"40001", "40P01", "55P03"}
# deadlock, lock wait timeout (and MariaDB's NOWAIT), record changed (snapshot
# isolation), MySQL's NOWAIT
_MYSQL_TRANSIENT = {1213, 1205, 1020, 3572}


def _transient(error: DatabaseError) -> bool:
    """Whether ``error`` is a deadlock or serialization failure, which a retry can get past."""
    cause = error.__cause__
    if getattr(cause, "sqlstate", None) in _POSTGRESQL_TRANSIENT:
        return True
    pgcode = getattr(cause, "pgcode", None)
    if pgcode in _POSTGRESQL_TRANSIENT:
        return True
    args: tuple[Any, ...] = getattr(cause, "args", ())
    return bool(args) and args[0] in _MYSQL_TRANSIENT


def _process_logged(db: str, labels: frozenset[str] | None, records: Records) -> None:
    try:
        process_retrying(db, labels, records)
    except Exception:
        logger.exception(
            "Deferred maintained-field updates on database %r failed; run "
            "rebuild_maintained_fields to repair the affected rows.",
            db,
        )


def dispatch(
    scope: modes.Scope,
    db: str,
    records: Records,
    instances: tuple[models.Model, ...] = (),
) -> None:
    if not records:
        return
    if scope.buffer is not None and scope.buffer.add(db, scope.labels, records):
        return
    if scope.mode == modes.BACKGROUND:
        from .background import record

        return record(db, scope.labels, records)
    process(db, scope.labels, records, instances=instances)


def records_for(
    node: ModelNode,
    instance: models.Model | SimpleNamespace,
    *,
    labels: frozenset[str] | None,
    created: bool = False,
    changed: frozenset[str] | None = None,
    old: dict[str, Any] | None = None,
    own_row_done: bool = False,
) -> Records:
    """The records for a write of ``instance``.

    ``changed`` holds the attnames the write changed, or None when unknown
    (every trigger counts); ``old`` the values the row had before it.
    """
    records: Records = {}
    pk = instance.pk
    for dep, hop in node.saved_edges if own_row_done else node.edges:
        if labels is not None and dep.spec.label not in labels:
            continue
        if not created and hop.triggers is not None:
            if changed is None:
                if not hop.triggers:
                    continue
            elif not hop.triggers & changed:
                continue
        if hop.kind == REVERSE:
            parent = getattr(instance, cast(str, hop.up_link))
            previous = old.get(cast(str, hop.up_link)) if old else None
            for value in (parent, previous) if previous != parent else (parent,):
                if value is not None:
                    key = (dep, hop.record_index)
                    found = records.get(key)
                    if found is None:
                        records[key] = {value}
                    else:
                        found.add(value)
        elif pk is not None:
            key = (dep, hop.index)
            found = records.get(key)
            if found is None:
                records[key] = {pk}
            else:
                found.add(pk)
    return records

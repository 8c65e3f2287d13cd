"""The background mode: recorded work handed to Django's tasks framework.

Writes in the background mode are recorded as in a deferred scope.  The
records go to a task (:mod:`maintained_fields.tasks`) when the scope ends, or,
outside any scope, when the outermost transaction commits; a write in
autocommit is its own transaction.  Work recorded inside a transaction is
enqueued only on commit, so a rollback enqueues nothing.  The task runs the
deferred flush (:func:`~maintained_fields.propagation.process_retrying`) on
the rows as they are then, which makes it idempotent.

The arguments are JSON: each record names its maintained field, the
dependency path and the hop, with the keys of the rows there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

from django.db import connections, router, transaction

from .conf import get_config, tasks_framework
from .graph import Dependency, get_graph
from .propagation import Buffer, Records, merge, process, process_retrying

logger = logging.getLogger("maintained_fields")

# Keys per task: a large flush is split, each part recomputed on its own.
KEYS_PER_TASK = 10_000


def record(db: str, labels: frozenset[str] | None, records: Records) -> None:
    """Record ``records`` written outside any scope in the background mode:
    enqueued when the outermost transaction on ``db`` commits, or now in
    autocommit."""
    connection = connections[db]
    if not connection.in_atomic_block:
        return _outside_atomic(db, labels, records)
    alone = _write_alone.get()
    if alone is not None and alone[0] == db:
        alone[1].add(db, labels, records)
        return
    pending = getattr(connection, "_maintained_fields_pending", None)
    # A rollback drops the on_commit callback and leaves its buffer behind.
    if pending is None or not any(callback is pending[1] for _, callback, *_ in connection.run_on_commit):
        buffer = Buffer()
        callback = partial(_enqueue_buffer, db, buffer)
        pending = connection._maintained_fields_pending = (buffer, callback)  # type: ignore[attr-defined]  # ours
        transaction.on_commit(callback, using=db)
    if not pending[0].add(db, labels, records):  # taken by a callback that is running
        enqueue(db, labels, records)


# The database and buffer of a write that with_its_task() runs in a transaction of its own.
_write_alone: ContextVar[tuple[str, Buffer] | None] = ContextVar("maintained_fields_write_alone", default=None)


@contextmanager
def with_its_task(db: str) -> Iterator[None]:
    """Around a write outside any scope in the background mode: in
    autocommit, where the tasks backend keeps its queue in ``db``
    (django-tasks-db routed there), the write and the enqueue of its work
    commit together, in one transaction.  A process that dies after the
    write cannot lose the work, and the write pays for one commit, not two.
    Elsewhere the work is enqueued after the commit, as :func:`record` says."""
    connection = connections[db]
    if connection.in_atomic_block or not connection.get_autocommit() or not queues_in(db):
        yield
        return
    buffer = Buffer()
    token = _write_alone.set((db, buffer))
    try:
        with transaction.atomic(using=db):
            yield
            _enqueue_buffer(db, buffer)
    finally:
        _write_alone.reset(token)


def queues_in(db: str) -> bool:
    """Whether the tasks backend in use keeps its queue in the tables of ``db``."""
    try:
        backend = tasks_framework().task_backends[get_config()["TASKS_BACKEND"] or "default"]
    except Exception:  # an unknown alias: enqueue() fails, and recomputes at once
        return False
    if type(backend).__module__.split(".")[0] != "django_tasks_db":
        return False  # its models may not be importable: the app need not be installed
    from django_tasks_db.backend import DatabaseBackend
    from django_tasks_db.models import DBTaskResult

    return isinstance(backend, DatabaseBackend) and router.db_for_write(DBTaskResult) == db


def _enqueue_buffer(db: str, buffer: Buffer) -> None:
    for (_, labels), records in buffer.take().items():
        enqueue(db, labels, records)


def finish(buffer: Buffer, exc: BaseException | None) -> None:
    """Hand a background scope's buffer to the tasks framework as the scope
    ends: on commit inside a transaction (a rollback enqueues nothing), at
    once outside one, exception or not."""
    for (db, labels), records in buffer.take().items():
        if connections[db].in_atomic_block:
            transaction.on_commit(partial(enqueue, db, labels, records), using=db)
        else:
            _outside_atomic(db, labels, records)


def _outside_atomic(db: str, labels: frozenset[str] | None, records: Records) -> None:
    """In autocommit the rows are committed: enqueue now.  Under manual
    transaction management (``set_autocommit(False)``) nothing says when the
    transaction commits, and a worker could read the rows before: recompute
    here, in the writer's transaction, as immediate mode does."""
    if connections[db].get_autocommit():
        enqueue(db, labels, records)
    else:
        process(db, labels, records)  # in the user's transaction: no retry, no transaction of its own


def enqueue(db: str, labels: frozenset[str] | None, records: Records) -> None:
    """Enqueue the recompute of ``records`` as tasks of at most KEYS_PER_TASK
    keys each.  If the backend fails, what was not enqueued is recomputed
    here and now, and a WARNING logged: recorded work is never dropped."""
    from .tasks import recompute_recorded

    config = get_config()
    options = {
        name: config[key]
        for name, key in (("backend", "TASKS_BACKEND"), ("queue_name", "TASKS_QUEUE"), ("priority", "TASKS_PRIORITY"))
        if config[key] is not None
    }
    parts = encode(records)
    label_list = sorted(labels) if labels is not None else None
    for done, part in enumerate(parts):
        try:
            # using() checks the backend alias: a wrong one is a failure to enqueue too.
            (recompute_recorded.using(**options) if options else recompute_recorded).enqueue(db, label_list, part)
        except Exception as error:
            logger.warning(
                "Could not enqueue maintained-field updates on database %r through tasks backend %r "
                "(%s: %s); recomputing them now.",
                db,
                options.get("backend", "default"),
                type(error).__name__,
                error,
            )
            left: Records = {}
            for other in parts[done:]:
                merge(left, decode(other))
            process_retrying(db, labels, left)
            return


def encode(records: Records) -> list[list[list[Any]]]:
    """``records`` as JSON, split into parts of at most KEYS_PER_TASK keys:
    each entry ``[model label, field name, path, hop index, [keys]]``."""
    parts: list[list[list[Any]]] = [[]]
    size = 0
    for (dep, index), pks in records.items():
        spec = dep.spec
        keys = sorted((_json_key(pk) for pk in pks), key=repr)
        for start in range(0, len(keys), KEYS_PER_TASK):
            chunk = keys[start : start + KEYS_PER_TASK]
            if size and size + len(chunk) > KEYS_PER_TASK:
                parts.append([])
                size = 0
            parts[-1].append([spec.model._meta.label, spec.field.name, dep.path, index, chunk])
            size += len(chunk)
    return [part for part in parts if part]


def decode(entries: list[list[Any]]) -> Records:
    """The records :func:`encode` wrote.  An entry whose maintained field or
    path the graph no longer has (a deploy changed them) is logged and skipped."""
    specs = {(spec.model._meta.label, spec.field.name): spec for spec in get_graph().specs}
    records: Records = {}
    for label, field_name, path, index, keys in entries:
        spec = specs.get((label, field_name))
        dep = None
        if spec is not None:
            dep = spec.itself if path == "" else next((d for d in spec.deps if d.path == path), None)
        if dep is None:
            logger.warning(
                "A background task names %s.%s through %r, which is no longer maintained; "
                "skipped. Run rebuild_maintained_fields if the schema changed under pending tasks.",
                label,
                field_name,
                path,
            )
            continue
        field = _key_field(dep, index)
        records.setdefault((dep, index), set()).update(_python_key(field, key) for key in keys)
    return records


def _key_field(dep: Dependency, index: int) -> Any:
    """The field whose values key the records of ``dep`` at ``index``."""
    if index < 0:
        hop = dep.hops[-index]
        return dep.hops[-index - 1].model._meta.get_field(hop.parent_key)  # type: ignore[arg-type]  # set on these hops
    return dep.hops[index].model._meta.pk


def _json_key(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_key(part) for part in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # UUID, Decimal, dates: their field's to_python() reads them back


def _python_key(field: Any, value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_python_key(part, item) for part, item in zip(field.fields, value))
    return field.to_python(value)

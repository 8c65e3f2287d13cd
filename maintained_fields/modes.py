"""The autoupdate mode in force here and now, and ``override_autoupdate``.

Overrides live on a stack of immutable scopes in a :class:`~contextvars.ContextVar`:

* each thread starts with an empty stack, so it runs in the settings default,
  whatever the thread that started it had in force;
* each asyncio task runs in a copy of its creator's context: it sees the
  overrides in force when it was created, and its own overrides are its own;
* ``sync_to_async`` and ``async_to_sync`` run the other side in the caller's
  context, so the code there sees the caller's mode, and its saves join the
  caller's deferred buffer;
* a scope is pushed on entry and popped on exit, exception or not; the
  override object keeps no per-call state, so one decorated function can run
  in many threads and tasks at once.

A generator that yields inside a scope lends the scope to whoever consumes it
until the generator resumes; no context manager can prevent that.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import unittest
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.exceptions import SynchronousOnlyOperation

from . import propagation
from .conf import MODES, get_config, tasks_framework
from .graph import check_labels

IMMEDIATE, DEFERRED, DISABLED, BACKGROUND = MODES
# The modes that record writes and recompute later.
RECORDING = (DEFERRED, BACKGROUND)

Decorated = TypeVar("Decorated", bound=Callable[..., Any])


@dataclass(frozen=True, eq=False)
class Scope:
    owner: override_autoupdate | None
    mode: str
    labels: frozenset[str] | None
    buffer: propagation.Buffer | None
    owns_buffer: bool


_scopes: ContextVar[tuple[Scope, ...]] = ContextVar("maintained_fields_scopes", default=())


def current_scope() -> Scope:
    """The innermost scope here, or the one of the settings default."""
    scopes = _scopes.get()
    if scopes:
        return scopes[-1]
    mode = get_config()["DEFAULT_MODE"]
    scope = _default_scopes.get(mode)
    if scope is None:
        scope = _default_scopes[mode] = Scope(None, mode, None, None, False)
    return scope


# A scope of each default mode, made once: making one costs a microsecond,
# on every write made outside any override (most of a web application's).
_default_scopes: dict[str, Scope] = {}


def get_autoupdate_mode() -> str:
    """Return the mode in force here and now: ``"immediate"``, ``"deferred"``,
    ``"disabled"`` or ``"background"``.

    In a task or thread that outlives the deferred scope it started in, the
    mode is ``"immediate"``: its writes are maintained at once."""
    scope = current_scope()
    if scope.mode == DEFERRED and scope.buffer is not None and scope.buffer.closed:
        return IMMEDIATE
    return scope.mode


class override_autoupdate:
    """Change how maintained fields are kept for a block of code.

    Use it as ``with``/``async with`` block, or to decorate a function, a
    coroutine function or a ``unittest.TestCase`` class (every test, and
    ``setUpClass`` with ``setUpTestData``)::

        with override_autoupdate(mode="deferred"):
            load_spreadsheet(path)

    ``mode`` is ``"immediate"``, ``"deferred"``, ``"disabled"`` or
    ``"background"``; None keeps the mode in force.  ``labels`` limits maintenance in the scope to the
    maintained fields with one of these labels; the others behave as disabled.
    ``disable_when`` names a parameter of the decorated function: a call where
    its value is truthy (``dry_run=True``, passed by keyword or position, or
    by default) runs with the mode ``"disabled"``.

    A deferred scope records which rows changed and recomputes each affected
    row once when it exits, unless it is directly inside another deferred
    scope, whose buffer it joins.  On an exception the recorded work is
    flushed at once outside a transaction, or on commit inside one; the
    exception propagates unchanged.

    A background scope records as a deferred one does and, as it exits,
    enqueues the work as tasks of Django's tasks framework: on commit
    inside a transaction, at once outside one.  Inside a deferred or
    background scope it joins that scope's buffer.
    """

    def __init__(
        self,
        mode: str | None = None,
        *,
        labels: Iterable[str] | str | None = None,
        disable_when: str | None = None,
    ) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(
                f"override_autoupdate(mode={mode!r}): the mode must be one of "
                f"{', '.join(map(repr, MODES))}, or None to keep the current mode."
            )
        if mode == BACKGROUND:
            tasks_framework()
        if isinstance(labels, str):
            labels = (labels,)
        if labels is not None:
            given = labels
            labels = tuple(labels) if isinstance(labels, Iterable) else (labels,)
            if not all(isinstance(label, str) for label in labels):
                raise ValueError(
                    f"override_autoupdate(labels={given!r}): labels takes a label string or a list of them, "
                    "each a label= given to @maintained_field or maintained(); labels=None, the default, "
                    "maintains every field."
                )
            if not labels:
                raise ValueError(
                    f"override_autoupdate(labels={given!r}): labels takes one or more label "
                    "strings; to maintain nothing, use mode='disabled'."
                )
            labels = frozenset(labels)
        if disable_when is not None and not (isinstance(disable_when, str) and disable_when.isidentifier()):
            raise ValueError(
                "override_autoupdate(disable_when=...) takes the name of a keyword "
                f"argument, such as 'dry_run', not {disable_when!r}."
            )
        self.mode = mode
        self.labels: frozenset[str] | None = labels
        self.disable_when = disable_when

    def __repr__(self) -> str:
        return f"override_autoupdate(mode={self.mode!r}, labels={self.labels!r})"

    # Entering and leaving: all per-call state goes on the context's stack.

    def _push(self, mode: str | None) -> None:
        parent = current_scope()
        if self.labels is not None:
            check_labels(self.labels)
        mode = mode or parent.mode
        labels = self.labels if self.labels is not None else parent.labels
        buffer, owns = None, False
        # A deferred scope joins a deferred parent's buffer; a background
        # scope joins a deferred or background one's: the outer block decides.
        if mode == DEFERRED and parent.mode == DEFERRED or mode == BACKGROUND and parent.mode in RECORDING:
            buffer = parent.buffer
        if mode in RECORDING and buffer is None:
            buffer, owns = propagation.Buffer(), True
        _scopes.set(_scopes.get() + (Scope(self, mode, labels, buffer, owns),))

    def _pop(self) -> Scope:
        """Take this override's innermost scope off the stack; where it is
        not the innermost scope, take it off all the same, end it as an
        exception would (:func:`_end_out_of_order`), and raise RuntimeError."""
        scopes = _scopes.get()
        if scopes and scopes[-1].owner is self:
            _scopes.set(scopes[:-1])
            return scopes[-1]
        error = RuntimeError(
            f"{self!r} is exiting, but it is not the innermost override here: "
            "scopes must exit in the reverse order of entry, in the thread or "
            "task that entered them (a generator that yields inside the block "
            "hands it to whoever consumes it)."
        )
        # Left on the stack, the scope would outlive every block around it:
        # its mode would hold here for good, and what it records never flush.
        for position in range(len(scopes) - 1, -1, -1):
            if scopes[position].owner is self:
                _scopes.set(scopes[:position] + scopes[position + 1 :])
                _end_out_of_order(scopes[position], error)
                break
        raise error

    def _exit(self, exc: BaseException | None) -> None:
        scope = self._pop()
        if not scope.owns_buffer or scope.buffer is None:
            return
        if not scope.buffer:
            # Closed all the same: a task or thread that outlives the scope
            # then maintains its writes itself instead of recording them here.
            scope.buffer.take()
            return
        if _in_event_loop() and not os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):
            message = (
                f"{self!r} ended with {len(scope.buffer)} pending update(s) inside a "
                "running event loop, where the database cannot be used synchronously. "
                "Use 'async with override_autoupdate(...)' or decorate the coroutine "
                "function; run rebuild_maintained_fields to repair these rows."
            )
            if exc is None:
                raise SynchronousOnlyOperation(message)
            propagation.logger.error(message)
            return
        _finish(scope)(scope.buffer, exc)

    async def _aexit(self, exc: BaseException | None) -> None:
        scope = self._pop()
        if scope.owns_buffer and scope.buffer is not None:
            await sync_to_async(_finish(scope), thread_sensitive=True)(scope.buffer, exc)

    def _mode_for_call(
        self, signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str | None:
        if signature is None:
            return self.mode
        # Bound to the signature, so that the argument counts however it is passed.
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return self.mode  # the call itself raises the TypeError
        bound.apply_defaults()
        value = bound.arguments.get(self.disable_when)  # type: ignore[arg-type]  # set where a signature is
        if value is None:
            extra = [p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
            value = bound.arguments[extra[0]].get(self.disable_when) if extra else None
        return DISABLED if value else self.mode

    def _signature_for(self, decorated: Callable[..., Any]) -> inspect.Signature | None:
        """The signature ``disable_when`` is looked up in, checked at decoration."""
        if self.disable_when is None:
            return None
        signature = inspect.signature(decorated)
        parameters = signature.parameters
        if self.disable_when not in parameters and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            raise TypeError(
                f"override_autoupdate(disable_when={self.disable_when!r}) decorates "
                f"{decorated.__qualname__}{signature}, which has no parameter {self.disable_when!r}."
            )
        return signature

    def _no_disable_when(self) -> None:
        if self.disable_when is not None:
            raise TypeError(
                "override_autoupdate(disable_when=...) reads the decorated function's "
                "keyword arguments, so it works only as a decorator."
            )

    def __enter__(self) -> override_autoupdate:
        self._no_disable_when()
        self._push(self.mode)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        self._exit(exc)

    async def __aenter__(self) -> override_autoupdate:
        self._no_disable_when()
        self._push(self.mode)
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        await self._aexit(exc)

    # Decorating.

    def __call__(self, decorated: Decorated) -> Decorated:
        if isinstance(decorated, type):
            return self._decorate_class(decorated)  # type: ignore[return-value]  # the class, decorated in place
        if not callable(decorated):
            raise TypeError(f"override_autoupdate cannot decorate {decorated!r}.")
        if inspect.isgeneratorfunction(decorated) or inspect.isasyncgenfunction(decorated):
            raise TypeError(
                f"override_autoupdate cannot decorate the generator function {decorated.__qualname__}(): "
                "its body runs only while it is iterated, after the call has returned. Put "
                "'with override_autoupdate(...)' around the loop that consumes it instead."
            )
        signature = self._signature_for(decorated)
        if iscoroutinefunction(decorated):

            @functools.wraps(decorated)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                self._push(self._mode_for_call(signature, args, kwargs))
                try:
                    result = await decorated(*args, **kwargs)
                except BaseException as exc:
                    await self._aexit(exc)
                    raise
                await self._aexit(None)
                return result

            return run_async  # type: ignore[return-value]

        @functools.wraps(decorated)
        def run(*args: Any, **kwargs: Any) -> Any:
            self._push(self._mode_for_call(signature, args, kwargs))
            try:
                result = decorated(*args, **kwargs)
            except BaseException as exc:
                self._exit(exc)
                raise
            self._exit(None)
            return result

        return run  # type: ignore[return-value]

    def _decorate_class(self, cls: type) -> type:
        if not issubclass(cls, unittest.TestCase):
            raise TypeError(
                f"override_autoupdate can decorate functions, coroutine functions and "
                f"unittest.TestCase classes, not {cls.__qualname__}."
            )
        self._no_disable_when()
        override = self
        set_up_class = cls.setUpClass.__func__  # type: ignore[attr-defined]
        set_up = cls.setUp

        def setUpClass(klass: type) -> None:
            override._push(override.mode)
            try:
                set_up_class(klass)
            except BaseException as exc:
                override._exit(exc)
                raise
            override._exit(None)

        def setUp(test: unittest.TestCase) -> None:
            override._push(override.mode)
            test.addCleanup(override._exit, None)
            set_up(test)

        cls.setUpClass = classmethod(setUpClass)  # type: ignore[assignment]
        cls.setUp = setUp  # type: ignore[method-assign,assignment]
        return cls


def _end_out_of_order(scope: Scope, error: BaseException) -> None:
    """End ``scope``, taken off the stack out of order, as if ``error`` left
    it: its recorded work is flushed now outside a transaction, on commit
    inside one, and a failure of that is logged."""
    buffer = scope.buffer
    if not scope.owns_buffer or buffer is None:
        return
    if buffer and _in_event_loop() and not os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):
        buffer.take()
        propagation.logger.error(
            "%r ended out of order inside a running event loop with pending updates; "
            "run rebuild_maintained_fields to repair these rows.", scope.owner,
        )
        return
    _finish(scope)(buffer, error)


def _finish(scope: Scope) -> Callable[[propagation.Buffer, BaseException | None], None]:
    """What empties the buffer of ``scope`` as it ends: the deferred flush, or
    the background mode's hand-over to the tasks framework."""
    if scope.mode == BACKGROUND:
        from . import background

        return background.finish
    return propagation.finish


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

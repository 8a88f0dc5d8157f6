"""Where a request's time went: each wait the storm can see is charged to the request that waited.

A producer of waits (a pool probe, a simulated upstream, a latency proxy, the worker pool)
calls :func:`charge` with the kind of wait, the name of what was waited for and the seconds
waited, from the code path of the request itself. The driver opens one :class:`Ledger` per
request with :func:`ledger` (or keeps one per user and :meth:`Ledger.clear`\\ s it between
requests); the ledger travels in a context variable, so a wait charged in a thread the
request handed work to (``anyio.to_thread``, ``asyncio.to_thread`` copy the context) lands
on the same request. With no ledger open, :func:`charge` does nothing.

Each wait is kept with the instant it ended, so that the fold can tell the time a request
spent waiting for something else from the time the event loop was held by another request
(a loop stall that overlaps the request, outside its own waits and its own long steps).
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from time import perf_counter
from typing import Any, TypeVar

from .. import _clock as clock
from .._model.result import OWN_STEP

__all__ = [
    "LONG_STEP",
    "OWN",
    "WAIT_KINDS",
    "Ledger",
    "OwnSteps",
    "attributing",
    "bind",
    "charge",
    "charge_to",
    "current",
    "ledger",
    "switched",
]

#: The kinds of wait, as the breakdown names them.
WAIT_KINDS = ("worker", "pool", "connect", "upstream", "proxy", "loop")
#: A step of the request's own code that held the loop (its own service, not a wait).
OWN = OWN_STEP

_T = TypeVar("_T")


class Ledger:
    """The waits of one request, in the order they ended.

    ``entries`` holds ``(kind, name, seconds, ended)``, ``ended`` an instant
    of the engine's clock (``_clock.now()``); one append each, so that threads charging the same request never tear one.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, float, float]] = []

    @property
    def waits(self) -> list[tuple[str, str, float]]:
        """``(kind, name, seconds)`` of each wait (the request's own long steps left out)."""
        return [(k, n, s) for k, n, s, _ in self.entries if k != OWN]

    def total(self, kind: str | None = None) -> float:
        """Seconds charged, of one kind or of all (the request's own steps are not waits)."""
        return sum(s for k, _, s in self.waits if kind is None or k == kind)

    def clear(self) -> None:
        """Forget the waits (the next request of the same user starts afresh)."""
        self.entries.clear()


_CURRENT: ContextVar[Ledger | None] = ContextVar("pytest_storm_ledger", default=None)


class _Switch:
    """Whether the drivers open ledgers (on unless a benchmark measures their cost)."""

    on = True


def attributing() -> bool:
    """True when storms starting now charge waits to their requests."""
    return _Switch.on


@contextmanager
def switched(on: bool) -> Iterator[None]:
    """Storms started inside the block open ledgers (or not): for measuring their cost."""
    previous, _Switch.on = _Switch.on, on
    try:
        yield
    finally:
        _Switch.on = previous


def charge(kind: str, name: str, seconds: float, *, ended: float | None = None) -> None:
    """Charge *seconds* of waiting for *name* (a wait of *kind*) to the current request.

    The wait ended now, or at the instant *ended* (``_clock.now()``).
    """
    book = _CURRENT.get()
    if book is not None and seconds > 0:
        book.entries.append((kind, name, seconds, clock.now() if ended is None else ended))


def charge_to(
    book: Ledger | None, kind: str, name: str, seconds: float, ended: float | None = None
) -> None:
    """Charge a wait to *book*, a ledger read earlier (work that runs without the context,
    such as ``loop.run_in_executor``'s)."""
    if book is not None and seconds > 0:
        book.entries.append((kind, name, seconds, clock.now() if ended is None else ended))


def current() -> Ledger | None:
    """The ledger of the request whose code is running, if one is open."""
    return _CURRENT.get()


def bind(book: Ledger | None) -> None:
    """Make *book* the current ledger of this context for good (a user's task or thread
    that keeps one ledger for all its requests)."""
    _CURRENT.set(book)


@contextmanager
def ledger() -> Iterator[Ledger]:
    """Open a ledger for the request about to run in this context."""
    book = Ledger()
    token = _CURRENT.set(book)
    try:
        yield book
    finally:
        _CURRENT.reset(token)


#: Where the steps of a request no monitor watches write their end.
_NOWHERE = [0.0]

#: A step of a request's own code at least this long is kept (seconds): shorter ones
#: cannot make a loop stall the monitor sees (5 ms).
LONG_STEP = 0.001


#: No step awaits handing to the loop (see :meth:`OwnSteps.resume`).
_NOTHING: Any = object()


class OwnSteps:
    """Awaits a request's coroutine, keeping each step of its own code that held the loop
    for :data:`LONG_STEP` or more as an :data:`OWN` entry of its ledger.

    A loop stall that a request caused itself is its own service, not a wait for the loop:
    the fold leaves these steps out of the stalls it charges to the request. The end of
    every step is written to *progress* (a one-item list a loop monitor reads): the loop
    ran its callbacks until then, so no call can have held it for longer since.

    A caller may run a request's first step itself, timed the same way (:meth:`own` keeps
    it when long), and await the wrapper only if the request suspended
    (:meth:`resume`): most requests complete in their first step.
    """

    __slots__ = ("_book", "_pending", "coro", "progress")

    def __init__(
        self, coro: Coroutine[Any, Any, _T], book: Ledger, progress: list[float] | None = None
    ) -> None:
        #: The request awaited. A caller that awaits one request after another for the same
        #: ledger may set the next one here and await the same wrapper again.
        self.coro: Coroutine[Any, Any, Any] = coro
        self._book = book
        #: Where the end of each step is written.
        self.progress = _NOWHERE if progress is None else progress
        self._pending: Any = _NOTHING

    def resume(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        """Await *coro* next, whose first step the caller ran and which yielded *yielded*:
        the wrapper hands that to the loop first, then times the steps that follow."""
        self.coro = coro
        self._pending = yielded

    def __await__(self) -> OwnSteps:
        return self

    def __iter__(self) -> OwnSteps:
        return self

    def __next__(self) -> Any:
        pending = self._pending
        if pending is not _NOTHING:
            self._pending = _NOTHING
            return pending
        # `send(None)` written out: the loop resumes a request through here at every step,
        # and one call less is a tenth of the wrapper's cost.
        progress = self.progress
        began = perf_counter()
        try:
            return self.coro.send(None)
        finally:
            progress[0] = ended = perf_counter()
            if ended - began >= LONG_STEP:
                self.own(began, ended - began)

    def send(self, value: Any) -> Any:
        """Run one step of the request."""
        progress = self.progress
        began = perf_counter()
        try:
            return self.coro.send(value)
        finally:
            progress[0] = ended = perf_counter()
            if ended - began >= LONG_STEP:
                self.own(began, ended - began)

    def throw(self, *args: Any) -> Any:
        """Raise into the request (a cancellation, a timeout)."""
        self._pending = _NOTHING
        began = perf_counter()
        try:
            return self.coro.throw(*args)
        finally:
            ended = self.progress[0] = perf_counter()
            if ended - began >= LONG_STEP:
                self.own(began, ended - began)

    def close(self) -> None:
        """Close the request's coroutine."""
        self._pending = _NOTHING
        self.coro.close()

    def own(self, began: float, took: float) -> None:
        """Keep a step of the request's own code that began at *began* and took *took* s."""
        # Steps are timed on the wall clock; the ledger is on the engine's (the same in
        # any round that keeps steps: a virtual round does not).
        self._book.entries.append((OWN, "", took, began + took))

"""Where a request's time went: each wait the storm can see is charged to the request that waited.

A producer of waits (a pool probe, a simulated upstream, a latency proxy, the worker pool)
calls :func:`charge` with the kind of wait, the name of what was waited for and the seconds
waited, from the code path of the request itself. The driver opens one :class:`Ledger` per
request with :func:`ledger`; the ledger travels in a context variable, so a wait charged
in a thread the request handed work to (``anyio.to_thread``, ``asyncio.to_thread`` copy the
context) lands on the same request. With no ledger open, :func:`charge` does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["WAIT_KINDS", "Ledger", "charge", "current", "ledger"]

#: The kinds of wait, as the breakdown names them.
WAIT_KINDS = ("worker", "pool", "connect", "upstream", "proxy", "loop")


class Ledger:
    """The waits of one request: ``(kind, name, seconds)`` in the order they ended."""

    __slots__ = ("waits",)

    def __init__(self) -> None:
        self.waits: list[tuple[str, str, float]] = []

    def total(self, kind: str | None = None) -> float:
        """Seconds charged, of one kind or of all."""
        return sum(s for k, _, s in self.waits if kind is None or k == kind)


_CURRENT: ContextVar[Ledger | None] = ContextVar("pytest_storm_ledger", default=None)


def charge(kind: str, name: str, seconds: float) -> None:
    """Charge *seconds* of waiting for *name* (a wait of *kind*) to the current request."""
    book = _CURRENT.get()
    if book is not None and seconds > 0:
        book.waits.append((kind, name, seconds))


def current() -> Ledger | None:
    """The ledger of the request whose code is running, if one is open."""
    return _CURRENT.get()


@contextmanager
def ledger() -> Iterator[Ledger]:
    """Open a ledger for the request about to run in this context."""
    book = Ledger()
    token = _CURRENT.set(book)
    try:
        yield book
    finally:
        _CURRENT.reset(token)

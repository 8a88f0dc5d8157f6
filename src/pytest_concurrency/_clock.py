"""The engine's one reading of "now": wall time, or the virtual clock of a virtual round.

Every instant the engine compares (intended send times, completions, first bytes,
timeouts, the ends of simulated waits) is read through :func:`now`, so that a round
on a :class:`~pytest_concurrency._engine.virtual.VirtualClockLoop` measures in the
loop's virtual seconds and any other round in ``perf_counter()`` seconds. Readers call
``clock.now()`` through the module each time: the virtual loop rebinds it while it runs.

It sits at the top of the package and imports nothing from it, so that the engine, the
drivers and the simulated waits can all read it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter

__all__ = ["now", "reading", "wall"]

#: The clock the engine reads; ``perf_counter`` unless a virtual round is running.
now: Callable[[], float] = perf_counter


def wall() -> bool:
    """True while the engine reads wall time (no virtual round is running)."""
    return now is perf_counter


@contextmanager
def reading(source: Callable[[], float]) -> Iterator[None]:
    """Read *source* as "now" inside the block (nests; the previous clock comes back)."""
    global now  # noqa: PLW0603 - the one rebinding of the engine's clock
    previous, now = now, source
    try:
        yield
    finally:
        now = previous

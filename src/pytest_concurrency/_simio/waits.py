"""Process-wide simulated waits and the recorder of how late they come back.

``simulated_io`` (async) and ``blocking_io`` (``time.sleep``) wait one sample and report
how late the wait came back to ``wait_recorder``; the middleware and the fake upstream
wait through the same two functions, so a storm sees every simulated wait.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from .. import _clock as clock
from .._metrics.percentile import quantile
from .._model.extras import SimulatedWaits, WaitFigures
from .._probes.attribution import current
from .distributions import Latency, LatencyLike, as_latency

__all__ = [
    "WaitErrors",
    "WaitRecorder",
    "WaitReport",
    "blocking_io",
    "seed_latency",
    "simulated_io",
    "wait_recorder",
]

_DEFAULT_SEED = 0

_default_rng = random.Random(_DEFAULT_SEED)


def seed_latency(seed: int | None = _DEFAULT_SEED) -> None:
    """Reseed the process-wide generator used when no ``rng`` or ``seed`` is given."""
    _default_rng.seed(seed)


# ---------------------------------------------------------------------- wait recording


@dataclass(frozen=True)
class WaitErrors:
    """How late one kind of wait came back: actual minus requested, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    #: The waits as requested: the model's own latency, for the ``p99_ratio`` budget.
    requested_p50_ms: float = 0.0
    requested_p99_ms: float = 0.0

    @classmethod
    def from_us(cls, errors_us: Sequence[int], requested_us: Sequence[int] = ()) -> WaitErrors:
        """Summarise errors recorded in integer microseconds (0.0 everywhere when empty)."""
        if not errors_us:
            return cls(0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(errors_us)
        requested = sorted(requested_us)
        return cls(
            count=len(ordered),
            p50_ms=quantile(ordered, 0.5) / 1000.0,
            p99_ms=quantile(ordered, 0.99) / 1000.0,
            max_ms=ordered[-1] / 1000.0,
            mean_ms=sum(ordered) / len(ordered) / 1000.0,
            requested_p50_ms=quantile(requested, 0.5) / 1000.0 if requested else 0.0,
            requested_p99_ms=quantile(requested, 0.99) / 1000.0 if requested else 0.0,
        )

    def to_dict(self) -> dict[str, float]:
        """The figures as a JSON-ready dict."""
        return {
            "count": self.count,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
            "requested_p50_ms": self.requested_p50_ms,
            "requested_p99_ms": self.requested_p99_ms,
        }


@dataclass(frozen=True)
class WaitReport:
    """Simulated waits seen between ``WaitRecorder.start()`` and ``stop()``."""

    async_waits: WaitErrors
    blocking_waits: WaitErrors

    def to_dict(self) -> dict[str, dict[str, float]]:
        """The figures as a JSON-ready dict."""
        return self.record().to_dict()

    def record(self) -> SimulatedWaits:
        """The figures as a result keeps them (``result.simulated_waits``)."""
        return SimulatedWaits(
            WaitFigures.from_dict(self.async_waits.to_dict()),
            WaitFigures.from_dict(self.blocking_waits.to_dict()),
        )


class WaitRecorder:
    """Collects how late simulated waits return, while started; a no-op otherwise.

    Lateness is what a loaded event loop or a busy GIL adds on top of the requested wait;
    a storm reports it so a reader can tell the app's latency from the harness's. Each wait
    appends one int to a list (atomic under the GIL), so recording takes no lock.
    """

    def __init__(self) -> None:
        self._active = False
        self._async_us: list[int] = []
        self._blocking_us: list[int] = []
        # When each wait ended (perf_counter), so a storm can keep its measured window.
        self._async_at: list[float] = []
        self._blocking_at: list[float] = []
        self._async_req: list[int] = []
        self._blocking_req: list[int] = []
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether waits are being recorded."""
        return self._active

    def start(self) -> None:
        """Forget earlier waits and record from now on."""
        with self._lock:
            self._async_us = []
            self._blocking_us = []
            self._async_at = []
            self._blocking_at = []
            self._async_req = []
            self._blocking_req = []
            self._active = True

    def merge_async(self, waits: Sequence[tuple[int, int, float]]) -> None:
        """Add async waits timed in another process: (error µs, requested µs, ended at
        ``perf_counter``, which is the same clock in every process of the machine on Linux)."""
        if not self._active:
            return
        with self._lock:
            for error_us, requested_us, at in waits:
                self._async_us.append(error_us)
                self._async_req.append(requested_us)
                self._async_at.append(at)

    def stop(self, window: tuple[float, float] | None = None) -> WaitReport:
        """Stop recording and summarise the waits since ``start()``.

        With *window* (``perf_counter()`` start and end), only waits that ended inside it
        count: a storm's warm-up and drain are left out, as they are from its latency.
        """
        with self._lock:
            self._active = False
            async_us, self._async_us = self._async_us, []
            blocking_us, self._blocking_us = self._blocking_us, []
            async_at, self._async_at = self._async_at, []
            blocking_at, self._blocking_at = self._blocking_at, []
            async_req, self._async_req = self._async_req, []
            blocking_req, self._blocking_req = self._blocking_req, []
        if window is not None:
            lo, hi = window
            inside = [lo <= at <= hi for at in async_at]
            async_us = [e for e, keep in zip(async_us, inside, strict=False) if keep]
            async_req = [r for r, keep in zip(async_req, inside, strict=False) if keep]
            inside = [lo <= at <= hi for at in blocking_at]
            blocking_us = [e for e, keep in zip(blocking_us, inside, strict=False) if keep]
            blocking_req = [r for r, keep in zip(blocking_req, inside, strict=False) if keep]
        return WaitReport(
            WaitErrors.from_us(async_us, async_req), WaitErrors.from_us(blocking_us, blocking_req)
        )


wait_recorder = WaitRecorder()
"""The process-wide recorder every simulated wait reports to."""

_perf_counter = time.perf_counter

#: What a wait of ``simulated_io``/``blocking_io`` is charged to, in a request's breakdown.
SIMULATED = "simulated I/O"


def _charge(name: str, start: float, seconds: float, waited: float) -> None:
    """Charge the wait as asked to the request that made it; lateness past it is not the
    upstream's (a loop held by someone else, or the request's own thread descheduled)."""
    book = current()
    if book is not None and seconds > 0:
        spent = min(seconds, waited)
        book.entries.append(("upstream", name, spent, start + spent))


async def _wait_async(seconds: float, name: str = SIMULATED) -> float:
    # The engine's clock: under virtual time an async wait costs virtual seconds only.
    start = clock.now()
    await anyio.sleep(seconds)
    end = clock.now()
    if end - start < seconds:
        # uvloop's timers count whole milliseconds and may fire early: a simulated wait,
        # like a real one, never ends before its time.
        deadline = start + seconds
        while end < deadline:
            await anyio.sleep(deadline - end)
            end = clock.now()
    waited = end - start
    _charge(name, start, seconds, waited)
    if wait_recorder._active:
        wait_recorder._async_us.append(round((waited - seconds) * 1_000_000))
        wait_recorder._async_req.append(round(seconds * 1_000_000))
        wait_recorder._async_at.append(end)
    return waited


def _wait_blocking(seconds: float, name: str = SIMULATED) -> float:
    if seconds <= 0.0:
        # time.sleep(0) still costs ~100 µs of timer slack on Linux; a zero wait skips it.
        return 0.0
    start = _perf_counter()
    time.sleep(seconds)
    end = _perf_counter()
    waited = end - start
    if current() is not None:
        _charge(name, (end if clock.wall() else clock.now()) - waited, seconds, waited)
    if wait_recorder._active:
        wait_recorder._blocking_us.append(round((waited - seconds) * 1_000_000))
        wait_recorder._blocking_req.append(round(seconds * 1_000_000))
        # A blocking wait is timed on the wall clock (it blocks the thread for real), but
        # stamped on the engine's clock, which the storm's window is measured in.
        wait_recorder._blocking_at.append(end if clock.wall() else clock.now())
    return waited


def _draw(latency: LatencyLike, rng: random.Random | None) -> float:
    dist = latency if isinstance(latency, Latency) else as_latency(latency)
    return dist.sample(_default_rng if rng is None else rng)


async def simulated_io(latency: LatencyLike, *, rng: random.Random | None = None) -> float:
    """Await one sampled wait (``anyio.sleep``), as an async driver would; return seconds waited."""
    return await _wait_async(_draw(latency, rng))


def blocking_io(latency: LatencyLike, *, rng: random.Random | None = None) -> float:
    """Block the thread for one sampled wait (``time.sleep``); return seconds waited."""
    return _wait_blocking(_draw(latency, rng))

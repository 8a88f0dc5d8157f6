"""Thread-pool probe: how busy the app's thread pools were, and how long work waited for a thread.

``ThreadPoolProbe`` samples, on the loop, how many tokens of anyio's default thread
limiter are borrowed and how many tasks wait for one (FastAPI and Starlette run ``def``
endpoints there); the same figures for the loop's default executor, which Quart and
``asyncio.to_thread`` use through ``loop.run_in_executor(None, ...)``; and the threads busy
inside asgiref's ``SyncToAsync`` (Django under ASGI runs each request's sync code on a
thread of its own).

Every wrapper goes through the patch registry when a probe starts and comes off when it
stops, so probes nest and nothing is patched while no probe runs. The wrappers are the
same whichever probe installed them: each hands its figures to every probe running on
the same loop.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from array import array
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from time import perf_counter
from typing import Any, Protocol

import anyio.to_thread

from .._metrics import new_histogram, record_many
from .._model.probes import ANYIO_LIMITER, ASGIREF_THREADS, DEFAULT_EXECUTOR, PoolSecond, PoolUsage
from ._common import _percentiles_ms, _running_asyncio_loop, _StartStop
from .attribution import charge, charge_to, current
from .patches import Patch, remove_all, wrap

__all__ = ["ANYIO_LIMITER", "ASGIREF_THREADS", "DEFAULT_EXECUTOR", "ThreadPoolProbe"]


class _Limiter(Protocol):
    def statistics(self) -> Any: ...


_UNBOUNDED = -1
_UNKNOWN = -1


class _Series:
    """Samples of one pool: time (µs from the probe's start), busy, waiting, size."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.at = array("q")
        self.busy = array("q")
        self.waiting = array("q")
        self.size = array("q")
        self.waits: array[int] | None = None

    def usage(self) -> PoolUsage:
        n = len(self.at)
        sizes = {s for s in self.size}
        size = None if not sizes or _UNBOUNDED in sizes else max(sizes)
        known_waiting = n > 0 and _UNKNOWN not in self.waiting
        full = saturated = 0
        for i in range(n):
            if self.size[i] != _UNBOUNDED and self.busy[i] >= self.size[i]:
                full += 1
                if self.waiting[i] > 0:
                    saturated += 1
        wait_p99 = None
        if self.waits:
            histogram = new_histogram()
            record_many(histogram, self.waits)
            wait_p99 = _percentiles_ms(histogram, 99.0)[0]
        return PoolUsage(
            name=self.name,
            size=size,
            mean_busy=sum(self.busy) / n if n else 0.0,
            max_busy=max(self.busy, default=0),
            full=full / n if n else 0.0,
            saturation=saturated / n if n else 0.0,
            mean_waiting=sum(self.waiting) / n if known_waiting else None,
            wait_p99_ms=wait_p99,
            samples=n,
            timeline=self._timeline(known_waiting),
        )

    def _timeline(self, known_waiting: bool) -> list[PoolSecond]:
        seconds: dict[int, list[int]] = {}
        for i in range(len(self.at)):
            seconds.setdefault(self.at[i] // 1_000_000, []).append(i)
        points = []
        for second, rows in sorted(seconds.items()):
            busy = [self.busy[i] for i in rows]
            points.append(
                PoolSecond(
                    second=second,
                    mean_busy=sum(busy) / len(busy),
                    max_busy=max(busy),
                    mean_waiting=sum(self.waiting[i] for i in rows) / len(rows)
                    if known_waiting
                    else None,
                )
            )
        return points


# -- anyio's default limiter: the wait for a token --------------------------------------------

_SINKS_LOCK = threading.Lock()
# Loop -> wait times (µs) of anyio.to_thread.run_sync calls on the default limiter, one
# array per probe on that loop. Tuples are replaced, never changed, so a worker thread
# reading one while a probe starts or stops sees a whole one.
_WAIT_SINKS: dict[asyncio.AbstractEventLoop, tuple[array[int], ...]] = {}


def _add_sink(
    sinks: dict[asyncio.AbstractEventLoop, tuple[array[int], ...]],
    loop: asyncio.AbstractEventLoop,
    sink: array[int],
) -> None:
    with _SINKS_LOCK:
        sinks[loop] = (*sinks.get(loop, ()), sink)


def _drop_sink(
    sinks: dict[asyncio.AbstractEventLoop, tuple[array[int], ...]],
    loop: asyncio.AbstractEventLoop,
    sink: array[int],
) -> None:
    with _SINKS_LOCK:
        left = tuple(s for s in sinks.get(loop, ()) if s is not sink)
        if left:
            sinks[loop] = left
        else:
            sinks.pop(loop, None)


def _timed_run_sync(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def run_sync(
        func: Callable[..., Any], *args: Any, limiter: Any = None, **kwargs: Any
    ) -> Any:
        sinks: tuple[array[int], ...] | None = None
        if limiter is None and _WAIT_SINKS:
            try:
                sinks = _WAIT_SINKS.get(asyncio.get_running_loop())
            except RuntimeError:  # another backend
                sinks = None
        if not sinks:
            return await original(func, *args, limiter=limiter, **kwargs)
        queued = perf_counter()

        def timed(*inner: Any) -> Any:
            # In the worker thread, which runs in a copy of the request's context.
            started = perf_counter()
            waited = int((started - queued) * 1e6)
            for sink in sinks:
                sink.append(waited)
            charge("worker", ANYIO_LIMITER, started - queued, ended=started)
            return func(*inner)

        return await original(timed, *args, limiter=limiter, **kwargs)

    run_sync.__wrapped__ = original  # type: ignore[attr-defined]
    run_sync.__doc__ = original.__doc__
    return run_sync


# -- asgiref: threads busy in SyncToAsync -------------------------------------------------------


class _BusyCounter:
    """Threads inside asgiref's ``SyncToAsync`` right now, and the peak since the last read.

    One counter per probe, fed by every thread of the process: probes running at the same
    time on several loops see each other's threads.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.busy += 1
            self.peak = max(self.peak, self.busy)

    def leave(self) -> None:
        with self.lock:
            self.busy -= 1

    def read(self) -> tuple[int, int]:
        with self.lock:
            busy, peak = self.busy, self.peak
            self.peak = busy
        return busy, peak


class _Counters:
    """The counters of the running probes; the tuple is replaced, never changed (see _WAIT_SINKS)."""

    live: tuple[_BusyCounter, ...] = ()


_ASGIREF_COUNTERS = _Counters()


#: When the request's code handed its call to ``SyncToAsync`` (set around ``__call__``, so
#: that the context asgiref copies for the thread carries it).
_SUBMITTED: ContextVar[float] = ContextVar("pytest_storm_sync_to_async", default=0.0)


def _stamped_call(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _SUBMITTED.set(perf_counter())
        try:
            return await original(self, *args, **kwargs)
        finally:
            _SUBMITTED.reset(token)

    __call__.__wrapped__ = original  # type: ignore[attr-defined]
    return __call__


def _charged(child: Callable[[], Any], took_thread: float) -> Callable[[], Any]:
    """*child* (run by asgiref inside the request's copied context), charging the request
    the wait for the thread first."""

    def timed() -> Any:
        submitted = _SUBMITTED.get()
        if submitted:
            charge("worker", ASGIREF_THREADS, took_thread - submitted, ended=took_thread)
        return child()

    timed._storm_timed = True  # type: ignore[attr-defined]
    return timed


def _counted_thread_handler(original: Callable[..., Any]) -> Callable[..., Any]:
    def thread_handler(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Runs on the worker thread: locks, not the loop, keep the counts right.
        took = perf_counter()
        counters = _ASGIREF_COUNTERS.live
        for counter in counters:
            counter.enter()
        # (loop, exc_info, task_context, func, child): asgiref runs func(child), which
        # enters the request's copied context and calls child there.
        if len(args) == 5 and callable(args[4]) and not hasattr(args[4], "_storm_timed"):
            args = (*args[:4], _charged(args[4], took))
        try:
            return original(self, *args, **kwargs)
        finally:
            for counter in counters:
                counter.leave()

    thread_handler.__wrapped__ = original  # type: ignore[attr-defined]
    return thread_handler


def _sync_to_async() -> type[Any] | None:
    try:
        from asgiref.sync import SyncToAsync
    except ImportError:  # pragma: no cover - asgiref is a dependency
        return None
    return SyncToAsync


# -- the loop's default executor ----------------------------------------------------------------

_QUEUED, _RUNNING, _DROPPED = 0, 1, 2


def _default_workers() -> int:
    # What ThreadPoolExecutor() picks when the loop creates its default executor.
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return min(32, (count or 1) + 4)


class _ExecutorWatch:
    """Work sent to one loop's default executor: threads busy, work queued, waits for a thread.

    Shared by every probe on the loop; each probe adds a sink for the waits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.busy = 0
        self.waiting = 0
        self.probes = 0
        self.sinks: tuple[array[int], ...] = ()
        #: The size the loop's default executor will have once made (read once: the
        #: probe asks every millisecond, and counting CPUs is a system call).
        self.default_workers = _default_workers()

    def size(self) -> int:
        executor = getattr(self.loop, "_default_executor", None)
        if executor is None:
            return self.default_workers
        workers = getattr(executor, "_max_workers", None)
        return workers if isinstance(workers, int) else _UNBOUNDED

    def watches(self, executor: Any) -> bool:
        return executor is None or executor is getattr(self.loop, "_default_executor", None)

    def run_in_executor(
        self, original: Callable[..., asyncio.Future[Any]], func: Callable[..., Any], args: Any
    ) -> asyncio.Future[Any]:
        queued = perf_counter()
        state = [_QUEUED]
        lock = self.lock
        # The executor's threads do not run in the request's context: its ledger, read here.
        book = current()

        def timed(*inner: Any) -> Any:
            started = perf_counter()
            with lock:
                if state[0] == _QUEUED:
                    self.waiting -= 1
                state[0] = _RUNNING
                self.busy += 1
                sinks = self.sinks
            waited = int((started - queued) * 1e6)
            for sink in sinks:
                sink.append(waited)
            charge_to(book, "worker", DEFAULT_EXECUTOR, started - queued, started)
            try:
                return func(*inner)
            finally:
                with lock:
                    self.busy -= 1

        def settled(*_: Any) -> None:
            # Cancelled before a thread took it: the work never runs, so it leaves the queue.
            with lock:
                if state[0] == _QUEUED:
                    self.waiting -= 1
                    state[0] = _DROPPED

        with lock:
            self.waiting += 1
        try:
            future = original(None, timed, *args)
        except BaseException:
            settled()
            raise
        future.add_done_callback(settled)
        return future


_EXECUTORS: dict[asyncio.AbstractEventLoop, _ExecutorWatch] = {}


def _watched_run_in_executor(watch: _ExecutorWatch) -> Callable[[Any], Any]:
    def factory(original: Callable[..., asyncio.Future[Any]]) -> Callable[..., Any]:
        def run_in_executor(executor: Any, func: Callable[..., Any], *args: Any) -> Any:
            if not watch.watches(executor):
                return original(executor, func, *args)
            return watch.run_in_executor(original, func, args)

        run_in_executor.__wrapped__ = original  # type: ignore[attr-defined]
        run_in_executor.__doc__ = original.__doc__
        return run_in_executor

    return factory


# -- the probe --------------------------------------------------------------------------------


class ThreadPoolProbe(_StartStop):
    """Samples how busy the app's thread pools are during a storm: anyio's, the loop's, asgiref's.

    Use ``async with ThreadPoolProbe() as probe:`` on the loop that runs the app;
    ``probe.result`` is a list of :class:`PoolUsage` once it stopped. The loop's default
    executor is listed only when work was sent to it while the probe ran.
    """

    def __init__(
        self,
        *,
        interval_ms: float = 1.0,
        limiters: Mapping[str, _Limiter] | None = None,
        asgiref: bool = True,
        measure_wait: bool = True,
        default_executor: bool = True,
    ) -> None:
        if not (isinstance(interval_ms, int | float) and math.isfinite(interval_ms)) or (
            interval_ms <= 0
        ):
            raise ValueError(f"interval_ms={interval_ms!r} must be a number greater than 0")
        self.interval_ms = float(interval_ms)
        self._interval = interval_ms / 1000
        self._extra = dict(limiters or {})
        self._asgiref = asgiref
        self._measure_wait = measure_wait
        self._default_executor = default_executor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._limiters: list[tuple[_Series, _Limiter]] = []
        self._wait_sink: array[int] | None = None
        self._asgiref_series: _Series | None = None
        self._asgiref_counter: _BusyCounter | None = None
        self._executor: _ExecutorWatch | None = None
        self._executor_series: _Series | None = None
        self._executor_waits: array[int] | None = None
        self._patches: list[Patch] = []
        self._started = 0.0
        self._result: list[PoolUsage] | None = None

    @property
    def result(self) -> list[PoolUsage]:
        """Usage of each pool, once the probe has stopped."""
        if self._result is None:
            raise RuntimeError("the ThreadPoolProbe has not been stopped yet")
        return self._result

    async def start(self) -> None:
        """Begin sampling the pools of the running loop."""
        if self._loop is not None:
            raise RuntimeError("a ThreadPoolProbe can be started once")
        loop = _running_asyncio_loop("ThreadPoolProbe")
        self._loop = loop
        default = anyio.to_thread.current_default_thread_limiter()
        anyio_series = _Series(ANYIO_LIMITER)
        self._limiters = [(anyio_series, default)]
        self._limiters += [(_Series(name), limiter) for name, limiter in self._extra.items()]
        try:
            if self._measure_wait:
                self._wait_sink = anyio_series.waits = array("q")
                _add_sink(_WAIT_SINKS, loop, self._wait_sink)
                self._patches.append(wrap(anyio.to_thread, "run_sync", _timed_run_sync))
            sync_to_async = _sync_to_async() if self._asgiref else None
            if sync_to_async is not None:
                self._start_asgiref(sync_to_async)
            if self._default_executor:
                self._start_executor(loop)
        except BaseException:
            self._undo()
            raise
        self._started = perf_counter()
        self._handle = loop.call_later(self._interval, self._tick)

    def _start_asgiref(self, sync_to_async: type[Any]) -> None:
        self._asgiref_series = _Series(ASGIREF_THREADS)
        counter = self._asgiref_counter = _BusyCounter()
        with _SINKS_LOCK:
            _ASGIREF_COUNTERS.live = (*_ASGIREF_COUNTERS.live, counter)
        self._patches.append(wrap(sync_to_async, "thread_handler", _counted_thread_handler))
        self._patches.append(wrap(sync_to_async, "__call__", _stamped_call))

    def _start_executor(self, loop: asyncio.AbstractEventLoop) -> None:
        with _SINKS_LOCK:
            watch = _EXECUTORS.get(loop)
            if watch is None:
                watch = _EXECUTORS[loop] = _ExecutorWatch(loop)
            watch.probes += 1
            self._executor = watch
        series = self._executor_series = _Series(DEFAULT_EXECUTOR)
        waits = self._executor_waits = series.waits = array("q")
        with watch.lock:
            watch.sinks = (*watch.sinks, waits)
        try:
            # An instance attribute shadows the loop's method for this loop alone.
            self._patches.append(wrap(loop, "run_in_executor", _watched_run_in_executor(watch)))
        except (AttributeError, TypeError):
            # A loop without an instance __dict__ (uvloop's) cannot be watched this way.
            self._executor_series = None

    def _undo(self) -> None:
        """Take off every wrapper and sink of this probe (safe to call twice)."""
        patches, self._patches = self._patches, []
        try:
            remove_all(patches)
        finally:
            loop = self._loop
            if loop is not None and self._wait_sink is not None:
                _drop_sink(_WAIT_SINKS, loop, self._wait_sink)
                self._wait_sink = None
            counter, self._asgiref_counter = self._asgiref_counter, None
            if counter is not None:
                with _SINKS_LOCK:
                    live = _ASGIREF_COUNTERS.live
                    _ASGIREF_COUNTERS.live = tuple(c for c in live if c is not counter)
            watch, self._executor = self._executor, None
            if watch is not None:
                waits, self._executor_waits = self._executor_waits, None
                with watch.lock:
                    watch.sinks = tuple(s for s in watch.sinks if s is not waits)
                with _SINKS_LOCK:
                    watch.probes -= 1
                    if watch.probes == 0 and _EXECUTORS.get(watch.loop) is watch:
                        del _EXECUTORS[watch.loop]

    async def stop(self) -> list[PoolUsage]:
        """Stop sampling, undo the wrappers and fold the samples into :class:`PoolUsage`."""
        if self._result is not None:
            return self._result
        if self._handle is None or self._loop is None:
            raise RuntimeError("the ThreadPoolProbe was not started")
        self._handle.cancel()
        self._handle = None
        try:
            self._tick(reschedule=False)
        finally:
            self._undo()
        series = [s for s, _ in self._limiters]
        if self._asgiref_series is not None:
            series.append(self._asgiref_series)
        executor = self._executor_series
        if executor is not None and (executor.waits or max(executor.busy, default=0) > 0):
            series.append(executor)
        self._result = [s.usage() for s in series]
        return self._result

    def _tick(self, reschedule: bool = True) -> None:
        at = int((perf_counter() - self._started) * 1e6)
        for series, limiter in self._limiters:
            stats = limiter.statistics()
            total = stats.total_tokens
            series.at.append(at)
            series.busy.append(stats.borrowed_tokens)
            series.waiting.append(stats.tasks_waiting)
            series.size.append(_UNBOUNDED if math.isinf(total) else int(total))
        asgiref, counter = self._asgiref_series, self._asgiref_counter
        if asgiref is not None and counter is not None:
            _busy, peak = counter.read()
            asgiref.at.append(at)
            # The peak since the last sample: a 1 ms grid would miss short bursts.
            asgiref.busy.append(peak)
            asgiref.waiting.append(_UNKNOWN)
            asgiref.size.append(_UNBOUNDED)
        executor, watch = self._executor_series, self._executor
        if executor is not None and watch is not None:
            executor.at.append(at)
            executor.busy.append(watch.busy)
            executor.waiting.append(watch.waiting)
            executor.size.append(watch.size())
        if reschedule and self._loop is not None:
            self._handle = self._loop.call_later(self._interval, self._tick)

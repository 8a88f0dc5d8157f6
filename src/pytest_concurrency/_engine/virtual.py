"""Virtual time for async storms: an event loop whose clock jumps to the next timer.

With ``clock="virtual"`` a round runs on :class:`VirtualClockLoop`. Its ``time()`` is a
counter, not a clock: when no callback is ready and no I/O is pending, the counter jumps
to the earliest timer instead of sleeping until it (as trio's ``MockClock`` with
``autojump_threshold=0`` and the ``looptime`` plugin do). Simulated I/O, think time,
open-model arrivals and timeouts therefore cost no wall time, and the figures of an app
that only waits come out the same on every run.

Work the app itself does still takes time: every step of the app's coroutine runs inside
:func:`metered`, which advances the counter by what the step cost — its thread CPU time,
or, when the step blocked the thread (``time.sleep``, a blocking socket: the thread gave
up the CPU of its own accord), its wall time, since a blocked loop serves nobody. Steps
cheaper than :data:`CHARGE_FLOOR` cost nothing, so that the microseconds of a handler
that only awaits (and the driver's message handling inside it) do not turn measurement
noise into queueing; their sum is reported, and warned about once it amounts to half a
core. The load generator's own work outside the app is never charged.

Threads cannot be timed this way: work handed to a thread (``anyio.to_thread``, a FastAPI
``def`` endpoint, ``run_in_executor``) runs on the wall clock while the loop's counter
jumps past it. The loop stops the round with a :class:`ConfigError` as soon as it sees
one, rather than report figures that mean nothing.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from .. import _clock as clock
from .._errors import ConfigError
from .._model.extras import VirtualClock
from .._model.remarks import virtual_clock_notes, virtual_uncharged_warning

__all__ = [
    "CHARGE_FLOOR",
    "VirtualClockLoop",
    "loop_factory",
    "loop_options",
    "metered",
    "virtual_report",
]

#: A step of the app's code that cost less than this (seconds) is not charged.
CHARGE_FLOOR = 100e-6
#: Wall seconds the loop may run ready work with its clock all but still before it gives up.
STALL_SECONDS = 5.0
#: Virtual seconds per wall second below which a loop that never idles has stalled.
_STALL_PROGRESS = 0.1
#: Share of one core of uncharged app work above which the figures are called optimistic.
_UNCHARGED_WARN = 0.5

_STALLED = (
    "clock='virtual': the app answered requests for {seconds:.0f} s of wall time without "
    "virtual time moving (no awaited wait, no step of work over {floor:.1f} ms), so a round "
    "measured in virtual seconds would never end. Give the app simulated waits "
    "(simulated_io, the upstream fixture) or use clock='wall'"
)

_THREADS = (
    "clock='virtual' cannot time work done in threads: the app handed work to a worker "
    "thread ({how}; a FastAPI or Starlette `def` endpoint does so on every request), which "
    "runs on the wall clock while virtual time jumps past it. Run this storm with "
    "clock='wall', or make the handler async"
)

_SOCKETS = (
    "clock='virtual' cannot time real I/O: the app waits on a real socket ({what}), whose "
    "answer comes on the wall clock while virtual time jumps past it, so every request would "
    "time out in no time. Simulate the dependency (simulated_io, the upstream fixture) or use "
    "clock='wall'"
)

#: Threads of the storm itself (the live line, the WSGI pool, start hooks, probes).
_OWN_THREADS = ("storm-", "pytest-storm", "AnyIO worker thread")
#: Files whose frames are a thread's plumbing, not the work it was given.
_PLUMBING = (
    f"{os.sep}threading.py",
    f"{os.sep}queue.py",
    f"concurrent{os.sep}futures{os.sep}thread.py",
)


def _thread_entry(frame: types.FrameType) -> str | None:
    """The function a thread runs (its outermost frame outside the thread plumbing), or None
    for an executor's worker waiting for work (nothing but plumbing on its stack)."""
    stack: list[types.FrameType] = []
    current: types.FrameType | None = frame
    while current is not None:
        stack.append(current)
        current = current.f_back
    for item in reversed(stack):
        if not item.f_code.co_filename.endswith(_PLUMBING):
            code = item.f_code
            return f"{code.co_qualname}() at {os.path.basename(code.co_filename)}:{item.f_lineno}"
    return None


try:
    import resource
except ImportError:  # pragma: no cover - Windows
    _RUSAGE_THREAD: int | None = None
else:
    # Per-thread usage (Linux): counts the times the loop's thread blocked.
    _RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` jumps to the next timer when nothing is ready."""

    def __init__(self) -> None:
        super().__init__()
        # Start where the wall clock is, so that values look like any loop's time.
        self._virtual_now = time.perf_counter()
        self.started = self._virtual_now
        self._failure: ConfigError | None = None
        self._failed = False
        self._limiter: Any = None
        self._spins = 0
        #: Threads alive before the round: any other busy thread is one the app started.
        self._threads_before = set(threading.enumerate())
        self._threads_count = len(self._threads_before)
        self._still_at = self._virtual_now
        self._still_since = time.perf_counter()
        self._still_jumps = 0
        #: Virtual seconds charged for the app's work, and its work too small to charge.
        self.charged = 0.0
        self.uncharged = 0.0
        self.jumps = 0
        selector: Any = self._selector  # type: ignore[attr-defined]
        select: Callable[[float | None], list[Any]] = selector.select

        def virtual_select(timeout: float | None = None) -> list[Any]:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if timeout is None or timeout <= 0:
                self._spins += 1
                if not self._spins & 4095:
                    self._check_stall()
                return select(timeout)
            ready = select(0)
            if ready:
                return ready
            if not self._failed and self._threads_busy():
                self._refuse(_THREADS.format(how="anyio.to_thread"))
                return select(0)
            if not self._failed:
                real = self._real_wait()
                if real is not None:
                    self._refuse(real)
                    return select(0)
            scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
            due = scheduled[0].when() if scheduled else self._virtual_now + timeout
            self._virtual_now = max(self._virtual_now, due)
            self.jumps += 1
            return ready

        selector.select = virtual_select

    def time(self) -> float:
        """The virtual clock, in seconds."""
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Charge *seconds* of work done on the loop to the virtual clock."""
        self._virtual_now += seconds
        self.charged += seconds

    def run_forever(self) -> None:
        """Run the loop with the engine reading its virtual clock."""
        with clock.reading(self.time):
            super().run_forever()

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        """Schedule *callback*; a call from another thread ends a virtual round."""
        running_in = self._thread_id  # type: ignore[attr-defined]
        if running_in is not None and threading.get_ident() != running_in:
            self._refuse(_THREADS.format(how="a result delivered from another thread"))
        return super().call_soon_threadsafe(callback, *args, context=context)

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., Any], *args: Any
    ) -> Any:
        """Run *func* in *executor*, which ends a virtual round."""
        how = f"loop.run_in_executor({getattr(func, '__qualname__', func)!r})"
        self._refuse(_THREADS.format(how=how))
        return super().run_in_executor(executor, func, *args)

    def _refuse(self, message: str) -> None:
        if not self._failed:
            self._failed = True
            self._failure = ConfigError(message)
            self._write_to_self()  # type: ignore[attr-defined]

    def _check_stall(self) -> None:
        wall = time.perf_counter()
        elapsed = wall - self._still_since
        if elapsed < STALL_SECONDS:
            return
        # Busy all along (no jump to a timer) and barely charged: requests that take no
        # time, which a round measured in virtual seconds would repeat for ever. A loop
        # blocked by the app's work is busy too, but its clock moves with the work.
        moved = self._virtual_now - self._still_at
        if self.jumps == self._still_jumps and moved < _STALL_PROGRESS * elapsed:
            self._refuse(_STALLED.format(seconds=elapsed, floor=CHARGE_FLOOR * 1000))
        self._still_at, self._still_since, self._still_jumps = self._virtual_now, wall, self.jumps

    def _real_wait(self) -> str | None:
        """What the app waits on in real time, if anything, which a jump would skip over:
        a socket registered with the loop, or a thread of its own still at work."""
        selector: Any = self._selector  # type: ignore[attr-defined]
        wakeup = self._ssock.fileno()  # type: ignore[attr-defined]
        for key in selector.get_map().values():
            if key.fd != wakeup:
                kinds = "read" if key.events & 1 else "write"
                return _SOCKETS.format(what=f"fd {key.fd} ({type(key.fileobj).__name__}, {kinds})")
        if threading.active_count() <= self._threads_count:
            return None
        frames = sys._current_frames()
        for thread in threading.enumerate():
            if thread in self._threads_before or thread.name.startswith(_OWN_THREADS):
                continue
            frame = frames.get(thread.ident or 0)
            if frame is None or thread.ident == self._thread_id:  # type: ignore[attr-defined]
                continue
            entry = _thread_entry(frame)
            if entry is None:
                continue  # an idle worker of an executor: waits for work, not for time
            how = f"thread {thread.name!r} running {entry}, which the loop may be waiting on"
            return _THREADS.format(how=how)
        return None

    def _threads_busy(self) -> bool:
        if self._limiter is None:
            import anyio.to_thread

            try:
                self._limiter = anyio.to_thread.current_default_thread_limiter()
            except Exception:  # outside anyio: no limiter to watch
                return False
        return bool(self._limiter.borrowed_tokens)


def _usage() -> tuple[float, int]:
    """CPU seconds of this thread and how often it gave up the CPU of its own accord."""
    # getrusage's CPU times move in scheduler ticks (4 ms); thread_time() is exact.
    if _RUSAGE_THREAD is None:
        return time.thread_time(), 0
    return time.thread_time(), resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


def _charge(loop: VirtualClockLoop, wall: float, before: tuple[float, int]) -> None:
    """Charge a step of the app that took *wall* seconds (from *before*) to *loop*."""
    if wall < CHARGE_FLOOR:
        loop.uncharged += wall  # CPU time at most wall time: not worth a system call
        return
    cpu, switches = _usage()
    spent = cpu - before[0]
    blocked = switches > before[1] if _RUSAGE_THREAD is not None else wall - spent >= CHARGE_FLOOR
    # A thread that blocked (slept, waited on a socket) held the loop for the whole step;
    # one that was preempted by another process only for its CPU time.
    cost = max(spent, wall) if blocked else spent
    if cost >= CHARGE_FLOOR:
        loop.advance(cost)
    else:
        loop.uncharged += cost


@types.coroutine
def _steps(coro: Coroutine[Any, Any, Any], loop: VirtualClockLoop) -> Generator[Any, Any, Any]:
    """Drive *coro* step by step, charging each step's cost to *loop*."""
    value: Any = None
    error: BaseException | None = None
    perf = time.perf_counter
    while True:
        before = _usage()
        started = perf()
        try:
            yielded = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value
        finally:
            _charge(loop, perf() - started, before)
        try:
            value, error = (yield yielded), None
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            value, error = None, exc


class _Metered:
    """An ASGI 3 app whose every step is charged to the virtual clock it runs under."""

    _asgi_single_callable = True

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.__wrapped__ = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        loop = asyncio.get_running_loop()
        coro = self.__wrapped__(scope, receive, send)
        if not isinstance(loop, VirtualClockLoop) or not isinstance(coro, Coroutine):
            await coro
            return
        await _steps(coro, loop)


def metered(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """*app* (ASGI 3) with the cost of each of its steps charged to the virtual clock."""
    return _Metered(app)


def loop_factory() -> asyncio.AbstractEventLoop:
    """A new :class:`VirtualClockLoop` (for ``anyio.run(..., backend_options=...)``)."""
    return VirtualClockLoop()


def virtual_report() -> tuple[VirtualClock, list[str], list[str]]:
    """What a virtual round charged and left out (``result.clock``), its notes and warnings."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualClockLoop):  # pragma: no cover - a virtual round's loop
        return VirtualClock(), [], []
    elapsed = loop.time() - loop.started
    note = VirtualClock(
        virtual_seconds=round(elapsed, 6),
        charged_ms=round(loop.charged * 1000, 3),
        uncharged_ms=round(loop.uncharged * 1000, 3),
        charge_floor_ms=CHARGE_FLOOR * 1000,
    )
    notes = virtual_clock_notes(CHARGE_FLOOR * 1000)
    warnings = []
    share = loop.uncharged / elapsed if elapsed > 0 else 0.0
    if share >= _UNCHARGED_WARN:
        warnings.append(
            virtual_uncharged_warning(loop.uncharged * 1000, CHARGE_FLOOR * 1000, share)
        )
    return note, notes, warnings


def loop_options(plan: Any) -> dict[str, Any]:
    """Keyword arguments of ``anyio.run`` for one round of *plan* (a virtual loop if asked)."""
    if plan.config.clock != "virtual":
        return {}
    return {"backend_options": {"loop_factory": loop_factory}}

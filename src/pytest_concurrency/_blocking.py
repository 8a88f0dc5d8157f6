"""Find what blocks: event-loop lag, the line of app code that blocked the loop, busy thread pools.

``LoopMonitor`` schedules a timer callback every ``interval_ms`` on the running asyncio
loop and records how late each one ran (the loop's lag) into a list of integers,
folded into an HDR histogram when the monitor stops. Each callback also stamps a
heartbeat. A daemon watchdog thread reads that heartbeat; while the loop has not beaten
for longer than ``threshold_ms`` it samples the loop thread's stack every
``sample_interval_ms`` and keeps the innermost frame of the app's own code (a handler
that ``httpx.MockTransport`` calls in place of the network is not the app's: the app's
call into the client is).

Two figures come out of that, and they differ when calls queue up. A *stall* is one
continuous period without a heartbeat: the loop lag a timer sees. asyncio runs every
callback that is ready in one pass of the loop before it looks at its timers again, so
100 users each calling ``time.sleep(0.05)`` in an ``async def`` stall the timers for
5 s. A *blocking call* is one run of consecutive samples in which the innermost app
frame is the same frame object on the same line: how long that one call held the
loop (50 ms there). The watchdog keeps the frame of the previous sample alive until
the next sample, so that a frame freed meanwhile cannot hand its address to a new one
and identity is exact; a frame that calls the same line again between two samples (a
loop around a short call) counts as one call. A call lasts from its first to its last
sample plus one sampling interval, so each duration is within one sampling interval
(the observed spacing of the samples, about ``sample_interval_ms``) of the truth; the
first call of a stall is counted from the last heartbeat, because sampling only starts
once the loop is overdue.

``ThreadPoolProbe`` samples, on the loop, how many tokens of anyio's default thread
limiter are borrowed and how many tasks wait for one (FastAPI and Starlette run ``def``
endpoints there), and counts threads busy inside asgiref's ``SyncToAsync`` (Django
under ASGI runs each request's sync code on a thread of its own).
"""

from __future__ import annotations

import asyncio
import io
import linecache
import math
import os
import re
import sys
import sysconfig
import threading
import tokenize
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from time import perf_counter
from types import CodeType, FrameType, TracebackType
from typing import Any, Protocol, Self

import anyio.to_thread
from hdrh.histogram import HdrHistogram

from ._metrics import new_histogram, record_many

__all__ = [
    "BlockingSite",
    "LoopLag",
    "LoopMonitor",
    "PoolSecond",
    "PoolUsage",
    "ThreadPoolProbe",
    "diagnose",
]

#: Top-level packages whose frames are never the app's own code.
INFRASTRUCTURE = frozenset(
    {
        "_pytest",
        "a2wsgi",
        "anyio",
        "asgiref",
        "asyncio",
        "django",
        "exceptiongroup",
        "fastapi",
        "flask",
        "h11",
        "h2",
        "hdrh",
        "httpcore",
        "httpx",
        "hypercorn",
        "pluggy",
        "pydantic",
        "pydantic_core",
        "pytest",
        "pytest_concurrency",
        "sniffio",
        "starlette",
        "trio",
        "typing_extensions",
        "uvicorn",
        "uvloop",
        "werkzeug",
    }
)

#: Plugin modules whose blocking the user asked for (simulated latency, example apps):
#: named when no frame of the app itself is on the stack.
_SIMULATED = ("pytest_concurrency._latency", "pytest_concurrency._apps")

# Frame ranks, best first: the app's own code, a third-party library that is not known
# infrastructure, the plugin's simulated latency; anything else is never a site, and
# the loop's own frames end the search.
_APP, _LIBRARY, _SIMULATED_RANK, _OTHER, _LOOP = 3, 2, 1, 0, -1

_CALL_TEXT_MAX = 80
#: Modules of the event loop's own machinery: a frame of theirs marks the edge of the
#: callback being run (``Handle._run``), or, under uvloop whose loop has no Python
#: frames, the runner.
_LOOP_MODULES = frozenset({"asyncio.events", "asyncio.base_events", "asyncio.runners"})
#: Modules that call back into test code to answer a request in place of the network
#: (``httpx.MockTransport``'s handler): the app's own call into the client is the site.
_STAND_INS = frozenset({"httpx._transports.mock"})
#: Samples a site needs within one stall to be named: a single sample may be the OS
#: pausing the process while the loop happened to run app code.
_MIN_SAMPLES = 2
#: A stall this many times longer than its longest call is explained as calls in a row.
_BACK_TO_BACK = 1.5


def _roots(*names: str) -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {os.path.normcase(os.path.realpath(paths[n])) + os.sep for n in names if n in paths}
    return tuple(sorted(found, key=len, reverse=True))


_LIBRARY_ROOTS = _roots("purelib", "platlib")
# In a virtualenv ``platstdlib`` is the venv's lib directory, which holds site-packages:
# library roots are checked first.
_STDLIB_ROOTS = _roots("stdlib", "platstdlib")
_LIBRARY_DIRS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")


def _inside_library(path: str) -> str | None:
    """The part of *path* below a site-packages directory, or None outside them."""
    for root in _LIBRARY_ROOTS:
        if path.startswith(root):
            return path[len(root) :]
    for marker in _LIBRARY_DIRS:
        at = path.rfind(marker)
        if at >= 0:
            return path[at + len(marker) :]
    return None


def _rank(code: CodeType, module: str, infrastructure: frozenset[str]) -> int:
    if module.startswith(_SIMULATED):
        return _SIMULATED_RANK
    if module.partition(".")[0] in infrastructure:
        return _OTHER
    filename = code.co_filename
    if filename.startswith("<"):  # frozen stdlib modules, exec'd strings
        return _OTHER
    path = os.path.normcase(os.path.realpath(filename))
    inside = _inside_library(path)
    if inside is not None:
        # The module name can be __main__ (python -m pytest): the path names the package.
        top = inside.split(os.sep, 1)[0].removesuffix(".py")
        return _OTHER if top in infrastructure else _LIBRARY
    if path.startswith(_STDLIB_ROOTS):
        return _OTHER
    return _APP


#: (file, line, function) of a blocking site.
_SiteKey = tuple[str, int, str]


def _shown_path(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return path if relative.startswith("..") else relative


@dataclass(frozen=True)
class BlockingSite:
    """A line of app code that held the event loop: its blocking calls and the stalls they caused.

    ``count`` calls held the loop ``per_call_p50_ms`` each (the median), ``total_s``
    together; each call's duration is within one sampling interval of the truth.
    ``stalls`` and ``p99_stall_ms`` are the timer's view: the stalls the site took part
    in, which are longer than one call when calls ran back to back.
    """

    file: str
    line: int
    function: str
    call: str
    count: int
    total_s: float
    per_call_p50_ms: float
    per_call_p99_ms: float
    per_call_max_ms: float
    stalls: int
    p99_stall_ms: float

    @property
    def location(self) -> str:
        """``app/main.py:12 in read_item`` (relative to the working directory when inside it)."""
        return f"{_shown_path(self.file)}:{self.line} in {self.function}"

    def __str__(self) -> str:
        call = f" → {self.call}" if self.call else ""
        if self.count == 1:
            held = f"1 call held the loop {self.per_call_p50_ms:,.1f} ms"
        else:
            held = (
                f"{self.count:,} calls held the loop {self.per_call_p50_ms:,.1f} ms each "
                f"(p99 {self.per_call_p99_ms:,.1f} ms), {_seconds(self.total_s)} in total"
            )
        return f"{self.location}{call}: {held}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "file": self.file,
            "line": self.line,
            "function": self.function,
            "call": self.call,
            "count": self.count,
            "total_s": self.total_s,
            "per_call_p50_ms": self.per_call_p50_ms,
            "per_call_p99_ms": self.per_call_p99_ms,
            "per_call_max_ms": self.per_call_max_ms,
            "stalls": self.stalls,
            "p99_stall_ms": self.p99_stall_ms,
            "text": str(self),
        }


def _seconds(value: float) -> str:
    return f"{value:,.1f} s" if value >= 1 else f"{value * 1000:,.0f} ms"


@dataclass(frozen=True)
class LoopLag:
    """How late the event loop ran a timer during a storm, and what held it when it stalled.

    ``max_ms`` is the longest a timer waited. When blocking calls ran back to back,
    that wait spans ``longest_stall_calls`` calls, none longer than
    ``longest_stall_call_ms``; ``sites`` gives each call's own duration.
    """

    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    total_blocked_s: float
    stalls: int
    threshold_ms: float
    interval_ms: float
    duration_s: float
    ticks: int
    unattributed: int
    sites: list[BlockingSite]
    histogram: HdrHistogram = field(repr=False, compare=False)
    calls: int = 0
    longest_stall_calls: int = 0
    longest_stall_call_ms: float = math.nan

    @property
    def back_to_back(self) -> bool:
        """True when the longest stall was several blocking calls in a row, not one long call."""
        return (
            self.longest_stall_calls >= 2
            and math.isfinite(self.longest_stall_call_ms)
            and self.max_ms > _BACK_TO_BACK * self.longest_stall_call_ms
        )

    @property
    def blocked_share(self) -> float:
        """Fraction of the monitored time the loop spent in stalls above the threshold."""
        return min(1.0, self.total_blocked_s / self.duration_s) if self.duration_s > 0 else 0.0

    def to_dict(self, *, histogram: bool = True) -> dict[str, Any]:
        """Plain dict for JSON; the histogram as its HdrHistogram base64 encoding."""
        data: dict[str, Any] = {
            "p50_ms": _finite(self.p50_ms),
            "p99_ms": _finite(self.p99_ms),
            "max_ms": _finite(self.max_ms),
            "mean_ms": _finite(self.mean_ms),
            "total_blocked_s": self.total_blocked_s,
            "stalls": self.stalls,
            "threshold_ms": self.threshold_ms,
            "interval_ms": self.interval_ms,
            "duration_s": self.duration_s,
            "ticks": self.ticks,
            "unattributed": self.unattributed,
            "sites": [s.to_dict() for s in self.sites],
            "calls": self.calls,
            "longest_stall_calls": self.longest_stall_calls,
            "longest_stall_call_ms": _finite(self.longest_stall_call_ms),
        }
        if histogram:
            data["histogram"] = self.histogram.encode().decode("ascii")
        return data


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _percentiles_ms(histogram: HdrHistogram, *percentiles: float) -> list[float]:
    # One pass over the counts; hdrh's mean and stddev walk every bucket in Python
    # (tens of ms on a 1 µs..1 h histogram), so means are taken from the raw values.
    if not histogram.get_total_count():
        return [math.nan for _ in percentiles]
    values = histogram.get_percentile_to_value_dict(list(percentiles))
    return [values[p] / 1000 for p in percentiles]


def _display_path(filename: str) -> str:
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename
    return filename if relative.startswith(os.pardir) else relative


def _strip_comment(source: str) -> str:
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                return source[: token.start[1]]
    except (tokenize.TokenError, SyntaxError):  # a statement that goes on to the next line
        pass
    return source


def _call_text(file: str, line: int, callee: str | None) -> str:
    source = _strip_comment(linecache.getline(file, line).strip())
    text = " ".join(source.split()).rstrip(":")
    if len(text) > _CALL_TEXT_MAX:
        text = text[: _CALL_TEXT_MAX - 1] + "…"
    # The callee is news unless the line calls it by name (a word, not part of a URL).
    if callee and not re.search(rf"\b{re.escape(callee.rpartition('.')[2])}\s*\(", text):
        text = f"{text} → {callee}" if text else callee
    return text


def _not_started(*args: Any) -> asyncio.TimerHandle:
    raise RuntimeError("not started")


def _running_asyncio_loop(what: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{what} must be started from inside a running asyncio event loop "
            "(anyio's asyncio backend)"
        ) from None


class _StartStop:
    """``async with`` for a probe with ``start()`` and ``stop()`` coroutines."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> Any:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class LoopMonitor(_StartStop):
    """Measures event-loop lag during a storm and names the app code that blocked the loop.

    Use ``async with LoopMonitor(threshold_ms=5.0) as monitor:`` (or ``await start()`` /
    ``await stop()``) on the loop that runs the app; ``monitor.result`` is the
    :class:`LoopLag` once it stopped.
    """

    def __init__(
        self,
        threshold_ms: float = 5.0,
        *,
        interval_ms: float = 1.0,
        sample_interval_ms: float = 1.0,
        watchdog: bool = True,
        infrastructure: Iterable[str] = (),
    ) -> None:
        for name, value in (
            ("threshold_ms", threshold_ms),
            ("interval_ms", interval_ms),
            ("sample_interval_ms", sample_interval_ms),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} must be a number greater than 0")
        self.threshold_ms = float(threshold_ms)
        self.interval_ms = float(interval_ms)
        self.sample_interval_ms = float(sample_interval_ms)
        self._threshold = threshold_ms / 1000
        self._interval = interval_ms / 1000
        self._poll = sample_interval_ms / 1000
        self._use_watchdog = watchdog
        # Extra top-level packages never to blame (the app's own framework layer, say).
        self._infrastructure = INFRASTRUCTURE | frozenset(infrastructure)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._call_later: Callable[..., asyncio.TimerHandle] = _not_started
        self._handle: asyncio.TimerHandle | None = None
        self._lags = array("q")
        # Tick start (the heartbeat the watchdog saw) -> lag in seconds, for late ticks only.
        self._late: dict[float, float] = {}
        self._beat = 0.0
        self._started = 0.0
        self._loop_thread = 0
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._go = threading.Event()
        # Written by the watchdog thread only; read after it has been joined.
        self._stalls: list[_Stall] = []
        self._callees: Counter[tuple[_SiteKey, str | None]] = Counter()
        self._ranks: dict[CodeType, int] = {}
        self._result: LoopLag | None = None

    @property
    def running(self) -> bool:
        """True between start and stop."""
        return self._handle is not None

    @property
    def watchdog_thread(self) -> threading.Thread | None:
        """The watchdog thread while the monitor runs (None without a watchdog)."""
        return self._thread

    @property
    def result(self) -> LoopLag:
        """The figures, once the monitor has stopped."""
        if self._result is None:
            raise RuntimeError("the LoopMonitor has not been stopped yet")
        return self._result

    async def start(self) -> None:
        """Begin probing the running loop and, with the watchdog, sampling its stalls."""
        if self._loop is not None:
            raise RuntimeError("a LoopMonitor can be started once")
        loop = _running_asyncio_loop("LoopMonitor")
        self._loop = loop
        self._call_later = loop.call_later
        self._loop_thread = threading.get_ident()
        if self._use_watchdog:
            # Starting a thread waits for it to run, which can hold the loop for
            # milliseconds on a busy machine: do it before the clock starts, and let the
            # watchdog begin only once the first beat is set.
            self._thread = threading.Thread(
                target=self._watch, name="pytest-storm loop watchdog", daemon=True
            )
            self._thread.start()
        self._started = self._beat = perf_counter()
        try:
            self._handle = loop.call_later(self._interval, self._tick)
        except BaseException:
            self._stop_event.set()
            raise
        finally:
            self._go.set()

    async def stop(self) -> LoopLag:
        """Stop probing, join the watchdog and fold the figures into a :class:`LoopLag`."""
        if self._result is not None:
            return self._result
        if self._handle is None:
            raise RuntimeError("the LoopMonitor was not started")
        self._handle.cancel()
        self._handle = None
        # A stall that ends with the storm has no tick to record it: its lag so far counts.
        beat = self._beat
        now = perf_counter()
        if now - beat > self._interval:
            self._record(beat, now - beat - self._interval)
        self._stop_event.set()
        self._go.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._result = self._fold(now - self._started)
        return self._result

    # -- on the loop ------------------------------------------------------------------------

    def _record(self, beat: float, lag: float) -> None:
        self._lags.append(int(lag * 1e6))
        if lag > self._threshold:
            self._late[beat] = lag

    def _tick(self) -> None:
        # A plain timer callback, not a task: the cheapest thing the loop can run on time.
        now = perf_counter()
        beat = self._beat
        self._record(beat, now - beat - self._interval)
        self._beat = now
        self._handle = self._call_later(self._interval, self._tick)

    # -- on the watchdog thread --------------------------------------------------------------

    def _watch(self) -> None:
        interval, poll = self._interval, self._poll
        # Sampling starts one poll before the threshold so that a stall just over it is
        # seen at least twice (one sample alone may be the OS pausing the whole process).
        start = max(0.0, self._threshold - poll)
        wait = self._stop_event.wait
        stall: _Stall | None = None
        key: _SiteKey | None = None
        # The frame of the call being timed, held until the next sample only: while it
        # is alive no new frame can take its address, so `is` tells calls apart exactly.
        frame: FrameType | None = None
        self._go.wait()
        while not self._stop_event.is_set():
            beat = self._beat
            now = perf_counter()
            overdue = now - beat - interval
            if stall is not None and beat != stall.beat:
                self._stalls.append(stall)
                stall = key = frame = None
            if overdue > start:
                if stall is None:
                    stall = _Stall(beat)
                previous = frame
                sampled, frame = self._sample()
                stall.add(
                    now, sampled, sampled is not None and sampled == key and frame is previous
                )
                key = sampled
                previous = None
                pause = poll
            else:
                # While the loop beats on time, sleep until the earliest moment a stall
                # could need sampling: polling every millisecond would cost ~2x more.
                pause = max(poll, start - overdue)
            if wait(pause):
                break
        frame = None
        if stall is not None:
            self._stalls.append(stall)

    def _sample(self) -> tuple[_SiteKey | None, FrameType | None]:
        frame = sys._current_frames().get(self._loop_thread)
        innermost = frame
        library = simulated = None
        ranks = self._ranks
        while frame is not None:
            code = frame.f_code
            rank = ranks.get(code)
            if rank is None:
                module = str(frame.f_globals.get("__name__", ""))
                rank = ranks[code] = (
                    _LOOP if module in _LOOP_MODULES else _rank(code, module, self._infrastructure)
                )
            if rank == _APP:
                caller = frame.f_back
                if caller is None or caller.f_globals.get("__name__") not in _STAND_INS:
                    break
                # A handler that answers for the network: the app's call into the
                # client, further out, is the site.
                rank = _SIMULATED_RANK
            if rank == _LOOP:
                # Outside the callback the loop is running: the runner, pytest and the test
                # that started the storm. None of it blocks the loop (when the loop itself
                # is innermost, it waits for I/O and is late only because the OS did not
                # run the process).
                frame = None
                break
            if rank == _LIBRARY and library is None:
                library = frame
            elif rank == _SIMULATED_RANK and simulated is None:
                simulated = frame
            frame = frame.f_back
        site = frame or library or simulated
        if site is None:
            return None, None
        code = site.f_code
        key = (code.co_filename, site.f_lineno, code.co_qualname)
        callee = None
        if innermost is not None and innermost is not site:
            module = str(innermost.f_globals.get("__name__", "?"))
            callee = f"{module}.{innermost.f_code.co_qualname}"
        self._callees[key, callee] += 1
        return key, site

    # -- folding -----------------------------------------------------------------------------

    def _fold(self, duration: float) -> LoopLag:
        lags = self._lags
        histogram = new_histogram()
        record_many(histogram, lags)
        p50, p99 = _percentiles_ms(histogram, 50.0, 99.0)
        late = self._late
        calls: dict[_SiteKey, list[float]] = {}
        stalls: dict[_SiteKey, list[float]] = {}
        # Stall (by its heartbeat) -> durations of the named calls in it.
        stall_calls: dict[float, list[float]] = {}
        for stall in self._stalls:
            lag = late.get(stall.beat)
            if lag is None:
                continue
            named = stall.named()
            if not named:
                continue
            for key in named:
                stalls.setdefault(key, []).append(lag)
            durations = stall_calls[stall.beat] = []
            for key, seconds in stall.calls(self._poll):
                if key in named:
                    calls.setdefault(key, []).append(seconds)
                    durations.append(seconds)
        callee_of: dict[_SiteKey, str | None] = {}
        for (key, callee), _count in self._callees.most_common():
            callee_of.setdefault(key, callee)
        sites = []
        for key, durations in calls.items():
            file, line, function = key
            ordered = sorted(durations)
            sites.append(
                BlockingSite(
                    file=_display_path(file),
                    line=line,
                    function=function,
                    call=_call_text(file, line, callee_of.get(key)),
                    count=len(ordered),
                    total_s=sum(ordered),
                    per_call_p50_ms=_nearest_rank(ordered, 0.50) * 1000,
                    per_call_p99_ms=_nearest_rank(ordered, 0.99) * 1000,
                    per_call_max_ms=ordered[-1] * 1000,
                    stalls=len(stalls[key]),
                    p99_stall_ms=_nearest_rank(sorted(stalls[key]), 0.99) * 1000,
                )
            )
        sites.sort(key=lambda s: -s.total_s)
        longest = stall_calls.get(max(late, key=late.__getitem__), []) if late else []
        return LoopLag(
            p50_ms=p50,
            p99_ms=p99,
            max_ms=max(lags) / 1000 if lags else math.nan,
            mean_ms=sum(max(0, lag) for lag in lags) / len(lags) / 1000 if lags else math.nan,
            total_blocked_s=sum(late.values()),
            stalls=len(late),
            threshold_ms=self.threshold_ms,
            interval_ms=self.interval_ms,
            duration_s=duration,
            ticks=len(lags),
            unattributed=len(late) - len(stall_calls),
            sites=sites,
            histogram=histogram,
            calls=sum(s.count for s in sites),
            longest_stall_calls=len(longest),
            longest_stall_call_ms=max(longest) * 1000 if longest else math.nan,
        )


class _Stall:
    """The watchdog's samples of one stall, and the blocking calls they make up."""

    __slots__ = ("beat", "ends", "first", "keys", "last", "n", "samples", "starts")

    def __init__(self, beat: float) -> None:
        self.beat = beat
        self.samples: Counter[_SiteKey | None] = Counter()
        self.first = self.last = 0.0
        self.n = 0
        # One entry per call: its site, and the times of its first and last sample.
        self.keys: list[_SiteKey] = []
        self.starts = array("d")
        self.ends = array("d")

    def add(self, at: float, key: _SiteKey | None, same_call: bool) -> None:
        self.samples[key] += 1
        if not self.n:
            self.first = at
        self.last = at
        self.n += 1
        if same_call:
            self.ends[-1] = at
        elif key is not None:
            self.keys.append(key)
            self.starts.append(at)
            self.ends.append(at)

    def named(self) -> set[_SiteKey]:
        """Sites seen often enough in this stall to be named."""
        return {k for k, seen in self.samples.items() if k is not None and seen >= _MIN_SAMPLES}

    def calls(self, poll: float) -> Iterable[tuple[_SiteKey, float]]:
        """Each call's site and duration in seconds, within one sampling interval."""
        # The spacing the samples really had: wider than asked when the loop thread
        # holds the interpreter lock and the watchdog waits for it.
        gap = (self.last - self.first) / (self.n - 1) if self.n > 1 else poll
        for key, start, end in zip(self.keys, self.starts, self.ends, strict=True):
            # A call runs from half a gap before its first sample to half a gap after its
            # last. Sampling starts only once the loop is overdue: the call seen first
            # began when the loop last beat.
            began = self.beat if start == self.first else start - gap / 2
            yield key, end + gap / 2 - began


def _nearest_rank(ordered: list[float], quantile: float) -> float:
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


# -- thread pools ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSecond:
    """Busy threads and waiting requests of one pool during one second of the storm."""

    second: int
    mean_busy: float
    max_busy: int
    mean_waiting: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "second": self.second,
            "mean_busy": self.mean_busy,
            "max_busy": self.max_busy,
            "mean_waiting": self.mean_waiting,
        }


@dataclass(frozen=True)
class PoolUsage:
    """How busy one thread pool inside the app was during a storm."""

    name: str
    size: int | None
    mean_busy: float
    max_busy: int
    full: float
    saturation: float
    mean_waiting: float | None
    wait_p99_ms: float | None
    samples: int
    timeline: list[PoolSecond]

    @property
    def used(self) -> bool:
        """True when any thread of the pool was seen busy."""
        return self.max_busy > 0

    def describe(self) -> str:
        """One sentence: ``anyio default thread limiter: 40 of 40 busy 96% of the time, …``."""
        wait = (
            f"; p99 wait for a thread {self.wait_p99_ms:,.1f} ms"
            if self.wait_p99_ms is not None
            else ""
        )
        if self.size is None:
            return (
                f"{self.name}: {self.mean_busy:,.1f} threads busy on average, "
                f"at most {self.max_busy:,} at once{wait}"
            )
        if self.full >= 0.01:
            waiting = (
                f", {self.mean_waiting:,.0f} requests waiting on average"
                if self.mean_waiting is not None
                else ""
            )
            return (
                f"{self.name}: {self.size:,} of {self.size:,} busy {self.full:.0%} "
                f"of the time{waiting}{wait}"
            )
        return (
            f"{self.name}: {self.mean_busy:,.1f} of {self.size:,} busy on average, "
            f"at most {self.max_busy:,}{wait}"
        )

    def __str__(self) -> str:
        return self.describe()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "name": self.name,
            "size": self.size,
            "mean_busy": self.mean_busy,
            "max_busy": self.max_busy,
            "full": self.full,
            "saturation": self.saturation,
            "mean_waiting": self.mean_waiting,
            "wait_p99_ms": self.wait_p99_ms,
            "samples": self.samples,
            "timeline": [p.to_dict() for p in self.timeline],
            "text": self.describe(),
        }


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


class _Patch:
    """An attribute replaced while at least one probe needs it (reference counted)."""

    def __init__(self, owner: Any, name: str, wrap: Callable[[Any], Any]) -> None:
        self.owner, self.name, self.wrap = owner, name, wrap
        self.users = 0
        self.original: Any = None
        self.replacement: Any = None

    def acquire(self) -> None:
        with _PATCH_LOCK:
            if self.users == 0:
                self.original = getattr(self.owner, self.name)
                self.replacement = self.wrap(self.original)
                setattr(self.owner, self.name, self.replacement)
            self.users += 1

    def release(self) -> None:
        with _PATCH_LOCK:
            self.users -= 1
            if self.users == 0:
                # Someone patched over us meanwhile (a test's monkeypatch): leave theirs.
                if getattr(self.owner, self.name) is self.replacement:
                    setattr(self.owner, self.name, self.original)
                self.original = self.replacement = None


_PATCH_LOCK = threading.Lock()

# Loop -> wait times (µs) of anyio.to_thread.run_sync calls on the default limiter.
_WAIT_SINKS: dict[asyncio.AbstractEventLoop, array[int]] = {}


def _timed_run_sync(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def run_sync(
        func: Callable[..., Any], *args: Any, limiter: Any = None, **kwargs: Any
    ) -> Any:
        sink = None
        if limiter is None and _WAIT_SINKS:
            try:
                sink = _WAIT_SINKS.get(asyncio.get_running_loop())
            except RuntimeError:  # another backend
                sink = None
        if sink is None:
            return await original(func, *args, limiter=limiter, **kwargs)
        queued = perf_counter()
        append = sink.append

        def timed(*inner: Any) -> Any:
            append(int((perf_counter() - queued) * 1e6))
            return func(*inner)

        return await original(timed, *args, limiter=limiter, **kwargs)

    run_sync.__wrapped__ = original  # type: ignore[attr-defined]
    run_sync.__doc__ = original.__doc__
    return run_sync


_RUN_SYNC_PATCH = _Patch(anyio.to_thread, "run_sync", _timed_run_sync)


class _BusyCounter:
    """Threads inside asgiref's ``SyncToAsync`` right now, and the peak since the last read.

    One counter for the process: probes running at the same time on several loops see
    each other's threads.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy = 0
        self.peak = 0

    def read(self) -> tuple[int, int]:
        with self.lock:
            busy, peak = self.busy, self.peak
            self.peak = busy
        return busy, peak


_ASGIREF_BUSY = _BusyCounter()


def _counted_thread_handler(original: Callable[..., Any]) -> Callable[..., Any]:
    counter = _ASGIREF_BUSY

    def thread_handler(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Runs on the worker thread: a lock, not the loop, keeps the count right.
        with counter.lock:
            counter.busy += 1
            counter.peak = max(counter.peak, counter.busy)
        try:
            return original(self, *args, **kwargs)
        finally:
            with counter.lock:
                counter.busy -= 1

    thread_handler.__wrapped__ = original  # type: ignore[attr-defined]
    return thread_handler


def _asgiref_patch() -> _Patch | None:
    try:
        from asgiref.sync import SyncToAsync
    except ImportError:  # pragma: no cover - asgiref is a dependency
        return None
    return _Patch(SyncToAsync, "thread_handler", _counted_thread_handler)


_THREAD_HANDLER_PATCH = _asgiref_patch()

#: Name of anyio's default thread limiter in reports.
ANYIO_LIMITER = "anyio default thread limiter"
#: Name of asgiref's SyncToAsync threads in reports.
ASGIREF_THREADS = "asgiref SyncToAsync threads"


class ThreadPoolProbe(_StartStop):
    """Samples how busy the app's thread pools are during a storm: anyio's limiter, asgiref.

    Use ``async with ThreadPoolProbe() as probe:`` on the loop that runs the app;
    ``probe.result`` is a list of :class:`PoolUsage` once it stopped.
    """

    def __init__(
        self,
        *,
        interval_ms: float = 1.0,
        limiters: Mapping[str, _Limiter] | None = None,
        asgiref: bool = True,
        measure_wait: bool = True,
    ) -> None:
        if not (isinstance(interval_ms, int | float) and math.isfinite(interval_ms)) or (
            interval_ms <= 0
        ):
            raise ValueError(f"interval_ms={interval_ms!r} must be a number greater than 0")
        self.interval_ms = float(interval_ms)
        self._interval = interval_ms / 1000
        self._extra = dict(limiters or {})
        self._asgiref = asgiref and _THREAD_HANDLER_PATCH is not None
        self._measure_wait = measure_wait
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._limiters: list[tuple[_Series, _Limiter]] = []
        self._asgiref_series: _Series | None = None
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
        if self._measure_wait:
            anyio_series.waits = _WAIT_SINKS[loop] = array("q")
            _RUN_SYNC_PATCH.acquire()
        if self._asgiref and _THREAD_HANDLER_PATCH is not None:
            self._asgiref_series = _Series(ASGIREF_THREADS)
            _THREAD_HANDLER_PATCH.acquire()
            _ASGIREF_BUSY.read()
        self._started = perf_counter()
        self._handle = loop.call_later(self._interval, self._tick)

    async def stop(self) -> list[PoolUsage]:
        """Stop sampling, undo the wrappers and fold the samples into :class:`PoolUsage`."""
        if self._result is not None:
            return self._result
        if self._handle is None or self._loop is None:
            raise RuntimeError("the ThreadPoolProbe was not started")
        self._handle.cancel()
        self._handle = None
        self._tick(reschedule=False)
        if self._measure_wait:
            _WAIT_SINKS.pop(self._loop, None)
            _RUN_SYNC_PATCH.release()
        if self._asgiref_series is not None and _THREAD_HANDLER_PATCH is not None:
            _THREAD_HANDLER_PATCH.release()
        series = [s for s, _ in self._limiters]
        if self._asgiref_series is not None:
            series.append(self._asgiref_series)
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
        asgiref = self._asgiref_series
        if asgiref is not None:
            _busy, peak = _ASGIREF_BUSY.read()
            asgiref.at.append(at)
            # The peak since the last sample: a 1 ms grid would miss short bursts.
            asgiref.busy.append(peak)
            asgiref.waiting.append(_UNKNOWN)
            asgiref.size.append(_UNBOUNDED)
        if reschedule and self._loop is not None:
            self._handle = self._loop.call_later(self._interval, self._tick)


# -- diagnosis -------------------------------------------------------------------------------

_MAX_SITES = 5


def diagnose(loop_lag: LoopLag | None, pools: Iterable[PoolUsage]) -> list[str]:
    """Lines for the budget table: what blocked the event loop, and which thread pools filled up."""
    # A pool touched once (Django's own request_started signal, say) is not news.
    busy = [p for p in pools if p.used and (p.mean_busy >= 1 or p.saturation > 0)]
    lines: list[str] = []
    if loop_lag is not None and loop_lag.stalls:
        times = "once" if loop_lag.stalls == 1 else f"{loop_lag.stalls:,} times"
        lines.append(
            f"event loop blocked {times} for more than {loop_lag.threshold_ms:g} ms, "
            f"{loop_lag.total_blocked_s:,.2f} s in total ({loop_lag.blocked_share:.0%} of the storm; "
            f"longest {loop_lag.max_ms:,.1f} ms)" + (":" if loop_lag.sites else "")
        )
        lines.extend(f"  {site}" for site in loop_lag.sites[:_MAX_SITES])
        if len(loop_lag.sites) > _MAX_SITES:
            lines.append(f"  … and {len(loop_lag.sites) - _MAX_SITES} more sites")
        if loop_lag.back_to_back:
            # asyncio runs every ready callback before it looks at its timers again.
            lines.append(
                f"  timers waited up to {loop_lag.max_ms:,.1f} ms: "
                f"{loop_lag.longest_stall_calls:,} blocking calls, none longer than "
                f"{loop_lag.longest_stall_call_ms:,.1f} ms, ran back to back before the loop "
                "got back to its timers"
            )
        unattributed = loop_lag.unattributed
        if unattributed:
            threads = sum(p.mean_busy for p in busy)
            cause = (
                "probably the loop waiting for the interpreter lock while "
                f"≈{threads:,.0f} app threads ran"
                if threads >= 1
                else "framework or load-generator code, or too short to sample"
            )
            stalls = "1 stall" if unattributed == 1 else f"{unattributed:,} stalls"
            lines.append(f"  {stalls} not traced to app code ({cause})")
    for pool in busy:
        line = pool.describe()
        if pool.saturation >= 0.1 and pool.name == ANYIO_LIMITER:
            line += (
                " — `def` endpoints queue for a thread: make them `async def` or raise "
                "anyio.to_thread.current_default_thread_limiter().total_tokens"
            )
        lines.append(line)
    return lines

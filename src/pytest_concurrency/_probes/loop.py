"""Event-loop lag and the watchdog that names the line of app code that blocked the loop.

``LoopMonitor`` schedules a timer callback every ``interval_ms`` on the running asyncio
loop and records how late each one ran (the loop's lag) into a list of integers,
folded into an HDR histogram when the monitor stops. Each callback also stamps a
heartbeat. A daemon watchdog thread reads that heartbeat, and :attr:`LoopMonitor.progress`,
where the storm's requests write the end of each step they run; while the loop has done
neither for longer than ``threshold_ms`` (a pass of the loop over many ready requests
makes the tick late without any call holding the loop) it samples the loop thread's
stack every ``sample_interval_ms`` and keeps the innermost frame of the app's own code
(a handler that ``httpx.MockTransport`` calls in place of the network is not the app's:
the app's call into the client is).

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
from collections.abc import Callable, Iterable
from time import perf_counter
from types import CodeType, FrameType
from typing import Any

from .._metrics import new_histogram, record_many
from .._metrics.percentile import quantile
from .._model.probes import BlockingSite, LoopLag
from ._common import _percentiles_ms, _running_asyncio_loop, _StartStop

__all__ = ["INFRASTRUCTURE", "LoopMonitor"]

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
_SIMULATED = ("pytest_concurrency._simio", "pytest_concurrency._apps")

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
        #: When a step of a request last ended on the loop (``perf_counter()``), written
        #: by the requests' :class:`OwnSteps` wrappers: the loop was running then.
        self.progress = [0.0]
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

    def stall_spans(self) -> list[tuple[float, float]]:
        """The stalls over the threshold, as ``(start, end)`` ``perf_counter()`` instants in
        order: from when the late tick was due to when it ran (the loop ran nothing else
        meanwhile but the code that held it)."""
        interval = self._interval
        return [
            (beat + interval, beat + interval + lag) for beat, lag in sorted(self._late.items())
        ]

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
        poll, progress = self._poll, self.progress
        # Sampling starts one poll before the threshold so that a stall just over it is
        # seen at least twice (one sample alone may be the OS pausing the whole process).
        start = max(0.0, self._threshold - poll)
        wait = self._stop_event.wait
        stall: _Stall | None = None
        key: _SiteKey | None = None
        # The frame of the call being timed, held until the next sample only: while it
        # is alive no new frame can take its address, so `is` tells calls apart exactly.
        frame: FrameType | None = None
        # Whether the previous look sampled: a sample after a pause starts a new call,
        # which began when the loop was last seen running its callbacks.
        sampling = False
        self._go.wait()
        while not self._stop_event.is_set():
            beat = self._beat
            now = perf_counter()
            if stall is not None and beat != stall.beat:
                self._stalls.append(stall)
                stall = key = frame = None
                sampling = False
            quiet = self.quiet(now, beat)
            if quiet > start:
                if stall is None:
                    stall = _Stall(beat)
                previous = frame
                sampled, frame = self._sample()
                stall.add(
                    now,
                    sampled,
                    sampling and sampled is not None and sampled == key and frame is previous,
                    resumed=None if sampling else max(beat, progress[0]),
                )
                key = sampled
                previous = None
                sampling = True
                pause = poll
            else:
                if sampling:
                    key = frame = None
                    sampling = False
                # While the loop runs on time, sleep until the earliest moment a stall
                # could need sampling: polling every millisecond would cost ~2x more.
                pause = max(poll, start - quiet)
            if wait(pause):
                break
        frame = None
        if stall is not None:
            self._stalls.append(stall)

    def quiet(self, now: float, beat: float) -> float:
        """Seconds up to *now* since the loop was last seen running: when its tick after
        the heartbeat *beat* was due or, later, when a request's step ended. With many
        requests ready one pass of the loop outlasts the threshold (the tick is late)
        while no single call holds the loop that long: the steps' ends tell them apart."""
        return now - max(beat + self._interval, self.progress[0])

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
        # A frame between lines (tracing, some generators) has no line number yet.
        key = (code.co_filename, site.f_lineno or code.co_firstlineno, code.co_qualname)
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
                    per_call_p50_ms=quantile(ordered, 0.50) * 1000,
                    per_call_p99_ms=quantile(ordered, 0.99) * 1000,
                    per_call_max_ms=ordered[-1] * 1000,
                    stalls=len(stalls[key]),
                    p99_stall_ms=quantile(sorted(stalls[key]), 0.99) * 1000,
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

    __slots__ = ("beat", "began", "ends", "gap_sum", "gaps", "keys", "last", "samples", "starts")

    def __init__(self, beat: float) -> None:
        self.beat = beat
        self.samples: Counter[_SiteKey | None] = Counter()
        self.last = 0.0
        # The spacing of samples taken one after another (not across a pause).
        self.gap_sum = 0.0
        self.gaps = 0
        # One entry per call: its site, the times of its first and last sample, and when
        # it began if that is known (-1.0: half a gap before its first sample).
        self.keys: list[_SiteKey] = []
        self.starts = array("d")
        self.ends = array("d")
        self.began = array("d")

    def add(
        self, at: float, key: _SiteKey | None, same_call: bool, resumed: float | None = None
    ) -> None:
        """Count a sample taken at *at*; *resumed* is when the loop was last seen running
        if sampling starts again with this one (None: it follows the previous sample, or
        it is the stall's first, seen since the heartbeat)."""
        self.samples[key] += 1
        if resumed is None and not self.last:
            resumed = self.beat
        elif resumed is None:
            self.gap_sum += at - self.last
            self.gaps += 1
        self.last = at
        if same_call:
            self.ends[-1] = at
        elif key is not None:
            self.keys.append(key)
            self.starts.append(at)
            self.ends.append(at)
            self.began.append(-1.0 if resumed is None else resumed)

    def named(self) -> set[_SiteKey]:
        """Sites seen often enough in this stall to be named."""
        return {k for k, seen in self.samples.items() if k is not None and seen >= _MIN_SAMPLES}

    def calls(self, poll: float) -> Iterable[tuple[_SiteKey, float]]:
        """Each call's site and duration in seconds, within one sampling interval."""
        # The spacing the samples really had: wider than asked when the loop thread
        # holds the interpreter lock and the watchdog waits for it.
        gap = self.gap_sum / self.gaps if self.gaps else poll
        for key, start, end, began in zip(
            self.keys, self.starts, self.ends, self.began, strict=True
        ):
            # A call runs from half a gap before its first sample to half a gap after its
            # last. Sampling starts only once the loop is overdue: a call seen first then
            # began when the loop was last seen running (its heartbeat, or the end of a
            # request's step).
            yield key, end + gap / 2 - (start - gap / 2 if began < 0 else began)

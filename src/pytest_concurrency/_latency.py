"""Simulated I/O: latency distributions, waits, latency middleware and a fake upstream.

Distributions take milliseconds and sample seconds from a caller's ``random.Random``, so a
seeded storm waits the same sequence every run. ``simulated_io`` (async) and ``blocking_io``
(``time.sleep``) wait one sample and report how late the wait came back to ``wait_recorder``;
``with_latency`` puts such a wait in front of any ASGI or WSGI app; ``Upstream`` answers the
app's own outbound ``httpx`` calls in-process.

``Upstream`` replaces ``httpx.HTTPTransport.handle_request`` and
``httpx.AsyncHTTPTransport.handle_async_request``, as pytest-httpx does (respx patches the
httpcore pools below them), so clients the app built before the storm are answered too.
It is a small patch of its own, not a layer over either library. Per call, best of nine
rounds of 10,000 sequential ``await client.get(...)`` with zero latency (CPython 3.11,
httpx 0.28, 2 cores): ``httpx.MockTransport`` 80 µs, this module 92 µs (+12 µs, 10 of
them the ``anyio.sleep(0)`` checkpoint any real call makes), respx 0.23 172 µs (+92 µs;
221 µs with an async side effect that sleeps), pytest-httpx 0.36 181 µs (+101 µs). With
``httpx.Client`` this module adds nothing measurable (73 µs against 76 µs) and respx
costs 157 µs. Neither library picks an async or a blocking wait by itself (a user callback
must know which client called it), neither counts calls in flight, and pytest-httpx keeps
every request for the life of its fixture, so neither is a dependency.
"""

from __future__ import annotations

import abc
import json as jsonlib
import math
import numbers
import os
import random
import threading
import time
from array import array
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

import anyio
import httpx

from ._apps import as_asgi3, detect_interface
from ._errors import ConfigError

__all__ = [
    "ASGILatencyMiddleware",
    "ConstantLatency",
    "EmpiricalLatency",
    "ExponentialLatency",
    "Latency",
    "LatencyLike",
    "LognormalLatency",
    "NormalLatency",
    "Route",
    "UndeclaredUpstreamError",
    "UniformLatency",
    "Upstream",
    "WSGILatencyMiddleware",
    "WaitErrors",
    "WaitRecorder",
    "WaitReport",
    "as_latency",
    "blocking_io",
    "constant",
    "empirical",
    "exponential",
    "lognormal",
    "normal",
    "seed_latency",
    "simulated_io",
    "uniform",
    "wait_recorder",
    "with_latency",
]

# z-score of the 99th percentile of the standard normal distribution.
_Z99 = 2.3263478740408408
_DEFAULT_SEED = 0

_default_rng = random.Random(_DEFAULT_SEED)


def seed_latency(seed: int | None = _DEFAULT_SEED) -> None:
    """Reseed the process-wide generator used when no ``rng`` or ``seed`` is given."""
    _default_rng.seed(seed)


# --------------------------------------------------------------------------- validation


def _show(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def _fmt_ms(value: float) -> str:
    text = f"{value:,.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _number(where: str, name: str, value: object) -> float:
    # bool is an int subclass, but latency=True is always a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(
            f"{where}({name}={value!r}) must be a number of milliseconds, "
            f"got {type(value).__name__}"
        )
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{where}({name}={_show(value)}) must be finite")
    return number


def _at_least(where: str, name: str, value: object, low: float = 0.0) -> float:
    number = _number(where, name, value)
    if number < low:
        raise ConfigError(f"{where}({name}={_show(value)}) must be >= {_show(low)}")
    return number


def _positive(where: str, name: str, value: object) -> float:
    number = _number(where, name, value)
    if number <= 0:
        raise ConfigError(f"{where}({name}={_show(value)}) must be > 0")
    return number


def _set(obj: object, name: str, value: object) -> None:
    # Frozen dataclasses normalise their fields in __post_init__ this way.
    object.__setattr__(obj, name, value)


# ------------------------------------------------------------------------ distributions


@dataclass(frozen=True)
class Latency(abc.ABC):
    """A latency distribution: milliseconds in, seconds sampled."""

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> float:
        """Draw one wait, in seconds (never negative)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short human description, for example ``lognormal(p50=40 ms, p99=250 ms)``."""

    @property
    def mean_ms(self) -> float | None:
        """The expected wait in milliseconds, or ``None`` where it is not defined."""
        return None

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class ConstantLatency(Latency):
    """The same wait every time."""

    ms: float

    def __post_init__(self) -> None:
        _set(self, "ms", _at_least("constant", "ms", self.ms))

    def sample(self, rng: random.Random) -> float:
        """Return the constant wait in seconds."""
        return self.ms / 1000.0

    def describe(self) -> str:
        """Describe as ``constant(40 ms)``."""
        return f"constant({_fmt_ms(self.ms)} ms)"

    @property
    def mean_ms(self) -> float:
        """The constant itself."""
        return self.ms


@dataclass(frozen=True)
class UniformLatency(Latency):
    """A wait drawn uniformly between two bounds."""

    low_ms: float
    high_ms: float

    def __post_init__(self) -> None:
        low = _at_least("uniform", "low_ms", self.low_ms)
        high = _number("uniform", "high_ms", self.high_ms)
        if high < low:
            raise ConfigError(
                f"uniform(high_ms={_show(self.high_ms)}) must be >= low_ms={_show(self.low_ms)}"
            )
        _set(self, "low_ms", low)
        _set(self, "high_ms", high)

    def sample(self, rng: random.Random) -> float:
        """Draw a wait uniformly in ``[low_ms, high_ms]``, in seconds."""
        return rng.uniform(self.low_ms, self.high_ms) / 1000.0

    def describe(self) -> str:
        """Describe as ``uniform(low=10 ms, high=50 ms)``."""
        return f"uniform(low={_fmt_ms(self.low_ms)} ms, high={_fmt_ms(self.high_ms)} ms)"

    @property
    def mean_ms(self) -> float:
        """The midpoint of the bounds."""
        return (self.low_ms + self.high_ms) / 2.0


def _std_normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _std_normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


@dataclass(frozen=True)
class NormalLatency(Latency):
    """A normal wait truncated at zero by resampling, so no mass piles up at 0 ms.

    Negative draws are redrawn rather than clipped: clipping would turn the lower tail into
    a burst of zero-latency calls that no real service produces. Because ``mu_ms >= 0`` at
    least half of all draws are accepted, so resampling costs under two draws on average.
    ``mean_ms`` is the mean of the truncated distribution, a little above ``mu_ms`` when
    ``sigma_ms`` is large against it.
    """

    mu_ms: float
    sigma_ms: float

    def __post_init__(self) -> None:
        _set(self, "mu_ms", _at_least("normal", "mean_ms", self.mu_ms))
        _set(self, "sigma_ms", _at_least("normal", "stdev_ms", self.sigma_ms))

    def sample(self, rng: random.Random) -> float:
        """Draw a non-negative normal wait, in seconds."""
        mu, sigma = self.mu_ms, self.sigma_ms
        while True:
            value = rng.gauss(mu, sigma)
            if value >= 0.0:
                return value / 1000.0

    @property
    def truncation_matters(self) -> bool:
        """Whether at least 0.1 % of the untruncated distribution lies below zero."""
        return self.sigma_ms > 0 and _std_normal_cdf(-self.mu_ms / self.sigma_ms) >= 0.001

    def describe(self) -> str:
        """Describe as ``normal(mean=40 ms, stdev=10 ms)``."""
        note = ", truncated at 0" if self.truncation_matters else ""
        return f"normal(mean={_fmt_ms(self.mu_ms)} ms, stdev={_fmt_ms(self.sigma_ms)} ms{note})"

    @property
    def mean_ms(self) -> float:
        """The mean of the normal distribution truncated at zero."""
        if self.sigma_ms == 0:
            return self.mu_ms
        ratio = self.mu_ms / self.sigma_ms
        return self.mu_ms + self.sigma_ms * _std_normal_pdf(ratio) / _std_normal_cdf(ratio)


@dataclass(frozen=True)
class LognormalLatency(Latency):
    """A log-normal wait fixed by its median and 99th percentile, the usual shape of I/O."""

    p50_ms: float
    p99_ms: float
    mu: float = field(init=False, repr=False, compare=False)
    """Mean of ln(wait in ms)."""
    sigma: float = field(init=False, repr=False, compare=False)
    """Standard deviation of ln(wait in ms)."""

    def __post_init__(self) -> None:
        p50 = _positive("lognormal", "p50_ms", self.p50_ms)
        p99 = _number("lognormal", "p99_ms", self.p99_ms)
        if p99 < p50:
            raise ConfigError(
                f"lognormal(p99_ms={_show(self.p99_ms)}) must be >= p50_ms={_show(self.p50_ms)}"
            )
        _set(self, "p50_ms", p50)
        _set(self, "p99_ms", p99)
        _set(self, "mu", math.log(p50))
        _set(self, "sigma", (math.log(p99) - math.log(p50)) / _Z99)

    def sample(self, rng: random.Random) -> float:
        """Draw a log-normal wait, in seconds."""
        return rng.lognormvariate(self.mu, self.sigma) / 1000.0

    def describe(self) -> str:
        """Describe as ``lognormal(p50=40 ms, p99=250 ms)``."""
        return f"lognormal(p50={_fmt_ms(self.p50_ms)} ms, p99={_fmt_ms(self.p99_ms)} ms)"

    @property
    def mean_ms(self) -> float:
        """``exp(mu + sigma**2 / 2)``, above the median by the weight of the tail."""
        return math.exp(self.mu + self.sigma * self.sigma / 2.0)


@dataclass(frozen=True)
class ExponentialLatency(Latency):
    """An exponential wait (memoryless, as a queue's service time is often modelled)."""

    scale_ms: float
    """The mean, ``1 / rate``, in milliseconds."""

    def __post_init__(self) -> None:
        _set(self, "scale_ms", _positive("exponential", "mean_ms", self.scale_ms))

    def sample(self, rng: random.Random) -> float:
        """Draw an exponential wait, in seconds."""
        return rng.expovariate(1000.0 / self.scale_ms)

    def describe(self) -> str:
        """Describe as ``exponential(mean=40 ms)``."""
        return f"exponential(mean={_fmt_ms(self.scale_ms)} ms)"

    @property
    def mean_ms(self) -> float:
        """The scale of the distribution."""
        return self.scale_ms


def _nearest_rank(ordered: Sequence[float], fraction: float) -> float:
    index = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[index]


@dataclass(frozen=True, repr=False)
class EmpiricalLatency(Latency):
    """A wait drawn uniformly from recorded latencies (for example, a production log)."""

    samples_ms: tuple[float, ...]
    source: str | None = None
    """The file the samples came from, if any."""

    def __post_init__(self) -> None:
        where = f"empirical({self.source})" if self.source else "empirical"
        values = tuple(self.samples_ms)
        if not values:
            raise ConfigError(f"{where}: samples_ms must not be empty")
        checked = []
        for index, value in enumerate(values):
            number = _at_least(where, f"samples_ms[{index}]", value)
            checked.append(number)
        _set(self, "samples_ms", tuple(checked))

    def sample(self, rng: random.Random) -> float:
        """Pick one recorded latency uniformly, in seconds."""
        return rng.choice(self.samples_ms) / 1000.0

    def describe(self) -> str:
        """Describe as ``empirical(1,000 samples, p50=40 ms, p99=250 ms)``."""
        ordered = sorted(self.samples_ms)
        origin = f"{Path(self.source).name}: " if self.source else ""
        return (
            f"empirical({origin}{len(ordered):,} samples, "
            f"p50={_fmt_ms(_nearest_rank(ordered, 0.5))} ms, "
            f"p99={_fmt_ms(_nearest_rank(ordered, 0.99))} ms)"
        )

    def __repr__(self) -> str:
        # The samples may number in the tens of thousands; a repr names them, not lists them.
        return f"EmpiricalLatency(n={len(self.samples_ms)}, source={self.source!r})"

    @property
    def mean_ms(self) -> float:
        """The mean of the samples."""
        return math.fsum(self.samples_ms) / len(self.samples_ms)


def constant(ms: float) -> ConstantLatency:
    """The same wait every time, in milliseconds."""
    return ConstantLatency(ms)


def uniform(low_ms: float, high_ms: float) -> UniformLatency:
    """A wait drawn uniformly between ``low_ms`` and ``high_ms``."""
    return UniformLatency(low_ms, high_ms)


def normal(mean_ms: float, stdev_ms: float) -> NormalLatency:
    """A normal wait, truncated at zero by resampling negative draws."""
    return NormalLatency(mean_ms, stdev_ms)


def lognormal(p50_ms: float, p99_ms: float) -> LognormalLatency:
    """A log-normal wait with the given median and 99th percentile."""
    return LognormalLatency(p50_ms, p99_ms)


def exponential(mean_ms: float) -> ExponentialLatency:
    """An exponential wait with the given mean."""
    return ExponentialLatency(mean_ms)


def _read_samples(path: str | os.PathLike[str]) -> tuple[list[float], str]:
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"empirical({source!r}) cannot be read: {exc}") from exc
    values: list[float] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            values.append(float(line))
        except ValueError:
            raise ConfigError(
                f"empirical({source!r}) line {lineno} is not a number of milliseconds: {line!r}"
            ) from None
    return values, source


def empirical(samples_ms: Sequence[float] | str | os.PathLike[str]) -> EmpiricalLatency:
    """Waits drawn from recorded milliseconds: a sequence, or a file with one number a line.

    In a file, blank lines and lines starting with ``#`` are skipped.
    """
    if isinstance(samples_ms, str | os.PathLike):
        values, source = _read_samples(samples_ms)
        return EmpiricalLatency(tuple(values), source)
    return EmpiricalLatency(tuple(samples_ms))


LatencyLike: TypeAlias = Latency | float | None
"""What latency parameters accept: a distribution, a number of milliseconds, or ``None``."""

_ZERO = ConstantLatency(0.0)


def as_latency(value: LatencyLike) -> Latency:
    """A ``Latency`` from a distribution, milliseconds (constant) or ``None`` (no wait)."""
    if isinstance(value, Latency):
        return value
    if value is None:
        return _ZERO
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(
            f"latency={value!r} must be a Latency (constant, uniform, normal, lognormal, "
            "exponential, empirical), a number of milliseconds, or None"
        )
    return ConstantLatency(value)


# ---------------------------------------------------------------------- wait recording


@dataclass(frozen=True)
class WaitErrors:
    """How late one kind of wait came back: actual minus requested, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def from_us(cls, errors_us: Sequence[int]) -> WaitErrors:
        """Summarise errors recorded in integer microseconds (0.0 everywhere when empty)."""
        if not errors_us:
            return cls(0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(errors_us)
        return cls(
            count=len(ordered),
            p50_ms=_nearest_rank(ordered, 0.5) / 1000.0,
            p99_ms=_nearest_rank(ordered, 0.99) / 1000.0,
            max_ms=ordered[-1] / 1000.0,
            mean_ms=sum(ordered) / len(ordered) / 1000.0,
        )

    def to_dict(self) -> dict[str, float]:
        """The figures as a JSON-ready dict."""
        return {
            "count": self.count,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
        }


@dataclass(frozen=True)
class WaitReport:
    """Simulated waits seen between ``WaitRecorder.start()`` and ``stop()``."""

    async_waits: WaitErrors
    blocking_waits: WaitErrors

    def to_dict(self) -> dict[str, dict[str, float]]:
        """The figures as a JSON-ready dict."""
        return {"async": self.async_waits.to_dict(), "blocking": self.blocking_waits.to_dict()}


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
            self._active = True

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
        if window is not None:
            lo, hi = window
            async_us = [e for e, at in zip(async_us, async_at, strict=False) if lo <= at <= hi]
            blocking_us = [
                e for e, at in zip(blocking_us, blocking_at, strict=False) if lo <= at <= hi
            ]
        return WaitReport(WaitErrors.from_us(async_us), WaitErrors.from_us(blocking_us))


wait_recorder = WaitRecorder()
"""The process-wide recorder every simulated wait reports to."""

INSTALLED: list[Upstream] = []
"""Upstreams currently answering httpx calls, so that storms can report on them."""

_perf_counter = time.perf_counter


async def _wait_async(seconds: float) -> float:
    start = _perf_counter()
    await anyio.sleep(seconds)
    end = _perf_counter()
    waited = end - start
    if wait_recorder._active:
        wait_recorder._async_us.append(round((waited - seconds) * 1_000_000))
        wait_recorder._async_at.append(end)
    return waited


def _wait_blocking(seconds: float) -> float:
    if seconds <= 0.0:
        # time.sleep(0) still costs ~100 µs of timer slack on Linux; a zero wait skips it.
        return 0.0
    start = _perf_counter()
    time.sleep(seconds)
    end = _perf_counter()
    waited = end - start
    if wait_recorder._active:
        wait_recorder._blocking_us.append(round((waited - seconds) * 1_000_000))
        wait_recorder._blocking_at.append(end)
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


# --------------------------------------------------------------------------- middleware

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
WSGIApp: TypeAlias = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _middleware_repr(app: object, before: Latency, after: Latency | None, extra: str) -> str:
    after_text = f", after={after}" if after is not None else ""
    return f"with_latency({app!r}, {before}{after_text}{extra})"


class ASGILatencyMiddleware:
    """An ASGI app that waits before each HTTP request reaches the wrapped app.

    The ``after`` wait holds the app's final body message, so the client sees the response
    complete only after it, as with WSGI (where the server sends the body after the app
    returns). Lifespan and websocket scopes pass through untouched.
    """

    def __init__(
        self,
        app: Any,
        latency: Latency,
        *,
        after: Latency | None = None,
        blocking: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.app: ASGIApp = as_asgi3(app)
        self.__wrapped__ = app
        self.latency = latency
        self.after = after
        self.blocking = blocking
        self._rng = rng

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wait, then call the app (and wait ``after`` before its final body message)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rng = _default_rng if self._rng is None else self._rng
        if self.blocking:
            # Deliberately stalls the event loop: the mistake this option demonstrates.
            _wait_blocking(self.latency.sample(rng))
        else:
            await _wait_async(self.latency.sample(rng))
        after = self.after
        if after is None:
            await self.app(scope, receive, send)
            return
        blocking = self.blocking

        async def send_after(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                if blocking:
                    _wait_blocking(after.sample(rng))
                else:
                    await _wait_async(after.sample(rng))
            await send(message)

        await self.app(scope, receive, send_after)

    def __repr__(self) -> str:
        extra = ", blocking=True" if self.blocking else ""
        return _middleware_repr(self.__wrapped__, self.latency, self.after, extra)


class WSGILatencyMiddleware:
    """A WSGI app that blocks its worker thread before (and ``after``) the wrapped app."""

    def __init__(
        self,
        app: WSGIApp,
        latency: Latency,
        *,
        after: Latency | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.app = app
        self.__wrapped__ = app
        self.latency = latency
        self.after = after
        self._rng = rng

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Block for one wait, call the app, then block ``after`` before handing back the body."""
        rng = _default_rng if self._rng is None else self._rng
        _wait_blocking(self.latency.sample(rng))
        body = self.app(environ, start_response)
        if self.after is not None:
            _wait_blocking(self.after.sample(rng))
        return body

    def __repr__(self) -> str:
        return _middleware_repr(self.__wrapped__, self.latency, self.after, "")


def with_latency(
    app: Any,
    latency: LatencyLike,
    *,
    blocking: bool = False,
    after: LatencyLike = None,
    seed: int | None = None,
) -> ASGILatencyMiddleware | WSGILatencyMiddleware:
    """Wrap an ASGI or WSGI app so every HTTP request first waits a sampled latency.

    ASGI apps wait with ``anyio.sleep``, or with ``time.sleep`` on the event loop when
    ``blocking=True`` (to show what a blocking call in async code does). WSGI apps always
    block their worker thread. ``seed`` gives the wrapper its own generator.
    """
    before = as_latency(latency)
    after_latency = None if after is None else as_latency(after)
    rng = None if seed is None else random.Random(seed)
    if detect_interface(app) == "asgi":
        return ASGILatencyMiddleware(app, before, after=after_latency, blocking=blocking, rng=rng)
    return WSGILatencyMiddleware(app, before, after=after_latency, rng=rng)


# ----------------------------------------------------------------------------- upstream

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_ERROR_STATUS = 503
_ERROR_BODY = b"simulated upstream error"


class UndeclaredUpstreamError(httpx.TransportError):
    """The app called a host (or path) that the running ``Upstream`` has no route for."""


def _origin(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}"


def _body_from(value: Any, where: str) -> tuple[bytes, list[tuple[str, str]]]:
    if isinstance(value, bytes):
        return value, []
    if isinstance(value, str):
        return value.encode("utf-8"), [("content-type", "text/plain; charset=utf-8")]
    if isinstance(value, dict | list):
        body = jsonlib.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return body.encode("utf-8"), [("content-type", "application/json")]
    raise TypeError(
        f"{where} must give an httpx.Response, dict, list, str or bytes, got {type(value).__name__}"
    )


class _Chunks:
    """Streamed response body: chunks with a sampled wait between them."""

    def __init__(self, route: Route, chunks: tuple[bytes, ...], rng: random.Random) -> None:
        self._route = route
        self._chunks = chunks
        self._rng = rng
        self._open = True

    def _finish(self) -> None:
        # A streamed call stays in flight until its body ends or is closed.
        if self._open:
            self._open = False
            self._route._exit()


class _AsyncChunks(_Chunks, httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        latency = self._route.chunk_latency
        for index, chunk in enumerate(self._chunks):
            if index:
                await _wait_async(latency.sample(self._rng))
            yield chunk
        # An abandoned iterator is not the end of the call: only the body's end or the
        # response's close (aclose below) takes it out of flight, as with a real connection.
        self._finish()

    async def aclose(self) -> None:
        self._finish()


class _SyncChunks(_Chunks, httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        latency = self._route.chunk_latency
        for index, chunk in enumerate(self._chunks):
            if index:
                _wait_blocking(latency.sample(self._rng))
            yield chunk
        self._finish()

    def close(self) -> None:
        self._finish()


class Route:
    """One declared upstream endpoint and what it has seen; create with ``Upstream.route``."""

    def __init__(
        self,
        url_prefix: str,
        *,
        method: str | None,
        latency: Latency,
        status: int,
        json: Any,
        content: str | bytes | None,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        handler: Callable[[httpx.Request], Any] | None,
        stream: Sequence[bytes | str] | None,
        chunk_latency: Latency,
        error_rate: float,
        timeout_rate: float,
        rng: random.Random,
    ) -> None:
        where = f"upstream.route({url_prefix!r})"
        url = httpx.URL(url_prefix)
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            raise ConfigError(
                f"{where}: url_prefix must be an absolute http(s) URL such as "
                "'http://model-server/generate'"
            )
        if url.query:
            raise ConfigError(f"{where}: url_prefix must not have a query; routes match paths")
        bodies = [
            name
            for name, value in (
                ("json", json),
                ("content", content),
                ("handler", handler),
                ("stream", stream),
            )
            if value is not None
        ]
        if len(bodies) > 1:
            raise ConfigError(f"{where}: give at most one of json, content, handler, stream")
        if handler is not None and not callable(handler):
            raise ConfigError(f"{where}: handler={handler!r} is not callable")
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ConfigError(f"{where}: status={status!r} must be an HTTP status (100-599)")
        for name, rate in (("error_rate", error_rate), ("timeout_rate", timeout_rate)):
            if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
                raise ConfigError(f"{where}: {name}={rate!r} must be a fraction (0.0-1.0)")
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"{where}: {name}={_show(rate)} must be between 0.0 and 1.0")
        if error_rate + timeout_rate > 1.0:
            raise ConfigError(
                f"{where}: error_rate={_show(error_rate)} + timeout_rate={_show(timeout_rate)} "
                "must not exceed 1.0"
            )

        self.url_prefix = url_prefix
        self.method = method.upper() if method is not None else None
        self.latency = latency
        self.chunk_latency = chunk_latency
        self.status = status
        self.error_rate = float(error_rate)
        self.timeout_rate = float(timeout_rate)
        self.handler = handler

        self._key = (url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])
        path = url.path.rstrip("/")
        self._path = path
        self._path_dir = path + "/"
        self._rng = rng
        self._faults = error_rate > 0 or timeout_rate > 0
        self._timeout_cut = self.timeout_rate
        self._error_cut = self.timeout_rate + self.error_rate

        user_headers = list(httpx.Headers(headers).multi_items()) if headers else []
        user_names = {name.lower() for name, _ in user_headers}
        self._user_headers = user_headers
        self._chunks: tuple[bytes, ...] | None = None
        if stream is not None:
            self._chunks = tuple(c.encode("utf-8") if isinstance(c, str) else c for c in stream)
            if not all(isinstance(c, bytes) for c in self._chunks):
                raise ConfigError(f"{where}: stream chunks must be bytes or str")
            self._stream_headers = [("transfer-encoding", "chunked"), *user_headers]
        body, implied = (
            (b"", [])
            if json is None and content is None
            else (_body_from(json if json is not None else content, f"{where} json/content"))
        )
        self._body = body
        self._headers = [
            *(h for h in implied if h[0] not in user_names),
            ("content-length", str(len(body))),
            *user_headers,
        ]

        self._lock = threading.Lock()
        self.calls = 0
        """Calls answered or refused by this route since the last reset."""
        self.in_flight = 0
        """Calls waiting or streaming right now."""
        self.max_in_flight = 0
        """The most calls in flight at once."""
        self.errors = 0
        """Calls answered with a simulated 503."""
        self.timeouts = 0
        """Calls that raised ``httpx.ReadTimeout``."""
        self._waits_us: array[int] = array("q")

    @property
    def label(self) -> str:
        """``METHOD url_prefix``, or just the prefix when any method matches."""
        return f"{self.method} {self.url_prefix}" if self.method else self.url_prefix

    @property
    def waited_s(self) -> float:
        """Total time calls spent in their latency wait, in seconds."""
        return sum(self._waits_us) / 1_000_000

    def _matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return not self._path or path == self._path or path.startswith(self._path_dir)

    def _enter(self) -> None:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _exit(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _count_timeout(self) -> None:
        with self._lock:
            self.timeouts += 1

    def _count_error(self) -> None:
        with self._lock:
            self.errors += 1

    def _plan(self, request: httpx.Request) -> tuple[float, bool, bool]:
        """Decide (wait seconds, time out?, answer 503?) for one call."""
        rng = self._rng
        draw = rng.random() if self._faults else 1.0
        delay = self.latency.sample(rng)
        timeouts = request.extensions.get("timeout")
        read_timeout = timeouts.get("read") if isinstance(timeouts, dict) else None
        if draw < self._timeout_cut:
            # An unanswered call costs the client its whole read timeout.
            return (read_timeout if read_timeout is not None else delay), True, False
        if read_timeout is not None and delay > read_timeout:
            return read_timeout, True, False
        return delay, False, draw < self._error_cut

    def _timeout(self, request: httpx.Request, waited: float) -> httpx.ReadTimeout:
        self._count_timeout()
        return httpx.ReadTimeout(
            f"simulated read timeout after {waited * 1000:.1f} ms from {self.label}",
            request=request,
        )

    def _handler_response(self, value: Any) -> httpx.Response:
        if isinstance(value, httpx.Response):
            return value
        body, implied = _body_from(value, f"handler of {self.label}")
        names = {name.lower() for name, _ in self._user_headers}
        headers = [
            *(h for h in implied if h[0] not in names),
            ("content-length", str(len(body))),
            *self._user_headers,
        ]
        return httpx.Response(self.status, headers=headers, stream=httpx.ByteStream(body))

    def _respond(self, stream_cls: type[_AsyncChunks] | type[_SyncChunks]) -> httpx.Response:
        if self._chunks is not None:
            return httpx.Response(
                self.status,
                headers=self._stream_headers,
                stream=stream_cls(self, self._chunks, self._rng),
            )
        return httpx.Response(
            self.status, headers=self._headers, stream=httpx.ByteStream(self._body)
        )

    def _error_response(self) -> httpx.Response:
        self._count_error()
        return httpx.Response(
            _ERROR_STATUS,
            headers=[("content-length", str(len(_ERROR_BODY)))],
            stream=httpx.ByteStream(_ERROR_BODY),
        )

    async def _handle_async(self, request: httpx.Request) -> httpx.Response:
        self._enter()
        streaming = False
        try:
            delay, times_out, fails = self._plan(request)
            waited = await _wait_async(delay)
            self._waits_us.append(round(waited * 1_000_000))
            if times_out:
                raise self._timeout(request, waited)
            if fails:
                return self._error_response()
            if self.handler is not None:
                await request.aread()
                value = self.handler(request)
                if isinstance(value, Awaitable):
                    value = await value
                return self._handler_response(value)
            streaming = self._chunks is not None
            return self._respond(_AsyncChunks)
        finally:
            if not streaming:
                self._exit()

    def _handle_sync(self, request: httpx.Request) -> httpx.Response:
        self._enter()
        streaming = False
        try:
            delay, times_out, fails = self._plan(request)
            waited = _wait_blocking(delay)
            self._waits_us.append(round(waited * 1_000_000))
            if times_out:
                raise self._timeout(request, waited)
            if fails:
                return self._error_response()
            if self.handler is not None:
                request.read()
                value = self.handler(request)
                if isinstance(value, Awaitable):
                    if isinstance(value, Coroutine):
                        value.close()  # never awaited; closing avoids a RuntimeWarning
                    raise TypeError(
                        f"handler of {self.label} returned an awaitable to a sync httpx.Client; "
                        "use a plain function"
                    )
                return self._handler_response(value)
            streaming = self._chunks is not None
            return self._respond(_SyncChunks)
        finally:
            if not streaming:
                self._exit()

    def _reset(self) -> None:
        with self._lock:
            # Calls still in flight will leave through _exit(), so in_flight is kept.
            self.calls = self.errors = self.timeouts = 0
            self.max_in_flight = self.in_flight
            self._waits_us = array("q")

    def stats(self) -> dict[str, Any]:
        """The route's counts and the latency its calls waited (ms), as a JSON-ready dict."""
        ordered = sorted(self._waits_us)
        return {
            "latency": self.latency.describe(),
            "calls": self.calls,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "waited_ms_total": sum(ordered) / 1000.0,
            "waited_ms_mean": (sum(ordered) / len(ordered) / 1000.0) if ordered else 0.0,
            "waited_ms_p50": _nearest_rank(ordered, 0.5) / 1000.0 if ordered else 0.0,
            "waited_ms_p99": _nearest_rank(ordered, 0.99) / 1000.0 if ordered else 0.0,
            "waited_ms_max": ordered[-1] / 1000.0 if ordered else 0.0,
        }

    def __repr__(self) -> str:
        return f"<Route {self.label} {self.latency} calls={self.calls}>"


class Upstream:
    """In-process fake of the hosts an app calls with ``httpx``; a context manager.

    While installed, every ``httpx.Client`` and ``httpx.AsyncClient`` using the default
    transport, including those created earlier, is answered from the declared routes after a
    sampled wait: ``anyio.sleep`` for async clients, ``time.sleep`` for sync ones. Nothing
    reaches the network; a call no route matches raises ``UndeclaredUpstreamError`` and is
    listed in ``undeclared``. Only httpx is intercepted, and the client's connection-pool
    limits are not modelled (every call proceeds at once). A call whose wait would exceed the
    client's read timeout waits that timeout and raises ``httpx.ReadTimeout``; a call picked
    by ``timeout_rate`` does the same (or waits one latency sample when the client has no
    read timeout). A 503 picked by ``error_rate`` comes after the usual latency.
    """

    def __init__(self, *, max_undeclared: int = 100) -> None:
        self._routes: dict[tuple[str, str, int], list[Route]] = {}
        self._saved: tuple[Any, Any] | None = None
        self._max_undeclared = max_undeclared
        self._lock = threading.Lock()
        self._undeclared_seen: set[str] = set()
        self.undeclared: list[str] = []
        """Distinct URLs called without a route (the first ``max_undeclared``)."""
        self.undeclared_calls = 0
        """How many calls had no route, including repeats."""

    # -- declaring

    def route(
        self,
        url_prefix: str,
        *,
        method: str | None = None,
        latency: LatencyLike = None,
        status: int = 200,
        json: Any = None,
        content: str | bytes | None = None,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        handler: Callable[[httpx.Request], Any] | None = None,
        stream: Sequence[bytes | str] | None = None,
        chunk_latency: LatencyLike = None,
        error_rate: float = 0.0,
        timeout_rate: float = 0.0,
        seed: int | None = None,
    ) -> Route:
        """Declare an endpoint: calls to ``url_prefix`` (longest prefix wins) are answered here.

        ``handler(request)`` may return an ``httpx.Response``, a dict or list (JSON), str or
        bytes; ``stream`` sends its chunks with ``chunk_latency`` between them. A fraction
        ``error_rate`` of calls get a 503 and ``timeout_rate`` raise ``httpx.ReadTimeout``.
        """
        new = Route(
            url_prefix,
            method=method,
            latency=as_latency(latency),
            status=status,
            json=json,
            content=content,
            headers=headers,
            handler=handler,
            stream=stream,
            chunk_latency=as_latency(chunk_latency),
            error_rate=error_rate,
            timeout_rate=timeout_rate,
            rng=_default_rng if seed is None else random.Random(seed),
        )
        existing = self._routes.get(new._key, [])
        for route in existing:
            if route._path == new._path and route.method == new.method:
                raise ConfigError(
                    f"upstream.route({url_prefix!r}, method={method!r}) is already declared"
                )
        # Most specific first: longer prefixes, then routes that name a method. A new list
        # replaces the old so threads answering calls never see one half-sorted.
        self._routes[new._key] = sorted(
            [*existing, new], key=lambda r: (-len(r._path), r.method is None)
        )
        return new

    @property
    def routes(self) -> list[Route]:
        """Every declared route."""
        return [route for routes in self._routes.values() for route in routes]

    # -- installing

    @property
    def installed(self) -> bool:
        """Whether httpx's transports currently answer from this upstream."""
        return self._saved is not None

    def install(self) -> None:
        """Patch httpx's default transports to answer from this upstream."""
        if self._saved is not None:
            raise RuntimeError("this Upstream is already installed")
        sync_cls, async_cls = httpx.HTTPTransport, httpx.AsyncHTTPTransport
        self._saved = (
            sync_cls.__dict__["handle_request"],
            async_cls.__dict__["handle_async_request"],
        )
        match = self._match

        def handle_request(
            transport: httpx.HTTPTransport, request: httpx.Request
        ) -> httpx.Response:
            return match(request)._handle_sync(request)

        async def handle_async_request(
            transport: httpx.AsyncHTTPTransport, request: httpx.Request
        ) -> httpx.Response:
            return await match(request)._handle_async(request)

        setattr(sync_cls, "handle_request", handle_request)  # noqa: B010
        setattr(async_cls, "handle_async_request", handle_async_request)  # noqa: B010
        INSTALLED.append(self)

    def uninstall(self) -> None:
        """Put httpx's transports back as they were before ``install()``."""
        if self._saved is None:
            return
        handle_request, handle_async_request = self._saved
        setattr(httpx.HTTPTransport, "handle_request", handle_request)  # noqa: B010
        setattr(httpx.AsyncHTTPTransport, "handle_async_request", handle_async_request)  # noqa: B010
        self._saved = None
        if self in INSTALLED:
            INSTALLED.remove(self)

    def __enter__(self) -> Upstream:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    # -- answering

    def _match(self, request: httpx.Request) -> Route:
        url = request.url
        scheme = url.scheme
        routes = self._routes.get((scheme, url.host, url.port or _DEFAULT_PORTS.get(scheme, 0)))
        if routes is not None:
            method, path = request.method, url.path
            for route in routes:
                if route._matches(method, path):
                    return route
        raise self._undeclared(request, routes)

    def _undeclared(
        self, request: httpx.Request, routes: list[Route] | None
    ) -> UndeclaredUpstreamError:
        url = str(request.url)
        with self._lock:
            self.undeclared_calls += 1
            if url not in self._undeclared_seen and len(self.undeclared) < self._max_undeclared:
                self._undeclared_seen.add(url)
                self.undeclared.append(url)
        origin = _origin(request.url)
        if routes is None:
            problem = f"undeclared upstream host {request.url.host!r}"
            suggestion = f"{origin}/"
        else:
            declared = ", ".join(route.label for route in routes)
            problem = f"no route for this path on {origin} (declared: {declared})"
            suggestion = f"{origin}{request.url.path}"
        return UndeclaredUpstreamError(
            f"{problem}: {request.method} {url} was not answered, and no network is used "
            f'during a storm; declare it with upstream.route("{suggestion}", latency=...)',
            request=request,
        )

    # -- reporting

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-route figures keyed by route label (see ``Route.stats``)."""
        return {route.label: route.stats() for route in self.routes}

    def reset(self) -> None:
        """Zero every route's counts and forget undeclared calls."""
        for route in self.routes:
            route._reset()
        with self._lock:
            self.undeclared = []
            self._undeclared_seen = set()
            self.undeclared_calls = 0

    def __repr__(self) -> str:
        state = "installed" if self.installed else "not installed"
        return f"<Upstream {state}, {len(self.routes)} routes>"

"""Latency distributions: milliseconds in, seconds sampled from a caller's ``random.Random``.

A seeded storm therefore waits the same sequence every run.
"""

from __future__ import annotations

import abc
import math
import numbers
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from .._errors import ConfigError
from .._metrics.percentile import quantile

__all__ = [
    "ConstantLatency",
    "EmpiricalLatency",
    "ExponentialLatency",
    "Latency",
    "LatencyLike",
    "LognormalLatency",
    "NormalLatency",
    "UniformLatency",
    "as_latency",
    "constant",
    "empirical",
    "exponential",
    "lognormal",
    "normal",
    "uniform",
]

# z-score of the 99th percentile of the standard normal distribution.
_Z99 = 2.3263478740408408

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
            f"p50={_fmt_ms(quantile(ordered, 0.5))} ms, "
            f"p99={_fmt_ms(quantile(ordered, 0.99))} ms)"
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


LatencyLike: TypeAlias = Latency | float | str | None
"""What latency parameters accept: a distribution, a number of milliseconds (0, or 1 and
more), a number with its unit (``"50ms"``, ``"0.05s"``, ``"500us"``), or ``None``."""

_ZERO = ConstantLatency(0.0)

#: Milliseconds per unit of a latency written with its unit.
_UNITS = {"s": 1000.0, "ms": 1.0, "us": 0.001, "µs": 0.001}
_WITH_UNIT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs)\s*")


def as_latency(value: LatencyLike, *, name: str = "latency", where: str = "") -> Latency:
    """A ``Latency`` from a distribution, milliseconds (constant), a number with its unit
    (``"0.05s"``) or ``None`` (no wait).

    A bare number between 0 and 1 is refused: ``duration=`` and ``timeout=`` of the field's
    tools are seconds, so ``latency=0.05`` is far more often a slip for 50 ms than a wish
    for 50 µs; a wait that short is written with its unit (``"0.05ms"``, ``"50us"``) or as
    ``constant(0.05)``.
    """
    if isinstance(value, Latency):
        return value
    if value is None:
        return _ZERO
    match = _WITH_UNIT.fullmatch(value) if isinstance(value, str) else None
    if match is not None:
        return ConstantLatency(float(match[1]) * _UNITS[match[2]])
    if isinstance(value, bool | str) or not isinstance(value, numbers.Real):
        raise ConfigError(
            f"{where}{name}={value!r} must be a Latency (constant, uniform, normal, lognormal, "
            "exponential, empirical), a number of milliseconds, a number with its unit "
            "('50ms', '0.05s', '500us') or None"
        )
    if 0 < value < 1:
        shown = f"{float(value):g}"
        raise ConfigError(
            f"{where}{name}={shown} is a bare number below 1, and latencies are in "
            f"milliseconds: this would be {shown} ms, not {float(value) * 1000:g} ms; for "
            f"{shown} seconds write {name}={float(value) * 1000:g} or {name}='{shown}s', for "
            f"{shown} milliseconds write {name}='{shown}ms' or {name}=constant({shown})"
        )
    return ConstantLatency(value)

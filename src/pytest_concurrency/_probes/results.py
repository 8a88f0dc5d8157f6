"""What the probes measured: plain data, importable without the probes themselves.

The sentences that describe these figures live in ``_report._blocking_text``; ``str()``,
``describe()`` and the ``text`` entry of ``to_dict()`` hand over to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = [
    "ANYIO_LIMITER",
    "ASGIREF_THREADS",
    "BACK_TO_BACK",
    "DEFAULT_EXECUTOR",
    "BlockingSite",
    "LoopLag",
    "PoolSecond",
    "PoolUsage",
]

from .names import ANYIO_LIMITER, ASGIREF_THREADS, DEFAULT_EXECUTOR

#: A stall this many times longer than its longest call is explained as calls in a row.
BACK_TO_BACK = 1.5


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


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
        from .._report._blocking_text import site_location

        return site_location(self)

    def __str__(self) -> str:
        from .._report._blocking_text import describe_site

        return describe_site(self)

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
            and self.max_ms > BACK_TO_BACK * self.longest_stall_call_ms
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
        from .._report._blocking_text import describe_pool

        return describe_pool(self)

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

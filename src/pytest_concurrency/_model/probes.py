"""What the probes measured: plain data, importable without the probes themselves.

Each result describes itself (``str()``, ``describe()`` and the ``text`` entry of
``to_dict()``: the functions at the end of this module); the lines that combine them into a
diagnosis live in ``_report._blocking_text``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = [
    "ANYIO_LIMITER",
    "ASGIREF_THREADS",
    "BACK_TO_BACK",
    "DEFAULT_EXECUTOR",
    "BlockingSite",
    "ConnectionPoolUsage",
    "LoopLag",
    "PoolSecond",
    "PoolUsage",
    "describe_connection_pool",
    "describe_pool",
    "describe_site",
    "merge_loop_lags",
    "site_location",
]

from .names import ANYIO_LIMITER, ASGIREF_THREADS, DEFAULT_EXECUTOR

#: A stall this many times longer than its longest call is explained as calls in a row.
BACK_TO_BACK = 1.5


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _number(value: Any) -> float:
    """A figure read back from JSON: None (a NaN written as null) is NaN again."""
    return math.nan if value is None else float(value)


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
        return site_location(self)

    def __str__(self) -> str:
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockingSite:
        """The site back from :meth:`to_dict` (its ``text`` is made again, not read)."""
        return cls(
            file=str(data["file"]),
            line=int(data["line"]),
            function=str(data["function"]),
            call=str(data["call"]),
            count=int(data["count"]),
            total_s=float(data["total_s"]),
            per_call_p50_ms=_number(data["per_call_p50_ms"]),
            per_call_p99_ms=_number(data["per_call_p99_ms"]),
            per_call_max_ms=_number(data["per_call_max_ms"]),
            stalls=int(data["stalls"]),
            p99_stall_ms=_number(data["p99_stall_ms"]),
        )


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoopLag:
        """The figures back from :meth:`to_dict` (which must have kept the histogram)."""
        encoded = data.get("histogram")
        if not isinstance(encoded, str):
            raise ValueError("a LoopLag read back needs its histogram (to_dict(histogram=True))")
        return cls(
            p50_ms=_number(data["p50_ms"]),
            p99_ms=_number(data["p99_ms"]),
            max_ms=_number(data["max_ms"]),
            mean_ms=_number(data["mean_ms"]),
            total_blocked_s=float(data["total_blocked_s"]),
            stalls=int(data["stalls"]),
            threshold_ms=float(data["threshold_ms"]),
            interval_ms=float(data["interval_ms"]),
            duration_s=float(data["duration_s"]),
            ticks=int(data["ticks"]),
            unattributed=int(data["unattributed"]),
            sites=[BlockingSite.from_dict(site) for site in data.get("sites") or []],
            histogram=HdrHistogram.decode(encoded),
            calls=int(data.get("calls") or 0),
            longest_stall_calls=int(data.get("longest_stall_calls") or 0),
            longest_stall_call_ms=_number(data.get("longest_stall_call_ms")),
        )


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolSecond:
        """The point back from :meth:`to_dict`."""
        waiting = data.get("mean_waiting")
        return cls(
            second=int(data["second"]),
            mean_busy=float(data["mean_busy"]),
            max_busy=int(data["max_busy"]),
            mean_waiting=float(waiting) if waiting is not None else None,
        )


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolUsage:
        """The usage back from :meth:`to_dict` (its ``text`` is made again, not read)."""

        size = data.get("size")
        return cls(
            name=str(data["name"]),
            size=int(size) if size is not None else None,
            mean_busy=float(data["mean_busy"]),
            max_busy=int(data["max_busy"]),
            full=float(data["full"]),
            saturation=float(data["saturation"]),
            mean_waiting=_optional(data, "mean_waiting"),
            wait_p99_ms=_optional(data, "wait_p99_ms"),
            samples=int(data["samples"]),
            timeline=[PoolSecond.from_dict(p) for p in data.get("timeline") or []],
        )


@dataclass(frozen=True)
class ConnectionPoolUsage:
    """How one connection pool of the app (a database's, an HTTP client's) held up during a storm.

    ``size`` is the most connections it hands out at once (None: no limit). ``saturation``
    is the share of the storm with every connection taken and a request waiting for one;
    ``full`` the share with every connection taken. Waits are each checkout's time to get
    a connection, opening a new one excluded (that is ``connect_s``, ``connects`` times).
    """

    name: str
    library: str
    size: int | None
    peak_in_use: int
    mean_in_use: float
    full: float
    saturation: float
    checkouts: int
    waited: int
    wait_p50_ms: float | None
    wait_p99_ms: float | None
    connects: int
    connect_s: float
    connect_p50_ms: float | None
    duration_s: float
    #: What to change when the pool is the bottleneck (``raise pool_size``).
    fix: str = ""
    #: Requests served on a connection an earlier request opened and left open (Django
    #: with ``CONN_MAX_AGE`` > 0); a pool's checkouts are all reuses or opens already.
    reused: int = 0

    @property
    def used(self) -> bool:
        """True when a connection was taken or opened during the storm."""
        return self.checkouts > 0 or self.connects > 0 or self.peak_in_use > 0 or self.reused > 0

    def describe(self) -> str:
        """One sentence: ``5 of 5 SQLAlchemy connections busy 97% of the storm, …``."""
        return describe_connection_pool(self)

    def __str__(self) -> str:
        return self.describe()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "name": self.name,
            "library": self.library,
            "size": self.size,
            "peak_in_use": self.peak_in_use,
            "mean_in_use": self.mean_in_use,
            "full": self.full,
            "saturation": self.saturation,
            "checkouts": self.checkouts,
            "waited": self.waited,
            "wait_p50_ms": self.wait_p50_ms,
            "wait_p99_ms": self.wait_p99_ms,
            "connects": self.connects,
            "connect_s": self.connect_s,
            "connect_p50_ms": self.connect_p50_ms,
            "duration_s": self.duration_s,
            "fix": self.fix,
            "reused": self.reused,
            "text": self.describe(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConnectionPoolUsage:
        """The usage back from :meth:`to_dict` (its ``text`` is made again, not read)."""

        size = data.get("size")
        return cls(
            name=str(data["name"]),
            library=str(data["library"]),
            size=int(size) if size is not None else None,
            peak_in_use=int(data["peak_in_use"]),
            mean_in_use=float(data["mean_in_use"]),
            full=float(data["full"]),
            saturation=float(data["saturation"]),
            checkouts=int(data["checkouts"]),
            waited=int(data["waited"]),
            wait_p50_ms=_optional(data, "wait_p50_ms"),
            wait_p99_ms=_optional(data, "wait_p99_ms"),
            connects=int(data["connects"]),
            connect_s=float(data["connect_s"]),
            connect_p50_ms=_optional(data, "connect_p50_ms"),
            duration_s=float(data["duration_s"]),
            fix=str(data.get("fix") or ""),
            reused=int(data.get("reused") or 0),
        )


def _merge_sites(sites: Sequence[BlockingSite]) -> BlockingSite:
    """One site from the same line's figures in several processes."""
    first = sites[0]
    count = sum(s.count for s in sites)
    # Each process kept its own per-call percentiles, not the durations: the median is
    # weighted by calls, the p99 and maximum are the largest (an upper bound, exact for one).
    p50 = sum(s.per_call_p50_ms * s.count for s in sites) / count if count else math.nan
    return dataclasses.replace(
        first,
        count=count,
        total_s=sum(s.total_s for s in sites),
        per_call_p50_ms=p50,
        per_call_p99_ms=max(s.per_call_p99_ms for s in sites),
        per_call_max_ms=max(s.per_call_max_ms for s in sites),
        stalls=sum(s.stalls for s in sites),
        p99_stall_ms=max(s.p99_stall_ms for s in sites),
    )


def merge_loop_lags(lags: Sequence[LoopLag]) -> LoopLag:
    """The loop lag of several processes (a server's workers) as one figure.

    Blocking sites and stalls add up, the lag histograms are added (so p50 and p99 are
    over every timer of every process), the maxima are the largest; the longest stall is
    the one of the process that lagged most. One lag comes back as it is.
    """
    if not lags:
        raise ValueError("merge_loop_lags() needs at least one LoopLag")
    if len(lags) == 1:
        return lags[0]
    from .._probes._common import _percentiles_ms

    histogram = HdrHistogram.decode(lags[0].histogram.encode())
    for lag in lags[1:]:
        histogram.add(lag.histogram)
    p50, p99 = _percentiles_ms(histogram, 50.0, 99.0)
    by_line: dict[tuple[str, int, str], list[BlockingSite]] = {}
    for lag in lags:
        for site in lag.sites:
            by_line.setdefault((site.file, site.line, site.function), []).append(site)
    sites = sorted((_merge_sites(group) for group in by_line.values()), key=lambda s: -s.total_s)
    measured = [lag for lag in lags if math.isfinite(lag.max_ms)]
    worst = max(measured, key=lambda lag: lag.max_ms) if measured else lags[0]
    ticks = sum(lag.ticks for lag in lags)
    means = [(lag.mean_ms, lag.ticks) for lag in lags if math.isfinite(lag.mean_ms)]
    return LoopLag(
        p50_ms=p50,
        p99_ms=p99,
        max_ms=worst.max_ms,
        mean_ms=sum(m * n for m, n in means) / sum(n for _, n in means) if means else math.nan,
        total_blocked_s=sum(lag.total_blocked_s for lag in lags),
        stalls=sum(lag.stalls for lag in lags),
        threshold_ms=worst.threshold_ms,
        interval_ms=worst.interval_ms,
        duration_s=max(lag.duration_s for lag in lags),
        ticks=ticks,
        unattributed=sum(lag.unattributed for lag in lags),
        sites=sites,
        histogram=histogram,
        calls=sum(lag.calls for lag in lags),
        longest_stall_calls=worst.longest_stall_calls,
        longest_stall_call_ms=worst.longest_stall_call_ms,
    )


# -- what each result says of itself ------------------------------------------------------


def _shown_path(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return path if relative.startswith("..") else relative


def _seconds(value: float) -> str:
    return f"{value:,.1f} s" if value >= 1 else f"{value * 1000:,.0f} ms"


def site_location(site: BlockingSite) -> str:
    """``app/main.py:12 in read_item`` (relative to the working directory when inside it)."""
    return f"{_shown_path(site.file)}:{site.line} in {site.function}"


def describe_site(site: BlockingSite) -> str:
    """``app.py:12 in read_item → time.sleep(0.05): 812 calls held the loop 50.1 ms each …``."""
    call = f" → {site.call}" if site.call else ""
    if site.count == 1:
        held = f"1 call held the loop {site.per_call_p50_ms:,.1f} ms"
    else:
        held = (
            f"{site.count:,} calls held the loop {site.per_call_p50_ms:,.1f} ms each "
            f"(p99 {site.per_call_p99_ms:,.1f} ms), {_seconds(site.total_s)} in total"
        )
    return f"{site_location(site)}{call}: {held}"


def describe_pool(pool: PoolUsage) -> str:
    """One sentence: ``anyio default thread limiter: 40 of 40 busy 96% of the time, …``."""
    wait = (
        f"; p99 wait for a thread {pool.wait_p99_ms:,.1f} ms"
        if pool.wait_p99_ms is not None
        else ""
    )
    if pool.size is None:
        return (
            f"{pool.name}: {pool.mean_busy:,.1f} threads busy on average, "
            f"at most {pool.max_busy:,} at once{wait}"
        )
    if pool.full >= 0.01:
        waiting = (
            f", {pool.mean_waiting:,.0f} requests waiting on average"
            if pool.mean_waiting is not None
            else ""
        )
        return (
            f"{pool.name}: {pool.size:,} of {pool.size:,} busy {pool.full:.0%} "
            f"of the time{waiting}{wait}"
        )
    return (
        f"{pool.name}: {pool.mean_busy:,.1f} of {pool.size:,} busy on average, "
        f"at most {pool.max_busy:,}{wait}"
    )


def describe_connection_pool(pool: ConnectionPoolUsage) -> str:
    """``SQLAlchemy pool (sqlite+pysqlite): 5 of 5 connections busy 97% of the storm, …``."""
    parts: list[str] = []
    if pool.size is not None and pool.saturation >= 0.01:
        parts.append(
            f"{pool.size:,} of {pool.size:,} connections busy with requests waiting "
            f"{pool.saturation:.0%} of the storm"
        )
    elif pool.size is not None:
        parts.append(
            f"at most {pool.peak_in_use:,} of {pool.size:,} connections in use "
            f"({pool.mean_in_use:,.1f} on average)"
        )
    else:
        parts.append(
            f"at most {pool.peak_in_use:,} connections open at once "
            f"({pool.mean_in_use:,.1f} on average)"
        )
    if pool.checkouts:
        if pool.waited and pool.wait_p50_ms is not None and pool.wait_p99_ms is not None:
            parts.append(
                f"{pool.waited:,} of {pool.checkouts:,} checkouts waited for a connection, "
                f"p50 wait {pool.wait_p50_ms:,.1f} ms, p99 {pool.wait_p99_ms:,.1f} ms"
            )
        else:
            parts.append(f"none of {pool.checkouts:,} checkouts waited for a connection")
    if pool.connects:
        each = (
            f", {pool.connect_p50_ms:,.1f} ms each (p50)" if pool.connect_p50_ms is not None else ""
        )
        opened = "1 connection" if pool.connects == 1 else f"{pool.connects:,} connections"
        parts.append(f"{opened} opened{each}, {_seconds(pool.connect_s)} opening in total")
    if pool.reused:
        parts.append(f"{pool.reused:,} requests reused an open connection")
    return f"{pool.name}: " + "; ".join(parts)


def _optional(data: Mapping[str, Any], key: str) -> float | None:
    """*key* of *data* as a float, or None where it is absent or null."""
    value = data.get(key)
    return float(value) if value is not None else None

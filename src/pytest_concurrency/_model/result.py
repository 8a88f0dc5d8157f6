"""The result of one storm: what was sent, how long it took, and whether budgets held."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from .probes import ConnectionPoolUsage, LoopLag, PoolUsage

__all__ = [
    "EndpointStats",
    "ErrorSummary",
    "Knee",
    "LatencyStats",
    "PoolStats",
    "StormResult",
    "TimelinePoint",
    "Verdict",
]


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of one distribution, in milliseconds."""

    count: int = 0
    min: float = math.nan
    mean: float = math.nan
    stdev: float = math.nan
    p50: float = math.nan
    p75: float = math.nan
    p90: float = math.nan
    p95: float = math.nan
    p99: float = math.nan
    p999: float = math.nan
    max: float = math.nan

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON."""
        return {
            "count": self.count,
            "min": self.min,
            "mean": self.mean,
            "stdev": self.stdev,
            "p50": self.p50,
            "p75": self.p75,
            "p90": self.p90,
            "p95": self.p95,
            "p99": self.p99,
            "p999": self.p999,
            "max": self.max,
        }


@dataclass
class ErrorSummary:
    """Failures of one kind: how many, and one example traceback."""

    type: str
    count: int
    example: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {"type": self.type, "count": self.count, "example": self.example}


@dataclass(frozen=True)
class Verdict:
    """One budget's limit, the measured figure and whether it held."""

    name: str
    limit: float
    measured: float
    ok: bool

    @property
    def ratio(self) -> float:
        """How many times the limit the measured figure is (for "over" budgets)."""
        if self.limit == 0:
            return math.inf if self.measured > 0 else 1.0
        return self.measured / self.limit

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "name": self.name,
            "limit": self.limit,
            "measured": _finite(self.measured),
            "ok": self.ok,
        }


@dataclass(frozen=True)
class TimelinePoint:
    """Figures of one second of the storm (by completion time, from the start of measurement)."""

    second: int
    requests: int
    errors: int
    p50: float
    p99: float
    max: float
    busy_workers: float | None = None
    target: float | None = None
    dropped: int = 0
    in_flight: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "second": self.second,
            "requests": self.requests,
            "errors": self.errors,
            "p50": _finite(self.p50),
            "p99": _finite(self.p99),
            "max": _finite(self.max),
            "busy_workers": self.busy_workers,
            "target": self.target,
            "dropped": self.dropped,
            "in_flight": self.in_flight,
        }


@dataclass(frozen=True)
class Knee:
    """Where the latency curve broke as load rose: the second, its target load and p99."""

    second: int
    target: float | None
    p99: float
    calm_p99: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "second": self.second,
            "target": self.target,
            "p99": self.p99,
            "calm_p99": self.calm_p99,
        }


@dataclass(frozen=True)
class EndpointStats:
    """Per-endpoint breakdown of a request mix."""

    name: str
    requests: int
    errors: int
    latency: LatencyStats
    throughput: float = 0.0

    @property
    def error_rate(self) -> float:
        """Fraction of this endpoint's requests that failed."""
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "name": self.name,
            "requests": self.requests,
            "errors": self.errors,
            "throughput": self.throughput,
            "latency": _finite_dict(self.latency.to_dict()),
        }


@dataclass(frozen=True)
class PoolStats:
    """How busy the pool that served the storm was."""

    description: str
    size: int
    saturation: float
    mean_busy: float
    mean_queue_ms: float
    queue_share: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "description": self.description,
            "size": self.size,
            "saturation": self.saturation,
            "mean_busy": self.mean_busy,
            "mean_queue_ms": _finite(self.mean_queue_ms),
            "queue_share": _finite(self.queue_share),
        }


@dataclass(repr=False)
class StormResult:
    """Figures of one storm; latencies in milliseconds, throughput in requests per second."""

    label: str
    app: str
    interface: str
    server: str
    method: str
    path: str
    users: int
    requests: int
    duration: float
    throughput: float
    latency: LatencyStats
    ttfb: LatencyStats
    queue_wait: LatencyStats | None
    service_time: LatencyStats | None
    status_counts: Counter[int]
    errors: dict[str, ErrorSummary]
    failed: int
    timeouts: int
    pool: PoolStats | None
    timeline: list[TimelinePoint]
    endpoints: dict[str, EndpointStats]
    histograms: dict[str, HdrHistogram]
    params: dict[str, Any]
    budgets: dict[str, float]
    verdicts: list[Verdict] = field(default_factory=list)
    #: Problems with the measurement itself, also emitted as ``ConcurrencyWarning``.
    warnings: list[str] = field(default_factory=list)
    loop_cpu_share: float | None = None
    harness_share: float | None = None
    discarded: int = 0
    #: perf_counter() times of the measured window (start, stop): for joining other records.
    window: tuple[float, float] | None = field(default=None, compare=False)
    model: str = "closed"
    rate: float | None = None
    dropped: int = 0
    knee: Knee | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    loop_lag: LoopLag | None = None
    thread_pools: list[PoolUsage] = field(default_factory=list)
    #: The app's connection pools (databases, HTTP clients) used during the storm.
    connection_pools: list[ConnectionPoolUsage] = field(default_factory=list)
    #: Informational remarks (a knee, the spread of rounds, a scaled load): shown in the
    #: reports, never emitted as warnings, so ``-W error`` does not fail a passing storm.
    notes: list[str] = field(default_factory=list)
    #: Connections off the machine refused during the storm: host, port, client, the app's
    #: call site and a count each, most frequent first. Any of them fails the storm.
    refused_egress: list[dict[str, Any]] = field(default_factory=list)

    @property
    def loop_lag_max_ms(self) -> float | None:
        """Longest time the event loop could not run during the storm (ASGI only)."""
        return self.loop_lag.max_ms if self.loop_lag is not None else None

    @property
    def busiest_connection_pool(self) -> ConnectionPoolUsage | None:
        """The connection pool of the app that was closest to saturation, if any was used."""
        used = [p for p in self.connection_pools if p.used]
        return max(used, key=lambda p: (p.saturation, p.wait_p99_ms or 0.0)) if used else None

    @property
    def busiest_pool(self) -> PoolUsage | None:
        """The thread pool inside an ASGI app that was closest to saturation, if any ran."""
        used = [p for p in self.thread_pools if p.max_busy > 0]
        return max(used, key=lambda p: (p.saturation, p.mean_busy)) if used else None

    def __repr__(self) -> str:
        return (
            f"<StormResult {self.label} on {self.app}: {self.requests:,} requests, "
            f"{self.throughput:,.1f} rps, p50 {self.latency.p50:,.2f} ms, p99 {self.latency.p99:,.2f} ms, "
            f"{'passed' if self.passed else 'FAILED'}>"
        )

    @property
    def error_rate(self) -> float:
        """Fraction of measured requests that failed (exception, timeout or status >= 400)."""
        return self.failed / self.requests if self.requests else 0.0

    @property
    def saturation(self) -> float | None:
        """Fraction of the storm during which every worker of the pool was busy."""
        return self.pool.saturation if self.pool is not None else None

    @property
    def passed(self) -> bool:
        """True when every budget held."""
        return all(v.ok for v in self.verdicts)

    @property
    def failed_verdicts(self) -> list[Verdict]:
        """The budgets that did not hold."""
        return [v for v in self.verdicts if not v.ok]

    def to_dict(self, *, histograms: bool = True) -> dict[str, Any]:
        """Everything as plain JSON-ready data; histograms as HdrHistogram base64 encodings."""
        data: dict[str, Any] = {
            "label": self.label,
            "app": self.app,
            "interface": self.interface,
            "server": self.server,
            "method": self.method,
            "path": self.path,
            "users": self.users,
            "requests": self.requests,
            "duration": self.duration,
            "throughput": self.throughput,
            "latency": _finite_dict(self.latency.to_dict()),
            "ttfb": _finite_dict(self.ttfb.to_dict()),
            "queue_wait": _finite_dict(self.queue_wait.to_dict()) if self.queue_wait else None,
            "service_time": _finite_dict(self.service_time.to_dict())
            if self.service_time
            else None,
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            "errors": {k: v.to_dict() for k, v in self.errors.items()},
            "failed": self.failed,
            "timeouts": self.timeouts,
            "error_rate": self.error_rate,
            "pool": self.pool.to_dict() if self.pool else None,
            "timeline": [p.to_dict() for p in self.timeline],
            "endpoints": {k: v.to_dict() for k, v in self.endpoints.items()},
            "params": {k: v for k, v in self.params.items() if _jsonable(v)},
            "budgets": self.budgets,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "passed": self.passed,
            "warnings": self.warnings,
            "notes": self.notes,
            "loop_cpu_share": self.loop_cpu_share,
            "harness_share": self.harness_share,
            "discarded": self.discarded,
            "model": self.model,
            "rate": self.rate,
            "dropped": self.dropped,
            "knee": self.knee.to_dict() if self.knee else None,
            "rounds": self.rounds,
            "extras": self.extras,
            "loop_lag": self.loop_lag.to_dict(histogram=histograms) if self.loop_lag else None,
            "thread_pools": [p.to_dict() for p in self.thread_pools],
            "connection_pools": [p.to_dict() for p in self.connection_pools],
            "refused_egress": self.refused_egress,
        }
        if histograms:
            # HdrHistogram's encoding is already compressed and base64: text as it is.
            data["histograms"] = {
                name: h.encode().decode("ascii") for name, h in self.histograms.items()
            }
        return data


def _finite(value: float) -> float | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _finite_dict(data: dict[str, float | int]) -> dict[str, float | int | None]:
    return {k: _finite(v) if isinstance(v, float) else v for k, v in data.items()}


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)

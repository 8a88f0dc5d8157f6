"""The result of one storm: what was sent, how long it took, and whether budgets held."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hdrh.histogram import HdrHistogram

from .extras import (
    Abandoned,
    Comparison,
    ContentionFigures,
    FidelityFigures,
    LocustInvocation,
    ServerProbes,
    ServerUsage,
    ShardFigures,
    SimulatedWaits,
    StartHooks,
    UpstreamFigures,
    VirtualClock,
    WebSocketConnections,
)
from .probes import ConnectionPoolUsage, LoopLag, PoolUsage

__all__ = [
    "Attribution",
    "Breakdown",
    "EndpointStats",
    "ErrorSummary",
    "Exemplar",
    "Knee",
    "LatencyStats",
    "PoolStats",
    "StormResult",
    "TimelinePoint",
    "Verdict",
    "WaitShare",
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyStats:
        """The figures back from :meth:`to_dict` (a figure written as null is NaN again)."""
        return cls(
            count=int(data.get("count") or 0),
            **{name: _number(data.get(name)) for name in _LATENCY_FIGURES},
        )


@dataclass
class ErrorSummary:
    """Failures of one kind: how many, and one example traceback."""

    type: str
    count: int
    example: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {"type": self.type, "count": self.count, "example": self.example}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorSummary:
        """The summary back from :meth:`to_dict`."""
        return cls(str(data["type"]), int(data["count"]), str(data["example"]))


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """The verdict back from :meth:`to_dict` (a figure not measured is infinite again)."""
        measured = data.get("measured")
        return cls(
            str(data["name"]),
            float(data["limit"]),
            float(measured) if measured is not None else math.inf,
            bool(data["ok"]),
        )


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimelinePoint:
        """The point back from :meth:`to_dict`."""
        return cls(
            second=int(data["second"]),
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            p50=_number(data.get("p50")),
            p99=_number(data.get("p99")),
            max=_number(data.get("max")),
            busy_workers=data.get("busy_workers"),
            target=data.get("target"),
            dropped=int(data.get("dropped") or 0),
            in_flight=data.get("in_flight"),
        )


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Knee:
        """The knee back from :meth:`to_dict`."""
        return cls(
            int(data["second"]), data.get("target"), float(data["p99"]), float(data["calm_p99"])
        )


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EndpointStats:
        """The endpoint's figures back from :meth:`to_dict`."""
        return cls(
            name=str(data["name"]),
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            latency=LatencyStats.from_dict(data["latency"]),
            throughput=float(data.get("throughput") or 0.0),
        )


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolStats:
        """The pool's figures back from :meth:`to_dict`."""
        return cls(
            description=str(data["description"]),
            size=int(data["size"]),
            saturation=float(data["saturation"]),
            mean_busy=float(data["mean_busy"]),
            mean_queue_ms=_number(data.get("mean_queue_ms")),
            queue_share=_number(data.get("queue_share")),
        )


#: The part of a request's time that is no wait the storm could see: its own service.
SERVICE = "service"
#: A step of a request's own code that held the event loop: kept beside its waits so that
#: a loop stall it caused is not charged back to it as a wait (it is its own service).
OWN_STEP = "own"


@dataclass(frozen=True)
class WaitShare:
    """One part of requests' time: a kind of wait (``worker``, ``pool``, ``connect``,
    ``upstream``, ``proxy``, ``loop``) for something named, or ``service`` (the rest)."""

    kind: str
    name: str
    #: Milliseconds per request.
    ms: float
    #: Share of the requests' latency.
    share: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {"kind": self.kind, "name": self.name, "ms": self.ms, "share": self.share}


def _parts(data: Any) -> tuple[WaitShare, ...]:
    return tuple(
        WaitShare(str(p["kind"]), str(p["name"]), float(p["ms"]), float(p["share"])) for p in data
    )


@dataclass(frozen=True)
class Breakdown:
    """Where the time of a band of requests around one percentile went, largest part first."""

    #: ``p50`` or ``p99``.
    label: str
    #: Requests in the band (between two ranks around the percentile).
    requests: int
    #: Their mean latency.
    latency_ms: float
    parts: tuple[WaitShare, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "label": self.label,
            "requests": self.requests,
            "latency_ms": self.latency_ms,
            "parts": [p.to_dict() for p in self.parts],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Breakdown:
        """The breakdown of :meth:`to_dict`'s output."""
        return cls(
            str(data["label"]),
            int(data["requests"]),
            float(data["latency_ms"]),
            _parts(data["parts"]),
        )


@dataclass(frozen=True)
class Exemplar:
    """One of the slowest requests: what it was, how it ended and where its time went."""

    request: str
    status: int
    latency_ms: float
    #: When it was sent, seconds from the start of measurement.
    sent_s: float
    parts: tuple[WaitShare, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "request": self.request,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "sent_s": self.sent_s,
            "parts": [p.to_dict() for p in self.parts],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Exemplar:
        """The exemplar of :meth:`to_dict`'s output."""
        return cls(
            str(data["request"]),
            int(data["status"]),
            float(data["latency_ms"]),
            float(data["sent_s"]),
            _parts(data["parts"]),
        )


@dataclass(frozen=True)
class Attribution:
    """Each request's time taken apart: the p50 and p99 bands and the slowest requests."""

    bands: tuple[Breakdown, ...]
    slowest: tuple[Exemplar, ...]
    #: ``storm``: the latency the storm measured, in-process; ``server``: the time each
    #: request spent in the app inside a real server's workers (from the server's call
    #: to the app's return), as their probes saw it.
    side: str = "storm"

    @classmethod
    def merged(cls, parts: list[Attribution], *, side: str) -> Attribution:
        """Several processes' breakdowns as one: each band's parts weighted by its requests,
        the slowest of all."""
        bands = []
        for label in dict.fromkeys(b.label for a in parts for b in a.bands):
            mine = [b for a in parts for b in a.bands if b.label == label]
            count = sum(b.requests for b in mine)
            if not count:
                continue
            latency = sum(b.latency_ms * b.requests for b in mine) / count
            totals: dict[tuple[str, str], float] = {}
            for b in mine:
                for p in b.parts:
                    key = (p.kind, p.name)
                    totals[key] = totals.get(key, 0.0) + p.ms * b.requests
            merged = tuple(
                WaitShare(kind, name, total / count, total / count / latency if latency else 0.0)
                for (kind, name), total in sorted(totals.items(), key=lambda item: -item[1])
            )
            bands.append(Breakdown(label, count, latency, merged))
        slowest = sorted((e for a in parts for e in a.slowest), key=lambda e: -e.latency_ms)
        size = max((len(a.slowest) for a in parts), default=0)
        return cls(tuple(bands), tuple(slowest[:size]), side)

    def band(self, label: str) -> Breakdown | None:
        """The band of *label* (``p50``, ``p99``), if the storm had one."""
        return next((b for b in self.bands if b.label == label), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "bands": [b.to_dict() for b in self.bands],
            "slowest": [e.to_dict() for e in self.slowest],
            "side": self.side,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attribution:
        """The attribution of :meth:`to_dict`'s output."""
        return cls(
            tuple(Breakdown.from_dict(b) for b in data.get("bands") or ()),
            tuple(Exemplar.from_dict(e) for e in data.get("slowest") or ()),
            str(data.get("side") or "storm"),
        )


@dataclass(repr=False)
class StormResult:
    """Figures of one storm; latencies in milliseconds, throughput in requests per second."""

    label: str
    app: str
    interface: str
    server: str
    method: str
    path: str
    #: The users the storm was asked for: the configured users, or the highest target of
    #: its stages; 0 for an open-model storm, whose arrivals are not users. The measured
    #: figure is ``peak_in_flight``.
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
    #: Where the requests' time went (in-process storms): waits charged to each request.
    attribution: Attribution | None = None
    #: The most requests in flight at once (sent, not yet answered), where the storm
    #: counted them (the WSGI pool, the open model); None where it did not.
    peak_in_flight: int | None = None
    # -- the records beside the figures (the document's ``extras`` block) -----------------
    #: A sample of the error bodies the app answered, by status code.
    samples: dict[int, str] | None = None
    #: What a round on the virtual clock charged and left out.
    clock: VirtualClock | None = None
    #: Tasks the app would not let go of after their cancellation.
    abandoned: Abandoned | None = None
    #: The users' start hooks (``on_start``), recorded apart from the storm's figures.
    on_start: StartHooks | None = None
    #: How long the storm's threads waited for a CPU (Linux schedstat).
    cpu_contention: ContentionFigures | None = None
    #: Whether the probes inside a real server's workers measured, and why not.
    server_probes: ServerProbes | None = None
    #: CPU and memory of a real server and of the storm's own process.
    server_usage: ServerUsage | None = None
    #: Lateness of simulated waits (what the harness added to them).
    simulated_waits: SimulatedWaits | None = None
    #: Per simulated upstream route or proxy, keyed by its label, its figures as it
    #: states them (``Route.stats``, ``Proxy.stats``) with the counts taken in the storm.
    upstream: dict[str, UpstreamFigures] | None = None
    #: The factor the storm's load was scaled by (``scale=``).
    scale: float | None = None
    #: How the storm ran in forked processes.
    shards: ShardFigures | None = None
    #: A WebSocket storm's connection figures.
    websocket: WebSocketConnections | None = None
    #: The Locust run read back into this result.
    locust: LocustInvocation | None = None
    #: The in-process model against real servers.
    fidelity: FidelityFigures | None = None
    #: The verdict of a storm paired with a control.
    comparison: Comparison | None = None
    #: ``extras`` keys this version has no record for (a document from another version),
    #: written back as they came.
    unknown_extras: dict[str, Any] = field(default_factory=dict)

    @property
    def extras(self) -> Mapping[str, Any]:
        """The records above as the document's ``extras`` block (read-only: set a record's
        attribute instead)."""
        return MappingProxyType(self._extras_dict())

    def _extras_dict(self) -> dict[str, Any]:
        data = dict(self.unknown_extras)
        for key, (_, write) in _EXTRAS.items():
            value = getattr(self, key)
            if value is not None:
                data[key] = write(value)
        return data

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
            "extras": self._extras_dict(),
            "loop_lag": self.loop_lag.to_dict(histogram=histograms) if self.loop_lag else None,
            "thread_pools": [p.to_dict() for p in self.thread_pools],
            "connection_pools": [p.to_dict() for p in self.connection_pools],
            "refused_egress": self.refused_egress,
            "attribution": self.attribution.to_dict() if self.attribution else None,
            "peak_in_flight": self.peak_in_flight,
        }
        if histograms:
            # HdrHistogram's encoding is already compressed and base64: text as it is.
            data["histograms"] = {
                name: h.encode().decode("ascii") for name, h in self.histograms.items()
            }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StormResult:
        """The result back from :meth:`to_dict` (with its histograms): a storm sent by a
        pytest-xdist worker, or read from a session document.

        ``StormResult.from_dict(r.to_dict()).to_dict() == r.to_dict()``; what ``to_dict``
        leaves out (the measured window, parameters that are not plain data) stays out.
        """
        queue_wait, service_time = data.get("queue_wait"), data.get("service_time")
        pool, knee, loop_lag = data.get("pool"), data.get("knee"), data.get("loop_lag")
        attribution = data.get("attribution")
        return cls(
            label=str(data["label"]),
            app=str(data["app"]),
            interface=str(data["interface"]),
            server=str(data["server"]),
            method=str(data["method"]),
            path=str(data["path"]),
            users=int(data["users"]),
            requests=int(data["requests"]),
            duration=float(data["duration"]),
            throughput=float(data["throughput"]),
            latency=LatencyStats.from_dict(data["latency"]),
            ttfb=LatencyStats.from_dict(data["ttfb"]),
            queue_wait=LatencyStats.from_dict(queue_wait) if queue_wait else None,
            service_time=LatencyStats.from_dict(service_time) if service_time else None,
            status_counts=Counter({int(k): int(v) for k, v in data["status_counts"].items()}),
            errors={k: ErrorSummary.from_dict(v) for k, v in data["errors"].items()},
            failed=int(data["failed"]),
            timeouts=int(data["timeouts"]),
            pool=PoolStats.from_dict(pool) if pool else None,
            timeline=[TimelinePoint.from_dict(p) for p in data["timeline"]],
            endpoints={k: EndpointStats.from_dict(v) for k, v in data["endpoints"].items()},
            histograms={
                name: HdrHistogram.decode(text)
                for name, text in (data.get("histograms") or {}).items()
            },
            params=dict(data["params"]),
            budgets={k: float(v) for k, v in data["budgets"].items()},
            verdicts=[Verdict.from_dict(v) for v in data["verdicts"]],
            warnings=list(data["warnings"]),
            loop_cpu_share=data.get("loop_cpu_share"),
            harness_share=data.get("harness_share"),
            discarded=int(data.get("discarded") or 0),
            model=str(data.get("model") or "closed"),
            rate=data.get("rate"),
            dropped=int(data.get("dropped") or 0),
            knee=Knee.from_dict(knee) if knee else None,
            rounds=list(data.get("rounds") or []),
            loop_lag=LoopLag.from_dict(loop_lag) if loop_lag else None,
            thread_pools=[PoolUsage.from_dict(p) for p in data.get("thread_pools") or []],
            connection_pools=[
                ConnectionPoolUsage.from_dict(p) for p in data.get("connection_pools") or []
            ],
            notes=list(data.get("notes") or []),
            refused_egress=list(data.get("refused_egress") or []),
            attribution=Attribution.from_dict(attribution) if attribution else None,
            peak_in_flight=data.get("peak_in_flight"),
            **_extras_from_dict(data.get("extras") or {}),
        )


def _to_dict(record: Any) -> Any:
    return record.to_dict()


def _upstream_to_dict(figures: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    # A record, or the plain mapping a caller set in its place: the same keys either way.
    return {label: dict(each) for label, each in figures.items()}


def _samples_from_dict(data: Mapping[str, Any]) -> dict[int, str]:
    return {int(k): str(v) for k, v in data.items()}


#: The records of the ``extras`` block, by key: how each reads back, and how it is written.
#: ``samples`` (status code → a body) and ``scale`` (a factor) are plain typed values.
_EXTRAS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "samples": (_samples_from_dict, dict),
    "clock": (VirtualClock.from_dict, _to_dict),
    "abandoned": (Abandoned.from_dict, _to_dict),
    "on_start": (StartHooks.from_dict, _to_dict),
    "cpu_contention": (ContentionFigures.from_dict, _to_dict),
    "server_probes": (ServerProbes.from_dict, _to_dict),
    "server_usage": (ServerUsage.from_dict, _to_dict),
    "simulated_waits": (SimulatedWaits.from_dict, _to_dict),
    "upstream": (
        lambda d: {str(k): UpstreamFigures.from_dict(v) for k, v in d.items()},
        _upstream_to_dict,
    ),
    "scale": (float, lambda factor: factor),
    "shards": (ShardFigures.from_dict, _to_dict),
    "websocket": (WebSocketConnections.from_dict, _to_dict),
    "locust": (LocustInvocation.from_dict, _to_dict),
    "fidelity": (FidelityFigures.from_dict, _to_dict),
    "comparison": (Comparison.from_dict, _to_dict),
}


def _extras_from_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :class:`StormResult` for an ``extras`` block."""
    known = {
        key: read(data[key]) for key, (read, _) in _EXTRAS.items() if data.get(key) is not None
    }
    unknown = {key: value for key, value in data.items() if key not in _EXTRAS}
    return {**known, "unknown_extras": unknown}


_LATENCY_FIGURES = ("min", "mean", "stdev", "p50", "p75", "p90", "p95", "p99", "p999", "max")


def _number(value: Any) -> float:
    return float(value) if value is not None else math.nan


def _finite(value: float) -> float | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _finite_dict(data: dict[str, float | int]) -> dict[str, float | int | None]:
    return {k: _finite(v) if isinstance(v, float) else v for k, v in data.items()}


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)

"""The typed records a storm carries beside its figures (the JSON document's ``extras`` block).

Each record is set by the one module that measures it and read by attribute
(``result.on_start.hooks_failed_count``, ``result.cpu_contention.wait_share``). Its
``to_dict`` writes the same keys the document always had under ``extras``; its
``from_dict`` reads them back, tolerating a key an older or hand-made document left out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

__all__ = [
    "Abandoned",
    "Comparison",
    "ContentionFigures",
    "FidelityFigures",
    "FidelityRowFigures",
    "LocustInvocation",
    "ServerProbes",
    "ServerUsage",
    "ShardFigures",
    "ShardShare",
    "SimulatedWaits",
    "StartHooks",
    "UpstreamFigures",
    "VirtualClock",
    "WaitFigures",
    "WebSocketConnections",
]


def _float(value: Any, default: float = 0.0) -> float:
    return float(value) if value is not None else default


def _optional(value: Any) -> float | None:
    return float(value) if value is not None else None


def _int_keys(data: Any) -> dict[int, int]:
    return {int(k): int(v) for k, v in (data or {}).items()}


def _counts(data: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in (data or {}).items()}


@dataclass(frozen=True)
class Abandoned:
    """Tasks the app would not let go of after their cancellation, and the grace they had."""

    tasks: int
    grace_s: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``extras["abandoned"]``."""
        return {"tasks": self.tasks, "grace_s": self.grace_s}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Abandoned:
        """The record back from :meth:`to_dict`."""
        return cls(int(data.get("tasks") or 0), _float(data.get("grace_s")))


@dataclass(frozen=True)
class VirtualClock:
    """What a round on the virtual clock charged to it and left out (milliseconds)."""

    clock: str = "virtual"
    virtual_seconds: float | None = None
    charged_ms: float | None = None
    uncharged_ms: float | None = None
    charge_floor_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``extras["clock"]`` (a figure the round did not take is left out)."""
        figures = {
            "virtual_seconds": self.virtual_seconds,
            "charged_ms": self.charged_ms,
            "uncharged_ms": self.uncharged_ms,
            "charge_floor_ms": self.charge_floor_ms,
        }
        return {"clock": self.clock, **{k: v for k, v in figures.items() if v is not None}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VirtualClock:
        """The record back from :meth:`to_dict`."""
        return cls(
            str(data.get("clock") or "virtual"),
            _optional(data.get("virtual_seconds")),
            _optional(data.get("charged_ms")),
            _optional(data.get("uncharged_ms")),
            _optional(data.get("charge_floor_ms")),
        )


@dataclass(frozen=True)
class StartHooks:
    """The users' start hooks (``on_start``): their requests, failures and latency."""

    users: int
    requests: int = 0
    failed: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    #: The first few failed hooks, each as ``user N: what happened``.
    hooks_failed: tuple[str, ...] = ()
    hooks_failed_count: int = 0
    hook_errors: dict[str, int] = field(default_factory=dict)
    example: str = ""
    deadline_s: float = 0.0
    left_running: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``extras["on_start"]``."""
        return {
            "users": self.users,
            "requests": self.requests,
            "failed": self.failed,
            "status_counts": dict(self.status_counts),
            "errors": dict(self.errors),
            "hooks_failed": list(self.hooks_failed),
            "hooks_failed_count": self.hooks_failed_count,
            "hook_errors": dict(self.hook_errors),
            "example": self.example,
            "deadline_s": self.deadline_s,
            "left_running": self.left_running,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StartHooks:
        """The record back from :meth:`to_dict`."""
        return cls(
            users=int(data.get("users") or 0),
            requests=int(data.get("requests") or 0),
            failed=int(data.get("failed") or 0),
            status_counts=_int_keys(data.get("status_counts")),
            errors=_counts(data.get("errors")),
            hooks_failed=tuple(str(h) for h in data.get("hooks_failed") or ()),
            hooks_failed_count=int(data.get("hooks_failed_count") or 0),
            hook_errors=_counts(data.get("hook_errors")),
            example=str(data.get("example") or ""),
            deadline_s=_float(data.get("deadline_s")),
            left_running=int(data.get("left_running") or 0),
            p50_ms=_optional(data.get("p50_ms")),
            p99_ms=_optional(data.get("p99_ms")),
        )

    @classmethod
    def merged(cls, parts: Sequence[StartHooks]) -> StartHooks | None:
        """Several processes' start hooks as one: counts added, the slowest percentiles."""
        if not parts:
            return None

        def added(name: str) -> dict[Any, int]:
            total: Counter[Any] = Counter()
            for part in parts:
                total.update(getattr(part, name))
            return dict(total)

        def slowest(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return max(known) if known else None

        return cls(
            users=sum(p.users for p in parts),
            requests=sum(p.requests for p in parts),
            failed=sum(p.failed for p in parts),
            status_counts=added("status_counts"),
            errors=added("errors"),
            hooks_failed=tuple(h for p in parts for h in p.hooks_failed)[:5],
            hooks_failed_count=sum(p.hooks_failed_count for p in parts),
            hook_errors=added("hook_errors"),
            example=next((p.example for p in parts if p.example), ""),
            deadline_s=parts[0].deadline_s,
            left_running=sum(p.left_running for p in parts),
            p50_ms=slowest([p.p50_ms for p in parts]),
            p99_ms=slowest([p.p99_ms for p in parts]),
        )


@dataclass(frozen=True)
class ContentionFigures:
    """How long the storm's threads ran and waited for a CPU over a round (seconds)."""

    run_s: float | None = None
    wait_s: float | None = None
    #: Share of the time the threads were ready to run that they waited for a CPU.
    wait_share: float | None = None
    #: Ready time over run time (≥ 1).
    slowdown: float | None = None

    def to_dict(self) -> dict[str, float]:
        """Plain data for ``extras["cpu_contention"]`` (a figure not taken is left out)."""
        figures = {
            "run_s": self.run_s,
            "wait_s": self.wait_s,
            "wait_share": self.wait_share,
            "slowdown": self.slowdown,
        }
        return {k: v for k, v in figures.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContentionFigures:
        """The record back from :meth:`to_dict`."""
        return cls(*(_optional(data.get(k)) for k in ("run_s", "wait_s", "wait_share", "slowdown")))


@dataclass(frozen=True)
class ServerProbes:
    """Whether the probes inside a real server's workers measured, and why not."""

    where: str | None
    workers: tuple[int, ...] = ()
    measured: bool = False
    #: Worker → why it sent nothing.
    missing: dict[str, str] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``extras["server_probes"]``."""
        return {
            "where": self.where,
            "workers": list(self.workers),
            "measured": self.measured,
            "missing": dict(self.missing),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerProbes:
        """The record back from :meth:`to_dict`."""
        where, reason = data.get("where"), data.get("reason")
        return cls(
            str(where) if where is not None else None,
            tuple(int(w) for w in data.get("workers") or ()),
            bool(data.get("measured")),
            {str(k): str(v) for k, v in (data.get("missing") or {}).items()},
            str(reason) if reason is not None else None,
        )


@dataclass(frozen=True)
class ServerUsage:
    """What a real server used: CPU as a share of one core (1.0 = one core busy), RSS in bytes."""

    server_cpu_mean: float
    server_cpu_peak: float
    server_rss_peak: int
    client_cpu_mean: float
    samples: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``extras["server_usage"]``."""
        return {
            "server_cpu_mean": self.server_cpu_mean,
            "server_cpu_peak": self.server_cpu_peak,
            "server_rss_peak": self.server_rss_peak,
            "client_cpu_mean": self.client_cpu_mean,
            "samples": self.samples,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerUsage:
        """The record back from :meth:`to_dict`."""
        return cls(
            _float(data.get("server_cpu_mean")),
            _float(data.get("server_cpu_peak")),
            int(data.get("server_rss_peak") or 0),
            _float(data.get("client_cpu_mean")),
            int(data.get("samples") or 0),
            _float(data.get("seconds")),
        )


_WAIT_FIGURES = (
    "p50_ms",
    "p99_ms",
    "max_ms",
    "mean_ms",
    "requested_p50_ms",
    "requested_p99_ms",
)


@dataclass(frozen=True)
class WaitFigures:
    """How late one kind of simulated wait returned (ms), against what it asked for."""

    count: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    requested_p50_ms: float = 0.0
    requested_p99_ms: float = 0.0

    def to_dict(self) -> dict[str, float]:
        """Plain data."""
        return {"count": self.count, **{k: getattr(self, k) for k in _WAIT_FIGURES}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WaitFigures:
        """The record back from :meth:`to_dict`."""
        return cls(int(data.get("count") or 0), *(_float(data.get(k)) for k in _WAIT_FIGURES))


@dataclass(frozen=True)
class SimulatedWaits:
    """Lateness of the storm's simulated waits: on the event loop and in threads."""

    async_waits: WaitFigures
    blocking_waits: WaitFigures

    def to_dict(self) -> dict[str, dict[str, float]]:
        """Plain data for ``extras["simulated_waits"]``."""
        return {"async": self.async_waits.to_dict(), "blocking": self.blocking_waits.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulatedWaits:
        """The record back from :meth:`to_dict`."""
        return cls(
            WaitFigures.from_dict(data.get("async") or {}),
            WaitFigures.from_dict(data.get("blocking") or {}),
        )


@dataclass(frozen=True)
class ShardShare:
    """One forked shard's share of a storm."""

    requests: int
    cpu_share: float | None
    loop_lag_max_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "requests": self.requests,
            "cpu_share": self.cpu_share,
            "loop_lag_max_ms": self.loop_lag_max_ms,
        }


@dataclass(frozen=True)
class ShardFigures:
    """How a storm ran in forked processes (``processes=N``)."""

    processes: int
    start_method: str
    startup_s: float
    per_shard: tuple[ShardShare, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``extras["shards"]``."""
        return {
            "processes": self.processes,
            "start_method": self.start_method,
            "startup_s": self.startup_s,
            "per_shard": [s.to_dict() for s in self.per_shard],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardFigures:
        """The record back from :meth:`to_dict`."""
        return cls(
            int(data.get("processes") or 0),
            str(data.get("start_method") or "fork"),
            _float(data.get("startup_s")),
            tuple(
                ShardShare(
                    int(s.get("requests") or 0),
                    _optional(s.get("cpu_share")),
                    _optional(s.get("loop_lag_max_ms")),
                )
                for s in data.get("per_shard") or ()
            ),
        )


@dataclass(frozen=True)
class LocustInvocation:
    """The Locust run a storm was read back from."""

    version: str
    command: tuple[str, ...]
    elapsed: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``extras["locust"]``."""
        return {"version": self.version, "command": list(self.command), "elapsed": self.elapsed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LocustInvocation:
        """The record back from :meth:`to_dict`."""
        return cls(
            str(data.get("version") or ""),
            tuple(str(c) for c in data.get("command") or ()),
            _float(data.get("elapsed")),
        )


@dataclass(frozen=True)
class WebSocketConnections:
    """A WebSocket storm's connection figures (the result's own, as plain data for reports)."""

    connect: dict[str, float | int | None]
    connections: int
    refused: int
    peak_connections: int
    held_connections: int
    disconnects: int
    disconnect_rate: float
    close_codes: dict[str, int]
    server_messages: int
    unmatched: int
    listeners: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``extras["websocket"]``."""
        return {
            "connect": dict(self.connect),
            "connections": self.connections,
            "refused": self.refused,
            "peak_connections": self.peak_connections,
            "held_connections": self.held_connections,
            "disconnects": self.disconnects,
            "disconnect_rate": self.disconnect_rate,
            "close_codes": dict(self.close_codes),
            "server_messages": self.server_messages,
            "unmatched": self.unmatched,
            "listeners": self.listeners,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WebSocketConnections:
        """The record back from :meth:`to_dict`."""
        counts = {
            name: int(data.get(name) or 0)
            for name in (
                "connections",
                "refused",
                "peak_connections",
                "held_connections",
                "disconnects",
                "server_messages",
                "unmatched",
                "listeners",
            )
        }
        return cls(
            connect=dict(data.get("connect") or {}),
            disconnect_rate=_float(data.get("disconnect_rate")),
            close_codes=_counts(data.get("close_codes")),
            **counts,
        )


@dataclass(frozen=True)
class FidelityRowFigures:
    """One figure of the in-process storm beside the same figure behind one real server."""

    figure: str
    server: str
    inprocess: float
    real: float
    ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "figure": self.figure,
            "server": self.server,
            "inprocess": self.inprocess,
            "real": self.real,
            "ratio": self.ratio if self.ratio is None or math.isfinite(self.ratio) else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FidelityRowFigures:
        """The record back from :meth:`to_dict`."""
        return cls(
            str(data["figure"]),
            str(data["server"]),
            _float(data.get("inprocess"), math.nan),
            _float(data.get("real"), math.nan),
            _optional(data.get("ratio")),
        )


@dataclass(frozen=True)
class FidelityFigures:
    """The in-process model against real servers: what served each, and the rows."""

    servers: dict[str, str]
    rows: tuple[FidelityRowFigures, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``extras["fidelity"]``."""
        return {"servers": dict(self.servers), "rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FidelityFigures:
        """The record back from :meth:`to_dict`."""
        return cls(
            {str(k): str(v) for k, v in (data.get("servers") or {}).items()},
            tuple(FidelityRowFigures.from_dict(r) for r in data.get("rows") or ()),
        )


@dataclass(frozen=True)
class Comparison:
    """A storm paired with a control: the verdict, its line and each judged figure."""

    mode: str
    against: str
    verdict: str
    line: str
    pairs: int
    ended: str
    seconds: float
    #: The rounds in order, ``A`` the control and ``B`` the experiment.
    order: str
    #: Each judged figure as the verdict states it (figure, unit, stable, threshold,
    #: verdict, change).
    figures: tuple[Mapping[str, Any], ...] = ()
    notes: tuple[str, ...] = ()
    #: Whether a regression fails the storm (``--concurrency-compare-fail``); None: not said.
    fails: bool | None = None

    @property
    def regressed(self) -> bool:
        """Whether the experiment regressed against the control."""
        return self.verdict == "regressed"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``extras["comparison"]`` (the JSON ``comparison`` block)."""
        data: dict[str, Any] = {
            "mode": self.mode,
            "against": self.against,
            "verdict": self.verdict,
            "line": self.line,
            "pairs": self.pairs,
            "ended": self.ended,
            "seconds": self.seconds,
            "order": self.order,
            "figures": [dict(f) for f in self.figures],
            "notes": list(self.notes),
        }
        if self.fails is not None:
            data["fails"] = self.fails
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Comparison:
        """The record back from :meth:`to_dict`."""
        fails = data.get("fails")
        return cls(
            mode=str(data.get("mode") or "paired"),
            against=str(data.get("against") or ""),
            verdict=str(data.get("verdict") or ""),
            line=str(data.get("line") or ""),
            pairs=int(data.get("pairs") or 0),
            ended=str(data.get("ended") or ""),
            seconds=_float(data.get("seconds")),
            order=str(data.get("order") or ""),
            figures=tuple(dict(f) for f in data.get("figures") or ()),
            notes=tuple(str(n) for n in data.get("notes") or ()),
            fails=bool(fails) if fails is not None else None,
        )


@dataclass(frozen=True, eq=False)
class UpstreamFigures(Mapping[str, Any]):
    """One simulated upstream route's or latency proxy's figures, as it states them
    (``Route.stats``, ``Proxy.stats``) with its counts over the storm alone (``*_in_storm``).

    Read them by attribute (``figures.calls_in_storm``, ``figures.waited_ms_p99``). A figure
    the statement left out (a route has no bytes or chunks) is None, and left out of
    :meth:`to_dict` again. The record also reads as the plain mapping the document has
    under ``extras["upstream"][label]`` (``figures["calls"]``): the form results had before
    they were typed, kept for code that indexes them.
    """

    #: ``route``, or ``proxy`` for a latency proxy (a route's document states no kind).
    kind: str = "route"
    #: A proxy's target (``host:port``) and the address it listens on.
    target: str | None = None
    address: str | None = None
    #: The latency the route or proxy was declared with (its description), and a proxy's
    #: latency toward its target.
    latency: str | None = None
    upstream_latency: str | None = None
    #: Counts since the route or proxy was declared (or reset).
    calls: int | None = None
    in_flight: int | None = None
    max_in_flight: int | None = None
    errors: int | None = None
    timeouts: int | None = None
    #: A proxy's connections reset, and what it carried each way.
    resets: int | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    chunks_up: int | None = None
    chunks_down: int | None = None
    chunks_delayed: int | None = None
    #: The simulated waits its calls (or a proxy's chunks) took, in milliseconds.
    waited_ms_total: float | None = None
    waited_ms_mean: float | None = None
    waited_ms_p50: float | None = None
    waited_ms_p99: float | None = None
    waited_ms_max: float | None = None
    #: The counts above over the storm alone.
    calls_in_storm: int | None = None
    bytes_up_in_storm: int | None = None
    bytes_down_in_storm: int | None = None
    chunks_up_in_storm: int | None = None
    chunks_down_in_storm: int | None = None
    #: Figures this version has no field for (a document from another version), written
    #: back as they came.
    unknown: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_proxy(self) -> bool:
        """Whether these are a latency proxy's figures (else a route's)."""
        return self.kind == "proxy"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``extras["upstream"][label]``: the keys the statement had, in its order."""
        return dict(self._plain)

    @cached_property
    def _plain(self) -> dict[str, Any]:
        data: dict[str, Any] = {} if self.kind == "route" else {"kind": self.kind}
        for name in _UPSTREAM_FIGURES:
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        data.update(self.unknown)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpstreamFigures:
        """The record back from :meth:`to_dict` (or from ``Route.stats``/``Proxy.stats``)."""
        known: dict[str, Any] = {}
        for name, read in _UPSTREAM_FIGURES.items():
            value = data.get(name)
            if value is not None:
                known[name] = read(value)
        kind = data.get("kind")
        unknown = {k: v for k, v in data.items() if k != "kind" and k not in _UPSTREAM_FIGURES}
        return cls(kind=str(kind) if kind is not None else "route", unknown=unknown, **known)

    # -- the mapping the figures were before they were typed

    def __getitem__(self, key: str) -> Any:
        return self._plain[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._plain)

    def __len__(self) -> int:
        return len(self._plain)

    def __repr__(self) -> str:
        stated = ", ".join(f"{k}={v!r}" for k, v in self._plain.items())
        return f"UpstreamFigures({stated})"


#: The figures of :class:`UpstreamFigures` in the order a statement gives them, and how
#: each reads back.
_UPSTREAM_FIGURES: dict[str, type] = {
    f.name: {"str | None": str, "int | None": int, "float | None": float}[str(f.type)]
    for f in fields(UpstreamFigures)
    if f.name not in ("kind", "unknown")
}

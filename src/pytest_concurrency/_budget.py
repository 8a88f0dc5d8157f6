"""Budgets: what each one measures, the verdicts, and the table a person reads in one glance."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from ._params import BUDGET_NAMES
from ._result import EndpointStats, StormResult, Verdict

__all__ = ["BUDGET_NAMES", "evaluate", "evaluate_endpoint", "format_number", "verdict_table"]

_Measure = Callable[[StormResult], float]


def _queue_p99(r: StormResult) -> float:
    if r.queue_wait is not None:
        return r.queue_wait.p99
    # ASGI: the wait for a thread of the app's own pool (FastAPI `def` endpoints, Django).
    pool = r.busiest_pool
    if pool is not None and pool.wait_p99_ms is not None:
        return float(pool.wait_p99_ms)
    return math.nan


def _saturation(r: StormResult) -> float:
    if r.pool is not None:
        return r.pool.saturation
    pool = r.busiest_pool
    return pool.saturation if pool is not None else math.nan


def _loop_lag(r: StormResult) -> float:
    lag = r.loop_lag_max_ms
    return float(lag) if lag is not None else math.nan


#: Latency budgets -> the LatencyStats field they limit (for storms and endpoints alike).
_LATENCY_FIELDS = {
    "p50_ms": "p50",
    "p90_ms": "p90",
    "p95_ms": "p95",
    "p99_ms": "p99",
    "p999_ms": "p999",
    "max_ms": "max",
    "mean_ms": "mean",
}


def _latency(field: str) -> Callable[[StormResult | EndpointStats], float]:
    return lambda r: float(getattr(r.latency, field))


#: name -> (measure, True when the limit is a floor rather than a ceiling)
_MEASURES: dict[str, tuple[_Measure, bool]] = {
    **{name: (_latency(field), False) for name, field in _LATENCY_FIELDS.items()},
    "ttfb_p99_ms": (lambda r: r.ttfb.p99, False),
    "min_rps": (lambda r: r.throughput, True),
    "max_error_rate": (lambda r: r.error_rate, False),
    "max_queue_p99_ms": (_queue_p99, False),
    "max_saturation": (_saturation, False),
    "max_loop_lag_ms": (_loop_lag, False),
    "max_dropped": (lambda r: float(r.dropped) if r.model == "open" else math.nan, False),
}

if set(_MEASURES) != set(BUDGET_NAMES):  # pragma: no cover - guards the two tables
    raise RuntimeError("budget tables disagree")


def evaluate(result: StormResult, budgets: Mapping[str, float]) -> list[Verdict]:
    """Judge *result* against *budgets*; a figure that was not measured is reported, not failed."""
    verdicts = []
    for name in BUDGET_NAMES:
        if name not in budgets:
            continue
        measure, is_floor = _MEASURES[name]
        verdicts.append(_verdict(name, budgets[name], measure(result), is_floor))
    return verdicts


def _verdict(name: str, limit: float, measured: float, is_floor: bool) -> Verdict:
    if math.isnan(measured):
        ok = True  # not measured for this app: reported, not failed
    elif is_floor:
        ok = measured >= limit
    else:
        ok = measured <= limit
    return Verdict(name, limit, measured, ok)


_ENDPOINT_MEASURES: dict[str, tuple[Callable[[EndpointStats], float], bool]] = {
    **{name: (_latency(field), False) for name, field in _LATENCY_FIELDS.items()},
    "max_error_rate": (lambda e: e.error_rate, False),
    "min_rps": (lambda e: e.throughput, True),
}


def evaluate_endpoint(
    result: StormResult, endpoint: str, budgets: Mapping[str, float]
) -> list[Verdict]:
    """Judge one endpoint of a request mix; an endpoint that never ran fails its budgets."""
    stats = result.endpoints.get(endpoint)
    verdicts = []
    for name, limit in budgets.items():
        measure, is_floor = _ENDPOINT_MEASURES[name]
        if stats is None or stats.requests == 0:
            verdicts.append(Verdict(f"{endpoint} {name}", limit, math.inf, False))
            continue
        verdicts.append(_verdict(f"{endpoint} {name}", limit, measure(stats), is_floor))
    return verdicts


def format_number(value: float) -> str:
    """1,412.6 / 0.02 / 160 — readable at a glance."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞"
    if value == int(value) and abs(value) >= 1:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    if abs(value) >= 1:
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def _verdict_word(v: Verdict) -> str:
    if math.isnan(v.measured):
        return "– not measured for this app"
    if v.ok:
        return "✓"
    if v.name.endswith("min_rps"):
        short = 1 - v.measured / v.limit if v.limit else 1.0
        return f"✗ {short:.0%} short"
    if v.limit == 0:
        return "✗ over"
    return f"✗ {v.ratio:.1f}x over"


def headline(result: StormResult) -> str:
    """``storm GET /io on app (WSGI, 8 sync workers) — 50 users, 3.0 s, 480 requests``."""
    return (
        f"storm {result.label} on {result.app} ({result.interface}, {result.server}) — "
        f"{result.users:,} users, {result.duration:.1f} s, {result.requests:,} requests"
    )


def diagnosis(result: StormResult) -> list[str]:
    """Lines that say why the figures are what they are."""
    # Imported here: the _report package imports this module while it loads.
    from ._report._blocking_text import diagnose

    lines = []
    pool = result.pool
    if pool is not None and result.requests:
        lines.append(
            f"workers were saturated {pool.saturation:.0%} of the time "
            f"(all {pool.size} busy with requests queued; {pool.mean_busy:.1f} busy on average); "
            "mean queue wait "
            f"{format_number(pool.mean_queue_ms)} ms ({pool.queue_share:.0%} of latency)"
        )
    if result.failed:
        kinds = ", ".join(f"{name} ×{e.count:,}" for name, e in list(result.errors.items())[:3])
        statuses = sum(n for s, n in result.status_counts.items() if s >= 400)
        parts = [f"{result.failed:,} failed ({result.error_rate:.1%})"]
        if kinds:
            parts.append(kinds)
        if statuses:
            parts.append(f"{statuses:,} responses with status >= 400")
        lines.append("; ".join(parts))
    lines.extend(diagnose(result.loop_lag, result.thread_pools))
    lines.extend(result.warnings)
    return lines


def verdict_table(result: StormResult, *, indent: str = "  ") -> str:
    """The budget table of DESIGN.md: limit, measured, verdict, and a line of diagnosis."""
    rows = [("budget", "limit", "measured", "verdict")]
    for v in result.verdicts:
        rows.append((v.name, format_number(v.limit), format_number(v.measured), _verdict_word(v)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [indent + headline(result)]
    for row in rows:
        lines.append(
            indent
            + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3]))
            + "  "
            + row[3]
        )
    lines.extend(indent + line for line in diagnosis(result))
    return "\n".join(line.rstrip() for line in lines)

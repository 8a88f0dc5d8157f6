"""Budgets: what each one measures and whether it held (the wording is in ``_report._text``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from ._params import BUDGET_NAMES, FLOOR_BUDGETS
from ._result import EndpointStats, StormResult, Verdict

__all__ = ["evaluate", "evaluate_endpoint"]

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


#: name -> what it measures (whether its limit is a floor is ``_params.FLOOR_BUDGETS``)
_MEASURES: dict[str, _Measure] = {
    **{name: _latency(field) for name, field in _LATENCY_FIELDS.items()},
    "ttfb_p99_ms": lambda r: r.ttfb.p99,
    "min_rps": lambda r: r.throughput,
    "max_error_rate": lambda r: r.error_rate,
    "max_queue_p99_ms": _queue_p99,
    "max_saturation": _saturation,
    "max_loop_lag_ms": _loop_lag,
    "max_dropped": lambda r: float(r.dropped) if r.model == "open" else math.nan,
}

if set(_MEASURES) != set(BUDGET_NAMES):  # pragma: no cover - guards the two tables
    raise RuntimeError("budget tables disagree")


def evaluate(result: StormResult, budgets: Mapping[str, float]) -> list[Verdict]:
    """Judge *result* against *budgets*; a figure that was not measured is reported, not failed."""
    verdicts = []
    for name in BUDGET_NAMES:
        if name not in budgets:
            continue
        verdicts.append(_verdict(name, budgets[name], _MEASURES[name](result)))
    return verdicts


def _verdict(name: str, limit: float, measured: float, budget: str | None = None) -> Verdict:
    if math.isnan(measured):
        ok = True  # not measured for this app: reported, not failed
    elif (budget or name) in FLOOR_BUDGETS:
        ok = measured >= limit
    else:
        ok = measured <= limit
    return Verdict(name, limit, measured, ok)


_ENDPOINT_MEASURES: dict[str, Callable[[EndpointStats], float]] = {
    **{name: _latency(field) for name, field in _LATENCY_FIELDS.items()},
    "max_error_rate": lambda e: e.error_rate,
    "min_rps": lambda e: e.throughput,
}


def evaluate_endpoint(
    result: StormResult, endpoint: str, budgets: Mapping[str, float]
) -> list[Verdict]:
    """Judge one endpoint of a request mix; an endpoint that never ran fails its budgets."""
    stats = result.endpoints.get(endpoint)
    verdicts = []
    for name, limit in budgets.items():
        if stats is None or stats.requests == 0:
            verdicts.append(Verdict(f"{endpoint} {name}", limit, math.inf, False))
            continue
        measured = _ENDPOINT_MEASURES[name](stats)
        verdicts.append(_verdict(f"{endpoint} {name}", limit, measured, name))
    return verdicts

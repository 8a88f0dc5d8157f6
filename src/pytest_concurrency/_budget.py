"""Budgets: what each one measures and whether it held (the wording is in ``_report._text``).

A budget whose figure could not be measured (no request completed, no pool to watch, no
simulated wait to compare with) fails: a gate that passes on nothing holds nothing. Why
it could not be measured is said by ``_report._text.unmeasured_reason``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from hdrh.histogram import HdrHistogram

from ._model.result import EndpointStats, StormResult, Verdict
from ._params import BUDGET_NAMES, FLOOR_BUDGETS

__all__ = [
    "QUEUED_AFTER_MS",
    "ROUND_FIGURES",
    "completed",
    "evaluate",
    "evaluate_endpoint",
    "measure",
    "round_spread",
    "within_noise",
]

_Measure = Callable[[StormResult], float]

#: A request that waited longer than this for a worker counts as queued (``max_queued``);
#: below it, the wait is the pool's own hand-off, not a shortage of workers.
QUEUED_AFTER_MS = 1.0


def _connection_waits(r: StormResult) -> list[float]:
    # The wait of the app's connection pools for a connection: a queue like the workers'.
    return [
        float(p.wait_p99_ms) for p in r.connection_pools if p.used and p.wait_p99_ms is not None
    ]


def _queue_p99(r: StormResult) -> float:
    connections = _connection_waits(r)
    if r.queue_wait is not None:
        return max([float(r.queue_wait.p99), *connections])
    # ASGI: the wait for a thread of the app's own pool (FastAPI `def` endpoints, Django).
    pool = r.busiest_pool
    if pool is not None and pool.wait_p99_ms is not None:
        connections.append(float(pool.wait_p99_ms))
    return max(connections) if connections else math.nan


def _saturation(r: StormResult) -> float:
    connections = [p.saturation for p in r.connection_pools if p.used and p.size is not None]
    if r.pool is not None:
        return max([r.pool.saturation, *connections])
    pool = r.busiest_pool
    if pool is not None:
        connections.append(pool.saturation)
    return max(connections) if connections else math.nan


def _loop_lag(r: StormResult) -> float:
    lag = r.loop_lag_max_ms
    return float(lag) if lag is not None else math.nan


def _count_above(histogram: HdrHistogram, threshold_us: int) -> int:
    return sum(
        item.count_at_value_iterated_to
        for item in histogram.get_recorded_iterator()
        if item.value_iterated_to > threshold_us
    )


def _queued(r: StormResult) -> float:
    # Only the WSGI pool records every request's wait; an app's own thread pools keep a
    # p99, not a count (their count would be a guess).
    histogram = r.histograms.get("queue_wait")
    if r.pool is None or histogram is None:
        return math.nan
    if r.pool.saturation <= 0:
        # Never were all workers busy with requests queued: a wait seen then is the hand-off
        # to an idle worker (the first requests wait for the pool's threads to be scheduled
        # on a loaded machine), not a shortage of workers.
        return 0.0
    return float(_count_above(histogram, round(QUEUED_AFTER_MS * 1000)))


def _in_flight_peak(r: StormResult) -> float:
    samples = [float(p.in_flight) for p in r.timeline if p.in_flight is not None]
    # Open model: the result's user count is the largest in-flight sample of the storm;
    # otherwise the busiest second's mean is the closest figure the timeline keeps.
    if r.model == "open":
        samples.append(float(r.users))
    # Samples are taken on the event loop, so a loop held by a blocking call sees none of
    # the requests it holds back. Little's law counts them, from the intended send time:
    # the mean in flight (a floor for the peak) is throughput × mean latency.
    if math.isfinite(r.latency.mean) and math.isfinite(r.throughput):
        samples.append(r.throughput * r.latency.mean / 1000)
    return max(samples) if samples else math.nan


def _threads_busy(r: StormResult) -> float:
    if r.pool is not None:
        if r.pool.saturation > 0:
            # Requests queued while every worker was busy: all of them were, at that moment.
            return float(r.pool.size)
        # Otherwise the busiest second's mean, rounded up (the timeline keeps no finer peak).
        busy = [p.busy_workers for p in r.timeline if p.busy_workers is not None]
        return float(min(r.pool.size, math.ceil(max(busy)))) if busy else math.nan
    if r.thread_pools or r.connection_pools:
        # Threads, or connections a thread holds (one per request at most).
        held = [p.max_busy for p in r.thread_pools] + [p.peak_in_use for p in r.connection_pools]
        return float(max(held))
    if r.loop_lag is not None:
        # The thread-pool probes ran with the loop monitor and saw no pool at work.
        return 0.0
    return math.nan


def _blocking_calls(r: StormResult) -> float:
    lag = r.loop_lag
    if lag is None:
        return math.nan
    # Only calls the watchdog named in the app's code: a stall with no named call is the
    # machine's or the harness's, and counting it would make the budget flap.
    return float(lag.calls)


def _waits_p99(waits: Any) -> float:
    """The p99 of the simulated waits as requested; NaN when the storm made none.

    With both kinds (awaited and blocking), the larger p99: the combined p99 is no larger.
    """
    if not isinstance(waits, Mapping):
        return math.nan
    kinds = [w for w in waits.values() if isinstance(w, Mapping) and w.get("count")]
    if not kinds:
        return math.nan
    return max(float(w.get("requested_p99_ms") or 0.0) for w in kinds)


def _p99_ratio(r: StormResult) -> float:
    own = _waits_p99(r.extras.get("simulated_waits"))
    if not own > 0:
        return math.nan
    return r.latency.p99 / own


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
    "max_in_flight_peak": _in_flight_peak,
    "max_threads_busy": _threads_busy,
    "max_blocking_calls": _blocking_calls,
    "max_queued": _queued,
    "p99_ratio": _p99_ratio,
}

if set(_MEASURES) != set(BUDGET_NAMES):  # pragma: no cover - guards the two tables
    raise RuntimeError("budget tables disagree")

#: Budgets whose figure each round of a ``rounds=`` storm keeps -> the round's key.
ROUND_FIGURES = {
    "p50_ms": "p50",
    "p99_ms": "p99",
    "max_ms": "max",
    "min_rps": "rps",
    "max_error_rate": "error_rate",
}


def completed(result: StormResult) -> int:
    """Requests of the measured window that got a response (any status) before their timeout."""
    return max(0, result.requests - result.timeouts)


def measure(result: StormResult, name: str) -> float:
    """The figure budget *name* limits, NaN when this storm could not measure it."""
    if not completed(result):
        # No request completed (none was sent, or every one timed out): every figure would
        # describe nothing (an error rate of 0 of 0 is not "no errors", nor is a p99 of
        # timeouts a latency).
        return math.nan
    value = _MEASURES[name](result)
    return float(value) if value is not None else math.nan


def evaluate(result: StormResult, budgets: Mapping[str, float]) -> list[Verdict]:
    """Judge *result* against *budgets*; a figure that could not be measured fails."""
    return [
        _verdict(name, budgets[name], measure(result, name))
        for name in BUDGET_NAMES
        if name in budgets
    ]


def _verdict(name: str, limit: float, measured: float, budget: str | None = None) -> Verdict:
    if math.isnan(measured):
        ok = False  # not measured: a gate that passes on nothing holds nothing
    elif (budget or name) in FLOOR_BUDGETS:
        ok = measured >= limit
    else:
        ok = measured <= limit
    return Verdict(name, limit, measured, ok)


def round_spread(result: StormResult, name: str) -> tuple[float, float] | None:
    """Lowest and highest value of budget *name*'s figure over the rounds, if it had rounds."""
    key = ROUND_FIGURES.get(name)
    if key is None or len(result.rounds) < 2:
        return None
    values = [float(r[key]) for r in result.rounds if key in r and not math.isnan(float(r[key]))]
    if len(values) < 2:
        return None
    return min(values), max(values)


def within_noise(result: StormResult, verdict: Verdict) -> tuple[float, float] | None:
    """The rounds' spread when *verdict*'s limit lies inside it (the verdict could flip), else None."""
    spread = round_spread(result, verdict.name)
    if spread is None or not spread[0] <= verdict.limit <= spread[1]:
        return None
    return spread


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

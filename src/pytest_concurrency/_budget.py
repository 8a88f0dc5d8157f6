"""Budgets: whether each one held (what it measures is its row of ``_spec.table``).

A budget whose figure could not be measured (no request completed, no pool to watch, no
simulated wait to compare with) fails: a gate that passes on nothing holds nothing. Why
it could not be measured is said by ``_report._text.unmeasured_reason``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ._model.result import StormResult, Verdict
from ._spec.measures import QUEUED_AFTER_MS, find_pool, pools_measured
from ._spec.table import BUDGETS

__all__ = [
    "QUEUED_AFTER_MS",
    "ROUND_FIGURES",
    "completed",
    "evaluate",
    "evaluate_endpoint",
    "evaluate_pool",
    "measure",
    "pool_verdict_name",
    "round_spread",
    "within_noise",
]

#: Budgets whose figure each round of a ``rounds=`` storm keeps -> the round's key.
ROUND_FIGURES: Mapping[str, str] = {
    name: row.round_key for name, row in BUDGETS.items() if row.round_key is not None
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
    value = BUDGETS[name].measure(result)
    return float(value) if value is not None else math.nan


def evaluate(result: StormResult, budgets: Mapping[str, float]) -> list[Verdict]:
    """Judge *result* against *budgets*; a figure that could not be measured fails."""
    return [
        _verdict(name, budgets[name], measure(result, name)) for name in BUDGETS if name in budgets
    ]


def _verdict(name: str, limit: float, measured: float, budget: str | None = None) -> Verdict:
    if math.isnan(measured):
        ok = False  # not measured: a gate that passes on nothing holds nothing
    elif BUDGETS[budget or name].direction == "min":
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
        measure = BUDGETS[name].endpoint
        measured = measure(stats) if measure is not None else math.nan
        verdicts.append(_verdict(f"{endpoint} {name}", limit, measured, name))
    return verdicts


def pool_verdict_name(selector: str, budget: str) -> str:
    """The name of the verdict of *budget* aimed at the pool *selector* names."""
    return f"pool {selector} {budget}"


def evaluate_pool(
    result: StormResult, selector: str, budgets: Mapping[str, float]
) -> list[Verdict]:
    """Judge the one pool *selector* names (the worst of its copies in process shards or
    server workers); no such pool fails its budgets unmeasured."""
    pools = pools_measured(result.thread_pools, result.connection_pools)
    names, _ = find_pool(selector, [p.name for p in pools])
    chosen = [p for p in pools if p.name in names]  # one pool, or its copy in each process
    verdicts = []
    for budget, limit in budgets.items():
        measure = BUDGETS[budget].pool
        figures = [float(measure(p)) for p in chosen] if measure is not None else []
        finite = [f for f in figures if not math.isnan(f)]
        # Every pool budget is a ceiling: the worst copy is judged.
        measured = max(finite) if finite and completed(result) else math.nan
        verdicts.append(_verdict(pool_verdict_name(selector, budget), limit, measured, budget))
    return verdicts

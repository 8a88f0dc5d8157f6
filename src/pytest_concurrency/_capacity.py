"""Search for the smallest worker count that meets a budget, with as few storms as possible.

More workers are assumed never to make a storm worse (the figures are monotone in the
worker count), so the candidates are bisected: ``ceil(log2(n + 1))`` storms at most
for ``n`` candidates. Each storm is judged with the same budgets as any other storm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._budget import evaluate
from ._errors import ConfigError
from ._params import budget_limit, check_budget_name
from ._report._text import capacity_summary, capacity_table
from ._result import StormResult, Verdict

__all__ = ["CapacityResult", "CapacityTrial", "search_capacity"]


@dataclass(frozen=True)
class CapacityTrial:
    """One storm of the search: its worker count, verdict and headline figures."""

    workers: int
    passed: bool
    throughput: float
    p50: float
    p99: float
    saturation: float | None
    failed: tuple[Verdict, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "workers": self.workers,
            "passed": self.passed,
            "throughput": _finite(self.throughput),
            "p50": _finite(self.p50),
            "p99": _finite(self.p99),
            "saturation": self.saturation,
            "failed": [v.to_dict() for v in self.failed],
        }


@dataclass
class CapacityResult:
    """The smallest passing worker count (``best``, None when none passed) and every storm tried."""

    best: int | None
    tried: list[CapacityTrial]
    storms: int
    budgets: dict[str, float]
    candidates: list[int]
    is_async_app: bool = False
    results: dict[int, StormResult] = field(default_factory=dict, repr=False)

    def trial(self, workers: int) -> CapacityTrial | None:
        """The storm tried with *workers*, if there was one."""
        return next((t for t in self.tried if t.workers == workers), None)

    def summary(self) -> list[str]:
        """Sentences that state the answer, under the table."""
        return capacity_summary(self)

    def table(self) -> str:
        """Aligned text table of the storms tried, in worker order, then the answer."""
        return capacity_table(self)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (the storms' own results are left out)."""
        return {
            "best": self.best,
            "storms": self.storms,
            "is_async_app": self.is_async_app,
            "budgets": dict(self.budgets),
            "candidates": list(self.candidates),
            "tried": [t.to_dict() for t in self.tried],
            "summary": self.summary(),
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _check(candidates: Sequence[int], budgets: Mapping[str, float]) -> list[int]:
    if isinstance(candidates, str | bytes) or not candidates:
        raise ConfigError(
            f"candidates={candidates!r} must be a non-empty sequence of worker counts"
        )
    for value in candidates:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"candidates: {value!r} is not a worker count (a whole number of at least 1)"
            )
    if not budgets:
        raise ConfigError("search_capacity needs at least one budget, e.g. budgets={'p99_ms': 100}")
    for name, limit in budgets.items():
        budget_limit(check_budget_name(name, "in budgets"), limit)
    return sorted(set(candidates))


def search_capacity(
    run: Callable[[int], StormResult],
    candidates: Sequence[int],
    *,
    budgets: Mapping[str, float],
    is_async_app: bool | None = None,
) -> CapacityResult:
    """Bisect *candidates* for the smallest worker count whose storm meets *budgets*.

    ``run(workers)`` fires one storm and returns its result. ``is_async_app`` (detected
    from the first result when None) makes the search try the smallest count first:
    an ASGI app usually needs a single event-loop worker.
    """
    order = _check(candidates, budgets)
    limits = {name: budget_limit(name, limit) for name, limit in budgets.items()}
    trials: dict[int, CapacityTrial] = {}
    results: dict[int, StormResult] = {}
    detected: list[bool] = []

    def passes(index: int) -> bool:
        workers = order[index]
        if workers not in trials:
            result = run(workers)
            results[workers] = result
            if not detected:
                detected.append(result.interface.upper() == "ASGI")
            verdicts = evaluate(result, limits)
            trials[workers] = CapacityTrial(
                workers=workers,
                passed=all(v.ok for v in verdicts),
                throughput=result.throughput,
                p50=result.latency.p50,
                p99=result.latency.p99,
                saturation=result.saturation,
                failed=tuple(v for v in verdicts if not v.ok),
            )
        return trials[workers].passed

    # Invariant: every index below lo failed; order[hi] passed (hi == len: none known to).
    lo, hi = 0, len(order)
    if is_async_app:
        if passes(0):
            hi = 0
        else:
            lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid + 1
    async_app = is_async_app if is_async_app is not None else bool(detected and detected[0])
    return CapacityResult(
        best=order[lo] if lo < len(order) else None,
        tried=[trials[w] for w in sorted(trials)],
        storms=len(trials),
        budgets=limits,
        candidates=order,
        is_async_app=async_app,
        results=results,
    )

"""Search for the smallest worker count that meets a budget, with as few storms as possible.

More workers are assumed never to make a storm worse (the figures are monotone in the
worker count), so the candidates are bisected: ``ceil(log2(n + 1))`` storms at most
for ``n`` candidates. Each storm is judged with the same budgets as any other storm.

One storm's verdict near the boundary is a coin toss on a noisy machine, so with
``repeats=3`` the answer and the count below it are stormed again until two of three
agree; when they disagree the answer is given as a range. Candidates beyond
``max_useful`` (the user count of a closed model: a pool larger than the number of
users cannot help) are never tried.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ._engine.storm import judge_budgets
from ._errors import ConfigError
from ._model.result import StormResult, Verdict
from ._params import budget_limit, check_budget_name
from ._report._text import _is_floor, aligned, format_number

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
    #: How many storms this count had, and how many of them passed (``passed`` is the majority).
    runs: int = 1
    passes: int = -1

    @property
    def votes(self) -> str:
        """``2 of 3`` passed — or empty for a single storm."""
        passes = self.passes if self.passes >= 0 else int(self.passed)
        return f"{passes} of {self.runs}" if self.runs > 1 else ""

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
            "runs": self.runs,
            "passes": self.passes if self.passes >= 0 else int(self.passed),
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
    #: Storms fired again at the boundary to confirm it (beyond ``storms``, one per count).
    confirming: int = 0
    #: Storms per count at the boundary (1: single storms, nothing confirmed).
    repeats: int = 1
    #: Largest worker count that can matter (closed model: the users), and those left out.
    max_useful: int | None = None
    left_out: list[int] = field(default_factory=list)
    #: Users of a closed-model storm, when known (they set ``max_useful``).
    users: int | None = None
    #: "high", "uncertain", or "" for single storms; and the range the answer lies in.
    confidence: str = ""
    answer_range: tuple[int, int] | None = None

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
            "confirming": self.confirming,
            "repeats": self.repeats,
            "max_useful": self.max_useful,
            "left_out": list(self.left_out),
            "confidence": self.confidence or None,
            "answer_range": list(self.answer_range) if self.answer_range else None,
            "summary": self.summary(),
        }


# -- what a capacity search says of itself ---------------------------------------------


def _workers(n: int) -> str:
    return f"{n} worker{'s' if n != 1 else ''}"


def _budget_text(name: str, limit: float) -> str:
    return f"{name} {'≥' if _is_floor(name) else '≤'} {format_number(limit)}"


def _storms(n: int) -> str:
    return f"{n} storm{'s' if n != 1 else ''}"


def _confidence_line(found: CapacityResult) -> list[str]:
    if not found.confidence:
        return []
    boundary = [t for t in found.tried if t.workers in (found.best, _below(found)) and t.runs > 1]
    told = ", ".join(f"at {_workers(t.workers)} {t.votes} storms passed" for t in boundary)
    if found.confidence == "high":
        return [f"confidence: high — the storms at the boundary agreed ({told})"]
    low, high = found.answer_range or (found.candidates[0], found.candidates[-1])
    return [
        f"confidence: uncertain — the storms at the boundary disagreed ({told}): on this "
        f"machine the answer lies between {low} and {high} workers; a longer duration, more "
        "users per worker or a quieter machine would settle it"
    ]


def _below(found: CapacityResult) -> int | None:
    if found.best is None:
        return found.candidates[-1]
    index = found.candidates.index(found.best)
    return found.candidates[index - 1] if index > 0 else None


def capacity_summary(found: CapacityResult) -> list[str]:
    """Sentences that state the answer of a capacity search, and how sure it is."""
    budgets = ", ".join(_budget_text(name, limit) for name, limit in found.budgets.items())
    low, high = found.candidates[0], found.candidates[-1]
    count = len(found.candidates)
    searched = f"{_storms(found.storms)} over {count} candidate{'s' if count != 1 else ''}" + (
        f" ({low}–{high})" if count > 1 else ""
    )
    if found.confirming:
        searched += f", and {found.confirming} more to confirm the boundary"
    lines: list[str] = []
    if found.best is None:
        largest = found.trial(high)
        still = ""
        if largest is not None and largest.failed:
            still = f": at {_workers(high)} " + "; ".join(
                f"{v.name} is still {format_number(v.measured)} (limit {format_number(v.limit)})"
                for v in largest.failed
            )
        lines.append(f"no candidate meets {budgets}{still} — {searched}")
    elif found.best == low:
        lines.append(
            f"the smallest candidate, {_workers(low)}, already meets {budgets} — {searched}"
        )
    else:
        lines.append(f"smallest worker count that meets {budgets}: {found.best} — {searched}")
    if found.left_out:
        users = f"{found.users:,} users" if found.users else "the storm's users"
        lines.append(
            f"more than {_workers(found.max_useful or high)} cannot help {users}: a user waits "
            "for its response before sending again, so no more requests are ever in flight "
            f"than {found.max_useful} workers serve; {len(found.left_out)} larger "
            f"candidate{'s were' if len(found.left_out) != 1 else ' was'} left out"
        )
    lines.extend(_confidence_line(found))
    if found.is_async_app and found.best == 1:
        lines.append(
            "one event-loop worker suffices: the app is async (ASGI), its concurrency "
            "comes from the event loop, not from workers"
        )
    return lines


def capacity_table(found: CapacityResult) -> str:
    """The storms of a capacity search, in worker order, then the answer."""
    rows = [("workers", "verdict", "throughput rps", "p50 ms", "p99 ms", "saturation")]
    for t in found.tried:
        rows.append(
            (
                str(t.workers),
                ("✓" if t.passed else "✗ " + ", ".join(v.name for v in t.failed))
                + (f" ({t.votes} passed)" if t.votes else ""),
                format_number(t.throughput),
                format_number(t.p50),
                format_number(t.p99),
                f"{t.saturation:.0%}" if t.saturation is not None else "–",
            )
        )
    right = {0, 2, 3, 4, 5}
    # The last column is right-justified: every row of the table has the same width.
    return "\n".join([*aligned(rows, right=right), *capacity_summary(found)])


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


def _useful(order: list[int], max_useful: int | None) -> tuple[list[int], list[int]]:
    """Candidates that can matter, and those left out: above *max_useful*, only it counts."""
    if max_useful is None or not order or order[-1] <= max_useful:
        return order, []
    kept = [w for w in order if w < max_useful]
    # A larger pool behaves as one of max_useful workers: try that count in their place.
    kept.append(max_useful)
    return sorted(set(kept)), [w for w in order if w > max_useful]


def search_capacity(
    run: Callable[[int], StormResult],
    candidates: Sequence[int],
    *,
    budgets: Mapping[str, float],
    is_async_app: bool | None = None,
    repeats: int = 1,
    max_useful: int | None = None,
) -> CapacityResult:
    """Bisect *candidates* for the smallest worker count whose storm meets *budgets*.

    ``run(workers)`` fires one storm and returns its result. ``is_async_app`` (detected
    from the first result when None) makes the search try the smallest count first:
    an ASGI app usually needs a single event-loop worker. With *repeats* > 1 the answer
    and the count below it get up to *repeats* storms each, until a majority agrees.
    Candidates above *max_useful* are replaced by it (more workers cannot help).
    """
    order, left_out = _useful(_check(candidates, budgets), max_useful)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats={repeats!r} must be a whole number of at least 1")
    limits = {name: budget_limit(name, limit) for name, limit in budgets.items()}
    search = _Search(run, order, limits, repeats)
    lo = search.boundary(is_async_app)
    votes, detected = search.votes, search.detected
    async_app = is_async_app if is_async_app is not None else bool(detected and detected[0])
    confidence, answer_range = _confidence(order, votes, lo, repeats)
    return CapacityResult(
        best=order[lo] if lo < len(order) else None,
        tried=[search.trials[w] for w in sorted(search.trials)],
        storms=len(search.trials),
        budgets=limits,
        candidates=order,
        is_async_app=async_app,
        results=search.results,
        confirming=sum(len(v) for v in votes.values()) - len(votes),
        repeats=repeats,
        max_useful=max_useful,
        left_out=left_out,
        confidence=confidence,
        answer_range=answer_range,
    )


class _Search:
    """The storms of one capacity search: each worker count's votes, its trial, its result."""

    def __init__(
        self,
        run: Callable[[int], StormResult],
        order: list[int],
        limits: dict[str, float],
        repeats: int,
    ) -> None:
        self.run, self.order, self.limits, self.repeats = run, order, limits, repeats
        self.votes: dict[int, list[bool]] = {}
        self.trials: dict[int, CapacityTrial] = {}
        self.results: dict[int, StormResult] = {}
        self.detected: list[bool] = []
        self.need = repeats // 2 + 1

    def storm(self, index: int) -> None:
        workers = self.order[index]
        result = self.run(workers)
        if not self.detected:
            self.detected.append(result.interface.upper() == "ASGI")
        # Judged as any storm: a failed request fails a count whose budgets set no error rate.
        verdicts = judge_budgets(result, self.limits)
        ok = all(v.ok for v in verdicts)
        seen = self.votes.setdefault(workers, [])
        seen.append(ok)
        passes = sum(seen)
        majority = passes * 2 > len(seen)
        if workers not in self.results or ok == majority:
            # The figures shown are those of a storm that agrees with the verdict.
            self.results[workers] = result
            self.trials[workers] = CapacityTrial(
                workers=workers,
                passed=majority,
                throughput=result.throughput,
                p50=result.latency.p50,
                p99=result.latency.p99,
                saturation=result.saturation,
                failed=tuple(v for v in verdicts if not v.ok),
                runs=len(seen),
                passes=passes,
            )
        else:
            self.trials[workers] = replace(
                self.trials[workers], passed=majority, runs=len(seen), passes=passes
            )

    def passes(self, index: int) -> bool:
        if self.order[index] not in self.votes:
            self.storm(index)
        return self.trials[self.order[index]].passed

    def settle(self, index: int) -> None:
        seen = self.votes.get(self.order[index], [])
        while len(seen) < self.repeats and max(sum(seen), len(seen) - sum(seen)) < self.need:
            self.storm(index)
            seen = self.votes[self.order[index]]

    def bisect(self, lo: int, hi: int) -> int:
        # Invariant: every index below lo failed; order[hi] passed (hi == len: none known to).
        while lo < hi:
            mid = (lo + hi) // 2
            if self.passes(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def boundary(self, is_async_app: bool | None) -> int:
        """The index of the smallest passing count (``len(order)``: none passed)."""
        size = len(self.order)
        # Told the app is async: its smallest count is the likely answer, so try it first.
        first = 0 if is_async_app and self.passes(0) else None
        lo = first if first is not None else self.bisect(1 if is_async_app else 0, size)
        # Settled verdicts never change again, so each round settles new counts: it ends.
        for _ in range(size + 1):
            if self.repeats == 1:
                break
            if lo < size:
                self.settle(lo)
            if lo > 0:
                self.settle(lo - 1)
            if lo < size and not self.passes(lo):
                lo = self.bisect(lo + 1, size)
            elif lo > 0 and self.passes(lo - 1):
                lo = self.bisect(0, lo - 1)
            else:
                break
        return lo


def _confidence(
    order: list[int], votes: Mapping[int, list[bool]], lo: int, repeats: int
) -> tuple[str, tuple[int, int] | None]:
    """``high`` when the storms at the boundary agreed, else ``uncertain`` with the range."""
    if repeats == 1:
        return "", None
    boundary = [order[i] for i in (lo - 1, lo) if 0 <= i < len(order)]
    split = any(0 < sum(votes.get(w, [])) < len(votes.get(w, [])) for w in boundary)
    if not split:
        return "high", None
    passed_once = [w for w, seen in votes.items() if any(seen)]
    low = min(passed_once) if passed_once else order[-1]
    high = order[lo] if lo < len(order) else order[-1]
    seen = votes.get(high, [])
    if 0 < sum(seen) < len(seen):
        # The answer itself failed some of its storms: it may take the next count up,
        # the first one above that passed every storm it had (or that was not tried).
        above = [w for w in order[lo + 1 :] if w not in votes or all(votes[w])]
        high = above[0] if above else high
    return "uncertain", (min(low, high), high)

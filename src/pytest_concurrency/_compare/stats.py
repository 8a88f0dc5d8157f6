"""Paired statistics: the change of a figure from control to experiment, with its interval.

Each pair is one control round and one experiment round run back to back on the same
machine, so whatever the machine did to one it did, nearly, to the other. A figure's
change is judged on the paired log-ratios ``log(experiment / control)``, one per pair:

- **Estimate**: the Hodges–Lehmann estimate, the median of the Walsh averages (the means
  of every two log-ratios, each with itself included).
- **Interval**: the exact distribution-free interval that inverts the Wilcoxon
  signed-rank test: the Walsh averages between the ``c + 1``-th smallest and the
  ``c + 1``-th largest, ``c`` the largest count with ``P(T+ <= c) <= alpha / 2`` under
  the null distribution of the signed-rank statistic, computed exactly.

Why the signed-rank interval and not a bootstrap of the median: a CI gate has few pairs
(6 to 30). The bootstrap's interval is only asymptotically right and, on 6 pairs,
resamples at most 462 distinct samples of few distinct medians, so its nominal 95 % is
not what it delivers;
the signed-rank interval is exact for every *n* under the one assumption pairing makes
plausible (the log-ratios are symmetric about the true change), resists one wild pair
(a GC pause, a neighbour's burst) as the median does, and is 95 % as efficient as a
t-interval when the noise is normal. Its price is a floor on *n*: below 6 pairs no
interval reaches 95 %, so the gate runs at least 6. A figure is "regressed" only when the
whole interval lies beyond its threshold: on unchanged code that happens at most
2.5 % of the time per figure and look, and much less with a threshold above zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from statistics import NormalDist

__all__ = [
    "MIN_PAIRS",
    "PairedChange",
    "paired_change",
    "projected_half_width",
    "signed_rank_cdf",
    "verdict_of",
]

#: Two-sided confidence of the interval a verdict rests on.
CONFIDENCE = 0.95

#: Fewest pairs for which the exact signed-rank interval reaches :data:`CONFIDENCE`.
MIN_PAIRS = 6


@cache
def _null_counts(n: int) -> tuple[int, ...]:
    """How many of the 2**n sign patterns give each value of T+ (0 … n(n+1)/2)."""
    counts = [1]
    for rank in range(1, n + 1):
        grown = counts + [0] * rank
        for total, ways in enumerate(counts):
            grown[total + rank] += ways
        counts = grown
    return tuple(counts)


def signed_rank_cdf(n: int, t: int) -> float:
    """``P(T+ <= t)`` for the Wilcoxon signed-rank statistic of *n* pairs with no effect."""
    if t < 0:
        return 0.0
    counts = _null_counts(n)
    return float(sum(counts[: t + 1])) / float(2**n)


#: Rounding a bound may not move it past a threshold it sits on.
_SLACK = 1e-12


def verdict_of(worse_low: float, worse_high: float, allowed: float) -> str:
    """The verdict on an interval of how much worse a figure got (positive: worse), against
    the worsening *allowed*: ``regressed`` when the whole interval lies beyond it,
    ``improved`` when the whole interval lies as far the other way, ``unchanged`` when it
    stays within it, else ``inconclusive`` (the noise straddles the threshold).

    The one rule of both comparisons, paired and against a saved baseline.
    """
    if worse_low > allowed + _SLACK:
        return "regressed"
    if worse_high < -allowed - _SLACK:
        return "improved"
    if worse_high <= allowed + _SLACK:
        return "unchanged"
    return "inconclusive"


@dataclass(frozen=True)
class PairedChange:
    """The change of a figure across pairs, as a ratio experiment/control (1.0: no change).

    ``low`` and ``high`` bound the ratio at ``confidence``; with too few pairs for that
    confidence they are 0 and infinity (nothing is settled).
    """

    pairs: int
    ratio: float
    low: float
    high: float
    confidence: float
    control: float
    experiment: float
    #: Robust spread of the pairs' log-ratios (1.4826 × their median absolute deviation,
    #: the standard deviation were they normal); NaN when not known.
    spread: float = math.nan

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain data for JSON (an unbounded side is null)."""
        return {
            "pairs": self.pairs,
            "ratio": _finite(self.ratio),
            "low": _finite(self.low) if self.low > 0 else None,
            "high": _finite(self.high),
            "confidence": round(self.confidence, 4),
            "control": _finite(self.control),
            "experiment": _finite(self.experiment),
        }


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def paired_change(
    control: Sequence[float], experiment: Sequence[float], *, confidence: float = CONFIDENCE
) -> PairedChange | None:
    """The paired change of a figure; pairs where either side is missing or not positive
    are left out. None when no pair is left."""
    kept = [
        (c, e)
        for c, e in zip(control, experiment, strict=True)
        if math.isfinite(c) and math.isfinite(e) and c > 0 and e > 0
    ]
    if not kept:
        return None
    logs = [math.log(e / c) for c, e in kept]
    n = len(logs)
    walsh = sorted((logs[i] + logs[j]) / 2 for i in range(n) for j in range(i, n))
    estimate = _median(walsh)
    alpha = 1.0 - confidence
    c = -1
    while signed_rank_cdf(n, c + 1) <= alpha / 2:
        c += 1
    if c < 0:
        low, high, reached = 0.0, math.inf, 0.0
    else:
        low = math.exp(walsh[c])
        high = math.exp(walsh[len(walsh) - 1 - c])
        reached = 1.0 - 2 * signed_rank_cdf(n, c)
    return PairedChange(
        pairs=n,
        ratio=math.exp(estimate),
        low=low,
        high=high,
        confidence=reached,
        control=_median([c for c, _ in kept]),
        experiment=_median([e for _, e in kept]),
        spread=_spread(logs),
    )


def _spread(logs: Sequence[float]) -> float:
    """1.4826 × the median absolute deviation of *logs*, or, where most of them are equal
    (a deviation of 0 would promise an interval of no width), their standard deviation."""
    center = _median(logs)
    robust = 1.4826 * _median([abs(x - center) for x in logs])
    if robust > 0 or len(logs) < 2:
        return robust
    mean = sum(logs) / len(logs)
    return math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))


def projected_half_width(spread: float, pairs: int, *, confidence: float = CONFIDENCE) -> float:
    """Half the width, in log-ratio, that the signed-rank interval is expected to have
    on *pairs* pairs whose log-ratios spread as *spread*: the Hodges–Lehmann estimate's
    large-sample standard error is ``spread·sqrt(π / (3·n))`` for normal noise."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return z * spread * math.sqrt(math.pi / (3 * max(1, pairs)))


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

"""The one percentile of a list of values, at the rank the HDR histograms use.

Every latency figure of a storm is read from an HDR histogram, which takes the value of
rank ``round(q·n)`` (half up, at least 1) of its ``n`` counts. Figures taken from a sorted
list of raw values (a timeline second, the live line, a blocking site's calls, simulated
waits, bootstrap draws) use the same rank, so one storm's p99 means one thing wherever it
is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["quantile", "rank"]

_T = TypeVar("_T")


def rank(count: int, q: float) -> int:
    """The rank (1 … *count*) of the *q* quantile of *count* values: ``round(q·n)``, half up."""
    return min(count, max(1, int(q * count + 0.5)))


def quantile(ordered: Sequence[_T], q: float) -> _T:
    """The value of rank ``round(q·n)`` (half up, 1 … n) of *ordered* (sorted, not empty).

    *q* is a fraction: ``quantile(values, 0.99)`` is the p99 that
    ``HdrHistogram.get_value_at_percentile(99)`` gives for the same values.
    """
    return ordered[rank(len(ordered), q) - 1]

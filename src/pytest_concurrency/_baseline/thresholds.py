"""How much a compared figure may worsen: ``--concurrency-compare-fail`` read into thresholds.

Both comparisons read them: against a saved baseline and against a control run paired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .._errors import ConfigError
from .._report._records import FIGURES
from .._report._text import format_number
from .._spec.table import COMPARE_FIGURES
from .figures import COMPARED

__all__ = [
    "COMPARE_FAIL_OPTION",
    "Threshold",
    "parse_compare_fail",
    "with_cpu",
]

COMPARE_FAIL_OPTION = "--concurrency-compare-fail"


@dataclass(frozen=True)
class Threshold:
    """How much a figure may worsen: by a percentage of the baseline, or by an absolute amount."""

    figure: str
    amount: float
    relative: bool
    #: Added by :func:`with_cpu`, not written by the user.
    implied: bool = field(default=False, compare=False)

    def allowed(self, baseline: float) -> float:
        """Largest allowed worsening in the figure's unit."""
        return baseline * self.amount / 100 if self.relative else self.amount

    def describe(self) -> str:
        """``p99:10%`` / ``mean:5ms`` — as it was written."""
        unit = COMPARED[self.figure][0]
        if self.figure == "error_rate":
            return f"error_rate:{format_number(self.amount * 100)}%"
        if self.relative:
            return f"{self.figure}:{format_number(self.amount)}%"
        return f"{self.figure}:{format_number(self.amount)}{unit}"


def parse_compare_fail(expr: str, *, origin: str = COMPARE_FAIL_OPTION) -> list[Threshold]:
    """Parse ``p99:10%,rps:5%,mean:5ms`` into thresholds; a bad item is a :class:`ConfigError`.

    ``N%`` is relative to the baseline figure; ``Nms`` (latency) and ``N`` or ``Nrps``
    (throughput) are absolute. For ``error_rate``, ``N%`` means percentage points and a
    bare number a fraction, because a relative change of a zero error rate is meaningless.
    """
    names = ", ".join(FIGURES)
    items = [item.strip() for item in expr.split(",")]
    if not expr.strip() or not all(items):
        raise ConfigError(
            f"{origin}={expr!r}: expected FIGURE:AMOUNT items separated by commas, "
            f"such as p99:10%,rps:5%,mean:5ms (figures: {names})"
        )
    thresholds = []
    for item in items:
        figure, sep, amount = (part.strip() for part in item.partition(":"))
        # A figure by its name (``p99_ms``), or by the key it is filed under (``p99``).
        figure = COMPARE_FIGURES.get(figure, figure)
        if not sep:
            raise ConfigError(
                f"{origin}={expr!r}: {item!r} has no ':'; expected FIGURE:AMOUNT such as p99:10%"
            )
        if figure == "cpu":
            thresholds.append(_cpu(expr, amount, origin))
            continue
        if figure not in FIGURES:
            raise ConfigError(f"{origin}={expr!r}: unknown figure {figure!r}; choose from {names}")
        unit = FIGURES[figure][1]
        match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|ms|rps)?", amount)
        if match is None:
            raise ConfigError(
                f"{origin}={expr!r}: {amount!r} for {figure} is not an amount; "
                f"write N% (relative to the baseline) or N{unit} (absolute)"
            )
        value, suffix = float(match.group(1)), match.group(2)
        if suffix not in (None, "%", unit or None):
            raise ConfigError(
                f"{origin}={expr!r}: {figure} is measured in {unit or 'a fraction'}, "
                f"not {suffix}; write {figure}:{match.group(1)}% or {figure}:{match.group(1)}{unit}"
            )
        if figure == "error_rate":
            thresholds.append(Threshold(figure, value / 100 if suffix == "%" else value, False))
        else:
            thresholds.append(Threshold(figure, value, suffix == "%"))
    return thresholds


def _cpu(expr: str, amount: str, origin: str) -> Threshold:
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*%", amount)
    if match is None:
        raise ConfigError(
            f"{origin}={expr!r}: cpu (CPU time per request) is judged relative to the "
            f"baseline: write cpu:N% (got {amount!r})"
        )
    return Threshold("cpu", float(match.group(1)), True)


def with_cpu(thresholds: list[Threshold]) -> list[Threshold]:
    """*thresholds* with CPU per request: by its own item, else added after them at the
    tightest relative threshold (10 % when there is none), as the paired mode judges it."""
    if not thresholds or any(t.figure == "cpu" for t in thresholds):
        return thresholds
    relative = [t.amount for t in thresholds if t.relative and t.figure != "error_rate"]
    return [*thresholds, Threshold("cpu", min(relative) if relative else 10.0, True, implied=True)]

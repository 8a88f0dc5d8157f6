"""How much a compared figure may worsen: ``--concurrency-compare-fail`` read into thresholds.

Both comparisons read them: against a saved baseline and against a control run paired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._errors import ConfigError
from .._report._records import FIGURES
from .._report._text import format_number
from .._spec.table import COMPARE_FIGURES

__all__ = [
    "COMPARE_FAIL_OPTION",
    "Threshold",
    "parse_compare_fail",
]

COMPARE_FAIL_OPTION = "--concurrency-compare-fail"


@dataclass(frozen=True)
class Threshold:
    """How much a figure may worsen: by a percentage of the baseline, or by an absolute amount."""

    figure: str
    amount: float
    relative: bool

    def allowed(self, baseline: float) -> float:
        """Largest allowed worsening in the figure's unit."""
        return baseline * self.amount / 100 if self.relative else self.amount

    def describe(self) -> str:
        """``p99:10%`` / ``mean:5ms`` — as it was written."""
        unit = FIGURES[self.figure][1]
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

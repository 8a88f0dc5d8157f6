"""What a paired comparison judges, the verdict on each figure, and the one line that says it.

Figures a shared machine cannot move much are judged first: the CPU time the storm's
process spent per request (schedstat's run time of every thread, the app's and the
harness's: the harness is the same on both sides, so a change is the app's) and the
blocking calls the loop watchdog named in the app's code. Wall-clock latency and
throughput come after; each pair's ratio carries the machine's noise, and the
interval says how much.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._baseline.thresholds import Threshold, parse_compare_fail
from .._errors import ConfigError
from .._model.result import StormResult
from .._report._text import fit_line
from .stats import PairedChange, verdict_of

__all__ = [
    "DEFAULT_THRESHOLDS",
    "IDLE_BUSY",
    "PAIRED_FIGURES",
    "FigureVerdict",
    "PairedFigure",
    "busy_share",
    "figure_values",
    "judge",
    "parse_thresholds",
    "storm_verdict",
    "verdict_line",
]

#: Longest verdict line.
LINE_LIMIT = 160


@dataclass(frozen=True)
class PairedFigure:
    """A figure judged on paired rounds: its title, unit, direction, and how it is read."""

    name: str
    title: str
    unit: str
    bigger_is_worse: bool
    #: True for figures a shared machine moves little (judged first).
    stable: bool
    read: Callable[[StormResult], float]
    #: Added to both sides before the ratio (counts, which may be zero).
    offset: float = 0.0


def _cpu_us(result: StormResult) -> float:
    measured = result.cpu_contention
    handled = result.requests + result.discarded
    if measured is None or measured.run_s is None or not handled:
        return math.nan
    return measured.run_s * 1e6 / handled


def _blocking(result: StormResult) -> float:
    return float(result.loop_lag.calls) if result.loop_lag is not None else math.nan


def _latency(field: str) -> Callable[[StormResult], float]:
    return lambda r: float(getattr(r.latency, field))


#: Every figure the paired mode can judge, the stable ones first.
PAIRED_FIGURES: dict[str, PairedFigure] = {
    f.name: f
    for f in (
        PairedFigure("cpu", "CPU/request", "µs", True, True, _cpu_us),
        PairedFigure("blocking", "blocking calls", "", True, True, _blocking, offset=1.0),
        *(
            PairedFigure(name, name, "ms", True, False, _latency(name))
            for name in ("p50", "p90", "p95", "p99", "p999", "max", "mean")
        ),
        PairedFigure("rps", "rps", "rps", False, False, lambda r: r.throughput),
    )
}

#: Judged when ``--concurrency-compare-fail`` does not say.
DEFAULT_THRESHOLDS = "cpu:10%,blocking:50%,p99_ms:10%,rps:10%"


def parse_thresholds(expr: str, *, origin: str) -> list[Threshold]:
    """``cpu:10%,p99:10%,rps:5%`` for the paired mode: the saved-baseline figures (as
    :func:`parse_compare_fail` reads them) and ``cpu``, ``blocking`` (relative only).

    CPU per request is judged in every paired comparison: by its own item, else by the
    tightest relative threshold of the expression (10 % when there is none).
    """
    own: list[Threshold] = []
    rest: list[str] = []
    for item in (part.strip() for part in expr.split(",")):
        figure, sep, amount = (part.strip() for part in item.partition(":"))
        if sep and figure in ("cpu", "blocking"):
            if not amount.endswith("%"):
                raise ConfigError(
                    f"{origin}={expr!r}: {figure} is judged relative to the control: "
                    f"write {figure}:N% (got {amount!r})"
                )
            try:
                value = float(amount[:-1])
            except ValueError:
                raise ConfigError(
                    f"{origin}={expr!r}: {amount!r} for {figure} is not an amount; write N%"
                ) from None
            if not value >= 0 or not math.isfinite(value):
                raise ConfigError(f"{origin}={expr!r}: {figure}:{amount} must be 0% or more")
            own.append(Threshold(figure, value, True))
        else:
            rest.append(item)
    found = own + (parse_compare_fail(",".join(rest), origin=origin) if rest else [])
    found = [t for t in found if t.figure in PAIRED_FIGURES]
    if not any(t.figure == "cpu" for t in found):
        relative = [t.amount for t in found if t.relative]
        found.insert(0, Threshold("cpu", min(relative) if relative else 10.0, True))
    order = list(PAIRED_FIGURES)
    return sorted(found, key=lambda t: order.index(t.figure))


#: Below this share of a round spent running, a storm's CPU per request is mostly the
#: harness's fixed costs (starting users, probes ticking) and too noisy to judge unasked.
IDLE_BUSY = 0.2


def busy_share(result: StormResult) -> float:
    """Share of the round the storm's threads spent running (NaN where not measured)."""
    measured = result.cpu_contention
    if measured is None or measured.run_s is None or not result.duration > 0:
        return math.nan
    return measured.run_s / result.duration


def figure_values(result: StormResult) -> dict[str, float]:
    """One round's judged figures (NaN where not measured)."""
    return {name: figure.read(result) for name, figure in PAIRED_FIGURES.items()}


@dataclass(frozen=True)
class FigureVerdict:
    """One figure's verdict: ``regressed``, ``improved``, ``unchanged``, ``inconclusive``,
    or ``unmeasured`` (no pair measured it)."""

    figure: PairedFigure
    threshold: Threshold
    verdict: str
    change: PairedChange | None

    @property
    def allowed(self) -> float:
        """Largest allowed worsening as a ratio of the control (1.1 for 10 %)."""
        return _allowed(self.threshold, self.change, self.figure)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON ``comparison`` block."""
        return {
            "figure": self.figure.name,
            "unit": self.figure.unit,
            "stable": self.figure.stable,
            "threshold": self.threshold.describe()
            if self.figure.name not in ("cpu", "blocking")
            else f"{self.figure.name}:{self.threshold.amount:g}%",
            "verdict": self.verdict,
            "change": self.change.to_dict() if self.change is not None else None,
        }


def _allowed(threshold: Threshold, change: PairedChange | None, figure: PairedFigure) -> float:
    if threshold.relative:
        return 1.0 + threshold.amount / 100
    base = change.control if change is not None else math.nan
    if not base > 0:
        return math.nan
    if figure.bigger_is_worse:
        return (base + threshold.amount) / base
    shrunk = base - threshold.amount
    return base / shrunk if shrunk > 0 else math.inf


def judge(threshold: Threshold, change: PairedChange | None) -> FigureVerdict:
    """The verdict on one figure's paired change against its threshold."""
    figure = PAIRED_FIGURES[threshold.figure]
    if change is None:
        return FigureVerdict(figure, threshold, "unmeasured", None)
    allowed = math.log(_allowed(threshold, change, figure))
    # As "how much worse", log scale: positive is worse.
    low, high = _log(change.low), _log(change.high)
    if not figure.bigger_is_worse:
        low, high = -high, -low
    return FigureVerdict(figure, threshold, verdict_of(low, high, allowed), change)


def _log(value: float) -> float:
    if value <= 0:
        return -math.inf
    return math.log(value)


_RANK = {"regressed": 0, "inconclusive": 1, "improved": 2, "unchanged": 3, "unmeasured": 4}


def storm_verdict(verdicts: Sequence[FigureVerdict]) -> str:
    """The storm's verdict: regressed if any figure did, else inconclusive if any was,
    else improved if any was, else unchanged."""
    judged = [v.verdict for v in verdicts if v.verdict != "unmeasured"]
    if not judged:
        return "unmeasured"
    return min(judged, key=_RANK.__getitem__)


def _percent(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "+∞" if ratio > 0 else "−∞"
    if ratio <= 0:
        return "−∞"
    change = (ratio - 1) * 100
    text = f"{change:+.1f}%" if abs(change) < 1000 else f"×{ratio:.1f}"
    return text.replace("-", "−")


def figure_phrase(v: FigureVerdict) -> str:
    """``cpu +21.4% [+15.2%, +27.9%]``: the change and its interval."""
    if v.change is None:
        return f"{v.figure.name} not measured"
    c = v.change
    interval = "" if c.low <= 0 else f" [{_percent(c.low)}, {_percent(c.high)}]"
    return f"{v.figure.name} {_percent(c.ratio)}{interval}"


def verdict_line(verdicts: Sequence[FigureVerdict], *, against: str, pairs: int, ended: str) -> str:
    """One line of at most 160 characters: the verdict, what changed and by how much,
    whether it is beyond the noise, against what, on how many pairs, and what ended it."""
    verdict = storm_verdict(verdicts)
    ranked = sorted(
        (v for v in verdicts if v.verdict != "unmeasured"),
        key=lambda v: (_RANK[v.verdict], not v.figure.stable),
    )
    tail = f"; {pairs} pairs, {ended}"
    head = f"{verdict} vs {against}: "
    parts: list[str] = []
    for v in ranked:
        limit = f" >{_percent(v.allowed)}" if v.verdict == "regressed" else ""
        noise = " (noise)" if v.verdict == "inconclusive" else ""
        parts.append(figure_phrase(v) + limit + noise)
    return fit_line(head, parts, tail, LINE_LIMIT)

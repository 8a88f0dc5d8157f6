"""This run's storms against a saved baseline's: matched by storm, each figure judged.

Against a threshold a figure's change is **regressed** (the whole interval is past it),
**improved** (the whole interval lies as far past it the other way), **unchanged** (the interval
stays within it) or **inconclusive** (the interval straddles it: the noise is wider than
the threshold). Only "regressed" fails a test. Error rates are counts of failed requests,
not noise: they are judged as measured.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._compare.stats import verdict_of
from .._compare.verdict import IDLE_BUSY
from .._metrics.percentile import quantile
from .._report._json import document_records
from .._report._records import StormRecord, StormRow, as_records
from .figures import COMPARED, busy_share, compared_figures, worse_up
from .noise import (
    SESSION_NOISE,
    Latencies,
    Noise,
    cpu_slowdown,
    history_spread,
    load_swing,
    machine_load,
    noise_of,
)
from .thresholds import Threshold

__all__ = [
    "COMPARE_ROUNDS",
    "Comparison",
    "FigureDelta",
    "Judgement",
    "compare",
    "judge",
    "judgements",
    "machine_warning",
]

#: Rounds of each storm when a comparison can fail a test (unless the storm sets rounds):
#: one round has no spread, and a gate without a spread flaps.
COMPARE_ROUNDS = 3


#: Two-sided coverage of the interval of a change.
_COVERAGE = 0.90


#: Most rounds the advice of an inconclusive comparison asks for.
_MOST_ROUNDS = 20


#: Machine fields that make figures incomparable when they differ (noise is expected to).
_MACHINE_KEYS = ("host", "cpu_model", "cpu_count", "cpu_usable", "implementation", "python")


@dataclass(frozen=True)
class FigureDelta:
    """One figure of a storm in the baseline and now, with the noise of both when known."""

    figure: str
    baseline: float
    current: float
    noise: Noise | None = field(default=None, compare=False)

    @property
    def delta(self) -> float:
        """Current minus baseline, in the figure's unit."""
        return self.current - self.baseline

    @property
    def relative(self) -> float:
        """Change as a fraction of the baseline (NaN when the baseline is 0 or unmeasured)."""
        if not self.baseline or math.isnan(self.baseline) or math.isnan(self.current):
            return math.nan
        return self.delta / self.baseline

    @property
    def worse(self) -> float:
        """How much worse the figure got, in its unit (negative when it improved)."""
        return self.delta if worse_up(self.figure) else -self.delta


@dataclass(frozen=True)
class Comparison:
    """A storm of this run against the same storm of the baseline (``None`` when it is new)."""

    nodeid: str
    label: str
    index: int
    deltas: dict[str, FigureDelta] | None
    #: The larger share of the window the storm's threads ran, now or in the baseline.
    busy: float = math.nan

    @property
    def is_new(self) -> bool:
        """True when the baseline has no storm with this node id, label and index."""
        return self.deltas is None


def compare(
    current_rows: Sequence[StormRow | StormRecord],
    baseline_doc: Mapping[str, Any],
    *,
    noise_for: Collection[str] = (),
    load: Mapping[str, float] | None = None,
    session_noise: float | None = None,
) -> list[Comparison]:
    """Match this run's storms with the baseline's by (node id, storm label, index in the test).

    The figures named in *noise_for* (those a threshold judges) also get their noise.
    *load* is this session's :func:`machine_load` (None: read it now; empty: unknown); with
    the baseline's, it bounds how far the CPU available can have moved between the two.
    *session_noise* is how far CPU-bound time per request moves between two sessions on
    its own (default :data:`SESSION_NOISE`).
    """
    floor = SESSION_NOISE if session_noise is None else session_noise
    saved = {record.key: record for record in document_records(baseline_doc)}
    loads_now = machine_load() if load is None else load
    machine = baseline_doc.get("machine")
    loads_then = machine.get("load") if isinstance(machine, Mapping) else None
    swing = load_swing(
        loads_then if isinstance(loads_then, Mapping) else None,
        loads_now if isinstance(loads_now, Mapping) else None,
    )
    out = []
    for record in as_records(current_rows):
        old = saved.get(record.key)
        deltas = None
        if old is not None:
            now, then = compared_figures(record.data), compared_figures(old.data)
            cache: dict[int, Latencies | None] = {}
            slowed_then, slowed_now = cpu_slowdown(old.data), cpu_slowdown(record.data)
            contention = (
                (slowed_then, slowed_now)
                if slowed_then is not None and slowed_now is not None
                else None
            )
            deltas = {
                name: FigureDelta(
                    name,
                    then[name],
                    now[name],
                    noise_of(
                        name,
                        old,
                        record,
                        then[name],
                        now[name],
                        cache,
                        swing,
                        contention,
                        floor,
                        history_spread(old.data, name),
                    )
                    if name in noise_for
                    else None,
                )
                for name in COMPARED
                # CPU time is measured in-process only: a storm without it has no such figure.
                if name != "cpu" or not (math.isnan(then[name]) or math.isnan(now[name]))
            }
        busy = max(busy_share(record.data), busy_share(old.data)) if old is not None else math.nan
        out.append(Comparison(record.nodeid, record.label, record.index, deltas, busy))
    return out


@dataclass(frozen=True)
class Judgement:
    """A figure's change against its threshold: the verdict and the interval it rests on.

    ``worse``, ``low``, ``high`` and ``allowed`` are in the threshold's terms: a fraction of
    the baseline for ``N%`` thresholds, the figure's unit for absolute ones; positive is worse.
    """

    delta: FigureDelta
    threshold: Threshold
    verdict: str
    worse: float
    low: float
    high: float
    allowed: float
    relative: bool
    #: Rounds that would likely settle an inconclusive change (None: more rounds will not).
    settle_rounds: int | None = None

    @property
    def figure(self) -> str:
        """The compared figure, such as ``p99``."""
        return self.delta.figure

    @property
    def has_noise(self) -> bool:
        """True when the interval has width (the noise of the figure was known)."""
        return self.high > self.low


def judge(d: FigureDelta, threshold: Threshold) -> Judgement | None:
    """Regressed, improved, unchanged or inconclusive; None when either side was not measured."""
    if math.isnan(d.baseline) or math.isnan(d.current):
        return None
    sign = 1.0 if worse_up(d.figure) else -1.0
    relative = threshold.relative and d.baseline != 0

    def worsening(then: float, now: float) -> float:
        change = (now - then) / then if relative else now - then
        return sign * change

    worse = worsening(d.baseline, d.current)
    allowed = threshold.amount / 100 if relative else threshold.allowed(d.baseline)
    if d.noise is not None and d.noise.unbounded is not None:
        # Either side's true value may lie anywhere above what one round showed.
        return Judgement(
            d, threshold, "inconclusive", worse, -math.inf, math.inf, allowed, relative
        )
    low = high = worse
    if d.noise is not None:
        pairs = [
            (then, now)
            for then, now in zip(d.noise.baseline, d.noise.current, strict=True)
            if then > 0 or not relative
        ]
        if pairs:
            tail = (1 - _COVERAGE) / 2
            # Each end of the interval at the worst case of what the sessions explain.
            ends = [
                sorted(worsening(then, now * g) for then, now in pairs) for g in d.noise.envelope
            ]
            # The point estimate stays inside its own interval, whatever the resampling.
            low = min(worse, *(quantile(draws, tail) for draws in ends))
            high = max(worse, *(quantile(draws, 1 - tail) for draws in ends))
    verdict = verdict_of(low, high, allowed)
    settle = None
    if verdict == "inconclusive" and d.noise is not None and d.noise.rounds_settle:
        # (A swing of the machine's CPU between the sessions is not settled by more rounds.)
        rounds = d.noise.rounds_now if d.noise.source == "rounds" else 1
        half, gap = (high - low) / 2, abs(worse - allowed)
        if gap > 0:
            needed = max(rounds + 2, math.ceil(rounds * (half / gap) ** 2))
            settle = needed if needed <= _MOST_ROUNDS else None
    return Judgement(d, threshold, verdict, worse, low, high, allowed, relative, settle)


def judgements(comparison: Comparison, thresholds: Sequence[Threshold]) -> list[Judgement]:
    """Every threshold's verdict on *comparison* (none for a storm new since the baseline).

    CPU per request that no threshold named (added by :func:`~.thresholds.with_cpu`) is left
    out for a storm whose threads ran less than :data:`IDLE_BUSY` of its window in both
    sessions, as the paired mode does: it is then mostly the harness's own fixed costs.
    """
    if comparison.deltas is None:
        return []
    out = []
    for threshold in thresholds:
        if threshold.implied and threshold.figure == "cpu" and not comparison.busy >= IDLE_BUSY:
            continue
        delta = comparison.deltas.get(threshold.figure)
        found = judge(delta, threshold) if delta is not None else None
        if found is not None:
            out.append(found)
    return out


def machine_warning(baseline_doc: Mapping[str, Any], machine: Mapping[str, Any]) -> str | None:
    """A sentence when the baseline was measured on another machine (figures then mislead)."""
    then = baseline_doc.get("machine") or {}
    differ = [
        f"{key} {then.get(key)!r} → {machine.get(key)!r}"
        for key in _MACHINE_KEYS
        if key in then and key in machine and then.get(key) != machine.get(key)
    ]
    if not differ:
        return None
    return (
        "the baseline was measured on a different machine or Python ("
        + "; ".join(differ)
        + "): differences may come from the machine, not the code"
    )

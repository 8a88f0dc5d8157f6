"""A saved-baseline comparison in words: the table of changes, one line per judgement, and
the storm's ``comparison`` block that the JSON and HTML reports carry."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .._report._text import fit_line, format_number
from .compare import Comparison, FigureDelta, Judgement, judgements
from .figures import COMPARED, worse_up
from .noise import Noise
from .thresholds import Threshold

__all__ = [
    "VERDICTS",
    "comparison_table",
    "judgement_head",
    "judgement_interval",
    "judgement_line",
    "regression_messages",
    "regressions",
    "saved_block",
    "short_line",
    "show_figure",
    "storm_verdict",
]

#: Longest storm verdict line (the details follow on lines of their own).
LINE_LIMIT = 160

#: A storm's verdicts, the worst first: a storm takes the worst of its figures'.
VERDICTS = ("regressed", "inconclusive", "improved", "unchanged")

_TABLE_FIGURES = ("p50", "p99", "max", "rps", "error_rate")


_TITLES = {"max": "max", "p50": "p50", "p99": "p99", "rps": "rps", "error_rate": "errors"}


def regression_messages(comparison: Comparison, thresholds: Sequence[Threshold]) -> list[str]:
    """One line per threshold *comparison* breaks beyond its noise (latency grew, throughput fell)."""
    return [
        judgement_head(j) for j in judgements(comparison, thresholds) if j.verdict == "regressed"
    ]


def regressions(comparisons: Sequence[Comparison], thresholds: Sequence[Threshold]) -> list[str]:
    """Every broken threshold, as ``nodeid · label: p99 grew from … to … (+25.0%; allowed p99:10%)``."""
    out: list[str] = []
    for c in comparisons:
        suffix = f" [{c.index}]" if c.index else ""
        out.extend(
            f"{c.nodeid} · {c.label}{suffix}: {line}" for line in regression_messages(c, thresholds)
        )
    return out


def _cell(d: FigureDelta) -> str:
    now = show_figure(d.figure, d.current) if not math.isnan(d.current) else "n/a"
    if math.isnan(d.baseline) or math.isnan(d.current):
        return now
    if d.figure == "error_rate":
        return f"{now} ({(d.current - d.baseline) * 100:+.2f}pp)"
    if math.isnan(d.relative):
        return f"{now} (was {show_figure(d.figure, d.baseline)})"
    return f"{now} ({d.relative:+.1%})"


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """This run's figures with their change since the baseline, one line per storm."""
    header = ("test", "storm", *(_TITLES[f] for f in _TABLE_FIGURES))
    rows: list[tuple[str, ...]] = [header]
    for c in comparisons:
        storm = c.label + (f" [{c.index}]" if c.index else "")
        if c.deltas is None:
            rows.append((c.nodeid, storm, "new: not in the baseline", *[""] * 4))
        else:
            rows.append((c.nodeid, storm, *(_cell(c.deltas[f]) for f in _TABLE_FIGURES)))
    # A "new" row spans the figure columns; it must not widen them.
    measured = [r for r in rows if not r[2].startswith("new:")]
    widths = [max(len(r[i]) for r in (rows if i < 2 else measured)) for i in range(len(header))]
    lines = []
    for row in rows:
        if row[2].startswith("new:"):
            lines.append("  ".join((row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2])))
            continue
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def show_figure(figure: str, value: float) -> str:
    """``12.01 ms``, ``1,000 rps``, ``2.00%`` — a compared figure with its unit."""
    if figure == "error_rate":
        return f"{value:.2%}"
    unit = COMPARED[figure][0]
    return f"{format_number(value)} {unit}".rstrip()


def _signed(j: Judgement, worse: float) -> str:
    """A worsening back in the figure's direction: ``+12.0%`` or ``-3 ms``."""
    change = worse if worse_up(j.figure) else -worse
    if j.relative:
        return f"{change:+.1%}"
    if j.figure == "error_rate":
        return f"{change:+g}"
    unit = COMPARED[j.figure][0]
    return f"{'+' if change >= 0 else '-'}{format_number(abs(change))} {unit}".rstrip()


def _noise_source(j: Judgement) -> str:
    noise = j.delta.noise
    if noise is None:
        return ""
    if noise.source == "latencies":
        where = "from the recorded latencies, one round each"
    elif noise.source == "requests":
        where = "from the count of requests, one round each"
    elif noise.source == "sessions":
        where = "one round each"
    elif noise.rounds_now == noise.rounds_then:
        where = f"over {noise.rounds_now} rounds each"
    else:
        where = f"over {noise.rounds_now} rounds now and {noise.rounds_then} in the baseline"
    return where + _machine_words(noise)


def _machine_words(noise: Noise) -> str:
    """What besides the rounds widened the interval: the machine, the sessions ('' if nothing)."""
    parts = []
    if noise.contention is not None:
        then, now = (1.0 - 1.0 / slowdown for slowdown in noise.contention)
        if abs(now - then) >= 0.005:
            parts.append(
                f"the storm's wait for a CPU ({then:.0%} of its ready time in the baseline, "
                f"{now:.0%} now)"
            )
    elif noise.load_swing > 1.0:
        parts.append(f"the machine's load (up to {noise.load_swing:.1f}× the CPU either way)")
    spread = math.expm1(noise.history_spread)
    if noise.history and not spread > noise.session_noise * noise.cpu_share:
        parts.append(
            f"the spread of its {noise.history} saved sessions (±{spread:.0%} for one more)"
        )
    elif noise.history and noise.cpu_share >= 0.05:
        parts.append(
            f"±{noise.session_noise:.0%} between sessions for its CPU-bound time "
            f"({noise.cpu_share:.0%} of each request; its {noise.history} saved sessions "
            f"spread wider, ±{spread:.0%}, and history only narrows)"
        )
    elif noise.session_noise > 0 and noise.cpu_share >= 0.05:
        parts.append(
            f"±{noise.session_noise:.0%} between sessions for its CPU-bound time "
            f"({noise.cpu_share:.0%} of each request; the default until the baseline holds "
            "3 saved sessions of it)"
        )
    if noise.jitter >= 1.05:
        parts.append(
            f"a short window (a scheduler slice lost at each end moves it ±{noise.jitter - 1:.0%})"
        )
    if not parts:
        return ""
    return ", " + ", ".join(parts[:-1]) + (", and " if len(parts) > 1 else "and ") + parts[-1]


def _change(d: FigureDelta) -> str:
    """``+20.0%``, or the difference where the baseline was 0."""
    return f"{d.relative:+.1%}" if not math.isnan(d.relative) else f"{d.delta:+g}"


def _ends(j: Judgement) -> tuple[float, float]:
    """The interval's ends in the figure's own direction (a fall in rps is negative)."""
    return (j.low, j.high) if worse_up(j.figure) else (j.high, j.low)


def judgement_head(j: Judgement) -> str:
    """``p99 grew from 10 ms to 12 ms (+20.0%; allowed p99:10%)``."""
    d = j.delta
    verb = "grew" if d.current >= d.baseline else "fell"
    change = _change(d)
    return (
        f"{d.figure} {verb} from {show_figure(d.figure, d.baseline)} to "
        f"{show_figure(d.figure, d.current)} ({change}; allowed {j.threshold.describe()})"
    )


def judgement_interval(j: Judgement) -> str:
    """``90% interval of the change +12.0% … +30.0%, over 3 rounds each`` ('' without noise)."""
    if not j.has_noise:
        return ""
    noise = j.delta.noise
    if noise is not None and noise.unbounded is not None:
        needed, had = noise.unbounded
        need = f"{needed:,} or more would" if needed else "no count of requests will; rounds will"
        return (
            f"one round each ({had:,} requests on the smaller side) cannot bound {j.figure} "
            f"from above ({need})"
        )
    low, high = _ends(j)
    return f"90% interval of the change {_signed(j, low)} … {_signed(j, high)}, {_noise_source(j)}"


def judgement_line(j: Judgement) -> str:
    """The change, its interval and the verdict in one line; inconclusive says what would settle it."""
    interval = judgement_interval(j)
    line = judgement_head(j) + (f" — {interval}" if interval else "")
    if j.verdict == "regressed":
        return line
    if j.verdict == "improved":
        return f"{line}: improved beyond its noise"
    if j.verdict == "unchanged":
        return f"{line}: within its threshold"
    noise = j.delta.noise
    if noise is not None and noise.unbounded is not None:
        return (
            f"{line}: inconclusive — run rounds=3 on the storm (and save the baseline with as "
            "many) to judge it"
        )
    half = (j.high - j.low) / 2
    width = f"{half:.1%}" if j.relative else show_figure(j.figure, half)
    if noise is not None and not noise.rounds_settle:
        advice = (
            "the storm moves that much between sessions (its CPU, the machine), which more "
            "rounds in one session do not settle: "
            + ("save the baseline in more sessions, " if noise.sessions_help else "")
            + "compare on a quiet machine, or judge count-based budgets in CI"
        )
    elif j.settle_rounds is not None:
        advice = (
            f"run {j.settle_rounds} rounds (rounds={j.settle_rounds} on the storm, and save the "
            "baseline with as many) to settle it"
        )
    else:
        advice = (
            "the change sits on the threshold, so more rounds will not settle it soon: "
            "lengthen the storm or loosen the threshold"
        )
    return (
        f"{line}: inconclusive — the noise (±{width}) is wider than the margin to the "
        f"threshold; {advice}"
    )


def _phrase(j: Judgement) -> str:
    """``cpu +84.2% [+59.4%, +112.8%] >+10%``: the change, its interval, past what."""
    d = j.delta
    text = f"{d.figure} {_change(d)}"
    noise = d.noise
    if noise is not None and noise.unbounded is not None:
        text += " (unbounded: 1 round)"
    elif j.has_noise:
        low, high = _ends(j)
        text += f" [{_signed(j, low)}, {_signed(j, high)}]"
    if j.verdict == "regressed":
        amount = j.threshold.describe().partition(":")[2]
        text += f" >{'+' if j.relative else ''}{amount}"
    elif j.verdict == "inconclusive":
        text += " (noise)"
    return text.replace("-", "−")


def short_line(comparison: Comparison, found: Sequence[Judgement], *, against: str) -> str:
    """The storm's verdict in one line of at most :data:`LINE_LIMIT` characters: what
    changed, by how much, whether beyond the noise, against what (worst figures first)."""
    verdict = storm_verdict(comparison, found)
    if comparison.deltas is None:
        return f"new: not in {against}"
    if not found:
        return "unmeasured: no threshold judged it (--concurrency-compare-fail names the figures)"
    # Worst first; among equals CPU per request, which the machine moves least.
    ranked = sorted(found, key=lambda j: (VERDICTS.index(j.verdict), j.figure != "cpu"))
    noise = next((j.delta.noise for j in ranked if j.delta.noise is not None), None)
    tail = ""
    if noise is not None:
        tail = f"; {noise.rounds_now} round{'s' if noise.rounds_now != 1 else ''} now"
        if noise.history:
            tail += f", {noise.history} saved sessions"
    head = f"{verdict} vs {against}: "
    return fit_line(head, [_phrase(j) for j in ranked], tail, LINE_LIMIT, keep=1)


def storm_verdict(comparison: Comparison, found: Sequence[Judgement]) -> str:
    """The storm's verdict: ``new`` (not in the baseline), ``unmeasured`` (no threshold
    judged a figure of it) or the worst of its figures' verdicts."""
    if comparison.deltas is None:
        return "new"
    if not found:
        return "unmeasured"
    return min(
        (j.verdict for j in found),
        key=lambda v: VERDICTS.index(v) if v in VERDICTS else len(VERDICTS),
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def saved_block(
    comparison: Comparison,
    thresholds: Sequence[Threshold],
    *,
    against: str,
    saved: str,
    fails: bool,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The storm's ``comparison`` block (``mode: saved``): its verdict and line as the
    terminal says them, then every compared figure, the judged ones first, with the
    baseline's value, this session's, their ratio and, where a threshold judged it, the
    threshold, the verdict and the interval of the change."""
    found = judgements(comparison, thresholds)
    verdict = storm_verdict(comparison, found)
    judged = {j.figure: j for j in found}
    line = short_line(comparison, found, against=against)
    figures = []
    deltas = comparison.deltas or {}
    for name in sorted(deltas, key=lambda n: n not in judged):
        d, j = deltas[name], judged.get(name)
        ratio = d.current / d.baseline if d.baseline else math.nan
        figures.append(
            {
                "figure": name,
                "unit": COMPARED[name][0],
                "threshold": j.threshold.describe() if j is not None else None,
                "verdict": j.verdict if j is not None else None,
                "interval": judgement_interval(j) if j is not None else "",
                "change": {
                    "baseline": _finite(d.baseline),
                    "current": _finite(d.current),
                    "ratio": _finite(ratio),
                },
            }
        )
    return {
        "mode": "saved",
        "against": against,
        "saved": saved,
        "verdict": verdict,
        "line": line,
        "fails": fails,
        "figures": figures,
        "notes": list(notes),
    }

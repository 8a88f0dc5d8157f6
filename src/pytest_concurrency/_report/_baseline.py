"""Saved runs (``.storms/NAME.json``) and comparison of this run's storms with one of them."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from ._json import document_records, load_json, write_json
from ._records import FIGURES, StormRecord, StormRow, as_records, figures
from ._text import format_number

__all__ = [
    "COMPARE_FAIL_OPTION",
    "DEFAULT_DIRECTORY",
    "Comparison",
    "FigureDelta",
    "Threshold",
    "baseline_path",
    "compare",
    "comparison_table",
    "load",
    "machine_warning",
    "parse_compare_fail",
    "regression_messages",
    "regressions",
    "save",
]

DEFAULT_DIRECTORY = ".storms"
COMPARE_FAIL_OPTION = "--concurrency-compare-fail"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Machine fields that make figures incomparable when they differ (noise is expected to).
_MACHINE_KEYS = ("host", "cpu_model", "cpu_count", "cpu_usable", "implementation", "python")
_TABLE_FIGURES = ("p50", "p99", "max", "rps", "error_rate")
_TITLES = {"max": "max", "p50": "p50", "p99": "p99", "rps": "rps", "error_rate": "errors"}


def baseline_path(name: str, directory: str | os.PathLike[str], *, option: str = "") -> Path:
    """``directory/NAME.json``; a name with a path separator or odd characters is refused."""
    stem = name.removesuffix(".json")
    if not _NAME.fullmatch(stem):
        where = f"{option}={name!r}" if option else f"baseline name {name!r}"
        raise ConfigError(
            f"{where}: a baseline name is letters, digits, '.', '_' and '-' (such as main or "
            "py311-linux); it is stored as NAME.json in the storage directory"
        )
    return Path(directory) / f"{stem}.json"


def save(name: str, doc: Mapping[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Keep *doc* as the baseline *name* (replacing an older one of that name)."""
    return write_json(baseline_path(name, directory, option="--concurrency-save"), doc)


def load(name: str, directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The baseline *name*; a missing one is a :class:`ConfigError` listing those that exist."""
    path = baseline_path(name, directory, option="--concurrency-compare")
    if not path.is_file():
        found = sorted(p.stem for p in Path(directory).glob("*.json"))
        have = f"saved baselines: {', '.join(found)}" if found else "no baseline is saved there"
        raise ConfigError(
            f"--concurrency-compare={name!r}: no baseline {path} ({have}; "
            "save one with --concurrency-save=NAME)"
        )
    return load_json(path)


@dataclass(frozen=True)
class FigureDelta:
    """One figure of a storm in the baseline and now."""

    figure: str
    baseline: float
    current: float

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
        return self.delta if FIGURES[self.figure][2] else -self.delta


@dataclass(frozen=True)
class Comparison:
    """A storm of this run against the same storm of the baseline (``None`` when it is new)."""

    nodeid: str
    label: str
    index: int
    deltas: dict[str, FigureDelta] | None

    @property
    def is_new(self) -> bool:
        """True when the baseline has no storm with this node id, label and index."""
        return self.deltas is None


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


def compare(
    current_rows: Sequence[StormRow | StormRecord], baseline_doc: Mapping[str, Any]
) -> list[Comparison]:
    """Match this run's storms with the baseline's by (node id, storm label, index in the test)."""
    saved = {record.key: record for record in document_records(baseline_doc)}
    out = []
    for record in as_records(current_rows):
        old = saved.get(record.key)
        deltas = None
        if old is not None:
            now, then = figures(record.data), figures(old.data)
            deltas = {name: FigureDelta(name, then[name], now[name]) for name in FIGURES}
        out.append(Comparison(record.nodeid, record.label, record.index, deltas))
    return out


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


def _show(figure: str, value: float) -> str:
    if figure == "error_rate":
        return f"{value:.2%}"
    unit = FIGURES[figure][1]
    return f"{format_number(value)} {unit}".rstrip()


def regression_messages(comparison: Comparison, thresholds: Sequence[Threshold]) -> list[str]:
    """One line per threshold *comparison* breaks (latency grew, throughput fell too much)."""
    if comparison.deltas is None:
        return []
    lines = []
    for threshold in thresholds:
        d = comparison.deltas[threshold.figure]
        if math.isnan(d.baseline) or math.isnan(d.current):
            continue
        allowed = threshold.allowed(d.baseline)
        if d.worse > allowed + 1e-12:
            change = f"{d.relative:+.1%}" if not math.isnan(d.relative) else f"{d.delta:+g}"
            verb = "fell" if not FIGURES[threshold.figure][2] else "grew"
            lines.append(
                f"{threshold.figure} {verb} from {_show(d.figure, d.baseline)} to "
                f"{_show(d.figure, d.current)} ({change}; allowed {threshold.describe()})"
            )
    return lines


def regressions(comparisons: Sequence[Comparison], thresholds: Sequence[Threshold]) -> list[str]:
    """Every broken threshold, as ``nodeid · label: p99 grew from … to … (+25.0%; allowed p99:10%)``."""
    out: list[str] = []
    for c in comparisons:
        suffix = f" [{c.index}]" if c.index else ""
        out.extend(
            f"{c.nodeid} · {c.label}{suffix}: {line}" for line in regression_messages(c, thresholds)
        )
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


def _cell(d: FigureDelta) -> str:
    now = _show(d.figure, d.current) if not math.isnan(d.current) else "n/a"
    if math.isnan(d.baseline) or math.isnan(d.current):
        return now
    if d.figure == "error_rate":
        return f"{now} ({(d.current - d.baseline) * 100:+.2f}pp)"
    if math.isnan(d.relative):
        return f"{now} (was {_show(d.figure, d.baseline)})"
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

"""The Markdown summary (``--concurrency-markdown``): one table of the storms' comparisons,
regressions first, for a CI job summary (``$GITHUB_STEP_SUMMARY``) or a pull-request comment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SummaryRow", "markdown_summary", "write_markdown"]

_ORDER = ("regressed", "inconclusive", "improved", "unchanged", "unmeasured", "new")
_MARK = {
    "regressed": "❌ regressed",
    "inconclusive": "❔ inconclusive",
    "improved": "✅ improved",
    "unchanged": "✅ unchanged",
    "unmeasured": "⚠️ unmeasured",
    "new": "🆕 new",
}


@dataclass(frozen=True)
class SummaryRow:
    """A storm's comparison: its verdict, test, storm label and the one-line change."""

    verdict: str
    test: str
    storm: str
    change: str


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(title: str, rows: Sequence[SummaryRow], *, why_none: str = "") -> str:
    """A heading, a count of verdicts, and one table with the regressions first (or, with
    no rows, a line saying so and *why_none*)."""
    ordered = sorted(
        rows,
        key=lambda r: (_ORDER.index(r.verdict) if r.verdict in _ORDER else len(_ORDER), r.test),
    )
    counts = [
        f"{sum(r.verdict == verdict for r in rows)} {verdict}"
        for verdict in _ORDER
        if any(r.verdict == verdict for r in rows)
    ]
    lines = [f"### {_escape(title)}", ""]
    if not rows:
        none = (
            f"No storm was compared: {_escape(why_none)}" if why_none else "No storm was compared."
        )
        return "\n".join([*lines, none, ""])
    lines += [
        ", ".join(counts),
        "",
        "| verdict | test | storm | change |",
        "|---|---|---|---|",
    ]
    for row in ordered:
        mark = _MARK.get(row.verdict, row.verdict)
        lines.append(
            f"| {mark} | `{_escape(row.test)}` | {_escape(row.storm)} | {_escape(row.change)} |"
        )
    lines.append("")
    return "\n".join(lines)


def write_markdown(path: Path, text: str) -> Path:
    """Append *text* to *path* (a CI job summary file collects every step's summaries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)
    return path

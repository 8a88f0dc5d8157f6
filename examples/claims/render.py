"""The claims as text and Markdown; the storms behind them in the library's storms table."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from pytest_concurrency._report._terminal import storms_table

from .base import ClaimRow, DemoStorm

__all__ = ["claims_markdown", "claims_table", "storms_text"]

_WIDTH = 100
_LABEL = 10


def _wrap(label: str, lines: Sequence[str], indent: str = "    ") -> list[str]:
    out: list[str] = []
    lead = f"{indent}{label:<{_LABEL}}"
    hang = " " * len(lead)
    for i, line in enumerate(lines):
        wrapped = textwrap.wrap(
            line,
            width=_WIDTH,
            initial_indent=lead if i == 0 else hang,
            subsequent_indent=hang + "  ",
            break_on_hyphens=False,
        )
        out.extend(wrapped or [lead if i == 0 else hang])
    return out


def claims_table(rows: Sequence[ClaimRow]) -> str:
    """The claims as text: a one-line-per-claim summary, then each claim's scenario and figures."""
    width = max(len(r.claim) for r in rows)
    lines = [f"{'#':<4}{'claim':<{width}}  verdict", f"{'-' * 4}{'-' * width}  {'-' * 18}"]
    lines += [f"{r.number:<4}{r.claim:<{width}}  {r.verdict}" for r in rows]
    for r in rows:
        lines.append("")
        lines.append(f"{r.number:<4}{r.claim}")
        lines += _wrap("source", [r.source])
        lines += _wrap("scenario", [r.scenario])
        lines += _wrap("measured", r.figures)
        lines += _wrap("verdict", [f"{r.verdict.upper()} — {r.judgement.reason}"])
        if r.notes:
            lines += _wrap("notes", r.notes)
    return "\n".join(lines)


def storms_text(storms: Sequence[DemoStorm]) -> str:
    """Every storm of the demo side by side, one row per storm named by claim and framework."""
    return "\n".join(storms_table([s.record() for s in storms], first_header="claim"))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def claims_markdown(rows: Sequence[ClaimRow], storms: Sequence[DemoStorm], heading: str) -> str:
    """The claims table and the storms behind it, as Markdown (``reports/claims.md``)."""
    out = [
        heading,
        "",
        "Verdicts are computed from the figures against thresholds stated in "
        "`examples/claims/`; nothing in this table is written by hand.",
        "",
        "| # | claim | source | scenario | measured | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        measured = "<br>".join(_cell(f) for f in r.figures)
        verdict = f"**{r.verdict}** — {_cell(r.judgement.reason)}"
        out.append(
            f"| {r.number} | {_cell(r.claim)} | {_cell(r.source)} | {_cell(r.scenario)} "
            f"| {measured} | {verdict} |"
        )
    out += ["", "## Notes", ""]
    for r in rows:
        out += [f"- **{r.number}** {_cell(note)}" for note in r.notes]
    out += ["", "## Every storm", "", "```", storms_text(storms), "```", ""]
    return "\n".join(out)

"""The same storm in-process and behind real servers, side by side.

In-process figures match a real server while the app waits on I/O, and are
optimistic once per-request server CPU counts: a real server parses HTTP, copies
bytes through sockets and (gunicorn) runs worker processes, none of which the
in-process model pays. A :class:`Fidelity` holds one result per server and the rows
of figure, in-process, real and ratio that show where the two part.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigError
from ._model.extras import FidelityFigures, FidelityRowFigures
from ._model.result import StormResult

__all__ = ["Fidelity", "FidelityRow", "compare_servers", "line_up"]

#: A real figure within this ratio of the in-process one counts as agreeing.
AGREE = 1.15


@dataclass(frozen=True)
class FidelityRow:
    """One figure under two servers."""

    figure: str
    inprocess: float
    real: float
    server: str

    @property
    def ratio(self) -> float:
        """Real over in-process (≥ 1 means the real server is slower or serves less)."""
        if not self.inprocess or math.isnan(self.inprocess) or math.isnan(self.real):
            return math.nan
        return self.real / self.inprocess

    @property
    def agrees(self) -> bool:
        """True when the two are within :data:`AGREE` of each other."""
        ratio = self.ratio
        return math.isfinite(ratio) and 1 / AGREE <= ratio <= AGREE


@dataclass
class Fidelity:
    """Results of one storm per server, and how far the in-process model is from each."""

    results: dict[str, StormResult]
    rows: list[FidelityRow] = field(default_factory=list)

    def __getitem__(self, server: str) -> StormResult:
        return self.results[server]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON reports."""
        return self.record().to_dict()

    def record(self) -> FidelityFigures:
        """The table as each result keeps it (``result.fidelity``)."""
        return FidelityFigures(
            servers={name: r.server for name, r in self.results.items()},
            rows=tuple(
                FidelityRowFigures(row.figure, row.server, row.inprocess, row.real, row.ratio)
                for row in self.rows
            ),
        )


_FIGURES: dict[str, Callable[[StormResult], float]] = {
    "rps": lambda r: r.throughput,
    "p50_ms": lambda r: r.latency.p50,
    "p99_ms": lambda r: r.latency.p99,
    "mean_ms": lambda r: r.latency.mean,
    "error_rate": lambda r: r.error_rate,
}


def compare_servers(servers: Sequence[str], run: Callable[[str], StormResult]) -> Fidelity:
    """Run the storm once per server (``run(server)``) and line the figures up."""
    if len(servers) < 2 or "inprocess" not in servers:
        raise ConfigError(
            f"servers={list(servers)!r} must name 'inprocess' and at least one real server "
            "(such as 'uvicorn' or 'gunicorn') to compare"
        )
    return line_up({server: run(server) for server in servers})


def line_up(results: dict[str, StormResult]) -> Fidelity:
    """The fidelity rows of results already measured, keyed by server ("inprocess" first)."""
    base = results["inprocess"]
    rows = [
        FidelityRow(figure, measure(base), measure(result), server)
        for server, result in results.items()
        if server != "inprocess"
        for figure, measure in _FIGURES.items()
    ]
    fidelity = Fidelity(results, rows)
    for result in results.values():
        result.fidelity = fidelity.record()
    return fidelity

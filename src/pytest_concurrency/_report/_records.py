"""One row type for every report: a storm of a test, from a live result or from its JSON form.

Storms reach the reports two ways: in-process as :class:`StormResult` objects, and from
pytest-xdist workers (or a saved file) as the plain dicts of ``StormResult.to_dict()``.
Every writer reads the dict form, so both routes give the same report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from .._model.result import StormResult

__all__ = ["FIGURES", "StormRecord", "StormRow", "as_records", "comparison_of", "figures"]

#: A row as the plugin keeps it: the test's node id and the storm, live or as a dict.
StormRow = tuple[str, StormResult | Mapping[str, Any]]

#: Figures compared between runs: name -> (where in the dict, unit, True when bigger is worse).
FIGURES: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "p50": (("latency", "p50"), "ms", True),
    "p90": (("latency", "p90"), "ms", True),
    "p95": (("latency", "p95"), "ms", True),
    "p99": (("latency", "p99"), "ms", True),
    "p999": (("latency", "p999"), "ms", True),
    "max": (("latency", "max"), "ms", True),
    "mean": (("latency", "mean"), "ms", True),
    "rps": (("throughput",), "rps", False),
    "error_rate": (("error_rate",), "", True),
}


@dataclass
class StormRecord:
    """A storm of a test: node id, its index among the test's storms, and its figures as a dict."""

    nodeid: str
    index: int
    data: dict[str, Any]
    result: StormResult | None = None
    _decoded: dict[str, HdrHistogram] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_result(cls, nodeid: str, index: int, result: StormResult) -> StormRecord:
        """Record of a live result (its histograms are kept, not re-decoded)."""
        return cls(nodeid, index, result.to_dict(), result, dict(result.histograms))

    @classmethod
    def from_dict(cls, nodeid: str, index: int, data: Mapping[str, Any]) -> StormRecord:
        """Record of a ``StormResult.to_dict()`` dict (or a storm entry of a session document)."""
        body = {k: v for k, v in data.items() if k not in ("nodeid", "index")}
        return cls(nodeid, index, body)

    @property
    def key(self) -> tuple[str, str, int]:
        """What identifies this storm across runs: (node id, storm label, index in its test)."""
        return (self.nodeid, str(self.data.get("label", "")), self.index)

    @property
    def label(self) -> str:
        """The storm's label, such as ``GET /items/1``."""
        return str(self.data.get("label", ""))

    @property
    def title(self) -> str:
        """``nodeid · label`` (with the index when the test fired more than one storm)."""
        suffix = f" [{self.index}]" if self.index else ""
        return f"{self.nodeid} · {self.label}{suffix}"

    @property
    def histograms(self) -> dict[str, HdrHistogram]:
        """The storm's HDR histograms (µs), decoded once from their encodings when needed."""
        if self._decoded is None:
            encoded = self.data.get("histograms") or {}
            self._decoded = {name: HdrHistogram.decode(text) for name, text in encoded.items()}
        return self._decoded

    def document_entry(self) -> dict[str, Any]:
        """The storm as it appears in a session document's ``storms`` list."""
        return {"nodeid": self.nodeid, "index": self.index, **self.data}


def as_records(rows: Iterable[StormRow | StormRecord]) -> list[StormRecord]:
    """Normalise rows; a test's storms are numbered 0, 1, … in the order they were fired."""
    records: list[StormRecord] = []
    seen: dict[str, int] = {}
    for row in rows:
        if isinstance(row, StormRecord):
            records.append(row)
            seen[row.nodeid] = max(seen.get(row.nodeid, 0), row.index + 1)
            continue
        nodeid, storm = row
        index = seen.get(nodeid, 0)
        seen[nodeid] = index + 1
        if isinstance(storm, StormResult):
            records.append(StormRecord.from_result(nodeid, index, storm))
        else:
            records.append(StormRecord.from_dict(nodeid, index, storm))
    return records


def figures(data: Mapping[str, Any]) -> dict[str, float]:
    """The compared figures of a storm dict; NaN where the figure was not measured."""
    out: dict[str, float] = {}
    for name, (where, _, _) in FIGURES.items():
        value: Any = data
        for step in where:
            value = value.get(step) if isinstance(value, Mapping) else None
        out[name] = float(value) if isinstance(value, int | float) else math.nan
    return out


def comparison_of(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A storm's paired comparison block (None without one): a session document carries it
    at the top of the storm, a live or transported storm in its ``extras``."""
    extras = data.get("extras")
    found = data.get("comparison") or (
        extras.get("comparison") if isinstance(extras, Mapping) else None
    )
    return found if isinstance(found, Mapping) else None

"""CSV export in Locust's shape: ``PREFIX_stats.csv`` and ``PREFIX_stats_history.csv``.

``_stats.csv`` has one row per endpoint of a request mix and one per storm (named
``Aggregated`` for a mix, like Locust's total row), with Locust's column names where the
figure is the same; times are in milliseconds. ``_stats_history.csv`` has one row per
storm per second of its timeline. Both read the dict form of a storm, so storms from
xdist workers and saved documents export the same way.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._files import write_atomic
from ._records import StormRecord, StormRow, as_records

__all__ = ["HISTORY_COLUMNS", "STATS_COLUMNS", "csv_paths", "neutralise", "write_csv"]

#: Percentile columns of ``_stats.csv``: header -> key of the latency dict.
_PERCENTILES = {
    "50%": "p50",
    "75%": "p75",
    "90%": "p90",
    "95%": "p95",
    "99%": "p99",
    "99.9%": "p999",
    "100%": "max",
}

STATS_COLUMNS = (
    "Test",
    "Storm",
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Requests/s",
    "Failures/s",
    *_PERCENTILES,
)

HISTORY_COLUMNS = (
    "Test",
    "Storm",
    "Second",
    "Target",
    "Requests",
    "Errors",
    "50%",
    "99%",
    "In Flight",
    "Busy Workers",
)


def csv_paths(prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The two files of *prefix*: ``PREFIX_stats.csv`` and ``PREFIX_stats_history.csv``."""
    base = Path(prefix)
    return (
        base.with_name(base.name + "_stats.csv"),
        base.with_name(base.name + "_stats_history.csv"),
    )


def _cell(value: Any) -> str:
    # Empty, not "nan": a spreadsheet reads an empty cell as missing.
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def _split(name: str) -> tuple[str, str]:
    """``GET /a`` -> (``GET``, ``/a``); a name that is not METHOD PATH keeps no type."""
    method, sep, rest = name.partition(" ")
    if sep and method.isupper() and rest:
        return method, rest
    return "", name


def _stats_row(
    record: StormRecord, kind: str, name: str, count: int, failures: int, rps: Any, lat: Any
) -> list[str]:
    latency: Mapping[str, Any] = lat if isinstance(lat, Mapping) else {}
    duration = record.data.get("duration")
    failures_per_s = (
        failures / duration if isinstance(duration, int | float) and duration > 0 else None
    )
    return [
        record.nodeid,
        record.label,
        kind,
        name,
        str(count),
        str(failures),
        _cell(latency.get("p50")),
        _cell(latency.get("mean")),
        _cell(latency.get("min")),
        _cell(latency.get("max")),
        _cell(rps),
        _cell(failures_per_s),
        *(_cell(latency.get(key)) for key in _PERCENTILES.values()),
    ]


def stats_rows(records: Sequence[StormRecord]) -> Iterable[list[str]]:
    """Rows of ``_stats.csv``: each endpoint of a mix, then the storm itself."""
    for record in records:
        d = record.data
        endpoints: Mapping[str, Mapping[str, Any]] = d.get("endpoints") or {}
        for name, endpoint in endpoints.items():
            kind, path = _split(str(endpoint.get("name", name)))
            yield _stats_row(
                record,
                kind,
                path,
                int(endpoint.get("requests") or 0),
                int(endpoint.get("errors") or 0),
                endpoint.get("throughput"),
                endpoint.get("latency"),
            )
        if endpoints:
            kind, name = "", "Aggregated"
        else:
            kind, name = str(d.get("method", "")), str(d.get("path", ""))
        yield _stats_row(
            record,
            kind,
            name,
            int(d.get("requests") or 0),
            int(d.get("failed") or 0),
            d.get("throughput"),
            d.get("latency"),
        )


def history_rows(records: Sequence[StormRecord]) -> Iterable[list[str]]:
    """Rows of ``_stats_history.csv``: one per storm per second of measurement."""
    for record in records:
        for point in record.data.get("timeline") or []:
            yield [
                record.nodeid,
                record.label,
                str(point.get("second", "")),
                _cell(point.get("target")),
                str(point.get("requests", 0)),
                str(point.get("errors", 0)),
                _cell(point.get("p50")),
                _cell(point.get("p99")),
                _cell(point.get("in_flight")),
                _cell(point.get("busy_workers")),
            ]


#: A cell that a spreadsheet would take for a formula starts with one of these (OWASP's
#: list for CSV injection: ``=``, ``+``, ``-``, ``@``, tab and carriage return).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: A number as this module writes one: a negative figure is a number, not a formula.
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def neutralise(cell: str) -> str:
    """*cell* as a spreadsheet shows it as text: a leading ``'`` before a would-be formula.

    Test ids, labels and paths come from the project under test and may start with
    ``=``, ``+``, ``-`` or ``@`` (``=HYPERLINK(...)`` in a parametrised id, say); a
    spreadsheet would run them. OWASP's advice is to prefix such a cell with a single
    quote. A number keeps its sign and stays a number.
    """
    if cell.startswith(_FORMULA_STARTS) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def _write(path: Path, header: Sequence[str], rows: Iterable[list[str]]) -> None:
    # Built whole, then written atomically: a failure leaves the previous file as it was.
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([neutralise(cell) for cell in row] for row in rows)
    write_atomic(path, out.getvalue())


def write_csv(
    prefix: str | os.PathLike[str], rows: Sequence[StormRow | StormRecord]
) -> tuple[Path, Path]:
    """Write ``PREFIX_stats.csv`` and ``PREFIX_stats_history.csv``; return both paths."""
    records = as_records(rows)
    stats, history = csv_paths(prefix)
    _write(stats, STATS_COLUMNS, stats_rows(records))
    _write(history, HISTORY_COLUMNS, history_rows(records))
    return stats, history

"""Wording of the side-by-side table: in-process against real servers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._fidelity import AGREE, Fidelity, FidelityRow
from ._text import aligned, format_number

__all__ = ["differences", "fidelity_table", "rows_of", "where_they_differ"]


def fidelity_table(fidelity: Fidelity) -> str:
    """``figure  in-process  uvicorn  ratio`` rows, one block per real server."""
    rows = [["figure", "server", "in-process", "real", "real / in-process"]]
    for row in fidelity.rows:
        ratio = row.ratio
        shown = f"{ratio:.2f}×" if math.isfinite(ratio) else "n/a"
        rows.append(
            [
                row.figure,
                fidelity.results[row.server].server.split(", over loopback")[0],
                format_number(row.inprocess),
                format_number(row.real),
                shown + ("" if row.agrees or not math.isfinite(ratio) else "  ≠"),
            ]
        )
    return "\n".join([*aligned(rows, right=(2, 3, 4)), *where_they_differ(fidelity)])


def where_they_differ(fidelity: Fidelity) -> list[str]:
    """Sentences on where the in-process model and a real server must differ."""
    usage = {
        server: r.server_usage.to_dict() if r.server_usage is not None else None
        for server, r in fidelity.results.items()
    }
    return differences(fidelity.to_dict(), usage)


def rows_of(data: Mapping[str, Any]) -> list[FidelityRow]:
    """The rows of a fidelity table in its dict form (``extras["fidelity"]``)."""

    def number(value: Any) -> float:
        return float(value) if isinstance(value, int | float) else math.nan

    return [
        FidelityRow(
            str(row.get("figure")),
            number(row.get("inprocess")),
            number(row.get("real")),
            str(row.get("server")),
        )
        for row in data.get("rows") or []
    ]


def differences(
    data: Mapping[str, Any], usage: Mapping[str, Mapping[str, Any] | None] | None = None
) -> list[str]:
    """:func:`where_they_differ` from the dict form, with each server's usage where known."""
    rows = rows_of(data)
    lines = []
    for server in data.get("servers") or {}:
        if server == "inprocess":
            continue
        rps = next((r for r in rows if r.server == server and r.figure == "rps"), None)
        if rps is None:
            lines.append(f"{server}: no throughput to compare")
        elif rps.agrees:
            lines.append(
                f"{server}: throughput agrees within {100 * (AGREE - 1):.0f}%: the app waits on "
                "I/O, so the server's own per-request cost hides in the waits"
            )
        elif not (math.isfinite(rps.ratio) and rps.ratio > 0):
            lines.append(f"{server}: no throughput to compare")
        elif rps.ratio < 1:
            lines.append(
                f"{server}: in-process throughput is {1 / rps.ratio:.1f}× the real server's: a real "
                "server pays HTTP parsing, sockets and (gunicorn) separate worker processes per "
                "request, which the in-process model leaves out — trust the real figure here"
            )
        else:
            lines.append(
                f"{server}: in-process throughput is {1 / rps.ratio:.1f}× the real server's: "
                "in-process the app shares one process and its interpreter lock with the load "
                "generator, which the server's own processes do not — trust the real figure here"
            )
        used = (usage or {}).get(server)
        if used:
            lines.append(
                f"  {server} processes used {used['server_cpu_mean']:.0%} of a core on average "
                f"(peak {used['server_cpu_peak']:.0%}), the client {used['client_cpu_mean']:.0%}"
            )
    return lines

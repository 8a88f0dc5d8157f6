"""Wording of the side-by-side table: in-process against real servers."""

from __future__ import annotations

import math

from .._fidelity import AGREE, Fidelity
from ._text import aligned, format_number

__all__ = ["fidelity_table", "where_they_differ"]


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
    lines = []
    for server, result in fidelity.results.items():
        if server == "inprocess":
            continue
        rps = next(r for r in fidelity.rows if r.server == server and r.figure == "rps")
        if rps.agrees:
            lines.append(
                f"{server}: throughput agrees within {100 * (AGREE - 1):.0f}%: the app waits on "
                "I/O, so the server's own per-request cost hides in the waits"
            )
        else:
            lines.append(
                f"{server}: in-process throughput is {1 / rps.ratio:.1f}× the real server's: a real "
                "server pays HTTP parsing, sockets and (gunicorn) separate worker processes per "
                "request, which the in-process model leaves out — trust the real figure here"
                if math.isfinite(rps.ratio) and rps.ratio > 0
                else f"{server}: no throughput to compare"
            )
        usage = result.extras.get("server_usage")
        if usage:
            lines.append(
                f"  {server} processes used {usage['server_cpu_mean']:.0%} of a core on average "
                f"(peak {usage['server_cpu_peak']:.0%}), the client {usage['client_cpu_mean']:.0%}"
            )
    return lines

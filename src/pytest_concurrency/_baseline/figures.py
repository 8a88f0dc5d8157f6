"""The figures a saved baseline compares: the report's, and the CPU time of each request.

CPU time per request is the time the storm's threads ran (schedstat), app and harness
together, over the requests they handled. A busy machine makes a request wait longer for a
CPU, not run longer, so this figure moves little between sessions (±6 % over eight
sessions at a load average of 4 on 2 cores, where p99 moved 19–99 ms): it is judged first,
as the paired mode judges it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._report._records import FIGURES, figures
from .noise import run_and_wait

__all__ = ["COMPARED", "busy_share", "compared_figures", "cpu_per_request", "worse_up"]

#: Compared figures: name -> (unit, True when bigger is worse).
COMPARED: dict[str, tuple[str, bool]] = {
    "cpu": ("µs", True),
    **{name: (unit, up) for name, (_, unit, up) in FIGURES.items()},
}


def worse_up(figure: str) -> bool:
    """True when a bigger value of *figure* is worse (latency, CPU), False for throughput."""
    return COMPARED[figure][1]


def cpu_per_request(data: Mapping[str, Any]) -> float:
    """CPU µs the storm's threads ran per request handled (NaN where not measured)."""
    measured = run_and_wait(data)
    requests, discarded = data.get("requests"), data.get("discarded") or 0
    if measured is None or not isinstance(requests, int) or not isinstance(discarded, int):
        return math.nan
    handled = requests + discarded
    return measured[0] * 1e6 / handled if handled > 0 and measured[0] > 0 else math.nan


def busy_share(data: Mapping[str, Any]) -> float:
    """The share of the storm's window its threads spent running (NaN where not measured)."""
    measured = run_and_wait(data)
    window = data.get("duration")
    if measured is None or not isinstance(window, int | float) or not window > 0:
        return math.nan
    return measured[0] / float(window)


def compared_figures(data: Mapping[str, Any]) -> dict[str, float]:
    """Every compared figure of a storm dict; NaN where it was not measured."""
    return {"cpu": cpu_per_request(data), **figures(data)}

"""CPU per request of the in-process WSGI pool against bare threads, do-nothing app, one run.

    python benchmarks/wsgi_pool.py [--requests N] [--rounds R] [--workers W]

The storm (W workers, 2·W users, N requests) against W bare threads calling the app with a
prebuilt environ, in interleaved pairs (the first alternating between rounds). Both sides
are read as CPU seconds of the process per request, which another process on a shared
machine moves far less than wall time (the pool's own figure: ``process_time()`` over its
run, its threads' start and join included, its records' conversion after the round not),
and as wall time per request (the storm's measured duration over its requests). Ratios
storm / floor: median (range), with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import floor_wsgi_threads, wsgi_app

from pytest_concurrency import ConcurrencyWarning, run_storm
from pytest_concurrency._drivers import wsgi

_RUN = wsgi.WsgiPool.run
_CPU: list[float] = []


def _kept(self: wsgi.WsgiPool, *args: Any, **kwargs: Any) -> wsgi.PoolRun:
    run = _RUN(self, *args, **kwargs)
    _CPU.append(run.cpu_seconds)
    return run


wsgi.WsgiPool.run = _kept  # type: ignore[method-assign]


def storm(n: int, workers: int) -> tuple[float, float]:
    result = run_storm(wsgi_app, "GET", "/", users=2 * workers, workers=workers, requests=n)
    return _CPU[-1] / result.requests, result.duration / result.requests


def floor(n: int, workers: int) -> tuple[float, float]:
    cpu = time.process_time()
    wall = floor_wsgi_threads(n, workers)
    return (time.process_time() - cpu) / (n // workers * workers), wall


def main() -> None:
    warnings.simplefilter("ignore", ConcurrencyWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    n, w = args.requests, args.workers
    cpu_ratios: list[float] = []
    wall_ratios: list[float] = []
    load = os.getloadavg()[0]
    for index in range(args.rounds):
        if index % 2 == 0:
            s, f = storm(n, w), floor(n, w)
        else:
            f, s = floor(n, w), storm(n, w)
        cpu_ratios.append(s[0] / f[0])
        wall_ratios.append(s[1] / f[1])
        print(
            f"round {index + 1}: CPU µs/request storm {s[0] * 1e6:.2f}, floor {f[0] * 1e6:.2f}; "
            f"wall µs/request storm {s[1] * 1e6:.2f}, floor {f[1] * 1e6:.2f}",
            flush=True,
        )
    print(
        f"{w} workers / {w} bare threads, {n:,} requests: CPU "
        f"{statistics.median(cpu_ratios):.2f}x ({min(cpu_ratios):.2f}–{max(cpu_ratios):.2f}), "
        f"wall {statistics.median(wall_ratios):.2f}x "
        f"({min(wall_ratios):.2f}–{max(wall_ratios):.2f}); load average {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )


if __name__ == "__main__":
    main()

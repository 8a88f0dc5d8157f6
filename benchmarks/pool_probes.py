"""Per-request cost of the connection-pool probe, on the ASGI hot path and per checkout.

    python benchmarks/pool_probes.py [--requests N] [--rounds R]

1. ``GET /items/7`` of the FastAPI example (no database): an in-process storm of 50 users
   with the connection-pool probe installed (as every in-process storm runs) against the
   same storm with the probe replaced by one that installs nothing. The probe's wrappers
   sit on pools the route never touches, so the ratio says what merely having it
   installed costs a request.
2. One SQLAlchemy ``QueuePool`` checkout and return (SQLite, one thread, no wait), with the
   probe running and without: what each checkout of a pool-bound route pays.

Each ratio comes from interleaved pairs (on, off, alternating which goes first), taken
within the round; the median over rounds is reported with its range.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pytest_concurrency import ConcurrencyWarning, run_storm
from pytest_concurrency._engine import rounds
from pytest_concurrency._probes.connpools import ConnectionPoolProbe


class _Off:
    """Stands in for the probe: installs nothing, measures nothing."""

    result: list[Any] = []  # noqa: RUF012

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> _Off:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


@contextmanager
def _probe(on: bool) -> Any:
    saved = rounds.ConnectionPoolProbe
    if not on:
        rounds.ConnectionPoolProbe = _Off  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        rounds.ConnectionPoolProbe = saved  # type: ignore[misc]


def storm_us(on: bool, requests: int) -> float:
    from examples import fastapi_app

    with _probe(on):
        result = run_storm(
            fastapi_app.app, "GET", "/items/7", users=50, requests=requests, check=False
        )
    return 1e6 / result.throughput


def checkout_us(on: bool, engine: Any, n: int) -> float:
    from sqlalchemy import text

    with engine.connect() as conn:
        conn.execute(text("select 1"))
    probe = ConnectionPoolProbe().start() if on else None
    try:
        started = time.perf_counter()
        for _ in range(n):
            with engine.connect():
                pass
        took = time.perf_counter() - started
    finally:
        if probe is not None:
            probe.stop()
    return took / n * 1e6


def pairs(measure: Callable[[bool], float], rounds_: int) -> tuple[float, float, list[float]]:
    on, off, ratios = [], [], []
    for i in range(rounds_):
        order = (True, False) if i % 2 == 0 else (False, True)
        got = {flag: measure(flag) for flag in order}
        on.append(got[True])
        off.append(got[False])
        ratios.append(got[True] / got[False])
    return statistics.median(on), statistics.median(off), ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConcurrencyWarning)
    on, off, ratios = pairs(lambda flag: storm_us(flag, args.requests), args.rounds)
    print(
        f"GET /items/7, 50 users: {on:,.1f} µs/request with the pool probe, {off:,.1f} without: "
        f"ratio {statistics.median(ratios):.3f} (range {min(ratios):.3f}–{max(ratios):.3f}, "
        f"{args.rounds} rounds)"
    )
    from sqlalchemy import create_engine
    from sqlalchemy.pool import QueuePool

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'b.sqlite3'}", poolclass=QueuePool)
        try:
            on, off, ratios = pairs(lambda flag: checkout_us(flag, engine, 20_000), args.rounds)
        finally:
            engine.dispose()
    print(
        f"QueuePool checkout + return: {on:,.2f} µs with the probe, {off:,.2f} without: "
        f"+{on - off:,.2f} µs a checkout, ratio {statistics.median(ratios):.3f} "
        f"(range {min(ratios):.3f}–{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()

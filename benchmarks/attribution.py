"""Cost of charging each request's waits to it, on the ASGI hot path.

    python benchmarks/attribution.py [--requests N] [--users U] [--rounds R]

A storm on ``GET /items/7`` of the FastAPI example with wait attribution on (a ledger per
user, each request's long steps kept while the loop monitor runs, its waits recorded
beside its other records) and off, measured in interleaved pairs: in every round both are
run back to back, in alternating order, and the ratio of their per-request times is taken
within the round. The ratio reported is the median over rounds, with its range.

The storms' ratio wobbles with the machine's other load; the added work per request is
also measured alone: the app called directly in a loop, bare and the way the runner calls
it with attribution on (its coroutine stepped through ``OwnSteps``, the ledger's entries
checked and cleared), interleaved the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.fastapi_app import app

from pytest_concurrency import run_storm
from pytest_concurrency._drivers.asgi import AsgiDriver
from pytest_concurrency._probes.attribution import Ledger, OwnSteps, bind, switched
from pytest_concurrency._workload import Request


def per_request(on: bool, requests: int, users: int) -> float:
    """Seconds per request of one storm (its measured duration over its requests)."""
    gc.collect()
    with switched(on):
        result = run_storm(app, "GET", "/items/7", users=users, requests=requests, check=False)
    if on and result.attribution is None:
        raise SystemExit("attribution was on but the storm has no breakdown")
    return result.duration / result.requests


def direct(on: bool, requests: int) -> float:
    """CPU seconds per request of the app called in a loop through the in-process driver."""
    driver = AsgiDriver(app, [Request("GET", "/items/7")], lifespan="off")

    async def run() -> float:
        book = Ledger()
        bind(book)
        call: Any = driver.call
        # CPU time of this thread: the other processes of a shared machine count less.
        started = time.thread_time()
        for _ in range(requests):
            if on:
                if book.entries:
                    book.entries.clear()
                await OwnSteps(call(0), book)
                if book.entries:
                    book.entries.clear()
            else:
                await call(0)
        return (time.thread_time() - started) / requests

    gc.collect()
    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    per_request(True, 2_000, args.users)  # warm both paths up
    per_request(False, 2_000, args.users)
    ratios, on_s, off_s = [], [], []
    for i in range(args.rounds):
        order = (True, False) if i % 2 == 0 else (False, True)
        figures = {on: per_request(on, args.requests, args.users) for on in order}
        on_s.append(figures[True])
        off_s.append(figures[False])
        ratios.append(figures[True] / figures[False])
    print(
        f"GET /items/7 (FastAPI), {args.users} users, {args.requests:,} requests × "
        f"{args.rounds} rounds"
    )
    print(f"  attribution on : {statistics.median(on_s) * 1e6:7.1f} µs/request")
    print(f"  attribution off: {statistics.median(off_s) * 1e6:7.1f} µs/request")
    print(
        f"  on / off: {statistics.median(ratios):.3f}× "
        f"(rounds {min(ratios):.3f}–{max(ratios):.3f}; goal ≤ 1.1×)"
    )
    added, alone = [], []
    for i in range(args.rounds):
        order = (True, False) if i % 2 == 0 else (False, True)
        figures = {on: direct(on, args.requests) for on in order}
        added.append(figures[True] - figures[False])
        alone.append(figures[False])
    print(
        f"  added CPU per request, the app called directly: {statistics.median(added) * 1e6:.2f} µs "
        f"on {statistics.median(alone) * 1e6:.1f} µs "
        f"({statistics.median(added) / statistics.median(alone):.1%})"
    )


if __name__ == "__main__":
    main()

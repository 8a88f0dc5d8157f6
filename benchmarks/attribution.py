"""Cost of charging each request's waits to it, on the ASGI hot path.

    python benchmarks/attribution.py [--requests N] [--users U] [--rounds R]

A storm on ``GET /items/7`` of the FastAPI example with wait attribution on (a ledger per
user, each request's long steps kept while the loop monitor runs, its waits recorded
beside its other records) and off, measured in interleaved pairs: in every round both are
run back to back, in alternating order, and the ratio of their per-request times is taken
within the round. The ratio reported is the median over rounds, with its range.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.fastapi_app import app

from pytest_concurrency import run_storm
from pytest_concurrency._probes.attribution import switched


def per_request(on: bool, requests: int, users: int) -> float:
    """Seconds per request of one storm (its measured duration over its requests)."""
    gc.collect()
    with switched(on):
        result = run_storm(app, "GET", "/items/7", users=users, requests=requests, check=False)
    if on and result.attribution is None:
        raise SystemExit("attribution was on but the storm has no breakdown")
    return result.duration / result.requests


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


if __name__ == "__main__":
    main()

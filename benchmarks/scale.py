"""Process shards against one process, measured in one run.

    python benchmarks/scale.py [--seconds S]

- a CPU-bound ASGI endpoint (about 1 ms of Python per request): throughput with
  ``processes=2`` over ``processes=1`` (target ≥ 1.7× on two cores);
- an I/O-bound storm (200 users × 50 ms) with ``processes=2``: Little's law says 4,000 rps
  and p50 ≈ 50 ms;
- resident memory per virtual user, over all shards, against one process (2,000 users
  waiting on I/O; each shard's peak RSS read from /proc while the storm runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.apps import asgi_cpu, asgi_sleep  # noqa: E402

from pytest_concurrency import ConcurrencyWarning, run_storm  # noqa: E402
from pytest_concurrency._engine.shards import live_shards  # noqa: E402


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_during(storm: Any, pids: Any) -> tuple[Any, int]:
    """Run *storm()*; sample the summed RSS (KB) of *pids()* every 50 ms; return the peak."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], sum(rss_kb(p) for p in pids()))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = storm()
    finally:
        done.set()
        thread.join()
    return result, peak[0]


def main() -> None:
    import warnings

    warnings.simplefilter("ignore", ConcurrencyWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    seconds = args.seconds
    print(f"cores: {len(os.sched_getaffinity(0))}; {seconds:g} s per storm after 1 s of warm-up")

    app = asgi_cpu(20_000)
    one = run_storm(app, "GET", "/", users=20, duration=seconds, warmup=1.0, check=False)
    two = run_storm(
        app, "GET", "/", users=20, duration=seconds, warmup=1.0, processes=2, check=False
    )
    print(
        f"CPU-bound (~1 ms/request): processes=1 {one.throughput:,.0f} rps, processes=2 "
        f"{two.throughput:,.0f} rps → {two.throughput / one.throughput:.2f}× (target ≥ 1.7×)"
    )

    io = run_storm(
        asgi_sleep(0.05),
        "GET",
        "/",
        users=200,
        duration=seconds,
        warmup=1.0,
        processes=2,
        check=False,
    )
    print(
        f"I/O-bound, 200 users × 50 ms, processes=2: {io.throughput:,.0f} rps (Little: 4,000), "
        f"p50 {io.latency.p50:.1f} ms, p99 {io.latency.p99:.1f} ms; start-up "
        f"{io.extras['shards']['startup_s'] * 1000:.0f} ms (fork, outside the window)"
    )

    users = 2_000
    base = rss_kb(os.getpid())
    _, single = peak_rss_during(
        lambda: run_storm(
            asgi_sleep(0.05), "GET", "/", users=users, duration=2.0, warmup=0.5, check=False
        ),
        lambda: [os.getpid()],
    )
    _, sharded = peak_rss_during(
        lambda: run_storm(
            asgi_sleep(0.05),
            "GET",
            "/",
            users=users,
            duration=2.0,
            warmup=0.5,
            processes=2,
            check=False,
        ),
        live_shards,
    )
    # A forked shard starts with the parent's pages (shared, counted in its RSS): subtract
    # the parent's resident size once per shard to count what the storm itself added.
    one_user = (single - base) * 1024 / users
    two_user = (sharded - 2 * base) * 1024 / users
    print(
        f"memory per user ({users:,} users waiting on I/O): one process {one_user / 1024:.1f} KB, "
        f"two shards {two_user / 1024:.1f} KB over both (RSS counts pages shared after fork)"
    )
    time.sleep(0.1)


if __name__ == "__main__":
    main()

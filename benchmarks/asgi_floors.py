"""A storm's rps against the floors an async load generator cannot beat, in one run.

    python benchmarks/asgi_floors.py [--requests N] [--users U] [--rounds R] [--breakdown]

1. ``GET /items/7`` of the FastAPI example with U closed users (default 100), the storm as
   every in-process storm runs (loop monitor with its watchdog, thread-pool and
   connection-pool probes, wait attribution) against the floor: U long-lived tasks calling
   the app directly with a prebuilt scope, one request after another. Reported as
   storm rps / floor rps (goal ≥ 0.95).
2. A bare ASGI app (two sends, no I/O) with U users against U long-lived tasks that call it
   and yield to the loop once per request: storm time / floor time per request
   (goal ≤ 1.5).
3. What the storm says it adds per request (``harness_cost_us``, its calibration) beside
   what it adds in 1 and 2 (storm µs − floor µs).

``--breakdown`` adds where the storm's time goes, for both apps: the loop thread's CPU per
request (the least of the rounds, which other processes move least) of the floor without
and with a turn on the loop per request, then of the storm's runner built up one part at a
time: with a stand-in driver (the app awaited with a no-op ``send``), with the ASGI driver
and no probe, with the loop monitor's step timing, its watchdog, and the pool probes (all
of them: the storm as it runs).

Each ratio comes from interleaved pairs: in every round both sides run back to back,
the first alternating between rounds, and the ratio is taken within the round; the
median over rounds is printed with its range and the machine's load average. Beside the
wall-clock ratio, the loop thread's CPU per request of each side (``thread_time``), which
other processes on a shared machine move less.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.fastapi_app import app as fastapi_app

from pytest_concurrency import ConcurrencyWarning, run_storm
from pytest_concurrency._drivers.asgi import AsgiDriver, build_scope
from pytest_concurrency._engine import rounds
from pytest_concurrency._engine.plan import plan_storm
from pytest_concurrency._engine.runner import AsyncRunner
from pytest_concurrency._engine.schedule import Schedule
from pytest_concurrency._params import Layer
from pytest_concurrency._probes.attribution import switched
from pytest_concurrency._probes.connpools import ConnectionPoolProbe
from pytest_concurrency._probes.loop import LoopMonitor
from pytest_concurrency._probes.pools import ThreadPoolProbe
from pytest_concurrency._workload import Request


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


#: Loop-thread CPU seconds per request of the last storm and of the last floor.
CPU: dict[str, float] = {}
_finish = rounds.finish


def _kept_finish(plan: Any, output: Any) -> Any:
    CPU["storm"] = output.figures.cpu / max(1, len(output.figures.rec))
    return _finish(plan, output)


rounds.finish = _kept_finish


def storm(app: Any, path: str, users: int, requests: int) -> float:
    """Seconds per request of one in-process storm (its measured duration / requests)."""
    gc.collect()
    result = run_storm(app, "GET", path, users=users, requests=requests, lifespan="off")
    if result.requests < requests * 0.9 or result.status_counts.get(200, 0) != result.requests:
        raise SystemExit(f"the storm failed: {result.status_counts}")
    return result.duration / result.requests


def floor(app: Any, path: str, users: int, requests: int, *, yield_each: bool) -> float:
    """Seconds per request of *users* long-lived tasks calling *app* directly."""
    gc.collect()
    scope, _, body = build_scope(Request("GET", path).to_httpx())
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def main() -> float:
        each = requests // users
        statuses: list[int] = []

        async def user() -> None:
            seen: list[int] = []

            async def send(event: dict[str, Any]) -> None:
                if event["type"] == "http.response.start":
                    seen.append(event["status"])

            for _ in range(each):
                await app(dict(scope), receive, send)
                if yield_each:
                    await asyncio.sleep(0)
            statuses.extend(seen)

        started, cpu = time.perf_counter(), time.thread_time()
        await asyncio.gather(*(user() for _ in range(users)))
        took = time.perf_counter() - started
        CPU["floor"] = (time.thread_time() - cpu) / (each * users)
        if statuses.count(200) != each * users:
            raise SystemExit("the floor's app failed")
        return took / (each * users)

    return asyncio.run(main())


def harness_us() -> float:
    """The storm's own figure of what it adds per request (a fresh calibration)."""
    rounds._HARNESS_COST.clear()
    return asyncio.run(rounds.harness_cost_us())


def pair(
    top: Callable[[], float], bottom: Callable[[], float], rounds_: int
) -> tuple[list[float], list[float]]:
    tops: list[float] = []
    bottoms: list[float] = []
    CPU["ratios"] = []  # type: ignore[assignment]
    cpu_ratios: list[float] = CPU["ratios"]  # type: ignore[assignment]
    for index in range(rounds_):
        if index % 2 == 0:
            tops.append(top())
            bottoms.append(bottom())
        else:
            bottoms.append(bottom())
            tops.append(top())
        cpu_ratios.append(CPU["storm"] / CPU["floor"])
    return tops, bottoms


def show(name: str, ratios: list[float], tops: list[float], bottoms: list[float]) -> None:
    print(
        f"  {name:<44} {statistics.median(ratios):6.2f}x  ({min(ratios):.2f}–{max(ratios):.2f})"
        f"   storm {statistics.median(tops) * 1e6:6.2f} µs, floor "
        f"{statistics.median(bottoms) * 1e6:6.2f} µs   load {os.getloadavg()[0]:.2f}"
    )
    cpu: list[float] = CPU["ratios"]  # type: ignore[assignment]
    print(
        f"  {'':<44} loop CPU per request, storm / floor: {statistics.median(cpu):.2f}x "
        f"({min(cpu):.2f}–{max(cpu):.2f})"
    )


#: The parts of the storm, added one at a time (see --breakdown).
PARTS = ("stand-in driver", "ASGI driver", "+ step timing", "+ watchdog", "+ pool probes")


def part(app: Any, path: str, users: int, requests: int, upto: str) -> float:
    """Loop CPU seconds per request of the storm's runner with its parts up to *upto*."""
    gc.collect()
    plan = plan_storm(
        app, "GET", path, layers=[Layer("breakdown", {"users": users, "requests": requests})]
    )
    driver = AsgiDriver(app, list(plan.requests), lifespan="off")
    have = PARTS[: PARTS.index(upto) + 1]
    if "ASGI driver" not in have:
        scope, _, body = build_scope(Request("GET", path).to_httpx())
        message = {"type": "http.request", "body": body, "more_body": False}

        class Stand:
            status, first_byte, headers, body = 200, 1.0, None, None

        async def receive() -> dict[str, Any]:
            return message

        async def send(event: dict[str, Any]) -> None:
            pass

        async def call(index: int, holder: Any = None) -> Any:
            await app(dict(scope), receive, send)
            return Stand

        driver.call = call  # type: ignore[method-assign,assignment]

    async def main() -> float:
        timed = "+ step timing" in have
        with switched(timed):
            async with AsyncExitStack() as stack:
                monitor = None
                if "+ pool probes" in have:
                    await stack.enter_async_context(ConnectionPoolProbe())
                if timed:
                    monitor = LoopMonitor(threshold_ms=5.0, watchdog="+ watchdog" in have)
                    await stack.enter_async_context(monitor)
                if "+ pool probes" in have:
                    await stack.enter_async_context(ThreadPoolProbe())
                schedule = Schedule(plan.config, time.perf_counter() + 0.001)
                runner = AsyncRunner(schedule, driver, plan.mix)
                if monitor is not None:
                    runner.own_steps = True
                    runner.progress = monitor.progress
                figures = await runner.run()
        return figures.cpu / max(1, len(figures.rec))

    return asyncio.run(main())


def breakdown(app: Any, path: str, users: int, requests: int, rounds_: int) -> None:
    """Print the loop CPU per request of each floor and of the storm part by part."""
    names = ("floor, no turn", "floor, a turn per request", *PARTS)
    cpus: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds_):
        for turn in (False, True):
            floor(app, path, users, requests, yield_each=turn)
            cpus[names[int(turn)]].append(CPU["floor"])
        for upto in PARTS:
            cpus[upto].append(part(app, path, users, requests, upto))
    base = min(cpus[names[1]])
    for name in names:
        least = min(cpus[name])
        print(
            f"    {name:<28} {least * 1e6:7.2f} µs  {least / base:5.2f}x the turn-per-request floor"
        )


def main() -> None:
    warnings.simplefilter("ignore", ConcurrencyWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--breakdown", action="store_true", help="where the storm's time goes, part by part"
    )
    args = parser.parse_args()
    n, users, r = args.requests, args.users, args.rounds
    print(f"{users} users, {n:,} requests per measurement, {r} interleaved rounds")
    tops, bottoms = pair(
        lambda: storm(fastapi_app, "/items/7", users, n // 4),
        lambda: floor(fastapi_app, "/items/7", users, n // 4, yield_each=False),
        r,
    )
    ratios = [b / t for t, b in zip(tops, bottoms, strict=True)]
    show("FastAPI /items/7: storm rps / direct-call rps", ratios, tops, bottoms)
    fastapi_gap = statistics.median(t - b for t, b in zip(tops, bottoms, strict=True))
    tops, bottoms = pair(
        lambda: storm(bare_app, "/", users, n),
        lambda: floor(bare_app, "/", users, n, yield_each=True),
        r,
    )
    ratios = [t / b for t, b in zip(tops, bottoms, strict=True)]
    show("bare app: storm / long-lived-task floor", ratios, tops, bottoms)
    bare_gap = statistics.median(t - b for t, b in zip(tops, bottoms, strict=True))
    print(
        f"  the storm's own figure of its cost: {harness_us():.1f} µs/request; measured here: "
        f"{fastapi_gap * 1e6:.1f} (FastAPI), {bare_gap * 1e6:.1f} (bare app)"
    )
    if args.breakdown:
        print(f"  loop CPU per request, the least of {r} rounds (load {os.getloadavg()[0]:.2f}):")
        print("  FastAPI /items/7")
        breakdown(fastapi_app, "/items/7", users, n // 4, r)
        print("  bare app")
        breakdown(bare_app, "/", users, n, r)


if __name__ == "__main__":
    main()

"""Per-request overhead of a storm, next to floors and peers measured in the same run.

    python benchmarks/overhead.py [--requests N] [--rounds R] [--json PATH] [--only WORD]

ASGI: a storm against a minimal app (no I/O) with 1 and 100 users, against
  - floor 1: a bare loop awaiting the app with a prebuilt scope (no concurrency at all),
  - floor 2: the same with one asyncio task per request (what any concurrent storm pays),
  - httpx.ASGITransport and Starlette's TestClient (peers that serve one request at a time).
WSGI: a storm with 8 workers against a minimal app, against
  - floor: 8 bare threads calling the app directly with a prebuilt environ,
  - loop → thread pool → loop round trips (`run_in_executor`, 8 threads).
Absolute times wobble on a shared machine (±40 % between runs), so each ratio comes from
interleaved pairs: in every round its two figures are measured back to back, in alternating
order, each over at least 0.2 s of wall time, and the ratio is taken within the round. A ratio is reported as the median over rounds
with its range; each absolute figure is the median of every measurement of it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from pytest_concurrency import ConcurrencyWarning, run_storm

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note on its httpx dependency
    from starlette.testclient import TestClient
from pytest_concurrency._drivers.asgi import build_scope
from pytest_concurrency._drivers.wsgi import build_environ
from pytest_concurrency._workload import Request

BODY = b"hello"


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": BODY})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [])
    return [BODY]


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    return None


def floor_direct(n: int) -> float:
    scope, _, _ = build_scope(Request("GET", "/").to_httpx())

    async def main() -> float:
        started = time.perf_counter()
        for _ in range(n):
            await asgi_app(dict(scope), _receive, _send)
        return time.perf_counter() - started

    return asyncio.run(main()) / n


def floor_task_per_request(n: int, concurrency: int = 100) -> float:
    scope, _, _ = build_scope(Request("GET", "/").to_httpx())

    async def main() -> float:
        started = time.perf_counter()
        for _ in range(n // concurrency):
            tasks = [
                asyncio.ensure_future(asgi_app(dict(scope), _receive, _send))
                for _ in range(concurrency)
            ]
            await asyncio.gather(*tasks)
        return time.perf_counter() - started

    return asyncio.run(main()) / n


def peer_httpx(n: int) -> float:
    async def main() -> float:
        transport = httpx.ASGITransport(app=asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            started = time.perf_counter()
            for _ in range(n):
                await client.get("/")
            return time.perf_counter() - started

    return asyncio.run(main()) / n


def peer_testclient(n: int) -> float:
    client = TestClient(asgi_app)  # the app has no lifespan: no `with` block needed
    started = time.perf_counter()
    for _ in range(n):
        client.get("/")
    return (time.perf_counter() - started) / n


def storm_asgi(n: int, users: int) -> float:
    result = run_storm(asgi_app, "GET", "/", users=users, requests=n, lifespan="off")
    return result.duration / result.requests


def storm_wsgi(n: int, workers: int = 8, app: Any = wsgi_app) -> float:
    result = run_storm(app, "GET", "/", users=workers * 2, workers=workers, requests=n)
    return result.duration / result.requests


def _flask_app() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/")
    def index() -> bytes:
        return BODY

    return app


FLASK = _flask_app()


def floor_wsgi_threads(n: int, threads: int = 8, app: Any = wsgi_app) -> float:
    environ, body = build_environ(Request("GET", "/").to_httpx())
    per_thread = n // threads

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    def work() -> None:
        for _ in range(per_thread):
            env = environ.copy()
            env["wsgi.input"] = io.BytesIO(body)
            result = app(env, start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return (time.perf_counter() - started) / (per_thread * threads)


def peer_run_in_executor(n: int, threads: int = 8, concurrency: int = 16) -> float:
    environ, body = build_environ(Request("GET", "/").to_httpx())

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    def call() -> None:
        env = environ.copy()
        env["wsgi.input"] = io.BytesIO(body)
        for _chunk in wsgi_app(env, start_response):
            pass

    async def main() -> float:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(threads) as pool:

            async def user(count: int) -> None:
                for _ in range(count):
                    await loop.run_in_executor(pool, call)

            started = time.perf_counter()
            await asyncio.gather(*(user(n // concurrency) for _ in range(concurrency)))
            return time.perf_counter() - started

    return asyncio.run(main()) / n


#: Least wall time one measurement spans: a figure of a few ms (8 bare threads make 20,000
#: requests in about 20 ms) is one scheduler hiccup away from doubling on a shared machine.
MIN_SPAN_S = 0.2


def _us(fn: Callable[[], float]) -> float:
    """Per-request µs of *fn*, averaged over as many calls as fill :data:`MIN_SPAN_S`."""
    gc.collect()
    values: list[float] = []
    started = time.perf_counter()
    while not values or time.perf_counter() - started < MIN_SPAN_S:
        values.append(fn())
    return statistics.fmean(values) * 1e6


def measure(
    figures: dict[str, Callable[[], float]],
    pairs: dict[str, tuple[str, str]],
    rounds: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Every figure's values in µs, and each pair's ratio per round.

    A pair's two figures run back to back in each round, the first one alternating between
    rounds, so a slow spell of the machine lands on both sides of the ratio rather than on
    one. Figures in no pair run once a round on their own.
    """
    values: dict[str, list[float]] = {name: [] for name in figures}
    ratios: dict[str, list[float]] = {name: [] for name in pairs}
    paired = {name for pair in pairs.values() for name in pair}
    for index in range(rounds):
        for name, fn in figures.items():
            if name not in paired:
                values[name].append(_us(fn))
        for ratio, (top, bottom) in pairs.items():
            order = (top, bottom) if index % 2 == 0 else (bottom, top)
            got = {name: _us(figures[name]) for name in order}
            values[top].append(got[top])
            values[bottom].append(got[bottom])
            ratios[ratio].append(got[top] / got[bottom])
    return values, ratios


def main() -> None:
    # The minimal app makes the harness the busiest part of the loop: that is the point here.
    warnings.simplefilter("ignore", ConcurrencyWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--only", default=None, help="measure only the ratios whose name has this word"
    )
    args = parser.parse_args()
    n, rounds = args.requests, args.rounds
    slow_n = max(200, n // 20)

    figures: dict[str, Callable[[], float]] = {
        "asgi floor: direct await": lambda: floor_direct(n),
        "asgi floor: task per request": lambda: floor_task_per_request(n),
        "asgi storm, 1 user": lambda: storm_asgi(n, 1),
        "asgi storm, 100 users": lambda: storm_asgi(n, 100),
        "httpx.ASGITransport": lambda: peer_httpx(slow_n),
        "starlette TestClient": lambda: peer_testclient(slow_n // 4),
        "wsgi floor: 8 bare threads": lambda: floor_wsgi_threads(n),
        "wsgi storm, 8 workers": lambda: storm_wsgi(n),
        "run_in_executor, 8 threads": lambda: peer_run_in_executor(slow_n),
        "flask floor: 8 bare threads": lambda: floor_wsgi_threads(slow_n, app=FLASK),
        "flask storm, 8 workers": lambda: storm_wsgi(slow_n, app=FLASK),
    }
    pairs = {
        "asgi storm 100 users / task-per-request floor": (
            "asgi storm, 100 users",
            "asgi floor: task per request",
        ),
        "httpx.ASGITransport / asgi storm 100 users": (
            "httpx.ASGITransport",
            "asgi storm, 100 users",
        ),
        "starlette TestClient / asgi storm 100 users": (
            "starlette TestClient",
            "asgi storm, 100 users",
        ),
        "wsgi storm 8 workers / 8-thread floor": (
            "wsgi storm, 8 workers",
            "wsgi floor: 8 bare threads",
        ),
        "run_in_executor / wsgi storm 8 workers": (
            "run_in_executor, 8 threads",
            "wsgi storm, 8 workers",
        ),
        "flask storm 8 workers / flask 8-thread floor": (
            "flask storm, 8 workers",
            "flask floor: 8 bare threads",
        ),
    }
    if args.only:
        pairs = {name: pair for name, pair in pairs.items() if args.only in name}
        used = {figure for pair in pairs.values() for figure in pair}
        figures = {name: fn for name, fn in figures.items() if name in used}
    load_before = os.getloadavg()[0]
    values, per_round = measure(figures, pairs, rounds)
    medians = {name: statistics.median(found) for name, found in values.items()}
    ratios = {name: statistics.median(found) for name, found in per_round.items()}
    width = max(map(len, [*figures, *pairs]))
    print(f"per-request wall time, median of all rounds ({n:,} requests; peers {slow_n:,})")
    for name, value in medians.items():
        low, high = min(values[name]), max(values[name])
        print(f"  {name:<{width}}  {value:9.2f} µs  ({low:.2f}–{high:.2f})")
    print(
        f"ratios, each from {rounds} interleaved pairs: median (range over rounds); "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    for name, value in ratios.items():
        low, high = min(per_round[name]), max(per_round[name])
        print(f"  {name:<{width}}  {value:9.2f}x  ({low:.2f}–{high:.2f})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "per_request_us": medians,
                    "ratios": ratios,
                    "ratios_per_round": per_round,
                    "per_request_us_per_measurement": values,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()

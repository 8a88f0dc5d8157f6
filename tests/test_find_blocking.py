"""Finding what blocks, end to end through ``run_storm``: the line, each call's duration, the pools.

Each test fires a real storm at a small app. The figures follow from the model: a
handler that holds the loop for *t* serves one request at a time (1 / *t* rps) and
makes each of *n* closed-model users wait for the *n* - 1 before it (mean latency
*n* × *t*); a thread pool of *k* threads serving calls of *t* tops out at *k* / *t* rps.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from examples import fastapi_app

from pytest_concurrency import BudgetExceeded, ConcurrencyWarning, StormResult, run_storm
from pytest_concurrency._model.probes import ANYIO_LIMITER, DEFAULT_EXECUTOR, BlockingSite

HOLD_S = 0.05
Scope = dict[str, Any]


def line_of(func: Callable[..., Any], text: str) -> int:
    """Line number of the first line of *func* that contains *text*."""
    lines, first = inspect.getsourcelines(func)
    for offset, line in enumerate(lines):
        if text in line:
            return first + offset
    raise AssertionError(f"{text!r} not in {func.__name__}")


def result_of(caught: pytest.ExceptionInfo[BudgetExceeded]) -> StormResult:
    """The storm behind a broken budget."""
    result = caught.value.result
    assert isinstance(result, StormResult)
    return result


def site_of(result: StormResult) -> BlockingSite:
    """The site that held the loop longest."""
    assert result.loop_lag is not None, "the storm ran without a loop monitor"
    sites = result.loop_lag.sites
    assert sites, f"no blocking site named; {result.loop_lag.unattributed} stalls unattributed"
    return max(sites, key=lambda s: s.total_s)


async def respond(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


# -- apps (module level: their names and lines are what the monitor must report) -----------


async def sleeping_app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    time.sleep(HOLD_S)
    await respond(send)


async def awaiting_app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await anyio.sleep(HOLD_S)
    await respond(send)


# -- 1. time.sleep in async def ------------------------------------------------------------


@pytest.mark.timing
def test_time_sleep_in_async_def_names_the_line_and_times_each_call() -> None:
    users = 20
    with pytest.raises(BudgetExceeded) as caught:
        run_storm(
            sleeping_app, "GET", "/", users=users, warmup=1.0, duration=2.0, max_loop_lag_ms=20
        )
    result = result_of(caught)
    site = site_of(result)

    # The loop serves one request at a time: 1 / 50 ms = 20 rps; ±15 % covers a storm
    # window of 2 s that holds 40 requests, give or take the one cut at each edge.
    assert result.throughput == pytest.approx(1 / HOLD_S, rel=0.15)
    # Each of the 20 users waits for the 19 ahead of it and its own call: 20 × 50 ms.
    assert result.latency.mean == pytest.approx(users * HOLD_S * 1000, rel=0.15)
    assert Path(site.file).name == "test_find_blocking.py"
    assert site.line == line_of(sleeping_app, "time.sleep")
    assert site.call == "time.sleep(HOLD_S)"
    # One call holds the loop 50 ms, measured within one 1 ms sampling interval; the
    # upper margin allows time.sleep oversleeping and a watchdog descheduled on a busy box.
    assert 45 <= site.per_call_p50_ms <= 70
    assert site.per_call_p99_ms >= site.per_call_p50_ms
    # The timers saw 20 calls in a row (≥ 1 s), far longer than any one call.
    assert result.loop_lag is not None
    assert result.loop_lag.max_ms >= users * HOLD_S * 1000 * 0.9
    assert result.loop_lag.back_to_back
    table = str(caught.value)
    assert "max_loop_lag_ms" in table
    assert f"{site.file}:{site.line} in sleeping_app → time.sleep(HOLD_S): " in table
    assert " calls held the loop " in table
    assert "blocking calls, none longer than " in table


# -- 2. awaited sleep -----------------------------------------------------------------------


@pytest.mark.timing
def test_awaited_sleep_keeps_the_loop_free() -> None:
    users = 100
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ConcurrencyWarning)
        result = run_storm(awaiting_app, "GET", "/", users=users, warmup=1.0, duration=1.5)
    harness_bound = [w for w in seen if "load generator" in str(w.message)]

    assert result.loop_lag is not None
    # Nothing holds the loop; the work of 2,000 requests a second makes it late by well
    # under the 50 ms one blocking call would cost.
    assert result.loop_lag.p99_ms < 10
    assert result.loop_lag.sites == []
    if not harness_bound:
        # 100 users each waiting 50 ms: 100 / 0.05 = 2,000 rps; ±20 % for the loop's own
        # work on a shared machine.
        assert result.throughput == pytest.approx(users / HOLD_S, rel=0.20)
    assert result.failed == 0


# -- 3. sync httpx.Client in async def -----------------------------------------------------


def test_sync_http_client_in_async_def_names_the_endpoint_call() -> None:
    def slow_upstream(request: httpx.Request) -> httpx.Response:
        time.sleep(0.02)
        return httpx.Response(200, text="upstream")

    with httpx.Client(transport=httpx.MockTransport(slow_upstream)) as client:

        async def app(scope: Scope, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            client.get("http://upstream.test/items/1")
            await respond(send)

        result = run_storm(app, "GET", "/", users=10, warmup=0.2, duration=0.6, check=False)
    site = site_of(result)

    # The mock handler answers for the network: the app's line is the call into httpx.
    assert Path(site.file).name == "test_find_blocking.py"
    assert site.line == line_of(app, "client.get(")
    assert site.call.startswith('client.get("http://upstream.test/items/1") → ')
    assert site.call.endswith(".slow_upstream")
    # 20 ms per call within one 1 ms sampling interval; the upper margin allows
    # oversleeping and httpx's own work around the wait.
    assert 15 <= site.per_call_p50_ms <= 40
    assert result.failed == 0


# -- 4. sync sqlite3 query in async def -----------------------------------------------------

# A recursive CTE counting to 100,000 keeps sqlite busy ~30 ms in its C code, on the
# loop thread (sqlite3 lets go of the interpreter lock meanwhile, so the watchdog samples).
SLOW_QUERY = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) "
    "SELECT count(*) FROM n"
)


@pytest.fixture
def database() -> Iterator[sqlite3.Connection]:
    # One connection for every user, as an app's module-level connection would be.
    connection = sqlite3.connect(":memory:")
    yield connection
    connection.close()


def test_sync_sqlite_query_in_async_def_names_the_query_line(
    database: sqlite3.Connection,
) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        database.execute(SLOW_QUERY).fetchone()
        await respond(send)

    result = run_storm(app, "GET", "/", users=5, warmup=0.2, duration=0.6, check=False)
    site = site_of(result)

    assert Path(site.file).name == "test_find_blocking.py"
    assert site.line == line_of(app, "database.execute(")
    assert site.call.startswith("database.execute(SLOW_QUERY)")
    # Each query holds the loop for tens of milliseconds: well over the 5 ms threshold,
    # whatever this machine's speed.
    assert site.per_call_p50_ms >= 5
    assert result.failed == 0


# -- 5. FastAPI `def` endpoint on anyio's thread pool --------------------------------------


@pytest.mark.timing
def test_def_endpoint_saturates_anyio_thread_limiter() -> None:
    threads = 40  # anyio's default limiter, made afresh for each event loop
    with pytest.raises(BudgetExceeded) as caught:
        run_storm(
            fastapi_app.app,
            "GET",
            "/sync-io",
            users=200,
            warmup=0.5,
            duration=2.0,
            max_saturation=0.5,
        )
    result = result_of(caught)
    pool = next(p for p in result.thread_pools if p.name == ANYIO_LIMITER)

    # 40 threads each serving 50 ms calls: 40 / 0.05 = 800 rps at most, whatever the
    # machine (+5 % for the window's edges). Below it, by the time a free thread waits
    # for the loop to hand it the next call: one loop and 40 threads on 2 shared cores
    # measured 540–800 rps here, so the floor is half the model — well above what a
    # smaller pool or a serialised one would give (20 rps for one thread).
    ceiling = threads / fastapi_app.IO_SECONDS
    assert 0.5 * ceiling <= result.throughput <= 1.05 * ceiling
    assert pool.size == threads
    # 200 users on 40 threads: 160 wait at every instant but the first few milliseconds.
    assert pool.saturation > 0.8
    table = str(caught.value)
    assert "max_saturation" in table
    assert f"{ANYIO_LIMITER}: 40 of 40 busy " in table
    assert "make them `async def`" in table


# -- 6. `def` views on the loop's default executor (Quart, asyncio.to_thread) -------------

EXECUTOR_S = 0.02
#: Threads of the default executor the app's calls ran on, as the app saw it.
executor_threads: list[int] = []


async def executor_app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    loop = asyncio.get_running_loop()
    # What Quart does with every `def` view.
    await loop.run_in_executor(None, time.sleep, EXECUTOR_S)
    if not executor_threads:
        executor_threads.append(loop._default_executor._max_workers)  # type: ignore[attr-defined]
    await respond(send)


def test_default_executor_is_measured_like_anyio_limiter() -> None:
    executor_threads.clear()
    # More users than the largest default executor (32 threads): work always queues.
    users = 64
    with pytest.raises(BudgetExceeded) as caught:
        run_storm(
            executor_app,
            "GET",
            "/",
            users=users,
            duration=1.0,
            max_saturation=0.1,
            max_queue_p99_ms=EXECUTOR_S * 1000 / 4,
        )
    result = result_of(caught)
    pool = next(p for p in result.thread_pools if p.name == DEFAULT_EXECUTOR)
    threads = executor_threads[0]

    assert result.failed == 0
    assert pool.size == threads
    assert pool.max_busy == threads
    # With at least twice as many users as threads, every thread is busy and work queues
    # at every instant but the first and last few milliseconds.
    assert pool.saturation > 0.5
    # Each request waits for (users / threads - 1) calls ahead of it: at least one call.
    assert pool.wait_p99_ms is not None
    assert pool.wait_p99_ms >= EXECUTOR_S * 1000 / 2
    assert result.busiest_pool is pool
    verdicts = {v.name: v for v in result.verdicts}
    assert verdicts["max_saturation"].measured == pool.saturation
    assert verdicts["max_queue_p99_ms"].measured == pool.wait_p99_ms
    table = str(caught.value)
    assert f"{DEFAULT_EXECUTOR}: {threads} of {threads} busy " in table
    assert "set_default_executor" in table

"""Loop-lag monitor, the watchdog that names the blocking line, and the thread-pool probe.

Each scenario runs on its own event loop with ``anyio.run``. Bounds are one-sided
where the machine can only make things slower: a blocked loop lags *at least* as long
as the blocking call; an unblocked loop's lag is only bounded loosely.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from asgiref.sync import SyncToAsync, ThreadSensitiveContext, sync_to_async
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from pytest_concurrency._metrics import new_histogram
from pytest_concurrency._model.probes import (
    ANYIO_LIMITER,
    ASGIREF_THREADS,
    DEFAULT_EXECUTOR,
    BlockingSite,
    LoopLag,
    PoolUsage,
)
from pytest_concurrency._probes.loop import LoopMonitor, _Stall
from pytest_concurrency._probes.pools import ThreadPoolProbe
from pytest_concurrency._report._blocking_text import diagnose

BLOCK_S = 0.02
USERS = 20
WATCHDOG = "pytest-storm loop watchdog"


def line_of(func: Callable[..., Any], text: str) -> int:
    """Line number of the first line of *func* that contains *text*."""
    lines, first = inspect.getsourcelines(func)
    for offset, line in enumerate(lines):
        if text in line:
            return first + offset
    raise AssertionError(f"{text!r} not in {func.__name__}")


async def storm(
    handler: Callable[[], Awaitable[None]], *, rounds: int = 1, **options: Any
) -> LoopLag:
    """USERS tasks call *handler* *rounds* times each, under a LoopMonitor."""

    async def user() -> None:
        for _ in range(rounds):
            await handler()
            await anyio.sleep(0)

    monitor = LoopMonitor(threshold_ms=5.0, **options)
    async with monitor, anyio.create_task_group() as group:
        for _ in range(USERS):
            group.start_soon(user)
    return monitor.result


def only_site(lag: LoopLag) -> BlockingSite:
    assert lag.sites, f"no blocking site named; {lag.unattributed} unattributed stalls"
    return max(lag.sites, key=lambda s: s.total_s)


# -- handlers the monitor must name (module level: their names are stable) -----------------


async def sleeping_handler() -> None:
    time.sleep(BLOCK_S)  # the comment is not part of the call


async def awaiting_handler() -> None:
    await anyio.sleep(BLOCK_S)


def upstream(request: httpx.Request) -> httpx.Response:
    time.sleep(BLOCK_S)
    return httpx.Response(200, text="upstream")


async def sync_client_handler(client: httpx.Client) -> None:
    client.get("http://upstream.test/items/1")


async def cpu_handler() -> None:
    end = time.perf_counter() + BLOCK_S
    while time.perf_counter() < end:
        pass


# -- LoopMonitor ----------------------------------------------------------------------------


@pytest.mark.usefixtures("no_leaked_threads")
def test_time_sleep_in_async_def_is_named() -> None:
    lag = anyio.run(storm, sleeping_handler)

    assert lag.max_ms >= 15
    assert lag.stalls >= 1
    # Every one of the 20 sleeps held the loop: the stalls add up to at least their sum.
    assert lag.total_blocked_s >= USERS * BLOCK_S * 0.9
    site = only_site(lag)
    assert Path(site.file).name == "test_blocking.py"
    assert site.line == line_of(sleeping_handler, "time.sleep")
    assert site.function == "sleeping_handler"
    assert site.call == "time.sleep(BLOCK_S)"
    assert str(site).startswith(
        f"{site.file}:{site.line} in sleeping_handler → time.sleep(BLOCK_S): "
    )
    assert " calls held the loop " in str(site)
    assert lag.unattributed == 0
    # Twenty frames, twenty calls: one missed only if the watchdog slept through it.
    assert USERS - 3 <= site.count <= USERS
    # Each call held the loop 20 ms, measured within one 1 ms sampling interval; the upper
    # margin allows time.sleep oversleeping on a busy machine.
    assert BLOCK_S * 1000 * 0.9 <= site.per_call_p50_ms <= BLOCK_S * 1000 + 10
    assert site.per_call_p50_ms <= site.per_call_p99_ms <= site.per_call_max_ms
    assert site.total_s == pytest.approx(site.count * BLOCK_S, rel=0.25)
    assert lag.calls == site.count
    # The users' calls ran back to back: the timer waited for several of them at once.
    assert lag.longest_stall_calls >= 2
    assert lag.back_to_back
    assert site.p99_stall_ms >= 2 * site.per_call_max_ms


def test_packages_declared_infrastructure_are_never_blamed() -> None:
    # This module is `tests.test_blocking`: declared infrastructure, the stall has no site.
    lag = anyio.run(functools.partial(storm, sleeping_handler, infrastructure=["tests"]))

    assert lag.max_ms >= 15
    assert lag.sites == []
    assert lag.unattributed == lag.stalls >= 1


@pytest.mark.usefixtures("no_leaked_threads")
def test_awaited_sleep_does_not_block() -> None:
    lag = anyio.run(functools.partial(storm, awaiting_handler, rounds=3))

    assert lag.ticks >= 20  # three rounds of 20 ms with a 1 ms probe
    # A blocking call would hold the loop for the whole 20 ms, so a 1 ms probe would run
    # late by up to 20 ms most of the time (median ≈ 10 ms). Of ≈ 60 ticks the p99 is the
    # longest but one, which another process taking the CPU stretches (29 ms seen at load
    # 1.5); the median holds, and no call in the app was named.
    assert lag.p50_ms < 5
    assert lag.sites == []


def test_sync_http_client_in_async_def_is_named() -> None:
    with httpx.Client(transport=httpx.MockTransport(upstream)) as client:
        lag = anyio.run(storm, functools.partial(sync_client_handler, client))

    assert lag.max_ms >= 15
    site = only_site(lag)
    # The transport's handler answers in place of the network: the site is the endpoint's
    # call into httpx, and the handler is named as what it called.
    assert Path(site.file).name == "test_blocking.py"
    assert site.line == line_of(sync_client_handler, "client.get")
    assert site.function == "sync_client_handler"
    assert site.call == 'client.get("http://upstream.test/items/1") → tests.test_blocking.upstream'


def test_cpu_bound_loop_is_named() -> None:
    lag = anyio.run(storm, cpu_handler)

    assert lag.max_ms >= 15
    site = only_site(lag)
    assert site.function == "cpu_handler"
    loop_lines = {line_of(cpu_handler, "while "), line_of(cpu_handler, "pass")}
    assert site.line in loop_lines


def test_sqlite_query_in_async_def_is_named(tmp_path: Path) -> None:
    path = tmp_path / "items.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    # A writer holds the database: the reader waits out its busy timeout in sqlite's C
    # code, on the loop thread — a stand-in for a slow query.
    reader = sqlite3.connect(path, timeout=BLOCK_S)
    try:
        holder.execute("CREATE TABLE items (id INTEGER)")
        holder.execute("BEGIN EXCLUSIVE")

        async def query_handler() -> None:
            # "database is locked" after the wait: the wait is what counts.
            with contextlib.suppress(sqlite3.OperationalError):
                reader.execute("SELECT count(*) FROM items").fetchall()

        lag = anyio.run(storm, query_handler)
    finally:
        reader.close()
        holder.close()

    assert lag.max_ms >= 15
    site = only_site(lag)
    assert site.line == line_of(query_handler, "reader.execute")
    assert site.function.endswith("query_handler")
    assert site.call.startswith("reader.execute(")


async def one_user_calls_in_a_row(calls: int) -> LoopLag:
    """One task awaits *calls* handlers that never yield: back to back in one step."""
    async with LoopMonitor(threshold_ms=5.0) as monitor:
        await anyio.sleep(0.005)
        for _ in range(calls):
            await sleeping_handler()
        await anyio.sleep(0.005)
    return monitor.result


def test_calls_in_a_row_from_one_task_are_told_apart() -> None:
    # Each handler's frame is freed before the next one is made, which may reuse its
    # memory; the watchdog holds the last frame it saw, so identity still tells them apart.
    lag = anyio.run(one_user_calls_in_a_row, 5)

    site = only_site(lag)
    assert lag.stalls >= 1
    # One stall of five calls: the timer waited for all of them.
    assert lag.max_ms >= 5 * BLOCK_S * 1000 * 0.9
    # Five calls, unless the watchdog slept through one or two on a busy machine (a
    # thread descheduled for a whole 20 ms call sees it merged with its neighbour).
    assert 3 <= site.count <= 5
    # All five merged would last 100 ms; one call is 20 ms within one 1 ms sampling
    # interval, plus time.sleep oversleeping, or 40 ms merged with a call slept through.
    assert site.per_call_max_ms < 3 * BLOCK_S * 1000
    assert lag.longest_stall_calls == site.count
    assert lag.longest_stall_call_ms == pytest.approx(site.per_call_max_ms)


def test_stall_samples_fold_into_calls() -> None:
    # Samples every 1 ms from 5 ms after the beat at 100.0: call A for 50 ms (seen first,
    # so timed from the beat), then call B at the same site, then framework code, then C.
    a, b, c = ("app.py", 6, "bad"), ("app.py", 6, "bad"), ("app.py", 9, "other")
    stall = _Stall(100.0)
    at = 100.005
    for i in range(45):
        stall.add(at, a, i > 0)
        at += 0.001
    for i in range(50):
        stall.add(at, b, i > 0)
        at += 0.001
    stall.add(at, None, False)
    at += 0.001
    stall.add(at, c, False)

    durations = list(stall.calls(poll=0.001))
    assert [key for key, _ in durations] == [a, b, c]
    # A: beat .. last sample + half a gap = 44 ms + 5 ms + 0.5 ms.
    assert durations[0][1] == pytest.approx(0.0495)
    # B: first to last sample plus one gap = 49 ms + 1 ms.
    assert durations[1][1] == pytest.approx(0.050)
    # C: a single sample counts one gap.
    assert durations[2][1] == pytest.approx(0.001)
    # Seen once only, C is not named: it may be the OS pausing the process.
    assert stall.named() == {a}


def test_blocking_site_renders_calls_and_totals() -> None:
    site = BlockingSite(
        file="app.py",
        line=12,
        function="read_item",
        call="time.sleep(0.05)",
        count=812,
        total_s=40.63,
        per_call_p50_ms=50.1,
        per_call_p99_ms=50.6,
        per_call_max_ms=52.0,
        stalls=8,
        p99_stall_ms=5012.0,
    )
    assert str(site) == (
        "app.py:12 in read_item → time.sleep(0.05): 812 calls held the loop 50.1 ms each "
        "(p99 50.6 ms), 40.6 s in total"
    )
    data = json.loads(json.dumps(site.to_dict()))
    assert data["per_call_p50_ms"] == 50.1
    assert data["per_call_p99_ms"] == 50.6
    assert data["text"] == str(site)
    one = dataclasses.replace(site, count=1, total_s=0.0501)
    assert str(one) == "app.py:12 in read_item → time.sleep(0.05): 1 call held the loop 50.1 ms"
    few = dataclasses.replace(site, count=3, total_s=0.1503)
    assert str(few).endswith("3 calls held the loop 50.1 ms each (p99 50.6 ms), 150 ms in total")


def test_diagnosis_explains_a_stall_of_calls_in_a_row() -> None:
    site = BlockingSite(
        "app.py", 12, "read_item", "time.sleep(0.05)", 812, 40.6, 50.1, 50.6, 51.0, 8, 5012.0
    )
    lag = LoopLag(
        p50_ms=5012.0,
        p99_ms=5012.0,
        max_ms=5012.0,
        mean_ms=2500.0,
        total_blocked_s=40.1,
        stalls=8,
        threshold_ms=5.0,
        interval_ms=1.0,
        duration_s=40.1,
        ticks=8,
        unattributed=0,
        sites=[site],
        histogram=new_histogram(),
        calls=812,
        longest_stall_calls=100,
        longest_stall_call_ms=50.9,
    )
    assert lag.back_to_back
    assert diagnose(lag, []) == [
        "event loop blocked 8 times for more than 5 ms, 40.10 s in total (100% of the storm; "
        "longest 5,012.0 ms):",
        f"  {site}",
        "  timers waited up to 5,012.0 ms: 100 blocking calls, none longer than 50.9 ms, ran "
        "back to back before the loop got back to its timers",
    ]
    # One long call is its own explanation.
    alone = dataclasses.replace(lag, longest_stall_calls=1, longest_stall_call_ms=5010.0)
    assert not alone.back_to_back
    assert len(diagnose(alone, [])) == 2
    data = lag.to_dict(histogram=False)
    assert data["calls"] == 812
    assert data["longest_stall_calls"] == 100


@pytest.mark.usefixtures("no_leaked_threads")
def test_watchdog_thread_lives_only_while_the_monitor_runs() -> None:
    seen: list[threading.Thread] = []

    async def main() -> None:
        monitor = LoopMonitor()
        await monitor.start()
        assert monitor.watchdog_thread is not None
        seen.append(monitor.watchdog_thread)
        assert monitor.watchdog_thread.is_alive()
        assert monitor.watchdog_thread.name == WATCHDOG
        await monitor.stop()
        assert monitor.watchdog_thread is None
        with pytest.raises(RuntimeError, match="started once"):
            await monitor.start()

    anyio.run(main)
    assert not seen[0].is_alive()
    assert WATCHDOG not in {t.name for t in threading.enumerate()}


@pytest.mark.usefixtures("no_leaked_threads")
def test_watchdog_stops_when_the_storm_raises() -> None:
    monitor = LoopMonitor()

    async def failing_storm() -> None:
        async with monitor:
            await anyio.sleep(0.005)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        anyio.run(failing_storm)
    assert monitor.result.ticks >= 1
    assert WATCHDOG not in {t.name for t in threading.enumerate()}


def test_monitor_without_watchdog_still_measures_lag() -> None:
    async def main() -> LoopLag:
        async with LoopMonitor(threshold_ms=5.0, watchdog=False) as monitor:
            await anyio.sleep(0.005)
            time.sleep(BLOCK_S)
            await anyio.sleep(0.005)
        assert monitor.watchdog_thread is None
        return monitor.result

    lag = anyio.run(main)
    assert lag.stalls >= 1
    assert lag.max_ms >= 15
    assert lag.sites == []
    assert lag.unattributed == lag.stalls


def test_result_is_json_ready_and_diagnosed() -> None:
    lag = anyio.run(storm, sleeping_handler)

    data = json.loads(json.dumps(lag.to_dict()))
    assert data["stalls"] == lag.stalls
    assert data["sites"][0]["function"] == "sleeping_handler"
    assert data["sites"][0]["per_call_p99_ms"] == lag.sites[0].per_call_p99_ms
    assert data["calls"] == lag.calls
    assert isinstance(data["histogram"], str)
    assert "histogram" not in lag.to_dict(histogram=False)
    assert lag.histogram.get_total_count() == lag.ticks

    lines = diagnose(lag, [])
    assert lines[0].startswith("event loop blocked ")
    assert "for more than 5 ms" in lines[0]
    assert lines[1] == f"  {lag.sites[0]}"


def test_diagnosis_blames_the_interpreter_lock_only_when_threads_ran() -> None:
    histogram = new_histogram()
    lag = LoopLag(
        p50_ms=0.1,
        p99_ms=30.0,
        max_ms=39.0,
        mean_ms=2.0,
        total_blocked_s=0.57,
        stalls=39,
        threshold_ms=5.0,
        interval_ms=1.0,
        duration_s=1.16,
        ticks=900,
        unattributed=39,
        sites=[],
        histogram=histogram,
    )
    threads = PoolUsage(
        name=ASGIREF_THREADS,
        size=None,
        mean_busy=70.2,
        max_busy=100,
        full=0.0,
        saturation=0.0,
        mean_waiting=None,
        wait_p99_ms=None,
        samples=900,
        timeline=[],
    )
    idle_limiter = PoolUsage(ANYIO_LIMITER, 40, 0.01, 1, 0.0, 0.0, 0.0, None, 900, [])

    assert diagnose(lag, [threads, idle_limiter]) == [
        "event loop blocked 39 times for more than 5 ms, 0.57 s in total (49% of the storm; "
        "longest 39.0 ms)",
        "  39 stalls not traced to app code (probably the loop waiting for the interpreter "
        "lock while ≈70 app threads ran)",
        "asgiref SyncToAsync threads: 70.2 threads busy on average, at most 100 at once",
    ]
    assert diagnose(lag, [idle_limiter])[1] == (
        "  39 stalls not traced to app code (framework or load-generator code, or too short "
        "to sample)"
    )
    assert diagnose(None, [idle_limiter]) == []


def test_monitor_rejects_bad_settings_and_early_reads() -> None:
    with pytest.raises(ValueError, match=r"threshold_ms=0 must be a number greater than 0"):
        LoopMonitor(threshold_ms=0)
    with pytest.raises(ValueError, match=r"interval_ms=nan"):
        LoopMonitor(interval_ms=float("nan"))
    monitor = LoopMonitor()
    with pytest.raises(RuntimeError, match="not been stopped"):
        _ = monitor.result

    async def stop_unstarted() -> None:
        await monitor.stop()

    with pytest.raises(RuntimeError, match="not started"):
        anyio.run(stop_unstarted)


def test_monitor_needs_a_running_asyncio_loop() -> None:
    # Stepping the coroutine by hand runs it with no event loop at all.
    coro = LoopMonitor().start()
    with pytest.raises(RuntimeError, match="running asyncio event loop"):
        coro.send(None)


# -- ThreadPoolProbe ------------------------------------------------------------------------


def slow_sync_endpoint(request: Request) -> PlainTextResponse:
    time.sleep(0.01)
    return PlainTextResponse("ok")


STARLETTE_APP = Starlette(routes=[Route("/", slow_sync_endpoint)])


async def asgi_get(app: Any, path: str = "/") -> int:
    """One in-process GET; returns the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


def test_probe_sees_anyio_limiter_saturated_by_def_endpoint() -> None:
    original = anyio.to_thread.run_sync
    statuses: list[int] = []

    async def main() -> list[PoolUsage]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 4

        async def client() -> None:
            statuses.append(await asgi_get(STARLETTE_APP))

        async with ThreadPoolProbe() as probe, anyio.create_task_group() as group:
            for _ in range(60):
                group.start_soon(client)
        return probe.result

    pools = anyio.run(main)

    assert statuses == [200] * 60
    assert anyio.to_thread.run_sync is original
    limiter = next(p for p in pools if p.name == ANYIO_LIMITER)
    assert limiter.size == 4
    assert limiter.max_busy == 4
    # 60 requests of 10 ms on 4 threads: ≈ 150 ms with a queue, only the last batch
    # (≈ 10 ms) without one.
    assert limiter.saturation > 0.5
    assert limiter.mean_waiting is not None
    assert limiter.mean_waiting > 4
    # Requests queued behind 14 batches of 10 ms: the slowest waited ≥ 100 ms for a thread.
    assert limiter.wait_p99_ms is not None
    assert limiter.wait_p99_ms >= 100
    assert limiter.timeline
    assert limiter.timeline[0].max_busy == 4
    text = limiter.describe()
    assert text.startswith("anyio default thread limiter: 4 of 4 busy ")
    assert "requests waiting on average" in text
    lines = diagnose(None, pools)
    assert lines[0].startswith(text)
    assert "async def" in lines[0]
    assert json.loads(json.dumps(limiter.to_dict()))["size"] == 4


def test_probe_counts_asgiref_threads() -> None:
    original = SyncToAsync.thread_handler

    def blocking_view() -> None:
        time.sleep(0.05)

    async def request() -> None:
        # Django under ASGI gives each request a thread-sensitive context of its own.
        async with ThreadSensitiveContext():
            await sync_to_async(blocking_view)()

    async def main() -> list[PoolUsage]:
        async with ThreadPoolProbe() as probe, anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(request)
        return probe.result

    pools = anyio.run(main)

    assert SyncToAsync.thread_handler is original
    threads = next(p for p in pools if p.name == ASGIREF_THREADS)
    assert threads.size is None
    assert threads.saturation == 0
    assert 4 <= threads.max_busy <= 8
    assert threads.mean_waiting is None
    assert threads.describe().startswith("asgiref SyncToAsync threads: ")
    assert "at most" in threads.describe()
    # The anyio limiter was never used: diagnose() leaves it out.
    assert [line.split(":")[0] for line in diagnose(None, pools)] == [ASGIREF_THREADS]


def test_probe_without_wrappers_leaves_frameworks_alone() -> None:
    original = anyio.to_thread.run_sync

    async def main() -> list[PoolUsage]:
        async with ThreadPoolProbe(measure_wait=False, asgiref=False) as probe:
            assert anyio.to_thread.run_sync is original
            await anyio.to_thread.run_sync(time.sleep, 0.005)
        return probe.result

    pools = anyio.run(main)
    assert [p.name for p in pools] == [ANYIO_LIMITER]
    assert pools[0].wait_p99_ms is None
    assert pools[0].size == 40


def test_probe_sees_the_default_executor_saturated() -> None:
    calls, threads, hold_s = 20, 2, 0.01

    async def main() -> list[PoolUsage]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=threads))

        async def view() -> None:
            # What Quart does with a `def` view, and asyncio.to_thread with anything.
            await loop.run_in_executor(None, time.sleep, hold_s)

        async with ThreadPoolProbe() as probe, anyio.create_task_group() as group:
            for _ in range(calls):
                group.start_soon(view)
        assert "run_in_executor" not in vars(loop)
        return probe.result

    pools = anyio.run(main)

    executor = next(p for p in pools if p.name == DEFAULT_EXECUTOR)
    assert executor.size == threads
    assert executor.max_busy == threads
    # 20 calls of 10 ms on 2 threads: ≈ 100 ms with a queue, only the last pair without.
    assert executor.saturation > 0.5
    assert executor.mean_waiting is not None
    assert executor.mean_waiting > 2
    # The last pair waited for 9 pairs of 10 ms before it: the p99 of 20 waits is ≥ 80 ms.
    assert executor.wait_p99_ms is not None
    assert executor.wait_p99_ms >= 80
    lines = diagnose(None, pools)
    line = next(line for line in lines if line.startswith(DEFAULT_EXECUTOR))
    assert line.startswith(f"{DEFAULT_EXECUTOR}: 2 of 2 busy ")
    assert "set_default_executor" in line


def test_probe_leaves_an_unused_default_executor_out_and_counts_cancelled_work() -> None:
    async def idle() -> list[PoolUsage]:
        async with ThreadPoolProbe() as probe:
            await anyio.sleep(0.005)
        return probe.result

    assert DEFAULT_EXECUTOR not in [p.name for p in anyio.run(idle)]

    async def cancelled() -> ThreadPoolProbe:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        async with ThreadPoolProbe() as probe:
            busy = loop.run_in_executor(None, time.sleep, 0.03)
            queued = [loop.run_in_executor(None, time.sleep, 0.03) for _ in range(5)]
            await anyio.sleep(0.005)
            for future in queued:
                future.cancel()
            await busy
            await asyncio.gather(*queued, return_exceptions=True)
            await anyio.sleep(0.005)
        return probe

    probe = anyio.run(cancelled)
    series = probe._executor_series
    assert series is not None
    # Five were queued behind the one running; once cancelled they leave the queue.
    assert max(series.waiting) == 5
    assert series.waiting[-1] == 0
    assert series.busy[-1] == 0
    # Only the call that ran waited for a thread.
    assert series.waits is not None
    assert len(series.waits) == 1


def test_the_loop_is_quiet_only_since_its_tick_was_due_or_a_step_ended() -> None:
    monitor = LoopMonitor(threshold_ms=5.0, interval_ms=1.0)
    # No step has ended: the tick after the beat at 100.0 was due at 100.001.
    assert monitor.quiet(100.010, 100.0) == pytest.approx(0.009)
    # With 100 requests always ready the tick is 9 ms late, but a request's step ended
    # 0.5 ms ago: no call has held the loop for longer, nothing to sample yet.
    monitor.progress[0] = 100.0095
    assert monitor.quiet(100.010, 100.0) == pytest.approx(0.0005)
    # A step that ended before the tick was due says nothing more than the tick.
    monitor.progress[0] = 100.0005
    assert monitor.quiet(100.010, 100.0) == pytest.approx(0.009)


def test_a_call_sampled_after_a_pause_is_timed_from_when_the_loop_ran() -> None:
    # Samples every 1 ms from the beat at 100.0; then steps ended until 100.030, when
    # sampling started again: call B was seen first at 100.0345.
    a, b = ("app.py", 6, "bad"), ("app.py", 9, "other")
    stall = _Stall(100.0)
    at = 100.005
    for i in range(10):
        stall.add(at, a, i > 0)
        at += 0.001
    at = 100.0345
    stall.add(at, b, False, resumed=100.030)
    for _ in range(9):
        at += 0.001
        stall.add(at, b, True)
    durations = list(stall.calls(poll=0.002))
    assert [key for key, _ in durations] == [a, b]
    # A: from the beat to its last sample (100.014) plus half the 1 ms spacing.
    assert durations[0][1] == pytest.approx(0.0145)
    # B: from the step's end to its last sample (100.0435) plus half a gap; the pause
    # between the two runs of samples is not a gap between samples.
    assert durations[1][1] == pytest.approx(0.014)


@pytest.fixture
def storm_monitors(monkeypatch: pytest.MonkeyPatch) -> list[LoopMonitor]:
    """Every loop monitor the engine starts, kept for the test to read."""
    from pytest_concurrency._engine import rounds

    monitors: list[LoopMonitor] = []

    def kept(*args: Any, **kwargs: Any) -> LoopMonitor:
        monitors.append(LoopMonitor(*args, **kwargs))
        return monitors[-1]

    monkeypatch.setattr(rounds, "LoopMonitor", kept)
    return monitors


def test_each_step_of_a_storms_request_tells_the_loop_monitor_it_ran(
    storm_monitors: list[LoopMonitor],
) -> None:
    from pytest_concurrency import run_storm

    monitors = storm_monitors

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    before = time.perf_counter()
    result = run_storm(app, "GET", "/", users=5, requests=50, lifespan="off")
    assert result.requests == 50
    assert len(monitors) == 1
    assert before < monitors[0].progress[0] < time.perf_counter()


def test_the_storms_figure_of_its_own_cost_is_taken_with_its_probes_on(
    storm_monitors: list[LoopMonitor], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_concurrency._engine import rounds

    monitors = storm_monitors
    monkeypatch.setattr(rounds, "_HARNESS_COST", {})
    before = time.perf_counter()
    probed = asyncio.run(rounds.harness_cost_us())
    # The calibration ran as an in-process storm runs: watched, its steps kept.
    assert len(monitors) == 1
    assert monitors[0].result.ticks > 0
    assert before < monitors[0].progress[0] < time.perf_counter()
    bare = asyncio.run(rounds.harness_cost_us(probed=False))
    assert len(monitors) == 1  # a storm without the probes is calibrated without them
    assert probed > 0
    assert bare > 0

"""Virtual time (``clock="virtual"``): waits cost no wall time, blocking still serialises."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
import time
from time import perf_counter
from typing import Any

import anyio
import pytest

from pytest_concurrency import ConfigError, arun_storm, run_storm, simulated_io
from pytest_concurrency import _clock as clock
from pytest_concurrency._engine import virtual
from pytest_concurrency._engine.virtual import VirtualClockLoop, loop_factory
from pytest_concurrency._simio import lognormal


def sleeper(seconds: float) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await anyio.sleep(seconds)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def blocking_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    time.sleep(0.02)  # blocks the event loop, as a sync client in async def would
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def simulated_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await simulated_io(lognormal(p50_ms=20, p99_ms=120))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


# -- the loop ---------------------------------------------------------------------------


def test_loop_jumps_to_the_next_timer_when_nothing_is_ready() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - before, clock.now() - before

    started = perf_counter()
    waited, read = anyio.run(main, backend_options={"loop_factory": loop_factory})
    assert waited == pytest.approx(3600, abs=1e-6)
    assert read == waited  # the engine reads the loop's clock while it runs
    assert perf_counter() - started < 2
    assert clock.wall()  # and the wall clock again once it stops


def test_blocking_and_cpu_work_of_the_app_is_charged() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        time.sleep(0.01)
        deadline = time.thread_time() + 0.005
        while time.thread_time() < deadline:
            pass
        await anyio.sleep(0)  # a second step, too small to charge

    from pytest_concurrency._engine.virtual import metered

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        before = loop.time()
        await metered(app)({"type": "http"}, None, None)
        return loop.time() - before, loop.charged

    elapsed, charged = anyio.run(main, backend_options={"loop_factory": loop_factory})
    assert charged == elapsed
    # one step: 10 ms asleep (wall time) plus 5 ms of CPU; the second step is under the floor
    assert 0.015 <= elapsed < 0.03


# -- storms -----------------------------------------------------------------------------


def test_virtual_storm_measures_the_simulated_wait_exactly() -> None:
    started = perf_counter()
    result = run_storm(sleeper(0.05), "GET", "/", users=1000, duration=0.5, clock="virtual")
    assert abs(result.latency.p50 - 50) <= 1
    assert result.latency.p99 < 51
    # A step the busy machine kept off a CPU after a GIL hand-off reads as blocked and is
    # charged its wall time: the few requests due then wait a few ms (max 52.3 ms once).
    assert result.latency.max < 60
    # Little's law: 1,000 users each 50 ms per request
    assert result.throughput == pytest.approx(1000 / 0.05, rel=0.15)
    assert result.errors == {}
    assert result.loop_lag is None
    assert result.extras["clock"]["charge_floor_ms"] == 0.1
    assert any(note.startswith("virtual time: waits cost no wall time") for note in result.notes)
    assert any("event-loop lag and thread pools were not measured" in n for n in result.notes)
    assert perf_counter() - started < 30
    assert clock.wall()


@pytest.mark.timing
def test_ten_thousand_users_in_seconds_of_wall_time() -> None:
    # 10,000 users × 50 ms over 0.25 virtual seconds: about 40,000 requests, whose cost is
    # the load generator's own (≈ 60-120 µs each on a shared 2-core machine).
    started = perf_counter()
    result = run_storm(sleeper(0.05), "GET", "/", users=10_000, duration=0.25, clock="virtual")
    wall = perf_counter() - started
    assert abs(result.latency.p50 - 50) <= 1
    assert result.requests > 30_000
    assert wall < 10


def test_figures_repeat_exactly_for_a_pure_async_app() -> None:
    def figures() -> list[float]:
        result = run_storm(
            simulated_app, "GET", "/", users=100, duration=1.0, seed=3, clock="virtual"
        )
        # Simulated waits come back on time: only the app's rare costly steps delay one
        # (by a few ms when a busy machine kept such a step off a CPU: 1.9 ms once).
        waits = result.extras["simulated_waits"]["async"]
        assert waits["p50_ms"] == 0.0
        assert waits["max_ms"] < 5
        lat = result.latency
        return [result.requests, result.throughput, lat.p50, lat.p99, lat.mean, lat.max]

    first, second = figures(), figures()
    for a, b in zip(first, second, strict=True):
        assert b == pytest.approx(a, rel=0.01)


def test_blocking_in_async_still_serialises() -> None:
    # 20 users, each request blocks the loop 20 ms: one at a time, ≈ 50 rps, and each
    # waits for the other 19 (≈ 400 ms).
    result = run_storm(
        blocking_app, "GET", "/", users=20, duration=1.0, warmup=0.5, clock="virtual"
    )
    assert result.throughput == pytest.approx(50, rel=0.1)
    assert result.latency.mean == pytest.approx(20 * 20, rel=0.1)
    # every request blocked 20 ms, warm-up included: the clock was charged ≥ 1.5 s
    assert result.extras["clock"]["charged_ms"] >= 0.9 * 1500


def test_think_time_costs_no_wall_time() -> None:
    started = perf_counter()
    result = run_storm(
        sleeper(0.01), "GET", "/", users=50, duration=60.0, think_ms=1000, clock="virtual"
    )
    assert perf_counter() - started < 20
    # each user: 10 ms of request, 1 s of thinking
    assert result.throughput == pytest.approx(50 / 1.01, rel=0.05)
    assert abs(result.latency.p99 - 10) <= 1


def test_open_model_arrivals_cost_no_wall_time() -> None:
    started = perf_counter()
    result = run_storm(
        sleeper(0.01),
        "GET",
        "/",
        rate=100,
        duration=60.0,
        arrivals="poisson",
        seed=5,
        clock="virtual",
    )
    assert perf_counter() - started < 20
    assert result.requests == pytest.approx(6000, rel=0.05)
    assert abs(result.latency.p99 - 10) <= 1


def test_timeouts_are_virtual_too() -> None:
    started = perf_counter()
    result = run_storm(
        sleeper(30.0),
        "GET",
        "/",
        users=10,
        duration=5.0,
        timeout_ms=1000,
        clock="virtual",
        max_error_rate=1.0,
        check=False,
    )
    assert perf_counter() - started < 20
    assert result.timeouts == result.requests > 0
    assert not result.passed  # no request completed: nothing to judge
    assert result.latency.max == pytest.approx(1000, abs=1)


def test_arun_runs_the_round_on_a_virtual_loop_of_its_own() -> None:
    async def main() -> float:
        result = await arun_storm(
            sleeper(0.05), "GET", "/", users=50, duration=1.0, clock="virtual"
        )
        return result.latency.p50

    assert abs(anyio.run(main) - 50) <= 1


# -- refused before any load ------------------------------------------------------------


def test_thread_pool_work_is_refused() -> None:
    fastapi = pytest.importorskip("fastapi")
    from pytest_concurrency import blocking_io

    api = fastapi.FastAPI()

    @api.get("/")
    def index() -> dict[str, bool]:  # a def endpoint runs in anyio's thread pool
        blocking_io(0.05)
        return {"ok": True}

    started = perf_counter()
    with pytest.raises(ConfigError, match=r"clock='virtual' cannot time work done in threads"):
        run_storm(api, "GET", "/", users=100, duration=2.0, clock="virtual")
    assert perf_counter() - started < 10
    assert clock.wall()


class Counting:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.app(*args)


@pytest.mark.parametrize(
    ("app", "params", "match"),
    [
        (wsgi_app, {}, r"clock='virtual' \(from keyword argument\) needs an async \(ASGI\) app"),
        (
            sleeper(0.01),
            {"server": "http://127.0.0.1:9"},
            r"cannot run against server='http://127.0.0.1:9' \(from keyword argument\)",
        ),
        (sleeper(0.01), {"processes": 2}, r"processes=2 \(from keyword argument\)"),
        (
            sleeper(0.01),
            {"engine": "locust", "server": "http://127.0.0.1:9"},
            r"not engine='locust' \(from keyword argument\)",
        ),
        (sleeper(0.01), {"on_start": lambda user: None}, r"is a plain function"),
        (sleeper(0.01), {"max_loop_lag_ms": 5}, r"max_loop_lag_ms .* cannot be measured"),
    ],
)
def test_what_cannot_be_virtual_is_refused_before_any_load(
    app: Any, params: dict[str, Any], match: str
) -> None:
    if getattr(app, "__name__", "") == "wsgi_app":
        counted: Any = Counting(app)
        kwargs: dict[str, Any] = {"interface": "wsgi"}
    else:
        counted = app
        kwargs = {}
    with pytest.raises(ConfigError, match=match):
        run_storm(counted, "GET", "/", users=5, duration=1.0, clock="virtual", **params, **kwargs)
    if isinstance(counted, Counting):
        assert counted.calls == 0


def test_clock_value_is_validated_with_its_origin() -> None:
    with pytest.raises(
        ConfigError,
        match=r"clock='fast' \(from keyword argument\) must be one of 'wall', 'virtual'",
    ):
        run_storm(sleeper(0.01), "GET", "/", users=1, requests=1, clock="fast")


def test_work_too_small_to_charge_is_reported_when_it_adds_up() -> None:
    # 500 users × 1 ms: 500,000 requests per virtual second, each a few µs of uncharged work
    result = run_storm(sleeper(0.001), "GET", "/", users=500, duration=0.02, clock="virtual")
    assert result.extras["clock"]["uncharged_ms"] > 0
    assert any("optimistic" in w and "clock='wall'" in w for w in result.warnings)


def test_a_storm_whose_clock_cannot_move_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    async def instant(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    monkeypatch.setattr(virtual, "STALL_SECONDS", 0.5)
    started = perf_counter()
    with pytest.raises(ConfigError, match=r"without virtual time moving"):
        run_storm(instant, "GET", "/", users=5, duration=1.0, clock="virtual")
    assert perf_counter() - started < 10


def _respond(send: Any, body: bytes) -> Any:
    async def go() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return go()


def test_a_raw_thread_the_app_waits_on_is_refused_not_timed_out(no_leaked_threads: None) -> None:
    threads: list[threading.Thread] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()

        def work() -> None:
            time.sleep(0.05)
            with contextlib.suppress(RuntimeError):  # the refused round closed its loop
                loop.call_soon_threadsafe(answer.set_result, b"done")

        thread = threading.Thread(target=work, name="app-worker")
        threads.append(thread)
        thread.start()
        await _respond(send, await answer)

    started = perf_counter()
    with pytest.raises(
        ConfigError, match=r"cannot time work done in threads.*thread 'app-worker' running .*work"
    ):
        run_storm(app, "GET", "/", users=5, duration=2.0, timeout_ms=1000, clock="virtual")
    assert perf_counter() - started < 5
    for thread in threads:
        thread.join(2)


def test_an_apps_own_executor_is_refused_not_timed_out(no_leaked_threads: None) -> None:
    executor = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="app-pool")

    def compute() -> bytes:
        time.sleep(0.05)
        return b"done"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await _respond(send, await asyncio.wrap_future(executor.submit(compute)))

    try:
        with pytest.raises(ConfigError, match=r"thread 'app-pool_0' running .*compute"):
            run_storm(app, "GET", "/", users=2, duration=2.0, timeout_ms=1000, clock="virtual")
    finally:
        executor.shutdown(wait=True)


def test_real_socket_io_is_refused_not_timed_out() -> None:
    # A loopback listener that accepts and answers only after a while: the app's read waits
    # on a real socket, which virtual time would jump past.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await _respond(send, await reader.read(10))
        finally:
            writer.close()

    try:
        with pytest.raises(
            ConfigError, match=r"cannot time real I/O: the app waits on a real socket"
        ):
            run_storm(app, "GET", "/", users=2, duration=2.0, timeout_ms=1000, clock="virtual")
    finally:
        server.close()

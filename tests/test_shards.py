"""Process shards: one storm over several forked processes, folded as one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency import BudgetExceeded, ConfigError, StormError, run_storm
from pytest_concurrency._engine.shards import live_shards, shard_configs
from pytest_concurrency._params import Layer, resolve

from .apps import asgi_cpu, asgi_hello, asgi_sleep, wsgi_hello, wsgi_sleep

ROOT = Path(__file__).resolve().parent.parent


def _config(**params: Any) -> Any:
    return resolve([Layer("keyword argument", params)])


def test_shard_configs_split_the_load() -> None:
    shards = shard_configs(_config(users=101, processes=4, seed=7, p99_ms=10, workers=8))
    assert [s.users for s in shards] == [26, 25, 25, 25]
    assert [s.workers for s in shards] == [2, 2, 2, 2]
    assert [s.seed for s in shards] == [7, 8, 9, 10]
    assert all(s.processes == 1 and not s.budgets for s in shards)
    rate = shard_configs(_config(rate=300, processes=3, in_flight_cap=100))
    assert [s.rate for s in rate] == [100, 100, 100]
    assert [s.max_in_flight for s in rate] == [34, 34, 34]
    # Never more shards than users or requests.
    assert len(shard_configs(_config(users=2, processes=8))) == 2
    assert [s.requests for s in shard_configs(_config(requests=5, processes=2))] == [3, 2]


def test_processes_is_validated_before_any_load() -> None:
    with pytest.raises(ConfigError, match=r"processes=0 \(from keyword argument\)"):
        run_storm(asgi_hello, "GET", "/", processes=0)
    with pytest.raises(ConfigError, match="processes=10000"):
        run_storm(asgi_hello, "GET", "/", processes=10_000)
    assert _config(processes="auto").processes == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("app", [asgi_hello, wsgi_hello], ids=["asgi", "wsgi"])
def test_merged_figures_are_the_sum_of_the_shards(app: Any) -> None:
    result = run_storm(app, "GET", "/", users=6, requests=600, processes=2, workers=2)
    per_shard = result.extras["shards"]["per_shard"]
    assert result.extras["shards"]["processes"] == 2
    assert sum(s["requests"] for s in per_shard) == result.requests == 600
    assert all(s["requests"] > 0 for s in per_shard)
    assert result.status_counts[200] == 600
    assert result.histograms["latency"].get_total_count() == 600
    assert result.server.startswith("2 processes × ")
    assert not live_shards()


def test_errors_from_every_shard_are_merged_by_kind() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise KeyError(f"from {os.getpid()}")

    result = run_storm(app, "GET", "/", users=4, requests=40, processes=2, check=False)
    assert result.errors["KeyError"].count == 40
    assert result.failed == 40


def test_budgets_are_judged_on_the_merged_result() -> None:
    with pytest.raises(BudgetExceeded, match="p99_ms"):
        run_storm(asgi_sleep(0.02), "GET", "/", users=4, requests=40, processes=2, p99_ms=5)


@pytest.mark.parametrize("app", [asgi_hello, wsgi_hello], ids=["asgi", "wsgi"])
def test_a_start_hook_that_fails_in_a_shard_fails_the_storm(app: Any) -> None:
    def login(user: Any) -> None:
        if user.index == 3:  # a user of the second shard
            raise PermissionError("locked out")

    with pytest.raises(BudgetExceeded, match="on_start") as failed:
        run_storm(app, "GET", "/", users=4, duration=0.3, processes=2, on_start=login)
    start = failed.value.result.extras["on_start"]
    assert start["users"] == 4
    assert start["hooks_failed_count"] == 1
    assert start["hook_errors"] == {"PermissionError": 1}


def test_a_crashing_shard_is_named_and_nothing_is_left_running() -> None:
    parent = os.getpid()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and os.getpid() != parent:
            os._exit(3)
        await asgi_hello(scope, receive, send)

    started = time.perf_counter()
    with pytest.raises(StormError, match=r"shard \d of 2 \(pid \d+\) died with exit code 3"):
        run_storm(app, "GET", "/", users=4, duration=5.0, processes=2, lifespan="off")
    assert time.perf_counter() - started < 10
    assert not live_shards()


def test_a_failing_shard_startup_is_an_error() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})
            return

    with pytest.raises(StormError, match=r"shard \d of 2 failed: .*no database"):
        run_storm(app, "GET", "/", users=4, duration=1.0, processes=2)
    assert not live_shards()


_SHARDS_REPORTED = textwrap.dedent(
    """
    import sys, threading, time
    from pytest_concurrency import run_storm
    from pytest_concurrency._engine.shards import live_shards
    from tests.apps import asgi_sleep

    def report():
        while not live_shards():
            time.sleep(0.05)
        time.sleep(0.3)
        print(" ".join(map(str, live_shards())), flush=True)

    threading.Thread(target=report, daemon=True).start()
    try:
        run_storm(asgi_sleep(0.01), "GET", "/", users=20, duration=30, processes=2)
    except KeyboardInterrupt:
        sys.exit(130)
    """
)


@contextmanager
def _child_with_shards() -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """A child process storming on two shards, and their pids; none survives the block."""
    with subprocess.Popen(
        [sys.executable, "-c", _SHARDS_REPORTED],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"},
    ) as child:
        try:
            assert child.stdout is not None
            pids = [int(p) for p in child.stdout.readline().split()]
            assert len(pids) == 2
            yield child, pids
        finally:
            if child.poll() is None:
                child.kill()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)]


def test_a_killed_parent_takes_its_shards_down() -> None:
    with _child_with_shards() as (child, _):
        child.kill()  # no finally, no atexit: each shard notices its parent is gone


def test_ctrl_c_stops_every_shard() -> None:
    with _child_with_shards() as (child, _):
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=15) == 130


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not collected it yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.timing
def test_io_bound_storm_keeps_littles_law_over_two_processes() -> None:
    # 200 users each waiting 50 ms: 200 / 0.05 = 4,000 rps whatever the number of loops.
    result = run_storm(
        asgi_sleep(0.05), "GET", "/", users=200, duration=2.0, warmup=0.5, processes=2
    )
    assert result.throughput == pytest.approx(4000, rel=0.15)
    assert result.latency.p50 == pytest.approx(50, abs=8)


@pytest.mark.timing
def test_wsgi_pool_over_two_processes_keeps_littles_law() -> None:
    # 8 workers (2 processes × 4) × 50 ms serve 160 rps; 50 users wait 50 / 160 = 312 ms.
    result = run_storm(
        wsgi_sleep(0.05), "GET", "/", users=50, workers=8, duration=2.0, warmup=0.5, processes=2
    )
    assert result.throughput == pytest.approx(160, rel=0.1)
    assert result.latency.mean == pytest.approx(312.5, rel=0.15)
    assert result.pool is not None
    assert result.pool.size == 8


@pytest.mark.timing
def test_cpu_bound_storm_scales_with_processes() -> None:
    # About 1 ms of Python per request: one loop serves ≈ 1,000 rps at most; two processes on
    # two cores should serve well over that (the benchmark asks for 1.7x; a shared CI machine
    # is held to 1.3x).
    # Other work on the machine takes a core for seconds at a time: up to three alternated
    # pairs, and one pair that scales is enough (shards that do not scale fail all three).
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores")
    app = asgi_cpu(20_000)
    ratios = []
    for _ in range(3):
        one = run_storm(app, "GET", "/", users=20, duration=2.0, warmup=0.5)
        two = run_storm(app, "GET", "/", users=20, duration=2.0, warmup=0.5, processes=2)
        ratios.append(two.throughput / one.throughput)
        if ratios[-1] > 1.3:
            break
    assert max(ratios) > 1.3, ratios


def _spawning_app(pids: Path) -> Any:
    """An app that starts a long-lived process of its own on its first request in a shard,
    and one that ignores SIGTERM."""
    started: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not started:
            for command in ("sleep 300", "trap '' TERM; sleep 300"):
                child = subprocess.Popen(
                    ["sh", "-c", f"exec {command}" if "trap" not in command else command]
                )
                started.append(child.pid)
                with pids.open("a") as file:
                    file.write(f"{child.pid}\n")
        await asgi_hello(scope, receive, send)

    return app


@pytest.mark.parametrize("how", ["finished", "failed"])
def test_processes_the_app_started_in_a_shard_end_with_it(tmp_path: Path, how: str) -> None:
    pids = tmp_path / "pids"
    app = _spawning_app(pids)
    if how == "finished":
        run_storm(app, "GET", "/", users=2, duration=0.3, processes=2)
    else:
        with pytest.raises(BudgetExceeded):
            run_storm(app, "GET", "/", users=2, duration=0.3, processes=2, min_rps=1e9)
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) == 4  # two per shard
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in started if _alive(pid)] == []

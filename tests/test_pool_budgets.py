"""Budgets aimed at one pool by its name (``pool_budgets``), beside those on the worst pool."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency import BudgetExceeded, ConfigError, run_storm
from pytest_concurrency._model.names import DEFAULT_EXECUTOR
from pytest_concurrency._spec.measures import find_pool

pytest.importorskip("sqlalchemy")
pytest.importorskip("aiosqlite")

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")

SQLALCHEMY = "SQLAlchemy pool (sqlite+aiosqlite)"


def two_pools_app(path: Path) -> Any:
    """Each request hands a trifle to the loop's default executor, then holds one of 2
    SQLAlchemy connections 20 ms: 20 users queue for the connections, not for the threads."""
    from examples.db_pool_app import make_engine

    engine = make_engine(str(path), 2)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await engine.dispose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await asyncio.get_running_loop().run_in_executor(None, int)
        async with engine.connect():
            await asyncio.sleep(0.02)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_a_pool_is_named_by_its_whole_name_or_a_part_only_it_holds() -> None:
    names = [SQLALCHEMY, DEFAULT_EXECUTOR]
    assert find_pool(SQLALCHEMY, names) == ([SQLALCHEMY], "")
    assert find_pool("sqlalchemy", names) == ([SQLALCHEMY], "")
    assert find_pool("executor", names) == ([DEFAULT_EXECUTOR], "")
    assert find_pool("e", names) == (
        [],
        f"'e' names 2 pools measured ('{SQLALCHEMY}', '{DEFAULT_EXECUTOR}'): give more of "
        "one's name",
    )
    assert find_pool("db", names) == (
        [],
        f"no pool named 'db' was measured; the pools measured: '{SQLALCHEMY}', "
        f"'{DEFAULT_EXECUTOR}'",
    )
    assert find_pool("db", [])[0] == []
    assert "used no thread pool or connection pool" in find_pool("db", [])[1]
    # The same pool in each process shard (or server worker) is one pool: all its copies.
    copies = [f"{SQLALCHEMY} (shard 0)", f"{SQLALCHEMY} (shard 1)", f"{DEFAULT_EXECUTOR} (shard 0)"]
    assert find_pool("SQLAlchemy", copies) == (copies[:2], "")
    assert find_pool(SQLALCHEMY, copies) == (copies[:2], "")
    assert find_pool(f"{SQLALCHEMY} (shard 1)", copies) == (copies[1:2], "")


def test_a_budget_aimed_at_one_pool_judges_that_pool_not_the_worst(tmp_path: Path) -> None:
    with pytest.raises(BudgetExceeded) as failed:
        run_storm(
            two_pools_app(tmp_path / "db.sqlite3"),
            "GET",
            "/",
            users=20,
            duration=0.6,
            max_queue_p99_ms=10_000,
            pool_budgets={
                "SQLAlchemy": {"max_queue_p99_ms": 0, "max_threads_busy": 2},
                "default executor": {"max_queue_p99_ms": 10_000},
                "db": {"max_saturation": 0.5},
            },
        )
    result = failed.value.result
    verdicts = {v.name: v for v in result.verdicts}
    [connections] = result.connection_pools
    [threads] = [p for p in result.thread_pools if p.name == DEFAULT_EXECUTOR]
    assert connections.name == SQLALCHEMY
    assert connections.wait_p99_ms is not None
    assert threads.wait_p99_ms is not None
    # 2 connections held 20 ms for 20 users: each waits ≈ 20 / 100 s − 20 ms for one.
    assert connections.wait_p99_ms > threads.wait_p99_ms
    # The budget without a name is judged on the worst pool ...
    assert verdicts["max_queue_p99_ms"].measured == connections.wait_p99_ms
    # ... one with a name on the pool it names, whatever the others did.
    assert verdicts["pool default executor max_queue_p99_ms"].measured == threads.wait_p99_ms
    assert verdicts["pool default executor max_queue_p99_ms"].ok
    named = verdicts["pool SQLAlchemy max_queue_p99_ms"]
    assert (named.measured, named.ok) == (connections.wait_p99_ms, False)
    busy = verdicts["pool SQLAlchemy max_threads_busy"]
    assert (busy.measured, busy.ok) == (2, True)
    # A pool no storm measured fails, and the failure says which pools were measured.
    missing = verdicts["pool db max_saturation"]
    assert math.isnan(missing.measured)
    assert not missing.ok
    assert {v.name for v in result.failed_verdicts} == {
        "pool SQLAlchemy max_queue_p99_ms",
        "pool db max_saturation",
    }
    message = str(failed.value)
    assert "storm broke its budget (pool SQLAlchemy max_queue_p99_ms, pool db max_saturation)" in (
        message
    )
    assert (
        f"no pool named 'db' was measured; the pools measured: '{DEFAULT_EXECUTOR}', "
        f"'{SQLALCHEMY}'" in message
    )


def test_over_shards_a_named_pool_is_judged_on_its_worst_copy(tmp_path: Path) -> None:
    result = run_storm(
        two_pools_app(tmp_path / "db.sqlite3"),
        "GET",
        "/",
        users=8,
        processes=2,
        duration=0.5,
        pool_budgets={"SQLAlchemy": {"max_threads_busy": 2, "max_queue_p99_ms": 0}},
        check=False,
    )
    copies = [p for p in result.connection_pools if p.name.startswith(SQLALCHEMY)]
    assert [p.name for p in copies] == [f"{SQLALCHEMY} (shard {i})" for i in range(2)]
    verdicts = {v.name: v for v in result.verdicts}
    busy = verdicts["pool SQLAlchemy max_threads_busy"]
    assert (busy.measured, busy.ok) == (2, True)
    # 4 users a shard for 2 connections: both shards' copies queued; the worse is judged.
    waited = verdicts["pool SQLAlchemy max_queue_p99_ms"]
    assert waited.measured == max(p.wait_p99_ms or 0.0 for p in copies)
    assert not waited.ok


@pytest.mark.parametrize(
    ("pool_budgets", "message"),
    [
        ({"SQLAlchemy": {"p99_ms": 5}}, "'p99_ms' is not a budget of one pool; pool budgets: "),
        ({"SQLAlchemy": {"max_saturation": 2}}, "is a fraction between 0 and 1"),
        ({"SQLAlchemy": 5}, "'SQLAlchemy' must be a pool's name mapped to a dict of budgets"),
        ([("db", 5)], "must map a pool's name"),
    ],
)
def test_bad_pool_budgets_are_refused_before_any_load(
    pool_budgets: Any, message: str, tmp_path: Path
) -> None:
    calls: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(scope)

    with pytest.raises(ConfigError, match="pool_budgets") as refused:
        run_storm(app, "GET", "/", users=1, requests=1, pool_budgets=pool_budgets)
    assert message in str(refused.value)
    assert calls == []


APP = """
import asyncio
from pathlib import Path

from sqlalchemy.ext.asyncio import create_async_engine


def make_app():
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{Path(__file__).parent / 'db.sqlite3'}", pool_size=2, max_overflow=0
    )

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await engine.dispose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        async with engine.connect():
            await asyncio.sleep(0.02)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app
"""


def test_the_marker_aims_a_budget_at_one_pool(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(db_app=APP)
    pytester.makepyfile(
        test_pools="""
        import pytest
        from db_app import make_app

        @pytest.mark.concurrency(
            users=10, duration=0.4, pool_budgets={"aiosqlite": {"max_threads_busy": 2}}
        )
        def test_named_pool_holds(storm):
            storm(make_app(), "GET", "/")

        @pytest.mark.concurrency(
            users=10, duration=0.4, pool_budgets={"db": {"max_queue_p99_ms": 50}}
        )
        def test_unknown_pool_fails(storm):
            storm(make_app(), "GET", "/")

        @pytest.mark.concurrency(pool_budgets={"db": {"max_wait": 50}})
        def test_bad_budget_is_an_error(storm):
            storm(make_app(), "GET", "/")
        """
    )
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess(
        "-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*storm broke its budget (pool db max_queue_p99_ms)*",
            f"*pool db max_queue_p99_ms*no pool named 'db' was measured; the pools measured: "
            f"'{SQLALCHEMY}'*",
        ]
    )
    result.stdout.fnmatch_lines(["*'max_wait' is not a budget of one pool*"])

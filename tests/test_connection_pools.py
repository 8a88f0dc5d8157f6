"""Connection pools: where requests queue for a database connection, named, measured and charged."""

from __future__ import annotations

import contextlib
import gc
import http.server
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency import BudgetExceeded, run_storm
from pytest_concurrency._model.probes import ConnectionPoolUsage
from pytest_concurrency._probes.attribution import ledger
from pytest_concurrency._probes.connpools import ConnectionPoolProbe
from pytest_concurrency._report._json import JSON_SCHEMA
from pytest_concurrency._report._schema import first_problem
from pytest_concurrency._report._text import diagnosis

sqlalchemy = pytest.importorskip("sqlalchemy")
pytest.importorskip("aiosqlite")

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.pool import QueuePool  # noqa: E402

HOLD = 0.05


def _hold_in_threads(engine: Any, n: int) -> list[list[tuple[str, str, float]]]:
    """n threads start together, each holds one connection HOLD seconds; their ledgers."""
    barrier = threading.Barrier(n)
    books: list[list[tuple[str, str, float]]] = [[] for _ in range(n)]

    def request(i: int) -> None:
        barrier.wait()
        with ledger() as book, engine.connect() as conn:
            conn.execute(text("select 1"))
            time.sleep(HOLD)
        books[i] = book.waits

    threads = [threading.Thread(target=request, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return books


def test_a_queue_pool_of_two_serves_six_threads_in_three_turns(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        poolclass=QueuePool,
        pool_size=2,
        max_overflow=0,
        connect_args={"check_same_thread": False},
    )
    try:
        with ConnectionPoolProbe() as probe:
            books = _hold_in_threads(engine, 6)
    finally:
        engine.dispose()
    [pool] = probe.result
    assert pool.name == "SQLAlchemy pool (sqlite+pysqlite)"
    assert (pool.size, pool.peak_in_use, pool.checkouts, pool.connects) == (2, 2, 6, 2)
    # Two got a connection at once, two after one hold, two after two: 4 waited, the
    # longest about 2 holds (and never 3: one connection serves a turn each).
    assert pool.waited == 4
    assert pool.wait_p99_ms is not None
    assert 2 * HOLD * 1000 * 0.9 <= pool.wait_p99_ms < 3 * HOLD * 1000
    assert pool.saturation > 0
    # Each request's own wait for the pool is charged to it; opening is charged apart.
    waits = sorted(sum(s for k, _, s in book if k == "pool") for book in books)
    assert waits[:2] == pytest.approx([0, 0], abs=0.01)
    assert waits[-1] == pytest.approx(2 * HOLD, rel=0.5)
    assert sum(1 for book in books for k, _, _ in book if k == "connect") == 2
    assert {name for book in books for _, name, _ in book} == {pool.name}


def test_the_probe_patches_nothing_once_stopped_and_counts_nothing_outside(
    tmp_path: Path,
) -> None:
    before = QueuePool._do_get
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}", poolclass=QueuePool)
    try:
        with ConnectionPoolProbe() as probe:
            assert QueuePool._do_get is not before
        assert QueuePool._do_get is before
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    finally:
        engine.dispose()
    assert probe.result == []  # no pool was used while it ran


def test_a_connection_pool_round_trips_through_json_and_the_schema() -> None:
    usage = ConnectionPoolUsage(
        name="SQLAlchemy pool (postgresql+asyncpg)",
        library="SQLAlchemy",
        size=5,
        peak_in_use=5,
        mean_in_use=4.9,
        full=0.98,
        saturation=0.97,
        checkouts=600,
        waited=590,
        wait_p50_ms=380.0,
        wait_p99_ms=412.0,
        connects=5,
        connect_s=0.04,
        connect_p50_ms=8.0,
        duration_s=3.0,
        fix="raise pool_size (or max_overflow), or hold the connection for less time",
    )
    assert ConnectionPoolUsage.from_dict(usage.to_dict()) == usage
    assert "5 of 5 connections busy with requests waiting 97% of the storm" in str(usage)
    pool_schema = JSON_SCHEMA["$defs"]["connection_pool"]
    assert first_problem(usage.to_dict(), pool_schema) is None


def test_the_html_cards_show_the_busiest_connection_pool() -> None:
    from pytest_concurrency._report._html import _cards

    usage = {
        "library": "SQLAlchemy",
        "size": 5,
        "peak_in_use": 5,
        "saturation": 0.97,
        "wait_p99_ms": 412.0,
    }
    html = _cards({"latency": {}, "connection_pools": [usage]})
    assert "SQLAlchemy connections in use (peak)" in html
    assert "5 of 5" in html
    assert "412" in html


def _pool_line(lines: list[str]) -> list[str]:
    return [line for line in lines if "connections busy" in line]


@pytest.mark.timing
def test_an_async_pool_of_five_queues_100_users_as_littles_law_says(storm: Any) -> None:
    """SQLite through SQLAlchemy's async pool: the same queue a database server would show."""
    from examples import db_pool_app

    with pytest.raises(BudgetExceeded) as failed:
        storm(
            db_pool_app.app,
            "GET",
            "/report",
            users=100,
            duration=2.0,
            warmup=0.5,
            max_saturation=0.5,
            max_queue_p99_ms=100,
            max_threads_busy=10,
        )
    result = failed.value.result
    failed_budgets = {v.name: v for v in result.failed_verdicts}
    assert set(failed_budgets) == {"max_saturation", "max_queue_p99_ms"}
    verdict = failed_budgets["max_saturation"]
    [pool] = result.connection_pools
    # The pool's budgets are judged on the pool: its p99 wait, and its 5 connections held.
    assert failed_budgets["max_queue_p99_ms"].measured == pool.wait_p99_ms
    assert result.verdicts[-1].name == "max_threads_busy"
    assert result.verdicts[-1].measured == pool.peak_in_use
    assert pool.library == "SQLAlchemy"
    assert pool.size == db_pool_app.SMALL_POOL
    assert pool.saturation >= 0.9
    assert verdict.measured == pytest.approx(pool.saturation)
    # Little's law: 5 connections held 20 ms serve 250 requests/s; 100 users then spend
    # 100 / 250 s in all, 20 ms of it holding the connection.
    little_ms = 100 / (db_pool_app.SMALL_POOL / db_pool_app.QUERY_SECONDS) * 1000 - 20
    assert pool.wait_p50_ms == pytest.approx(little_ms, rel=0.2)
    lines = diagnosis(result.to_dict(histograms=False), result)
    [line] = _pool_line(lines)
    assert line.startswith("SQLAlchemy pool (sqlite+aiosqlite): 5 of 5 connections busy")
    assert line.endswith("raise pool_size (or max_overflow), or hold the connection for less time")
    # The loop's own stalls are named as not what the requests waited for.
    assert not [x for x in lines if x.startswith("event loop blocked") and "times" in x]


@pytest.mark.timing
def test_a_pool_as_large_as_the_users_removes_the_wait_and_the_diagnosis(storm: Any) -> None:
    from examples import db_pool_app

    small = storm(db_pool_app.app, "GET", "/report", users=20, duration=1.0, warmup=0.3)
    fixed = storm(db_pool_app.app_fixed, "GET", "/report", users=20, duration=1.0, warmup=0.3)
    [queued] = small.connection_pools
    [free] = fixed.connection_pools
    # 5 connections × 20 ms for 20 users: each waits ≈ 20 / 250 s − 20 ms = 60 ms.
    assert queued.wait_p50_ms is not None
    assert queued.wait_p50_ms > 30
    assert _pool_line(diagnosis(small.to_dict(histograms=False), small))
    assert free.size == db_pool_app.FIXED_POOL
    assert free.saturation == 0
    assert free.wait_p50_ms is not None
    assert free.wait_p50_ms < 1
    assert not _pool_line(diagnosis(fixed.to_dict(histograms=False), fixed))
    assert fixed.latency.p50 < small.latency.p50 / 2


# -- on a real PostgreSQL --------------------------------------------------------------------


@pytest.mark.timing
def test_asyncpg_through_sqlalchemy_on_postgres_names_the_pool(postgres_url: str) -> None:
    pytest.importorskip("asyncpg")
    from examples import db_pool_app

    app = db_pool_app.make_app(postgres_url, db_pool_app.SMALL_POOL)
    result = run_storm(app, "GET", "/report", users=100, duration=2.0, warmup=0.5, check=False)
    assert result.status_counts[200] == result.requests
    [pool] = result.connection_pools
    assert pool.name == "SQLAlchemy pool (postgresql+asyncpg)"
    assert pool.saturation >= 0.9
    little_ms = 100 / (db_pool_app.SMALL_POOL / db_pool_app.QUERY_SECONDS) * 1000 - 20
    # pg_sleep holds the connection 20 ms plus a round trip: the wait only grows.
    assert pool.wait_p50_ms is not None
    assert 0.8 * little_ms <= pool.wait_p50_ms <= 1.35 * little_ms
    assert _pool_line(diagnosis(result.to_dict(histograms=False), result))


def test_asyncpg_pool_acquire_is_measured(postgres_url: str) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    import asyncio

    async def main() -> list[list[tuple[str, str, float]]]:
        pool = await asyncpg.create_pool(postgres_url, min_size=0, max_size=2)
        try:

            async def one() -> list[tuple[str, str, float]]:
                with ledger() as book:
                    async with pool.acquire() as conn:
                        await conn.execute("select pg_sleep(0.05)")
                return book.waits

            async with ConnectionPoolProbe() as probe:
                books = await asyncio.gather(*(one() for _ in range(6)))
        finally:
            await pool.close()
        [usage] = probe.result
        assert (usage.name, usage.size, usage.peak_in_use) == ("asyncpg pool", 2, 2)
        assert (usage.checkouts, usage.connects) == (6, 2)
        assert usage.waited >= 4
        return list(books)

    books = asyncio.run(main())
    assert sum(1 for b in books for k, _, _ in b if k == "connect") == 2
    assert max(sum(s for k, _, s in b if k == "pool") for b in books) >= 0.09


def test_psycopg_pool_waits_are_measured(postgres_dsn: str) -> None:
    psycopg_pool = pytest.importorskip("psycopg_pool")
    pool = psycopg_pool.ConnectionPool(postgres_dsn, min_size=2, max_size=2, open=True)
    pool.wait()
    try:
        barrier = threading.Barrier(6)

        def one() -> None:
            barrier.wait()
            with pool.connection() as conn:
                conn.execute("select pg_sleep(0.05)")

        with ConnectionPoolProbe() as probe:
            threads = [threading.Thread(target=one) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        pool.close()
    [usage] = probe.result
    assert usage.library == "psycopg_pool"
    assert (usage.size, usage.peak_in_use, usage.checkouts) == (2, 2, 6)
    assert usage.waited == 4


@pytest.mark.timing
# CONN_MAX_AGE=60 keeps each worker thread's connection, and the storm's worker threads
# end with the storm: Django's per-thread connections are then dropped open, as in any
# server whose threads exit (psycopg warns from __del__).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_django_without_persistent_connections_shows_the_time_opening_them(
    postgres: Any,
) -> None:
    pytest.importorskip("psycopg")
    from examples import django_db

    django_db.configure(postgres.settings)
    fresh = run_storm(django_db.wsgi_app("pg0"), "GET", "/report", users=8, workers=4, duration=1.0)
    kept = run_storm(django_db.wsgi_app("pg60"), "GET", "/report", users=8, workers=4, duration=1.0)
    [opened] = fresh.connection_pools
    [reused] = kept.connection_pools
    assert opened.name == "Django database 'pg0' (postgresql)"
    # CONN_MAX_AGE=0: every request opens its own (the warm-up's included).
    assert opened.connects >= fresh.requests
    assert opened.connect_p50_ms is not None
    assert opened.connect_p50_ms > 0.5
    assert opened.peak_in_use <= 4  # one per worker thread at most
    [line] = [x for x in diagnosis(fresh.to_dict(histograms=False), fresh) if "opened" in x]
    assert "set CONN_MAX_AGE" in line
    # CONN_MAX_AGE=60: one per worker thread, kept.
    assert reused.connects <= 4
    assert not [x for x in diagnosis(kept.to_dict(histograms=False), kept) if "CONN_MAX_AGE" in x]


# As above: CONN_MAX_AGE=60 drops each worker thread's connection open when the storm ends.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_django_counts_connections_reused_against_those_opened(postgres: Any) -> None:
    pytest.importorskip("psycopg")
    from examples import django_db

    django_db.configure(postgres.settings)
    fresh = run_storm(django_db.wsgi_app("pg0"), "GET", "/report", users=4, workers=2, requests=40)
    kept = run_storm(django_db.wsgi_app("pg60"), "GET", "/report", users=4, workers=2, requests=40)
    gc.collect()  # the connections the ended threads left open go here, not in a later test
    assert fresh.status_counts == kept.status_counts == {200: 40}
    [opened] = fresh.connection_pools
    [reused] = kept.connection_pools
    # CONN_MAX_AGE=0: each request opens the connection it queries on, none is reused.
    assert opened.reused == 0
    assert opened.connects == 40
    # CONN_MAX_AGE=60: one opened per worker thread (2), every other request reuses one.
    assert 1 <= reused.connects <= 2
    assert reused.reused == 40 - reused.connects
    assert f"{reused.reused} requests reused an open connection" in str(reused)
    [line] = [x for x in diagnosis(fresh.to_dict(histograms=False), fresh) if "opened" in x]
    assert "none reused: set CONN_MAX_AGE" in line
    assert ConnectionPoolUsage.from_dict(reused.to_dict()) == reused


def test_the_pool_claim_holds_only_when_the_small_pool_is_the_bottleneck() -> None:
    from examples.claims.base import HOLDS, NOT_HERE, PARTLY
    from examples.claims.db_pool import judge_pool_bound

    assert judge_pool_bound(84.0, 21.0, 0.8, 80.0).verdict == HOLDS
    assert judge_pool_bound(84.0, 21.0, 0.2, 80.0).verdict == PARTLY  # not saturated
    assert judge_pool_bound(22.0, 21.0, 0.0, 80.0).verdict == NOT_HERE


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client's pool keeps its connections
    disable_nagle_algorithm = True  # headers and body go out at once, no delayed-ACK stall

    def do_GET(self) -> None:
        time.sleep(SLOW_ROUTE)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


SLOW_ROUTE = 0.05


@pytest.fixture
def slow_server() -> Iterator[str]:
    """A server on 127.0.0.1 that answers every GET after 50 ms, one thread per connection."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/slow"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.timing
def test_an_httpx_client_limited_to_five_connections_shows_its_queue(slow_server: str) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    clients: list[httpx.AsyncClient] = []

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=5)) as client:
            clients.append(client)
            yield

    async def proxy(request: Any) -> JSONResponse:
        answer = await clients[0].get(slow_server)
        return JSONResponse({"status": answer.status_code})

    app = Starlette(routes=[Route("/proxy", proxy)], lifespan=lifespan)
    result = run_storm(app, "GET", "/proxy", users=50, duration=1.5, warmup=0.3, check=False)
    assert result.status_counts[200] == result.requests > 0
    [pool] = result.connection_pools
    assert pool.name == "httpx client pool (max_connections=5)"
    assert (pool.size, pool.peak_in_use) == (5, 5)
    # Full with calls waiting the whole storm; the probe's window also holds the storm's
    # start and its drain, when fewer than 5 calls are in flight.
    assert pool.saturation >= 0.6
    # 5 connections × 50 ms serve at most 100 calls/s (a loaded machine's server fewer):
    # Little's law on the rate the storm got, 50 users wait ≈ 50 / rate − 50 ms each.
    assert result.throughput <= 5 / SLOW_ROUTE * 1.1
    little_ms = (50 / result.throughput - SLOW_ROUTE) * 1000
    assert pool.wait_p50_ms is not None
    assert pool.wait_p50_ms == pytest.approx(little_ms, rel=0.2)
    assert pool.connects <= 10  # kept alive, not one per call
    [line] = _pool_line(diagnosis(result.to_dict(histograms=False), result))
    assert "httpx.Limits(max_connections=...)" in line


@pytest.mark.timing
def test_the_pool_is_watched_inside_a_real_servers_worker() -> None:
    pytest.importorskip("uvicorn")
    from examples import db_pool_app

    result = run_storm(
        db_pool_app.app,
        "GET",
        "/report",
        users=50,
        duration=1.0,
        server="uvicorn",
        max_saturation=0.5,  # a probed budget: the probes run inside the worker
        check=False,
    )
    assert result.extras["server_probes"]["measured"]
    [pool] = result.connection_pools
    assert pool.name == "SQLAlchemy pool (sqlite+aiosqlite)"
    assert pool.size == db_pool_app.SMALL_POOL
    assert pool.saturation >= 0.5
    assert [v.name for v in result.failed_verdicts] == ["max_saturation"]


def test_an_aiohttp_connectors_waits_are_counted_and_charged(slow_server: str) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    import asyncio

    async def main() -> tuple[list[ConnectionPoolUsage], list[list[tuple[str, str, float]]]]:
        connector = aiohttp.TCPConnector(limit=2)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> list[tuple[str, str, float]]:
                with ledger() as book:
                    async with session.get(slow_server) as response:
                        await response.read()
                return book.waits

            async with ConnectionPoolProbe() as probe:
                books = await asyncio.gather(*(one() for _ in range(6)))
        return probe.result, list(books)

    [usage], books = asyncio.run(main())
    assert usage.name == "aiohttp TCPConnector pool (limit=2)"
    # Two calls open the connections; four wait, and get them as the first calls end.
    assert (usage.size, usage.peak_in_use, usage.checkouts, usage.connects) == (2, 2, 6, 2)
    assert usage.waited == 4
    waits = sorted(sum(s for k, _, s in book if k == "pool") for book in books)
    assert waits[:2] == [0, 0]
    assert waits[-1] >= 2 * SLOW_ROUTE * 0.9  # the last two waited for two calls each
    assert sum(1 for book in books for k, _, _ in book if k == "connect") == 2


def test_an_aiohttp_checkout_without_gauges_takes_its_slot_quietly() -> None:
    """A probe stopped while a request was connecting leaves it no gauge: nothing to charge."""
    from pytest_concurrency._probes.connpools import _AiohttpCheckout

    checkout = _AiohttpCheckout([])
    with ledger() as book:
        checkout.queue()
        checkout.take()
        checkout.give_up()
    assert checkout.taken
    assert book.waits == []


@pytest.mark.timing
def test_an_aiohttp_connector_limited_to_five_shows_its_queue() -> None:
    """aiohttp reaches a declared route over real loopback connections, through its pool."""
    aiohttp = pytest.importorskip("aiohttp")
    from pytest_concurrency import Upstream

    sessions: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=5)))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await sessions.pop().close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        async with sessions[-1].get("http://model-server.invalid/slow") as response:
            body = await response.read()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    with Upstream() as upstream:
        upstream.route("http://model-server.invalid/slow", latency=SLOW_ROUTE * 1000, json={})
        result = run_storm(app, "GET", "/", users=50, duration=1.5, warmup=0.3, check=False)
    assert result.status_counts[200] == result.requests > 0
    [pool] = result.connection_pools
    assert pool.name == "aiohttp TCPConnector pool (limit=5)"
    assert (pool.library, pool.size, pool.peak_in_use) == ("aiohttp", 5, 5)
    assert pool.saturation >= 0.6  # as for httpx: the window holds the start and the drain
    # 5 connections × 50 ms serve at most 100 calls/s; on the rate the storm got, each of
    # 50 users waits 50 / rate − 50 ms for a connection on average (Little's law). The
    # connector is not first come, first served: a call arriving as a connection comes back
    # takes it before the waiter that was woken for it (here a quarter of the calls never
    # wait), so the waits spread and their median sits above that mean, never below.
    assert result.throughput <= 5 / SLOW_ROUTE * 1.1
    little_ms = (50 / result.throughput - SLOW_ROUTE) * 1000
    assert pool.wait_p50_ms is not None
    assert 0.8 * little_ms <= pool.wait_p50_ms <= 1.35 * little_ms
    assert 0 < pool.waited < pool.checkouts
    assert pool.connects <= 10  # kept alive, not one per call
    [line] = _pool_line(diagnosis(result.to_dict(histograms=False), result))
    assert line.startswith("aiohttp TCPConnector pool (limit=5): 5 of 5 connections busy")
    assert "aiohttp.TCPConnector(limit=...)" in line
    # Each request's wait for the connector is charged to it, by the pool's name.
    assert result.attribution is not None
    band = result.attribution.band("p50")
    assert band is not None
    [wait] = [p for p in band.parts if p.kind == "pool"]
    assert wait.name == pool.name
    assert wait.ms == pytest.approx(pool.wait_p50_ms, rel=0.2)

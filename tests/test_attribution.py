"""Waits are charged to the request that waited, across the threads it hands work to."""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from pytest_concurrency import BudgetExceeded, Upstream, blocking_io, run_storm, simulated_io
from pytest_concurrency._metrics.breakdown import attribute
from pytest_concurrency._metrics.records import Recorder
from pytest_concurrency._model.names import ANYIO_LIMITER, ASGIREF_THREADS
from pytest_concurrency._model.result import SERVICE, StormResult, WaitShare
from pytest_concurrency._probes.attribution import OWN, charge, current, ledger
from pytest_concurrency._simio.waits import SIMULATED


def test_a_wait_is_charged_only_inside_an_open_ledger() -> None:
    charge("pool", "nowhere", 1.0)  # no request: nothing to charge, nothing raised
    assert current() is None
    with ledger() as book:
        charge("pool", "sqlalchemy", 0.25)
        charge("upstream", "GET http://model/generate", 0.05)
        charge("pool", "sqlalchemy", 0.0)  # no wait, no entry
    assert current() is None
    assert book.waits == [
        ("pool", "sqlalchemy", 0.25),
        ("upstream", "GET http://model/generate", 0.05),
    ]
    assert book.total("pool") == 0.25
    assert book.total() == 0.3


def test_concurrent_requests_keep_their_own_waits_and_threads_charge_their_request() -> None:
    async def request(n: int) -> list[tuple[str, str, float]]:
        with ledger() as book:
            await asyncio.sleep(0)
            await anyio.to_thread.run_sync(charge, "pool", f"p{n}", float(n))
            await asyncio.to_thread(charge, "connect", f"c{n}", 0.5)
            return book.waits

    async def main() -> list[list[tuple[str, str, float]]]:
        return list(await asyncio.gather(*(request(n) for n in (1, 2, 3))))

    assert asyncio.run(main()) == [
        [("pool", f"p{n}", float(n)), ("connect", f"c{n}", 0.5)] for n in (1, 2, 3)
    ]


# --------------------------------------------------------------------------- the fold


def _one(rec: Recorder, start: int, latency: int, queue: int = -1) -> None:
    rec.start.append(start)
    rec.latency.append(latency)
    rec.ttfb.append(-1)
    rec.queue.append(queue)
    rec.status.append(200)
    rec.endpoint.append(0)
    rec.error.append(0)


def _parts(shares: tuple[WaitShare, ...]) -> dict[tuple[str, str], float]:
    return {(p.kind, p.name): p.ms for p in shares}


def test_a_request_is_taken_apart_into_its_waits_the_loop_and_its_service() -> None:
    rec = Recorder()
    # 100 ms from t=0: two upstream calls awaited together (10–40 ms and 20–50 ms), a
    # stall 60–90 ms of which its own step held 80–90 ms; the rest is its service.
    _one(rec, 0, 100_000)
    rec.add_waits(
        [
            ("upstream", "GET http://a.invalid/", 0.030, 0.040),
            ("upstream", "GET http://b.invalid/", 0.030, 0.050),
            (OWN, "", 0.010, 0.090),
        ],
        origin=0.0,
    )
    found = attribute(
        rec,
        array("I", [0]),
        origin=0.0,
        stalls=[(0.060, 0.090)],
        pool=None,
        labels=["GET /"],
        measure_from_us=0,
    )
    assert found is not None
    (exemplar,) = found.slowest
    parts = _parts(exemplar.parts)
    # The calls overlap: their union (40 ms) is shared in proportion, once.
    assert parts[("upstream", "GET http://a.invalid/")] == pytest.approx(20.0)
    assert parts[("upstream", "GET http://b.invalid/")] == pytest.approx(20.0)
    # The stall minus the step of its own: 20 ms waiting for the loop.
    assert parts[("loop", "")] == pytest.approx(20.0)
    assert parts[(SERVICE, "")] == pytest.approx(40.0)
    assert sum(p.share for p in exemplar.parts) == pytest.approx(1.0)
    assert exemplar.parts[0].share >= exemplar.parts[-1].share


def test_the_wsgi_queue_wait_is_a_worker_wait_and_bands_hold_the_right_requests() -> None:
    rec = Recorder()
    for i in range(200):
        # Latency grows with i; the queue wait is 90% of it.
        _one(rec, i * 1000, 1000 * (i + 1), queue=900 * (i + 1))
    found = attribute(
        rec,
        array("I", range(200)),
        origin=0.0,
        stalls=[],
        pool="2 sync workers",
        labels=["GET /"],
        measure_from_us=0,
    )
    assert found is not None
    p99 = found.band("p99")
    p50 = found.band("p50")
    assert p99 is not None
    assert p50 is not None
    # Ranks 197..199 of 200 (p98.5 to p99.5) and 99..101.
    assert p99.requests == 3
    assert p99.latency_ms == pytest.approx(198.0)
    assert p50.requests == 3
    assert p50.latency_ms == pytest.approx(100.0)
    assert _parts(p99.parts)[("worker", "2 sync workers")] == pytest.approx(0.9 * 198.0)
    assert [e.latency_ms for e in found.slowest] == [200.0, 199.0, 198.0, 197.0, 196.0]


def test_merged_recorders_keep_each_request_its_waits() -> None:
    first, second = Recorder(), Recorder()
    _one(first, 0, 10)
    _one(second, 0, 10)
    _one(second, 5, 10)
    second.add_waits([("pool", "fake", 0.000004, 0.00001)], origin=0.0)
    first.add_waits([("upstream", "u", 0.000002, 0.00001)], origin=0.0)
    merged = Recorder.merge([first, second])
    rows = [
        (merged.wait_at[r], merged.wait_names[merged.wait_key[r]], merged.wait_us[r])
        for r in range(len(merged.wait_at))
    ]
    assert rows == [(0, ("upstream", "u"), 2), (2, ("pool", "fake"), 4)]


# --------------------------------------------------------------------------- storms


def _sums_to_latency(result: StormResult) -> None:
    attribution = result.attribution
    assert attribution is not None
    assert attribution.bands
    assert attribution.slowest
    for exemplar in attribution.slowest:
        total = sum(p.ms for p in exemplar.parts)
        assert total == pytest.approx(exemplar.latency_ms, rel=0.05)
    for band in attribution.bands:
        assert sum(p.ms for p in band.parts) == pytest.approx(band.latency_ms, rel=0.05)


def test_the_breakdown_of_a_request_sums_to_its_latency_in_process() -> None:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await simulated_io(2)
        await anyio.to_thread.run_sync(time.sleep, 0.001)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        blocking_io(2)
        start_response("200 OK", [])
        return [b"ok"]

    for app, extra in ((asgi, {}), (wsgi, {"workers": 2})):
        result = run_storm(app, "GET", "/", users=8, requests=160, **extra)
        _sums_to_latency(result)
        p50 = result.attribution.band("p50") if result.attribution else None
        assert p50 is not None
        assert ("upstream", SIMULATED) in _parts(p50.parts)


def test_a_wait_for_a_thread_slot_is_charged_to_the_asgi_request() -> None:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        # One thread for 8 users (the storm's own loop, its own limiter): each request
        # waits for the others' 5 ms.
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        await anyio.to_thread.run_sync(time.sleep, 0.005)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    result = run_storm(asgi, "GET", "/", users=8, requests=80, check=False)
    _sums_to_latency(result)
    assert result.attribution is not None
    p99 = result.attribution.band("p99")
    assert p99 is not None
    assert _parts(p99.parts)[("worker", ANYIO_LIMITER)] > 0.5 * p99.latency_ms


def test_a_wait_for_asgirefs_thread_is_charged_to_the_request() -> None:
    from asgiref.sync import sync_to_async

    nap = sync_to_async(time.sleep, thread_sensitive=True)

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        # Thread-sensitive calls outside a request context share one thread: 8 users
        # each wait for the others' 5 ms.
        await nap(0.005)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    result = run_storm(asgi, "GET", "/", users=8, requests=80, check=False)
    _sums_to_latency(result)
    assert result.attribution is not None
    p50 = result.attribution.band("p50")
    assert p50 is not None
    assert _parts(p50.parts)[("worker", ASGIREF_THREADS)] > 0.5 * p50.latency_ms


def test_a_pool_producer_shows_in_the_breakdown_and_the_failure_message() -> None:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        # As a pool probe would: the wait for a connection, charged when it is handed over.
        await anyio.sleep(0.01)
        charge("pool", "fake", 0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with pytest.raises(BudgetExceeded) as raised:
        run_storm(asgi, "GET", "/", users=4, requests=40, p99_ms=0.5)
    message = str(raised.value)
    assert "p99 requests (" in message
    assert "waiting for a connection from fake" in message
    result = raised.value.result
    assert result.attribution is not None
    p50 = result.attribution.band("p50")
    p99 = result.attribution.band("p99")
    assert p50 is not None
    assert p99 is not None
    assert ("pool", "fake") in _parts(p99.parts)
    assert _parts(p50.parts)[("pool", "fake")] > 0.5 * p50.latency_ms


# --------------------------------------------------------------------------- the model's figures


@pytest.mark.timing
def test_wsgi_p99_requests_wait_for_a_worker_as_littles_law_says() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        time.sleep(0.02)
        start_response("200 OK", [])
        return [b"ok"]

    result = run_storm(app, "GET", "/", users=20, workers=2, duration=2, warmup=0.3, check=False)
    assert result.attribution is not None
    p99 = result.attribution.band("p99")
    assert p99 is not None
    worker = _parts(p99.parts)[("worker", "2 sync workers")]
    # Little's law: 20 users at 2 / 20 ms take 200 ms a request, 20 ms of it served; the
    # mean wait is the rest. The p99 band waits at least that (less 20 % for the sleeps'
    # overshoot), and at most its own latency less one service, however long a busy
    # machine stretches the tail.
    service = 20.0
    expected = 20 / result.throughput * 1000 - service
    assert 0.8 * expected <= worker <= p99.latency_ms - service
    assert p99.parts[0].kind == "worker"
    assert p99.parts[0].share > 0.8


@pytest.mark.timing
def test_an_awaited_upstream_route_shows_as_its_latency() -> None:
    route = "http://model-server.invalid/generate"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        async with httpx.AsyncClient() as client:
            await client.get(route)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with Upstream() as upstream:
        upstream.route(route, latency=50)
        result = run_storm(app, "GET", "/", users=4, requests=40, check=False)
    assert result.attribution is not None
    p50 = result.attribution.band("p50")
    assert p50 is not None
    assert _parts(p50.parts)[("upstream", route)] == pytest.approx(50.0, rel=0.1)
    _sums_to_latency(result)


@pytest.mark.timing
def test_a_blocking_call_in_an_async_handler_makes_the_others_wait_for_the_loop() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        time.sleep(0.005)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    result = run_storm(app, "GET", "/", users=10, duration=1.5, check=False)
    assert result.attribution is not None
    p99 = result.attribution.band("p99")
    assert p99 is not None
    parts = _parts(p99.parts)
    # Ten users, each 5 ms on the loop: a request waits ≈ 9 × 5 ms for the others' calls
    # and serves its own 5 ms (its own stall is not charged back to it as a loop wait).
    assert parts[("loop", "")] > 0.6 * p99.latency_ms
    assert parts[(SERVICE, "")] >= 4.0


def test_behind_a_real_server_the_workers_take_their_requests_apart() -> None:
    pytest.importorskip("uvicorn")
    # 60 users on anyio's 40 threads, each held 50 ms: requests wait for a thread. A
    # budget on the probes' figures runs them inside the server's worker.
    result = run_storm(
        "examples.fastapi_app:app",
        "GET",
        "/sync-io",
        users=60,
        duration=0.8,
        server="uvicorn",
        max_saturation=1.0,
    )
    attribution = result.attribution
    assert attribution is not None
    assert attribution.side == "server"
    p99 = attribution.band("p99")
    assert p99 is not None
    parts = _parts(p99.parts)
    assert parts[("worker", ANYIO_LIMITER)] > 0
    assert sum(parts.values()) == pytest.approx(p99.latency_ms, rel=0.05)
    assert attribution.slowest[0].request == "GET /sync-io"
    assert attribution.slowest[0].status == 200


def test_the_html_report_draws_a_stacked_bar_of_each_band() -> None:
    from pytest_concurrency._report import _html

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        blocking_io(2)
        start_response("200 OK", [])
        return [b"ok"]

    result = run_storm(wsgi, "GET", "/", users=6, workers=1, requests=60, check=False)
    page = _html.render_html([("t.py::test", result)])
    assert "where the requests' time went" in page
    assert page.count("<div class='row'><span>p99 requests") == 1
    assert page.count("<div class='row'><span>slowest ") == 5
    assert "title='waiting for one of 1 sync worker: " in page
    assert f"title='waiting on {SIMULATED}: " in page


@pytest.mark.timing
def test_a_sqlalchemy_pool_of_five_is_what_the_slow_requests_waited_for() -> None:
    from examples import db_pool_app

    with pytest.raises(BudgetExceeded) as raised:
        run_storm(db_pool_app.app, "GET", "/report", users=20, duration=1.0, p99_ms=1)
    result = raised.value.result
    assert result.attribution is not None
    p99 = result.attribution.band("p99")
    assert p99 is not None
    [pool] = result.connection_pools
    # 5 connections × 20 ms for 20 users: each waits ≈ 20 / 250 s − 20 ms = 60 ms of 80.
    assert p99.parts[0].kind == "pool"
    assert p99.parts[0].name == pool.name
    assert p99.parts[0].share > 0.5
    assert f"waiting for a connection from {pool.name}" in str(raised.value)

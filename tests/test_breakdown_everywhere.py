"""Each request's time taken apart in the WebSocket runner and over process shards too."""

from __future__ import annotations

import time
from array import array
from typing import Any

import pytest

from pytest_concurrency import run_storm, run_websocket_storm, simulated_io
from pytest_concurrency._metrics.breakdown import attribute
from pytest_concurrency._metrics.records import Recorder
from pytest_concurrency._model.result import SERVICE, StormResult, WaitShare
from pytest_concurrency._simio.waits import SIMULATED

BLOCK_S = 0.006  # over the loop monitor's 5 ms threshold: each call is a stall it sees


def _parts(shares: tuple[WaitShare, ...]) -> dict[tuple[str, str], float]:
    return {(p.kind, p.name): p.ms for p in shares}


def _sums_to_latency(result: StormResult) -> None:
    attribution = result.attribution
    assert attribution is not None
    assert attribution.bands
    for exemplar in attribution.slowest:
        assert sum(p.ms for p in exemplar.parts) == pytest.approx(exemplar.latency_ms, rel=0.05)
    for band in attribution.bands:
        assert sum(p.ms for p in band.parts) == pytest.approx(band.latency_ms, rel=0.05)


def _echo_after(wait_ms: float, block_s: float) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            if wait_ms:
                await simulated_io(wait_ms)
            if block_s:
                time.sleep(block_s)  # the handler's own blocking call
            await send({"type": "websocket.send", "text": message.get("text")})

    return app


def test_a_websocket_messages_waits_are_charged_to_it_and_sum_to_its_round_trip() -> None:
    result = run_websocket_storm(_echo_after(5, 0), "/ws", users=4, messages=200)
    _sums_to_latency(result)
    assert result.attribution is not None
    p50 = result.attribution.band("p50")
    assert p50 is not None
    # The handler's simulated call, awaited in the app's own task for the connection.
    assert _parts(p50.parts)[("upstream", SIMULATED)] == pytest.approx(5.0, rel=0.05)


def test_a_websocket_handlers_own_blocking_call_is_its_service_not_a_wait_for_the_loop() -> None:
    # One user: every stall of the loop is its own handler's, so none is a wait.
    result = run_websocket_storm(_echo_after(0, BLOCK_S), "/ws", users=1, messages=40)
    _sums_to_latency(result)
    assert result.attribution is not None
    p50 = result.attribution.band("p50")
    assert p50 is not None
    parts = _parts(p50.parts)
    assert parts[(SERVICE, "")] >= BLOCK_S * 1000 * 0.9
    assert parts.get(("loop", ""), 0.0) < 0.5 * p50.latency_ms


def _one(rec: Recorder, start: int, latency: int) -> None:
    rec.start.append(start)
    rec.latency.append(latency)
    rec.ttfb.append(-1)
    rec.queue.append(-1)
    rec.status.append(200)
    rec.endpoint.append(0)
    rec.error.append(0)


def test_a_shards_loop_stall_holds_only_that_shards_requests() -> None:
    rec = Recorder()
    _one(rec, 0, 100_000)  # shard 0's request, 0–100 ms
    _one(rec, 0, 100_000)  # shard 1's, the same 100 ms
    found = attribute(
        rec,
        array("I", [0, 1]),
        origin=0.0,
        stalls=[],
        pool=None,
        labels=["GET /"],
        measure_from_us=0,
        loops=[(0, [(0.020, 0.050)]), (1, [(0.060, 0.070)])],
    )
    assert found is not None
    loops = sorted(_parts(e.parts).get(("loop", ""), 0.0) for e in found.slowest)
    assert loops == pytest.approx([10.0, 30.0])


@pytest.mark.timing
def test_shards_carry_the_wait_for_their_own_loop_in_the_breakdown() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        time.sleep(BLOCK_S)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    result = run_storm(app, "GET", "/", users=8, processes=2, duration=1.5, check=False)
    _sums_to_latency(result)
    assert result.attribution is not None
    p50 = result.attribution.band("p50")
    assert p50 is not None
    parts = _parts(p50.parts)
    # 4 users a shard, each holding its shard's loop 6 ms a request: a request waits for
    # the other 3's calls (18 ms) and serves its own 6 ms: 3/4 of its time is the loop.
    assert parts[("loop", "")] == pytest.approx(0.75 * p50.latency_ms, rel=0.2)
    assert parts[(SERVICE, "")] >= BLOCK_S * 1000 * 0.9

"""A storm's result survives its JSON form: ``StormResult.from_dict(r.to_dict())``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_concurrency import Request, StormResult, run_storm, run_websocket_storm

from .apps import asgi_routes, asgi_sleep, wsgi_routes, wsgi_sleep


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})


def _storms() -> dict[str, StormResult]:
    mix = [Request("GET", "/", weight=3), Request("GET", "/missing", name="missing")]
    return {
        "asgi": run_storm(
            asgi_sleep(0.002), users=4, duration=0.3, p99_ms=5000, max_loop_lag_ms=5000
        ),
        "asgi mix": run_storm(asgi_routes, requests=mix, users=3, duration=0.3, check=False),
        "wsgi": run_storm(wsgi_sleep(0.002), users=4, workers=2, duration=0.3, max_saturation=1),
        "wsgi mix": run_storm(wsgi_routes, requests=mix, users=3, duration=0.3, check=False),
        "websocket": run_websocket_storm(echo, "/ws", users=2, messages=20, connect_p99_ms=5000),
    }


@pytest.fixture(scope="module")
def storms() -> dict[str, StormResult]:
    return _storms()


@pytest.mark.parametrize("kind", ["asgi", "asgi mix", "wsgi", "wsgi mix", "websocket"])
def test_a_result_reads_back_from_its_dict(storms: dict[str, StormResult], kind: str) -> None:
    result = storms[kind]
    data = result.to_dict()
    back = StormResult.from_dict(data)
    assert back.to_dict() == data
    # Through JSON too, as a pytest-xdist worker sends it.
    assert StormResult.from_dict(json.loads(json.dumps(data))).to_dict() == json.loads(
        json.dumps(data)
    )
    assert back.passed == result.passed
    assert back.verdicts == result.verdicts
    assert set(back.histograms) == set(result.histograms)
    assert back.latency == result.latency or back.latency.count == 0


def test_peak_in_flight_is_its_own_figure() -> None:
    closed = run_storm(wsgi_sleep(0.005), users=4, workers=2, duration=0.3)
    # Four users on two workers: all four requests are out at once (two queued).
    assert closed.users == 4
    assert closed.peak_in_flight == 4
    opened = run_storm(wsgi_sleep(0.005), rate=100, workers=2, duration=0.5)
    assert opened.peak_in_flight is not None
    assert opened.peak_in_flight >= 1
    assert opened.users == 0  # an open-model storm has no users
    assert run_storm(asgi_sleep(0.001), users=3, duration=0.2).peak_in_flight == 3
    assert StormResult.from_dict(closed.to_dict()).peak_in_flight == 4


def test_users_are_the_users_asked_for_and_peak_in_flight_what_was_measured() -> None:
    # Stages: the highest target, whatever the stage the storm ended on.
    staged = run_storm(asgi_sleep(0.02), stages=[(0.2, 2), (0.3, 6), (0.2, 3)])
    assert staged.users == 6
    assert staged.peak_in_flight is not None
    assert 1 <= staged.peak_in_flight <= 6
    # Open model: arrivals are not users; what was in flight is its own figure.
    opened = run_storm(wsgi_sleep(0.02), rate=200, workers=8, duration=0.5)
    assert opened.users == 0
    assert opened.peak_in_flight is not None
    assert opened.peak_in_flight >= 2  # ≈ 200/s × 20 ms = 4 in flight on average
    back = StormResult.from_dict(json.loads(json.dumps(opened.to_dict())))
    assert (back.users, back.peak_in_flight) == (0, opened.peak_in_flight)
    from pytest_concurrency._report._text import headline

    assert "200 arrivals/s" in headline(opened.to_dict(histograms=False))
    assert "6 users" in headline(staged.to_dict(histograms=False))

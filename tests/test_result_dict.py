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
    assert json.loads(json.dumps(back.to_dict())) == data
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


def test_every_record_beside_the_figures_is_typed_and_keeps_its_json_key() -> None:
    from pytest_concurrency._model import extras as x

    from .test_report import make_result

    result = make_result([1.0, 2.0])
    result.samples = {503: "upstream is down"}
    result.clock = x.VirtualClock("virtual", 1.5, 900.0, 2.0, 0.1)
    result.abandoned = x.Abandoned(2, 1.0)
    result.on_start = x.StartHooks(users=4, requests=4, status_counts={200: 4}, p50_ms=1.0)
    result.cpu_contention = x.ContentionFigures(1.0, 0.25, 0.2, 1.25)
    result.server_probes = x.ServerProbes("uvicorn", (11, 12), True)
    result.server_usage = x.ServerUsage(0.6, 0.9, 50_000_000, 0.3, 20, 2.0)
    result.simulated_waits = x.SimulatedWaits(x.WaitFigures(10, 1.0), x.WaitFigures())
    result.upstream = {"http://model.invalid/": {"calls": 9, "calls_in_storm": 9}}
    result.scale = 0.5
    result.shards = x.ShardFigures(2, "fork", 0.1, (x.ShardShare(5, 0.5, None),) * 2)
    result.websocket = x.WebSocketConnections({}, 2, 0, 2, 0, 0, 0.0, {"1000": 2}, 0, 0, 0)
    result.locust = x.LocustInvocation("2.30", ("locust", "-f", "x.py"), 3.0)
    result.fidelity = x.FidelityFigures(
        {"inprocess": "in-process"}, (x.FidelityRowFigures("rps", "uvicorn", 10, 9, 0.9),)
    )
    result.comparison = x.Comparison(
        "paired", "control main", "unchanged", "…", 6, "settled", 4.2, "ABBA"
    )
    result.unknown_extras["from_a_newer_version"] = [1, 2]
    expected = {
        "samples", "clock", "abandoned", "on_start", "cpu_contention", "server_probes",
        "server_usage", "simulated_waits", "upstream", "scale", "shards", "websocket",
        "locust", "fidelity", "comparison", "from_a_newer_version",
    }  # fmt: skip
    data = json.loads(json.dumps(result.to_dict()))
    assert set(data["extras"]) == expected
    assert data["extras"]["on_start"]["status_counts"] == {"200": 4}
    assert data["extras"]["simulated_waits"]["async"]["count"] == 10
    back = StormResult.from_dict(data)
    assert back.on_start == result.on_start  # the status code is an int again
    assert back.samples == {503: "upstream is down"}
    for name in expected - {"from_a_newer_version"}:
        assert getattr(back, name) == getattr(result, name), name
    assert back.unknown_extras == {"from_a_newer_version": [1, 2]}
    assert json.loads(json.dumps(back.to_dict())) == data
    # The extras block is a view of the records: read it, set the record.
    assert result.extras["abandoned"] == {"tasks": 2, "grace_s": 1.0}
    with pytest.raises(TypeError):
        result.extras["abandoned"] = {"tasks": 3}  # type: ignore[index]


def _calling(url: str) -> Any:
    """A WSGI app whose every request makes one call to *url* with httpx."""
    import httpx

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with httpx.Client() as client:
            body = client.get(url).content
        start_response("200 OK", [])
        return [body]

    return app


def test_upstream_figures_are_records_written_as_the_route_states_them() -> None:
    from pytest_concurrency import Upstream
    from pytest_concurrency._model.extras import UpstreamFigures

    url = "http://model.invalid/generate"
    with Upstream() as upstream:
        route = upstream.route(url, latency=1, json={"text": "hi"})
        _call(url, 2)  # before the storm: in the totals, not in the storm's count
        result = run_storm(_calling(url), users=2, workers=2, requests=6)
        stated = route.stats()
    assert result.upstream is not None
    figures = result.upstream[url]
    assert isinstance(figures, UpstreamFigures)
    assert not figures.is_proxy
    assert (figures.calls, figures.calls_in_storm, figures.errors) == (8, 6, 0)
    assert figures.waited_ms_p50 is not None
    assert figures.waited_ms_p50 >= 1.0
    assert figures.latency == route.latency.describe()
    # The document keeps the route's statement, key for key and in its order, and then the
    # storm's own count: the bytes the plain dict gave.
    document = result.to_dict()["extras"]["upstream"]
    assert json.dumps(document) == json.dumps({url: {**stated, "calls_in_storm": 6}})
    # Read as the mapping it was, silently (warnings are errors here).
    assert figures["calls_in_storm"] == 6
    assert dict(figures) == document[url]
    assert figures.get("bytes_up") is None
    back = StormResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.upstream == result.upstream
    assert back.upstream is not None
    assert back.upstream[url].waited_ms_p99 == figures.waited_ms_p99


def _call(url: str, times: int) -> None:
    import httpx

    with httpx.Client() as client:
        for _ in range(times):
            client.get(url)


def test_a_proxys_figures_keep_their_kind_order_and_unknown_keys() -> None:
    from pytest_concurrency._model.extras import UpstreamFigures

    stated = {
        "kind": "proxy",
        "target": "db.invalid:5432",
        "address": "127.0.0.1:40001",
        "latency": "constant(20 ms)",
        "upstream_latency": "none",
        "calls": 3,
        "in_flight": 0,
        "max_in_flight": 2,
        "errors": 0,
        "timeouts": 0,
        "resets": 1,
        "bytes_up": 300,
        "bytes_down": 900,
        "chunks_up": 6,
        "chunks_down": 9,
        "chunks_delayed": 9,
        "waited_ms_total": 180.0,
        "waited_ms_mean": 20.0,
        "waited_ms_p50": 20.0,
        "waited_ms_p99": 21.5,
        "waited_ms_max": 21.5,
        "calls_in_storm": 3,
        "bytes_up_in_storm": 300,
        "bytes_down_in_storm": 900,
        "chunks_up_in_storm": 6,
        "chunks_down_in_storm": 9,
        "from_a_newer_version": [1],
    }
    figures = UpstreamFigures.from_dict(stated)
    assert figures.is_proxy
    assert (figures.target, figures.resets, figures.chunks_down_in_storm) == (
        "db.invalid:5432",
        1,
        9,
    )
    assert figures.unknown == {"from_a_newer_version": [1]}
    assert json.dumps(figures.to_dict()) == json.dumps(stated)
    assert UpstreamFigures.from_dict(figures.to_dict()) == figures
    assert figures != UpstreamFigures.from_dict({**stated, "calls": 4})

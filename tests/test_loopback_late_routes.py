"""Routes declared while a storm runs, after its loopback upstream process started, are
answered over loopback like the routes declared before it, and counted with them.

Host names are under ``.invalid``; a spy stands in for ``socket.getaddrinfo`` and
``connect`` and never calls through for anything but loopback.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests

from pytest_concurrency import Upstream
from pytest_concurrency._api import run_storm
from pytest_concurrency._simio import loopserver, seed_latency

from ._upstream import MODEL, latency_only_here, spy
from ._upstream import served_by_process as served
from .test_egress import Spy

__all__ = ["spy"]

LATE = "http://model-server.invalid/late"
LATE_HOST = "http://late-host.invalid/answer"


def _declaring(declare: Callable[[], Any], url: str, pids: list[int]) -> Any:
    """A WSGI app whose first request declares a route (*declare*), and whose every request
    then calls *url* with requests, answering with what it got."""
    lock = threading.Lock()
    declared: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            if not declared:
                pids.extend(s.pid for s in loopserver._LIVE if s.pid is not None)
                declared.append(declare())
        answer = requests.get(url, timeout=5)
        start_response(f"{answer.status_code} Answered", [])
        return [answer.content]

    return app


def test_a_route_declared_mid_storm_is_answered_by_the_running_process(spy: Spy) -> None:
    pids: list[int] = []
    with Upstream() as upstream:
        upstream.route(MODEL, latency=5, json={"text": "Hello!"})  # the process serves the host
        late: list[Any] = []

        def declare() -> Any:
            late.append(upstream.route(LATE, latency=20, json={"late": True}))

        app = _declaring(declare, LATE, pids)
        result = run_storm(app, "GET", "/", users=2, threads=2, requests=10, check=False)
    assert pids, "a loopback process answered the storm"
    assert result.status_counts == {200: 10}, result.errors
    (route,) = late
    assert route.calls == 10
    assert result.upstream is not None
    figures = result.upstream[LATE]
    assert figures.calls_in_storm == 10
    # The process's waits came back with its counts: each call waited its 20 ms.
    assert figures.waited_ms_p50 is not None
    assert figures.waited_ms_p50 >= 20.0
    assert upstream.undeclared_calls == 0
    assert spy.off_machine == []


def test_a_host_declared_mid_storm_is_served_on_loopback_too(spy: Spy) -> None:
    pids: list[int] = []
    with Upstream() as upstream:
        upstream.route(MODEL, latency=5, json={"text": "Hello!"})
        app = _declaring(
            lambda: upstream.route(LATE_HOST, latency=5, content="yes"), LATE_HOST, pids
        )
        result = run_storm(app, "GET", "/", users=2, threads=2, requests=8, check=False)
    assert pids
    assert result.refused_egress == []
    assert result.status_counts == {200: 8}, result.errors
    assert result.upstream is not None
    assert result.upstream[LATE_HOST].calls_in_storm == 8
    assert spy.off_machine == []


def test_a_route_with_a_handler_declared_mid_storm_runs_its_handler_here(spy: Spy) -> None:
    pids: list[int] = []
    seen: list[str] = []

    def handler(request: Any) -> dict[str, str]:
        seen.append(request.url.path)  # runs in this process, where the test can see it
        return {"handled": "yes"}

    with Upstream() as upstream:
        upstream.route(MODEL, latency=5, json={"text": "Hello!"})
        app = _declaring(lambda: upstream.route(LATE, latency=5, handler=handler), LATE, pids)
        result = run_storm(app, "GET", "/", users=2, threads=2, requests=8, check=False)
    assert pids
    assert result.status_counts == {200: 8}, result.errors
    assert seen == ["/late"] * 8
    assert result.upstream is not None
    assert result.upstream[LATE].calls_in_storm == 8
    assert spy.off_machine == []


@pytest.mark.parametrize("seed", [7, None], ids=["route-seed", "storm-seed"])
def test_a_seeded_route_declared_late_draws_what_it_draws_in_process(
    seed: int | None, spy: Spy
) -> None:
    """The child takes up a late route's generator where this process's stands, and this
    process takes it up again where the child's stopped."""

    def statuses(serve: bool) -> tuple[list[int], Any]:
        seed_latency(3)
        with Upstream() as upstream:
            upstream.route(MODEL)
            if not serve:
                route = upstream.route(LATE, error_rate=0.5, seed=seed)
                plan = [route._plan(loopserver._NO_TIMEOUT)[2] for _ in range(12)]
                return [503 if fails else 200 for fails in plan], route._rng.getstate()
            with served(upstream), requests.Session() as session:
                route = upstream.route(LATE, error_rate=0.5, seed=seed)
                answered = [session.get(LATE, timeout=5).status_code for _ in range(12)]
        assert (route.calls, route.errors) == (12, answered.count(503))
        return answered, route._rng.getstate()

    answered = statuses(True)
    assert answered == statuses(False)
    assert set(answered[0]) == {200, 503}


def test_a_late_route_the_process_cannot_load_is_relayed_to_this_one(
    spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = latency_only_here(monkeypatch, "storm_late_latency_only_here")
    with Upstream() as upstream:
        upstream.route(MODEL, json={"text": "Hello!"})
        with served(upstream) as server, requests.Session() as session:
            late = upstream.route(LATE, latency=slow, json={"late": True})
            answers = [session.post(LATE, json={"n": n}, timeout=5) for n in range(3)]
            relayed = server._relayed
            assert relayed is not None
            model = session.get(MODEL, timeout=5)
    assert [a.json() for a in answers] == [{"late": True}] * 3
    assert model.json() == {"text": "Hello!"}
    assert late.calls == 3
    assert late.waited_s >= 3 * 0.005
    assert relayed._thread is None  # stopped with the process
    assert spy.off_machine == []


def test_a_late_https_route_with_a_handler_is_relayed_over_tls(spy: Spy) -> None:
    pytest.importorskip("trustme")
    aiohttp = pytest.importorskip("aiohttp")
    api = "https://api.example.invalid/v1/models"
    late = "https://api.example.invalid/v1/late"
    bodies: list[bytes] = []

    def handler(request: Any) -> dict[str, str]:
        bodies.append(request.content)
        return {"handled": request.headers["x-call"]}

    calls: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if not calls:
            calls.append(upstream.route(late, method="POST", latency=2, handler=handler))
        async with aiohttp.ClientSession() as session:
            headers = {"x-call": str(len(bodies))}
            async with session.post(late, json={"q": 1}, headers=headers) as response:
                status, answer = response.status, await response.read()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": answer})

    with Upstream() as upstream:
        upstream.route(api, json={"data": []})  # the process serves the host over TLS
        result = run_storm(app, "GET", "/", users=1, requests=4, check=False)
    assert result.status_counts == {200: 4}, result.errors
    assert bodies == [b'{"q": 1}'] * 4
    assert result.upstream is not None
    assert result.upstream[f"POST {late}"].calls_in_storm == 4
    assert spy.off_machine == []


def test_the_process_answers_its_own_routes_beside_a_relayed_one_on_one_connection(
    spy: Spy,
) -> None:
    """A relayed call closes its connection (its answer says so); the client's next call
    opens another, and the process answers it as before."""

    async def calls() -> list[tuple[int, bytes]]:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            seen = []
            for url in (MODEL, LATE, MODEL, LATE):
                async with session.get(url) as response:
                    seen.append((response.status, await response.read()))
            return seen

    pytest.importorskip("aiohttp")
    with Upstream() as upstream:
        model = upstream.route(MODEL, json={"text": "Hello!"})
        with served(upstream):
            late = upstream.route(LATE, handler=lambda request: "handled")
            seen = asyncio.run(calls())
    assert seen == [(200, b'{"text":"Hello!"}'), (200, b"handled")] * 2
    assert (model.calls, late.calls) == (2, 2)
